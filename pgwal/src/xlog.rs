//! Records of the XLOG resource manager that backup tooling needs: checkpoints, WAL switches,
//! restore points, end of recovery, backup end.
//!
//! Info values from `src/include/catalog/pg_control.h`; payloads from `CheckPoint`
//! (pg_control.h), `xl_restore_point` and `xl_end_of_recovery` (`xlog_internal.h`).

use crate::le::{le32, le64};
use crate::record::Record;
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
pub fn decode_xlog(rec: &Record<'_>) -> Result<Option<XlogRecord>, String> {
    if rec.rmid != RM_XLOG_ID {
        return Ok(None);
    }
    let d = rec.main_data();
    let need = |n: usize, what: &str| -> Result<(), String> {
        if d.len() < n {
            Err(format!(
                "{what} record at {} has {} bytes of data, expected {n}",
                rec.lsn,
                d.len()
            ))
        } else {
            Ok(())
        }
    };
    Ok(Some(match rec.rmgr_info() {
        i @ (XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
            need(88, "checkpoint")?;
            XlogRecord::Checkpoint(Checkpoint {
                shutdown: i == XLOG_CHECKPOINT_SHUTDOWN,
                redo: Lsn(le64(d, 0)),
                timeline: TimelineId(le32(d, 8)),
                prev_timeline: TimelineId(le32(d, 12)),
                full_page_writes: d[16] != 0,
                next_xid: le64(d, 24),
                next_oid: le32(d, 32),
                time: le64(d, 64) as i64,
                oldest_active_xid: le32(d, 80),
            })
        }
        XLOG_SWITCH => XlogRecord::Switch,
        XLOG_RESTORE_POINT => {
            need(72, "restore point")?;
            let name = &d[8..72];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            XlogRecord::RestorePoint {
                time: le64(d, 0) as i64,
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
            }
        }
        XLOG_END_OF_RECOVERY => {
            need(16, "end-of-recovery")?;
            XlogRecord::EndOfRecovery {
                time: le64(d, 0) as i64,
                timeline: TimelineId(le32(d, 8)),
                prev_timeline: TimelineId(le32(d, 12)),
            }
        }
        XLOG_BACKUP_END => {
            need(8, "backup-end")?;
            XlogRecord::BackupEnd {
                start: Lsn(le64(d, 0)),
            }
        }
        XLOG_CHECKPOINT_REDO => XlogRecord::CheckpointRedo,
        _ => return Ok(None),
    }))
}
