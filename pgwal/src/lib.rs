//! The PostgreSQL write-ahead-log format, without I/O.
//!
//! This crate owns the units of WAL bookkeeping ([`Lsn`], [`TimelineId`], [`WalSegSize`],
//! [`SegmentNo`]) and the file names built from them. It never touches a socket or a runtime:
//! callers hand it bytes and get typed values back. The segment size is always passed in; there
//! is no process-wide setting.

mod lsn;
mod segment;

pub use lsn::{Lsn, ParseLsnError, TimelineId};
pub use segment::{
    parse_wal_file_name, segment_file_name, InvalidSegSize, SegmentNo, WalFileKind, WalFileName,
    WalSegSize,
};
