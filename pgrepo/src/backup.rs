//! `backup --repo`: a full or incremental backup streamed into the repository, with the choice
//! between them made here (`auto`) and the reason for a full one returned as a value.

use std::path::PathBuf;
use std::time::Duration;

use basebackup::checksum::ChecksumKind;
use basebackup::sink::{Tee, VerifySink};
use pgrepl::{BaseBackupOptions, CheckpointMode, Config, Connection, TimelineId};
use pgstream::{take_backup, BackupError, BackupEvent, BackupSummary, SlotChoice, WalMethod};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

use crate::lease::{self, Lease};
use crate::reader::{load_index, StoredFile};
use crate::records::{BackupKind, BackupRecord, EntryType};
use crate::repo::{chain_of, Repo, RepoError};
use crate::sink::{BackupMeta, ChunkCompression, RepoSink, SinkSettings};

/// Which kind of backup to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requested {
    /// Incremental on the newest backup when possible, full otherwise (with the reason).
    #[default]
    Auto,
    /// Full.
    Full,
    /// Incremental, or fail saying why not.
    Incremental,
}

/// Why a backup is full.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullReason {
    /// A full backup was asked for.
    Requested,
    /// The repository holds no backup yet.
    NoPreviousBackup,
    /// The server is older than PostgreSQL 17 (no WAL summaries).
    ServerTooOld {
        /// Its major version.
        major: u32,
    },
    /// `summarize_wal` is off on the server.
    SummarizeWalOff,
    /// The server is on another timeline than the newest backup.
    TimelineChanged {
        /// The newest backup's.
        parent: TimelineId,
        /// The server's.
        server: TimelineId,
    },
    /// The newest backup's chain is as long as allowed.
    ChainAtMaximum {
        /// Its length.
        length: usize,
    },
    /// The repository is encrypted and no identity was given: the newest backup's manifest,
    /// which an incremental needs, cannot be read.
    NoIdentity,
    /// The server refused the incremental: its WAL summaries no longer reach back to the
    /// newest backup (its words).
    SummariesMissing {
        /// The backup it would have been incremental on.
        parent: String,
        /// What the server said.
        server_message: String,
    },
    /// `expire` is removing the newest backup's chain (or just removed it) while this backup
    /// started (see [`crate::lease`]).
    ParentExpiring {
        /// The backup it would have been incremental on.
        parent: String,
    },
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FullReason::Requested => f.write_str("a full backup was requested"),
            FullReason::NoPreviousBackup => f.write_str("the repository holds no backup yet"),
            FullReason::ServerTooOld { major } => write!(
                f,
                "the server is PostgreSQL {major}; incremental backups need 17 or later"
            ),
            FullReason::NoIdentity => f.write_str(
                "the repository is encrypted and no identity was given (-i): the newest backup's manifest cannot be read",
            ),
            FullReason::SummarizeWalOff => {
                f.write_str("summarize_wal is off on the server, so it keeps no WAL summaries")
            }
            FullReason::TimelineChanged { parent, server } => write!(
                f,
                "the server is on timeline {server}, the newest backup on timeline {parent}"
            ),
            FullReason::ChainAtMaximum { length } => write!(
                f,
                "the newest backup's chain already has {length} backups (--max-chain)"
            ),
            FullReason::SummariesMissing {
                parent,
                server_message,
            } => write!(
                f,
                "the server cannot take an incremental on {parent}: {server_message}"
            ),
            FullReason::ParentExpiring { parent } => write!(
                f,
                "expire is removing {parent}'s chain from the repository"
            ),
        }
    }
}

impl FullReason {
    /// A stable name, for `--json`.
    pub fn code(&self) -> &'static str {
        match self {
            FullReason::Requested => "requested",
            FullReason::NoPreviousBackup => "no_previous_backup",
            FullReason::ServerTooOld { .. } => "server_too_old",
            FullReason::SummarizeWalOff => "summarize_wal_off",
            FullReason::NoIdentity => "no_identity",
            FullReason::TimelineChanged { .. } => "timeline_changed",
            FullReason::ChainAtMaximum { .. } => "chain_at_maximum",
            FullReason::SummariesMissing { .. } => "summaries_missing",
            FullReason::ParentExpiring { .. } => "parent_expiring",
        }
    }
}

/// How to back up into the repository.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RepoBackupOptions {
    /// Full, incremental or automatic.
    pub requested: Requested,
    /// Chunk compression.
    pub compression: ChunkCompression,
    /// Fast or spread checkpoint.
    pub checkpoint: CheckpointMode,
    /// Longest chain (full backup included) an automatic incremental may extend.
    pub max_chain: usize,
    /// Where WAL streamed beside the backup waits until the backup ends.
    pub spool_parent: PathBuf,
    /// A new pack object begins past this size.
    pub max_pack_bytes: u64,
    /// The backup's label.
    pub label: String,
    /// How often the WAL stream reports its position.
    pub status_interval: Option<Duration>,
    /// Have the server estimate the size, for progress events.
    pub progress: bool,
    /// The server sends at most this many kB/s (BASE_BACKUP MAX_RATE).
    pub max_rate_kb: Option<u32>,
}

impl Default for RepoBackupOptions {
    fn default() -> Self {
        RepoBackupOptions {
            requested: Requested::Auto,
            compression: ChunkCompression::Zstd(3),
            checkpoint: CheckpointMode::Spread,
            max_chain: 10,
            spool_parent: std::env::temp_dir(),
            max_pack_bytes: 1 << 30,
            label: "pgrepl backup".into(),
            status_interval: Some(Duration::from_secs(10)),
            progress: false,
            max_rate_kb: None,
        }
    }
}

/// A backup in the repository.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RepoBackupOutcome {
    /// Its commit record.
    pub record: BackupRecord,
    /// Why it is full, if it is.
    pub full_reason: Option<FullReason>,
    /// What the stream said.
    pub summary: BackupSummary,
}

/// Why `backup --repo` failed; nothing was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoBackupError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The backup failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// An incremental was required and cannot be taken.
    #[error("cannot take an incremental backup: {0}")]
    NoIncremental(FullReason),
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What the newest backup allows: its record (to be incremental on) or why not.
async fn choose_parent(
    repo: &Repo,
    conn: &mut Connection,
    id: &pgrepl::SystemIdentity,
    opts: &RepoBackupOptions,
) -> Result<Result<BackupRecord, FullReason>, RepoBackupError> {
    if opts.requested == Requested::Full {
        return Ok(Err(FullReason::Requested));
    }
    if !repo.can_read() {
        return Ok(Err(FullReason::NoIdentity));
    }
    let all = repo.backups().await?;
    let Some(parent) = all.last().cloned() else {
        return Ok(Err(FullReason::NoPreviousBackup));
    };
    let major = conn.server_version().major;
    if major < 17 {
        return Ok(Err(FullReason::ServerTooOld { major }));
    }
    if conn
        .show("summarize_wal")
        .await
        .map_err(BackupError::from)?
        != "on"
    {
        return Ok(Err(FullReason::SummarizeWalOff));
    }
    if parent.timeline_id() != id.timeline {
        return Ok(Err(FullReason::TimelineChanged {
            parent: parent.timeline_id(),
            server: id.timeline,
        }));
    }
    let length = chain_of(&all, &parent.id).map_or(usize::MAX, |c| c.len());
    if length >= opts.max_chain.max(1) {
        return Ok(Err(FullReason::ChainAtMaximum { length }));
    }
    Ok(Ok(parent))
}

/// Streams `parent`'s backup_manifest to the server (UPLOAD_MANIFEST), through a pipe so that
/// memory does not grow with the manifest.
async fn upload_parent_manifest(
    repo: &Repo,
    conn: &mut Connection,
    parent: &BackupRecord,
) -> Result<(), RepoBackupError> {
    let index = load_index(repo, parent).await?;
    let entry = index
        .iter()
        .find(|e| e.archive == "meta" && e.kind == EntryType::File)
        .cloned()
        .ok_or_else(|| RepoError::Damaged {
            repo: repo.name(),
            key: crate::layout::index_key(&parent.id),
            detail: "the index lists no backup_manifest".into(),
        })?;
    let file = StoredFile::new(
        Handle::current(),
        repo.clone(),
        &parent.id,
        &entry,
        parent.compression != "none",
    );
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let size = entry.size;
    let feeder = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use basebackup::source::RangeRead;
        let rt = Handle::current();
        let mut at = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        while at < size {
            let n = (size - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            rt.block_on(tx.write_all(&buf[..n]))?;
            at += n as u64;
        }
        rt.block_on(tx.shutdown())
    });
    let r = conn.upload_manifest(rx).await;
    let fed = feeder
        .await
        .map_err(|e| RepoError::Unusable(format!("reading the parent's manifest: {e}")))?;
    r.map_err(BackupError::from)?;
    fed.map_err(|e| RepoError::Unusable(format!("reading backup {}'s manifest: {e}", parent.id)))?;
    Ok(())
}

/// Whether a failed BASE_BACKUP INCREMENTAL means the server cannot take one on this parent
/// (ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE: summaries missing or incomplete, a manifest whose
/// WAL the server's timeline history does not hold).
fn incremental_refused(e: &BackupError) -> Option<String> {
    match e {
        BackupError::Server(pe) => pe
            .as_db_error()
            .filter(|d| d.code == "55000")
            .map(|d| d.message.clone()),
        _ => None,
    }
}

/// Takes a backup of the server `config` reaches into `repo`: full or incremental as
/// `opts.requested` says, its WAL streamed beside it, verified against the server's manifest
/// while it streams, committed last.
pub async fn backup_to_repo(
    repo: &Repo,
    config: &Config,
    opts: &RepoBackupOptions,
    mut on_event: impl FnMut(&BackupEvent),
) -> Result<RepoBackupOutcome, RepoBackupError> {
    let mut conn = Connection::connect(config)
        .await
        .map_err(BackupError::from)?;
    let id = conn.identify_system().await.map_err(BackupError::from)?;
    // refused before anything is written when the repository is another cluster's
    let seg = conn.wal_segment_size().await.map_err(BackupError::from)?;
    repo.bind(id.system_id, seg.bytes()).await?;
    let mut choice = choose_parent(repo, &mut conn, &id, opts).await?;
    // claim the parent's chain against expire: write the lease, then look for expire's marks
    let mut lease = None;
    if let Ok(p) = &choice {
        let chain: Vec<String> = repo.chain(&p.id).await?.into_iter().map(|b| b.id).collect();
        let l = Lease::take(repo, chain.clone()).await?;
        let (marked, _) = lease::expiring(repo, lease::now()).await?;
        let intact = chain_of(&repo.backups().await?, &p.id).is_some();
        if intact && !chain.iter().any(|c| marked.contains(c)) {
            lease = Some(l);
        } else {
            l.release().await;
            choice = Err(FullReason::ParentExpiring {
                parent: p.id.clone(),
            });
        }
    }
    let r = backup_on(repo, conn, config, &id, opts, choice, &mut on_event).await;
    if let Some(l) = lease {
        l.release().await;
    }
    r
}

async fn backup_on(
    repo: &Repo,
    mut conn: Connection,
    config: &Config,
    id: &pgrepl::SystemIdentity,
    opts: &RepoBackupOptions,
    choice: Result<BackupRecord, FullReason>,
    mut on_event: impl FnMut(&BackupEvent),
) -> Result<RepoBackupOutcome, RepoBackupError> {
    let (parent, mut reason) = match choice {
        Ok(p) => (Some(p), None),
        Err(r) if opts.requested == Requested::Incremental => {
            return Err(RepoBackupError::NoIncremental(r))
        }
        Err(r) => (None, Some(r)),
    };
    if let Some(p) = &parent {
        upload_parent_manifest(repo, &mut conn, p).await?;
        match run(
            repo,
            &mut conn,
            config,
            id,
            opts,
            Some(p),
            None,
            &mut on_event,
        )
        .await
        {
            Ok(o) => return Ok(o),
            Err(RepoBackupError::Backup(e)) => match incremental_refused(&e) {
                Some(msg) => {
                    let why = FullReason::SummariesMissing {
                        parent: p.id.clone(),
                        server_message: msg,
                    };
                    if opts.requested == Requested::Incremental {
                        return Err(RepoBackupError::NoIncremental(why));
                    }
                    reason = Some(why);
                    // the failed command ends the connection's usefulness: start afresh
                    conn = Connection::connect(config)
                        .await
                        .map_err(BackupError::from)?;
                    conn.identify_system().await.map_err(BackupError::from)?;
                }
                None => return Err(e.into()),
            },
            Err(e) => return Err(e),
        }
    }
    run(
        repo,
        &mut conn,
        config,
        id,
        opts,
        None,
        reason,
        &mut on_event,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn run(
    repo: &Repo,
    conn: &mut Connection,
    config: &Config,
    id: &pgrepl::SystemIdentity,
    opts: &RepoBackupOptions,
    parent: Option<&BackupRecord>,
    reason: Option<FullReason>,
    on_event: &mut impl FnMut(&BackupEvent),
) -> Result<RepoBackupOutcome, RepoBackupError> {
    let seg = conn.wal_segment_size().await.map_err(BackupError::from)?;
    let v = conn.server_version();
    let meta = BackupMeta {
        id: crate::layout::new_backup_id(now(), parent.is_some()),
        kind: if parent.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        },
        parent: parent.map(|p| p.id.clone()),
        full_reason: reason.as_ref().map(|r| r.to_string()),
        system_identifier: id.system_id,
        server_version: v.major * 10000 + v.minor,
        wal_segment_size: seg.bytes(),
        start_time: now(),
    };
    let settings = SinkSettings {
        compression: opts.compression,
        max_pack_bytes: opts.max_pack_bytes,
        spool_parent: opts.spool_parent.clone(),
    };
    let sink = Tee(
        VerifySink::new(ChecksumKind::Crc32c, Some(id.system_id)),
        RepoSink::new(Handle::current(), repo.clone(), meta, settings),
    );
    let options = BaseBackupOptions {
        label: opts.label.clone(),
        checkpoint: opts.checkpoint,
        incremental: parent.is_some(),
        tablespace_map: false,
        progress: opts.progress,
        max_rate_kb: opts.max_rate_kb,
        ..Default::default()
    };
    let wal = WalMethod::Stream {
        slot: SlotChoice::Temporary,
        config: Box::new(config.clone()),
        system_id: id.system_id,
        sync: false,
        status_interval: opts.status_interval,
    };
    let (summary, sink) = take_backup(conn, &options, &wal, sink, |e| on_event(e)).await?;
    let record =
        sink.1.record().cloned().ok_or_else(|| {
            RepoError::Unusable("the backup ended without a commit record".into())
        })?;
    Ok(RepoBackupOutcome {
        record,
        full_reason: reason,
        summary,
    })
}
