#![warn(missing_docs, unreachable_pub)]
//! The PostgreSQL write-ahead-log format, without I/O.
//!
//! This crate owns the units of WAL bookkeeping ([`Lsn`], [`TimelineId`], [`WalSegSize`],
//! [`SegmentNo`]) and the file names built from them; page headers ([`page`]); records and
//! their block references ([`record`]); the push-fed record decoder ([`WalDecoder`]); decoders
//! for the records backup tooling needs ([`xlog`], [`xact`]); timeline history files
//! ([`timeline`]); the state machine that receives streamed WAL ([`receiver`]); and, behind the
//! `writer` feature, a small writer that lays out WAL for tests and fuzzing. It never touches a
//! file, a socket or a runtime: callers hand it bytes and get typed values back (reading and
//! writing WAL directories is the `walarchive` crate's). The segment size is always passed
//! in; there is no process-wide setting.

mod decoder;
pub mod le;
mod lsn;
pub mod page;
pub mod receiver;
pub mod record;
pub mod rmgr;
mod segment;
pub mod timeline;
#[cfg(feature = "writer")]
pub mod writer;
pub mod xact;
pub mod xlog;

pub use decoder::{DecoderOptions, WalDecoder, WalError, WalErrorKind};
pub use lsn::{Lsn, ParseLsnError, TimelineId};
pub use page::WalVersion;
pub use record::{BlockRef, Record, RecordError, RelFileLocator};
pub use segment::{
    parse_wal_file_name, segment_file_name, segment_suffix, InvalidSegSize, SegmentNo,
    WalCompression, WalFileKind, WalFileName, WalSegSize, SEGMENT_FORMS,
};
