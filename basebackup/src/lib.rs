//! Base backups as data: the archive stream, tar, manifests, incremental files, combine, verify
//! and sinks. This crate is being built; see README.md for the status of each part.
