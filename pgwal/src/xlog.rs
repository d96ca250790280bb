//! Records of the XLOG resource manager that backup tooling needs: checkpoints, WAL switches,
//! restore points, end of recovery, backup end.
//!
//! Info values from `src/include/catalog/pg_control.h`; payloads from `CheckPoint`
//! (pg_control.h), `xl_restore_point` and `xl_end_of_recovery` (`xlog_internal.h`).

use crate::le::LeReader;
use crate::record::Record;
use crate::record::RecordError;
use crate::rmgr::RM_XLOG_ID;
use crate::{Lsn, TimelineId};

/// `XLOG_CHECKPOINT_SHUTDOWN`.
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
/// `XLOG_CHECKPOINT_ONLINE`.
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
/// `XLOG_SWITCH`.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_BACKUP_END`.
pub const XLOG_BACKUP_END: u8 = 0x50;
/// `XLOG_RESTORE_POINT`.
pub const XLOG_RESTORE_POINT: u8 = 0x70;
/// `XLOG_END_OF_RECOVERY`.
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
/// `XLOG_OVERWRITE_CONTRECORD`.
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;
/// `XLOG_CHECKPOINT_REDO` (PostgreSQL 17+).
pub const XLOG_CHECKPOINT_REDO: u8 = 0xE0;

/// A checkpoint record's payload (the parts backup tooling uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Shutdown (true) or online checkpoint.
    pub shutdown: bool,
    /// Where replay must start.
    pub redo: Lsn,
    /// The timeline.
    pub timeline: TimelineId,
    /// The previous timeline (differs at a timeline switch).
    pub prev_timeline: TimelineId,
    /// full_page_writes at the time.
    pub full_page_writes: bool,
    /// Next full transaction id (epoch in the high 32 bits).
    pub next_xid: u64,
    /// Next OID.
    pub next_oid: u32,
    /// Time of the checkpoint, Unix seconds.
    pub time: i64,
    /// Oldest running xid (for hot standby).
    pub oldest_active_xid: u32,
}

/// A decoded XLOG record of interest.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XlogRecord {
    /// A checkpoint.
    Checkpoint(Checkpoint),
    /// A WAL switch: the rest of the segment is unused.
    Switch,
    /// A named restore point.
    RestorePoint {
        /// When it was made (µs since 2000-01-01).
        time: i64,
        /// Its name.
        name: String,
    },
    /// The end of recovery, starting a new timeline.
    EndOfRecovery {
        /// When (µs since 2000-01-01).
        time: i64,
        /// The new timeline.
        timeline: TimelineId,
        /// The one before.
        prev_timeline: TimelineId,
    },
    /// An online backup that started at `start` has ended.
    BackupEnd {
        /// The backup's start position.
        start: Lsn,
    },
    /// The redo point of an online checkpoint (PostgreSQL 17+).
    CheckpointRedo,
}

/// Decodes an XLOG record, or `Ok(None)` for other records and kinds we do not decode. A
/// payload of the wrong size is an error naming the record.
pub fn decode_xlog(rec: &Record<'_>) -> Result<Option<XlogRecord>, RecordError> {
    if rec.rmid != RM_XLOG_ID {
        return Ok(None);
    }
    let d = rec.main_data();
    let mut r = LeReader::new(d);
    // every field read checks the length: a short payload is an error naming the record
    let short = |what: &'static str, need: usize| RecordError::TooShort {
        what,
        lsn: rec.lsn,
        len: d.len(),
        need,
    };
    Ok(Some(match rec.rmgr_info() {
        i @ (XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
            let e = || short("checkpoint", 88);
            let redo = Lsn(r.u64().ok_or_else(e)?);
            let timeline = TimelineId(r.u32().ok_or_else(e)?);
            let prev_timeline = TimelineId(r.u32().ok_or_else(e)?);
            let full_page_writes = r.u8().ok_or_else(e)? != 0;
            r.skip(7).ok_or_else(e)?;
            let next_xid = r.u64().ok_or_else(e)?;
            let next_oid = r.u32().ok_or_else(e)?;
            r.skip(28).ok_or_else(e)?;
            let time = r.i64().ok_or_else(e)?;
            r.skip(8).ok_or_else(e)?;
            let oldest_active_xid = r.u32().ok_or_else(e)?;
            r.skip(4).ok_or_else(e)?;
            XlogRecord::Checkpoint(Checkpoint {
                shutdown: i == XLOG_CHECKPOINT_SHUTDOWN,
                redo,
                timeline,
                prev_timeline,
                full_page_writes,
                next_xid,
                next_oid,
                time,
                oldest_active_xid,
            })
        }
        XLOG_SWITCH => XlogRecord::Switch,
        XLOG_RESTORE_POINT => {
            let e = || short("restore point", 72);
            let time = r.i64().ok_or_else(e)?;
            let name = r.bytes(64).ok_or_else(e)?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            XlogRecord::RestorePoint {
                time,
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
            }
        }
        XLOG_END_OF_RECOVERY => {
            let e = || short("end-of-recovery", 16);
            XlogRecord::EndOfRecovery {
                time: r.i64().ok_or_else(e)?,
                timeline: TimelineId(r.u32().ok_or_else(e)?),
                prev_timeline: TimelineId(r.u32().ok_or_else(e)?),
            }
        }
        XLOG_BACKUP_END => XlogRecord::BackupEnd {
            start: Lsn(r.u64().ok_or_else(|| short("backup-end", 8))?),
        },
        XLOG_CHECKPOINT_REDO => XlogRecord::CheckpointRedo,
        _ => return Ok(None),
    }))
}
