//! The PostgreSQL write-ahead-log format, without I/O.
//!
//! This crate owns the units of WAL bookkeeping ([`Lsn`], [`TimelineId`], [`WalSegSize`],
//! [`SegmentNo`]) and the file names built from them; page headers ([`page`]); records and
//! their block references ([`record`]); the push-fed record decoder ([`WalDecoder`]); decoders
//! for the records backup tooling needs ([`xlog`], [`xact`]); timeline history files
//! ([`timeline`]); and a small writer for tests ([`writer`]). It never touches a socket or a
//! runtime: callers hand it bytes and get typed values back. The segment size is always passed
//! in; there is no process-wide setting.

pub mod archive;
mod decoder;
mod le;
mod lsn;
pub mod lz4;
pub mod page;
pub mod record;
pub mod rmgr;
mod segment;
pub mod timeline;
pub mod writer;
pub mod xact;
pub mod xlog;

pub use archive::{read_stored, ArchiveError, FoundSegment, StoredAs, WalDir, SEGMENT_NAMES};
pub use decoder::{DecoderOptions, WalDecoder, WalError, WalErrorKind};
pub use lsn::{Lsn, ParseLsnError, TimelineId};
pub use page::WalVersion;
pub use record::{BlockRef, Record, RelFileLocator};
pub use segment::{
    parse_wal_file_name, segment_file_name, InvalidSegSize, SegmentNo, WalFileKind, WalFileName,
    WalSegSize,
};
