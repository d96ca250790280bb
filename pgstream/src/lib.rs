#![warn(missing_docs, unreachable_pub)]
//! The online half of pgrepl: base backups and WAL streams over a [`pgrepl`] connection.
//!
//! - [`backup`]: BASE_BACKUP into a [`basebackup::sink::BackupSink`], the sink on a thread of
//!   its own behind a bounded queue, WAL streamed beside it on a second connection (`-X stream`);
//! - [`receive`]: a continuous, crash-safe WAL archive over START_REPLICATION (`receivewal`);
//! - [`wal_stream`]: the WAL stream of a backup;
//! - [`plan`]: a backup's options, checked as pg_basebackup checks them.
//!
//! Both WAL paths drive the one receiver state machine, [`pgwal::receiver::Receiver`], and
//! write through [`walarchive::SegmentWriter`] off the async threads. Everything runs on a
//! Tokio runtime with I/O and timers (as `#[tokio::main]` gives); the futures are `Send`.

pub mod backup;
pub mod plan;
pub mod receive;
mod sink_thread;
pub mod wal_store;
pub mod wal_stream;
mod wal_writer;

pub use backup::{
    take_backup, take_backup_until, BackupError, BackupEvent, BackupSummary, WalMethod,
};
pub use plan::{BackupPlan, CompressionChoice, Output, PlanError, WalChoice};
pub use receive::{
    create_slot, drop_slot, receive_wal, receive_wal_into, ReceiveError, ReceiveEvent,
    ReceiveOptions, ReceiveSummary, StopReason,
};
pub use wal_store::{DirWalStore, WalStore};
pub use wal_stream::{SlotChoice, WalStreamError};
