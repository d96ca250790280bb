#![warn(missing_docs, unreachable_pub)]
//! A backup repository for PostgreSQL: full and incremental backups and the WAL archive, kept
//! in S3-compatible object storage or a local directory, restored to any point in time.

pub mod store;
