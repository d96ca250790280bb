#![warn(missing_docs, unreachable_pub)]
//! WAL archive directories: where WAL files are stored, found, read and served.
//!
//! This is the I/O half of WAL at rest; the format (segment names and their stored forms,
//! pages, records) is [`pgwal`]'s, and nothing here talks to a server. The crate owns:
//! - [`read`]: a directory of segments read as one continuous byte sequence across timelines,
//!   whatever form each segment is stored in, with a gap named by its missing file;
//! - [`write`](mod@write): segments written as they stream in (`.partial` while they fill, durable and
//!   renamed when complete, optionally compressed), history files, and where a restart resumes;
//! - [`fetch`](mod@fetch): one file served to `restore_command`, telling "not there" from "damaged";
//! - [`lz4`]: the push-fed LZ4 frame decoder (pg_receivewal's `.lz4` files, and `.tar.lz4`
//!   archives of base backups).
//!
//! Linux and other Unix systems (file modes, directory fsync).

pub mod fetch;
pub mod lz4;
pub mod read;
pub mod write;

pub use fetch::{fetch, FetchError, Fetched};
pub use read::{read_stored, ArchiveError, FoundSegment, WalDir};
pub use write::{
    fsync_dir, scan_archive, ArchiveState, CompletedSegment, SegmentCompression, SegmentWriter,
    WriteError,
};
