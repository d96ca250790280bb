#![warn(missing_docs, unreachable_pub)]
//! A backup repository for PostgreSQL: full and incremental backups and the WAL archive, kept
//! in S3-compatible object storage or a local directory, restored to any point in time.

/// The age format every object of an encrypted repository is written in.
pub use agefile as age;
pub mod backup;
pub mod check;
pub mod expire;
pub mod info;
pub mod layout;
pub mod lease;
pub mod location;
pub mod reader;
pub mod records;
pub mod repo;
pub mod restore;
pub mod sink;
pub mod spool;
pub mod store;
pub mod verify;
pub mod wal;

pub use repo::{Repo, RepoError};
