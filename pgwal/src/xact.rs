//! Transaction commit and abort records, with their timestamps and transaction ids.
//!
//! Layout from `src/include/access/xact.h` (`xl_xact_commit`, `xl_xact_xinfo`, `XACT_XINFO_*`)
//! and the parse order of `ParseCommitRecord` / `ParseAbortRecord` in
//! `src/backend/access/rmgrdesc/xactdesc.c`.

use crate::le::LeReader;
use crate::page::WalVersion;
use crate::record::{Record, RecordError};
use crate::rmgr::RM_XACT_ID;

/// `XLOG_XACT_COMMIT`.
pub const XLOG_XACT_COMMIT: u8 = 0x00;
/// `XLOG_XACT_PREPARE`.
pub const XLOG_XACT_PREPARE: u8 = 0x10;
/// `XLOG_XACT_ABORT`.
pub const XLOG_XACT_ABORT: u8 = 0x20;
/// `XLOG_XACT_COMMIT_PREPARED`.
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
/// `XLOG_XACT_ABORT_PREPARED`.
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_HAS_INFO: u8 = 0x80;

const XINFO_HAS_DBINFO: u32 = 1 << 0;
const XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
const XINFO_HAS_INVALS: u32 = 1 << 3;
const XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// Whether a transaction committed or aborted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XactOutcome {
    /// Committed (COMMIT or COMMIT PREPARED).
    Commit,
    /// Aborted (ABORT or ABORT PREPARED).
    Abort,
}

/// A transaction's end, as recovery targets see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XactEnd {
    /// Commit or abort.
    pub outcome: XactOutcome,
    /// The transaction: `xl_xid`, or for a prepared transaction the two-phase xid.
    pub xid: u32,
    /// The commit or abort time, µs since 2000-01-01 (what `pg_xact_commit_timestamp` shows).
    pub time: i64,
    /// True for COMMIT PREPARED / ABORT PREPARED.
    pub prepared: bool,
}

/// Decodes a commit or abort record; `Ok(None)` for any other record. The record's WAL version
/// selects the size of dropped-statistics items (12 bytes before PostgreSQL 18, 16 from 18 on).
pub fn decode_xact_end(rec: &Record<'_>) -> Result<Option<XactEnd>, RecordError> {
    let version = rec.wal_version.unwrap_or(WalVersion::V18);
    if rec.rmid != RM_XACT_ID {
        return Ok(None);
    }
    let op = rec.info & XLOG_XACT_OPMASK;
    let (outcome, prepared) = match op {
        XLOG_XACT_COMMIT => (XactOutcome::Commit, false),
        XLOG_XACT_ABORT => (XactOutcome::Abort, false),
        XLOG_XACT_COMMIT_PREPARED => (XactOutcome::Commit, true),
        XLOG_XACT_ABORT_PREPARED => (XactOutcome::Abort, true),
        _ => return Ok(None),
    };
    let d = rec.main_data();
    let what = "transaction";
    let short = || RecordError::TooShort {
        what,
        lsn: rec.lsn,
        len: d.len(),
        need: 8,
    };
    let malformed = |problem| RecordError::Malformed {
        what,
        lsn: rec.lsn,
        problem,
    };
    let mut r = LeReader::new(d);
    let time = r.i64().ok_or_else(short)?;
    let mut xid = rec.xid;
    if prepared {
        // The two-phase xid sits behind the optional parts that precede it.
        if rec.info & XLOG_XACT_HAS_INFO == 0 {
            return Err(malformed("a prepared transaction's record has no xinfo"));
        }
        let xinfo = r.u32().ok_or_else(short)?;
        // skips `count` items of `item` bytes after their 4-byte count
        // skips a 4-byte count and that many items of `item` bytes
        let skip_items = |r: &mut LeReader<'_>, item: usize| -> Result<(), RecordError> {
            let n = r.u32().ok_or_else(short)? as usize;
            let len = n.checked_mul(item).ok_or_else(short)?;
            r.skip(len).ok_or_else(short)
        };
        if xinfo & XINFO_HAS_DBINFO != 0 {
            r.skip(8).ok_or_else(short)?;
        }
        if xinfo & XINFO_HAS_SUBXACTS != 0 {
            skip_items(&mut r, 4)?;
        }
        if xinfo & XINFO_HAS_RELFILELOCATORS != 0 {
            skip_items(&mut r, 12)?;
        }
        if xinfo & XINFO_HAS_DROPPED_STATS != 0 {
            skip_items(&mut r, if version >= WalVersion::V18 { 16 } else { 12 })?;
        }
        if op == XLOG_XACT_COMMIT_PREPARED && xinfo & XINFO_HAS_INVALS != 0 {
            skip_items(&mut r, 16)?;
        }
        if xinfo & XINFO_HAS_TWOPHASE == 0 {
            return Err(malformed(
                "a prepared transaction's record has no two-phase xid",
            ));
        }
        xid = r.u32().ok_or_else(short)?;
    }
    Ok(Some(XactEnd {
        outcome,
        xid,
        time,
        prepared,
    }))
}
