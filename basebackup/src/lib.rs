#![warn(missing_docs, unreachable_pub)]
//! Base backups as data: the archive stream, tar, manifests, incremental files, combine, verify
//! and sinks. Parsers here are sans-io: they take bytes and return typed values.
//!
//! Status: the tar parser, manifest parser and file checksums are in place; sinks, incremental
//! files, combine and verify are being built (see README.md).

pub mod archive_file;
pub mod archive_rules;
pub mod backup_label;
pub mod checksum;
pub mod combine;
pub mod control;
pub mod decompress;
pub mod incremental;
pub mod json;
/// LZ4 frames, push-fed (the decoder lives in walarchive, which reads `.lz4` WAL segments too).
pub use walarchive::lz4;
pub mod manifest;
pub mod pathbytes;
pub mod reflink;
pub mod restore;
pub mod safe_dir;
pub mod sink;
pub mod source;
pub mod standby;
pub mod tar;
pub mod verify;
