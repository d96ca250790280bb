//! Taking a base backup: BASE_BACKUP on a pgrepl connection, its archives handed to a
//! [`BackupSink`] that runs on a thread of its own (at most a few archive pieces queued for it, so a slow sink slows the socket), WAL streamed
//! beside it on a second connection when asked (`-X stream`).
//!
//! On any failure the sink is aborted, so nothing is left that looks complete. The future is
//! `Send` (a backup manager can `tokio::spawn` many backups); dropping it cancels the backup:
//! the sink's thread aborts the sink (the plain and tar sinks remove what they wrote), the WAL
//! stream's task is aborted and its connection closed, which makes the server drop the
//! temporary slot. A permanent slot made with [`SlotChoice::Create`] stays (it was asked for).
//!
//! [`SlotChoice::Create`]: crate::wal_stream::SlotChoice::Create

use std::collections::HashMap;
use std::time::{Duration, Instant};

use basebackup::archive_rules::{check_archive_name, ArchiveRole};
use basebackup::sink::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use basebackup::tar::TarError;
use pgrepl::{BaseBackupEvent, BaseBackupOptions, Connection, DbError};
use pgwal::{Lsn, TimelineId};

use crate::sink_thread::{SinkThread, ToSink};
use crate::wal_stream::{SlotChoice, WalConnection, WalStream, WalStreamError};

/// Progress and messages while a backup runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupEvent {
    /// The server started the backup.
    Started {
        /// Start (redo) position.
        start_lsn: Lsn,
        /// Timeline.
        timeline: TimelineId,
        /// The server's size estimate in bytes, if PROGRESS was asked.
        estimate: Option<u64>,
    },
    /// Bytes read from the data directory so far (server's count).
    Progress {
        /// Done.
        done: u64,
        /// The estimate.
        total: Option<u64>,
    },
    /// A NOTICE or WARNING from the server (checksum failures among them), verbatim.
    Notice(DbError),
}

/// What a completed backup was.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupSummary {
    /// Start (redo) position.
    pub start_lsn: Lsn,
    /// End position.
    pub end_lsn: Lsn,
    /// Timeline.
    pub timeline: TimelineId,
    /// Archives received, with their sizes as sent.
    pub archives: Vec<(String, u64)>,
    /// Regular files received.
    pub files: u64,
    /// Bytes of file data received.
    pub file_bytes: u64,
    /// WARNINGs the server sent.
    pub warnings: Vec<DbError>,
    /// Wall time.
    pub duration: Duration,
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The server or the connection failed.
    #[error(transparent)]
    Server(#[from] pgrepl::Error),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// An archive is malformed or holds what a backup may not.
    #[error("archive \"{archive}\": {source}")]
    Archive {
        /// The archive.
        archive: String,
        /// What is wrong, and where.
        #[source]
        source: TarError,
    },
    /// A compressed archive does not decompress.
    #[error("archive \"{archive}\": {source}")]
    Decompress {
        /// The archive.
        archive: String,
        /// Where, and what the decoder said.
        #[source]
        source: basebackup::decompress::DecompressError,
    },
    /// The server broke the BASE_BACKUP protocol.
    #[error("protocol violation during BASE_BACKUP: {0}")]
    Protocol(String),
    /// Streaming the backup's WAL failed.
    #[error("streaming WAL for the backup: {0}")]
    Wal(#[from] WalStreamError),
    /// The WAL stream of `-X stream` ended before the backup did.
    #[error("background process terminated unexpectedly: {0}")]
    WalTerminated(String),
    /// The sink cannot take what the backup needs (streamed WAL into a sink without a WAL
    /// directory).
    #[error("{0}")]
    Unsupported(String),
    /// The backup was abandoned before it completed.
    #[error("the backup was cancelled")]
    Cancelled,
}

impl From<crate::receive::ReceiveError> for BackupError {
    fn from(e: crate::receive::ReceiveError) -> Self {
        BackupError::Wal(WalStreamError::Receive(e))
    }
}

/// How the backup gets the WAL it needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WalMethod {
    /// None: the caller provides it (an archive).
    None,
    /// Appended by the server to base.tar at the end (BASE_BACKUP WAL).
    Fetch,
    /// Streamed on a second connection (with a temporary slot unless `slot` says otherwise)
    /// while the backup runs.
    Stream {
        /// The slot to stream from.
        slot: SlotChoice,
        /// How to open the second connection.
        config: Box<pgrepl::Config>,
        /// The server's system identifier (checked in every long page header).
        system_id: u64,
        /// fsync the segments.
        sync: bool,
        /// How often to tell the server how far WAL was written and flushed (`-s`); `None`:
        /// only when it asks.
        status_interval: Option<Duration>,
    },
}

/// Runs BASE_BACKUP with `options` on `conn` into `sink`. `options.wal` must agree with `wal`
/// (true only for [`WalMethod::Fetch`]). Returns the summary and the sink (finished).
pub async fn take_backup<S: BackupSink + Send + 'static>(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    wal: &WalMethod,
    sink: S,
    on_event: impl FnMut(&BackupEvent),
) -> Result<(BackupSummary, S), BackupError> {
    take_backup_until(conn, options, wal, sink, std::future::pending(), on_event).await
}

/// As [`take_backup`], stopping when `cancel` completes (a signal, a manager's shutdown): the
/// backup then fails with [`BackupError::Cancelled`] after the sink has removed what it wrote
/// and the WAL stream has stopped — unlike dropping the future, which leaves that cleanup to
/// run in the background.
pub async fn take_backup_until<S: BackupSink + Send + 'static>(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    wal: &WalMethod,
    sink: S,
    cancel: impl std::future::Future<Output = ()>,
    on_event: impl FnMut(&BackupEvent),
) -> Result<(BackupSummary, S), BackupError> {
    let mut sink = SinkThread::start(sink)?;
    // -X stream: the second connection and its slot come first, so that WAL from before the
    // backup's checkpoint is reserved before the server chooses the start position
    let mut wal_conn = match wal {
        WalMethod::Stream { config, slot, .. } => match WalConnection::open(config, slot).await {
            Ok(w) => Some(w),
            Err(e) => {
                sink.abandon().await;
                return Err(e.into());
            }
        },
        _ => None,
    };
    let mut streamer = None;
    let r = tokio::select! {
        r = run(conn, options, wal, &mut wal_conn, &mut streamer, &mut sink, on_event) => r,
        () = cancel => Err(BackupError::Cancelled),
    };
    if let Some(w) = wal_conn.take() {
        // the backup never began streaming WAL (refused, or failed before its start)
        w.abandon().await;
    }
    let (mut summary, end) = match r {
        Ok(r) => r,
        Err(e) => {
            // the WAL stream stops first, then the sink removes what it wrote
            drop(streamer);
            sink.abandon().await;
            return Err(e);
        }
    };
    let (counts, sink) = sink.finish(end).await?;
    summary.archives = counts.archives;
    summary.files = counts.files;
    summary.file_bytes = counts.file_bytes;
    Ok((summary, sink))
}

/// The state of the COPY: tablespaces announced, the archive in progress.
#[derive(Default)]
struct Copy {
    /// Location → OID, and OID → location, as the server announced them.
    locations: HashMap<String, u32>,
    announced: HashMap<u32, String>,
    estimate: Option<u64>,
}

impl Copy {
    fn tablespaces(&mut self, ts: &[pgrepl::TablespaceInfo]) -> Result<(), BackupError> {
        for t in ts {
            if let (Some(oid), Some(loc)) = (t.oid, &t.location) {
                if self.locations.insert(loc.clone(), oid).is_some()
                    || self.announced.insert(oid, loc.clone()).is_some()
                {
                    return Err(BackupError::Protocol(format!(
                        "tablespace {oid} at \"{loc}\" is announced twice"
                    )));
                }
            }
        }
        // the server's estimate, in kB per tablespace (absent without PROGRESS)
        self.estimate = match ts.iter().map(|t| t.size_kb).collect::<Option<Vec<u64>>>() {
            None => None,
            Some(sizes) => Some(
                sizes
                    .iter()
                    .try_fold(0u64, |a, kb| a.checked_add(*kb))
                    .and_then(|kb| kb.checked_mul(1024))
                    .ok_or_else(|| {
                        BackupError::Protocol(
                            "the tablespace size estimates overflow 64 bits".into(),
                        )
                    })?,
            ),
        };
        Ok(())
    }

    /// What the archive named `name` is: its tablespace, compression and rules.
    fn archive(&self, name: String, location: Option<String>) -> Result<ToSink, BackupError> {
        let oid = match &location {
            Some(l) => Some(*self.locations.get(l).ok_or_else(|| {
                BackupError::Protocol(format!(
                    "archive {name} for unknown tablespace location {l}"
                ))
            })?),
            None => None,
        };
        // the name becomes a file name in tar-format backups: base.tar or <oid>.tar only
        let compression =
            check_archive_name(&name, oid).map_err(|e| BackupError::Protocol(e.to_string()))?;
        let role = match oid {
            None => ArchiveRole::Base {
                tablespaces: Some(self.announced.clone()),
            },
            Some(_) => ArchiveRole::Tablespace,
        };
        Ok(ToSink::Archive {
            info: ArchiveInfo {
                name,
                tablespace_oid: oid,
                tablespace_location: location,
            },
            compression,
            role,
        })
    }
}

/// Archive payloads are handed to the sink thread in pieces of at least this many bytes: the
/// server sends each file's tar header, and each small file, as a CopyData of its own, and
/// handing each over on its own woke the sink thread and the task once per message (an
/// incremental backup of 1000 mostly small files: 2100 wake-ups each way).
const GATHER: usize = 128 * 1024;

async fn run<S: BackupSink + Send + 'static>(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    wal: &WalMethod,
    wal_conn: &mut Option<WalConnection>,
    streamer: &mut Option<WalStream>,
    sink: &mut SinkThread<S>,
    mut on_event: impl FnMut(&BackupEvent),
) -> Result<(BackupSummary, BackupEnd), BackupError> {
    let began = Instant::now();
    let mut stream = conn.base_backup(options).await?;
    let mut summary = BackupSummary {
        start_lsn: Lsn(0),
        end_lsn: Lsn(0),
        timeline: TimelineId(0),
        archives: Vec::new(),
        files: 0,
        file_bytes: 0,
        warnings: Vec::new(),
        duration: Duration::ZERO,
    };
    let mut copy = Copy::default();
    let mut end = None;
    // small payloads gathered for the sink thread (see GATHER)
    let mut gathered = bytes::BytesMut::new();
    loop {
        // a WAL stream that dies (its walsender terminated) fails the backup at once, as
        // pg_basebackup's background process does, instead of at the backup's end
        let next = match streamer.as_mut() {
            Some(s) => tokio::select! {
                ev = stream.next() => ev?,
                why = s.ended_early() => {
                    // a sink that failed removed the WAL directory under the stream as it
                    // aborted: its error is the cause
                    return Err(if sink.has_failed() {
                        sink.outcome_error().await
                    } else {
                        BackupError::WalTerminated(why)
                    });
                }
            },
            None => stream.next().await?,
        };
        let Some(ev) = next else { break };
        if !matches!(ev, BaseBackupEvent::ArchiveData(_)) && !gathered.is_empty() {
            sink.send(ToSink::Data(gathered.split().freeze())).await?;
        }
        match ev {
            BaseBackupEvent::Started {
                start_lsn,
                timeline,
            } => {
                summary.start_lsn = start_lsn;
                summary.timeline = timeline;
                if let WalMethod::Stream {
                    system_id,
                    sync,
                    status_interval,
                    ..
                } = wal
                {
                    let dir = sink.wal_dir().await?.ok_or_else(|| {
                        BackupError::Unsupported("this sink cannot take streamed WAL".into())
                    })?;
                    let ready = wal_conn
                        .take()
                        .ok_or_else(|| BackupError::Protocol("the backup started twice".into()))?;
                    *streamer = Some(
                        ready
                            .stream(
                                dir,
                                start_lsn,
                                timeline,
                                *system_id,
                                *sync,
                                *status_interval,
                            )
                            .await?,
                    );
                }
            }
            BaseBackupEvent::Tablespaces(ts) => {
                copy.tablespaces(&ts)?;
                on_event(&BackupEvent::Started {
                    start_lsn: summary.start_lsn,
                    timeline: summary.timeline,
                    estimate: copy.estimate,
                });
            }
            // with a TARGET the server keeps the archives: it names them but sends no data
            BaseBackupEvent::ArchiveStart { .. } if options.target.is_some() => {}
            BaseBackupEvent::ArchiveStart {
                name,
                tablespace_location,
            } => sink.send(copy.archive(name, tablespace_location)?).await?,
            BaseBackupEvent::ArchiveData(data) => {
                if gathered.is_empty() && data.len() >= GATHER {
                    sink.send(ToSink::Data(data)).await?;
                } else {
                    gathered.extend_from_slice(&data);
                    if gathered.len() >= GATHER {
                        sink.send(ToSink::Data(gathered.split().freeze())).await?;
                    }
                }
            }
            BaseBackupEvent::Progress(done) => on_event(&BackupEvent::Progress {
                done,
                total: copy.estimate,
            }),
            BaseBackupEvent::ManifestStart => sink.send(ToSink::ManifestStart).await?,
            BaseBackupEvent::ManifestData(d) => sink.send(ToSink::Manifest(d)).await?,
            BaseBackupEvent::Notice(n) => {
                if n.severity == "WARNING" {
                    summary.warnings.push(n.clone());
                }
                on_event(&BackupEvent::Notice(n));
            }
            BaseBackupEvent::Finished { end_lsn, timeline } => {
                summary.end_lsn = end_lsn;
                summary.timeline = timeline;
                if let Some(s) = streamer.take() {
                    s.finish(end_lsn).await?;
                    sink.send(ToSink::WalDone).await?;
                }
                end = Some(BackupEnd {
                    start_lsn: summary.start_lsn,
                    end_lsn,
                    timeline,
                });
            }
            _ => {}
        }
    }
    let end = end
        .ok_or_else(|| BackupError::Protocol("the backup ended without an end position".into()))?;
    summary.duration = began.elapsed();
    Ok((summary, end))
}
