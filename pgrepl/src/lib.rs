#![warn(missing_docs, unreachable_pub)]
//! A PostgreSQL streaming-replication client: connect (TCP or Unix socket, TLS with rustls),
//! authenticate (trust, password, MD5, SCRAM-SHA-256 and -PLUS), and run the physical replication
//! commands — IDENTIFY_SYSTEM, SHOW, TIMELINE_HISTORY, slots, START_REPLICATION, UPLOAD_MANIFEST
//! and BASE_BACKUP — with typed results and typed event streams.
//!
//! Layering, as in rust-postgres: the sans-io decoders ([`message`], [`replication`], [`backup`])
//! turn bytes into values and back and never touch a socket; [`Connection`] owns the socket, frames
//! messages and runs each command's state machine. `postgres-protocol` is used only to encode
//! frontend messages and for the SCRAM/MD5 primitives.
//!
//! Connections run on a Tokio runtime with I/O and timers enabled (`enable_all`, as
//! `#[tokio::main]` does): a base backup's COPY reads wait for batches of data with a timer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgrepl::Error> {
//! let config = pgrepl::Config::from_conninfo("host=db.example.com user=backup sslmode=verify-full")?;
//! let mut conn = pgrepl::Connection::connect(&config).await?;
//! let id = conn.identify_system().await?;
//! println!("system {} on timeline {} at {}", id.system_id, id.timeline, id.xlogpos);
//! # Ok(()) }
//! ```
//!
//! Through an SSH tunnel ([`ssh`]): the host is the database as the SSH server sees it, and
//! every connection made with clones of this config shares one SSH connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), pgrepl::Error> {
//! let mut config = pgrepl::Config::from_conninfo("host=db.internal user=backup sslmode=verify-full")?;
//! let mut ssh = pgrepl::SshConfig::parse("backup@bastion.example.com")?;
//! ssh.key_file = Some("/etc/backup/id_ed25519".into());
//! config.ssh = Some(pgrepl::SshTunnel::new(ssh));
//! let mut conn = pgrepl::Connection::connect(&config).await?;
//! # Ok(()) }
//! ```

pub mod backup;
mod backup_stream;
mod commands;
pub mod config;
mod connection;
mod error;
pub mod message;
mod osuser;
pub mod quote;
pub mod replication;
mod socket;
mod sockopt;
pub mod ssh;
mod stream;
pub mod tls;

pub use backup::{BaseBackupOptions, CheckpointMode, ManifestChecksums, ServerCompression};
pub use backup_stream::{BaseBackupEvent, BaseBackupStream, TablespaceInfo};
pub use commands::{
    parse_size_with_unit, validate_slot_name, CreateSlotOptions, CreatedSlot, SlotInfo,
    SystemIdentity, TimelineHistoryFile,
};
pub use config::{
    ChannelBinding, Config, ConnParams, Host, Password, RootCert, SslMode, SslNegotiation,
};
pub use connection::{Connection, NoticeHandler, QueryResult, ServerVersion};
pub use error::{AuthError, DbError, Error, Result};
pub use pgwal::{Lsn, TimelineId};
pub use ssh::{SshConfig, SshError, SshTunnel};
pub use stream::{ReplicationEvent, ReplicationStream, StartReplication};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<super::Connection>();
        assert_send_sync::<super::Config>();
        assert_send_sync::<super::Error>();
        assert_send_sync::<super::BaseBackupEvent>();
        assert_send_sync::<super::ReplicationEvent>();
        assert_send::<super::ReplicationStream<'static>>();
        assert_send::<super::BaseBackupStream<'static>>();
    }
}
