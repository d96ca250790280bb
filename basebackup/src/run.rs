//! Taking a base backup: BASE_BACKUP on a pgrepl connection, its archives parsed as they stream
//! and pushed into a [`BackupSink`]. On any failure the sink is aborted, so nothing is left that
//! looks complete.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrepl::{BaseBackupEvent, BaseBackupOptions, Connection, DbError};
use pgwal::{Lsn, TimelineId};

use crate::archive_rules::{check_archive_name, ArchiveRole, EntryRules};
use crate::decompress::Decompressor;
use crate::sink::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use crate::tar::{TarError, TarEvent, TarParser};
use crate::wal_stream::{WalConnection, WalStream};

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
    /// An archive is malformed.
    #[error("archive \"{archive}\": {source}")]
    Archive {
        /// The archive.
        archive: String,
        /// What is wrong.
        #[source]
        source: TarError,
    },
    /// Streaming the backup's WAL failed.
    #[error("streaming WAL for the backup: {0}")]
    Wal(#[from] pgrepl::receivewal::ReceiveError),
    /// The WAL stream of `-X stream` ended before the backup did.
    #[error("background process terminated unexpectedly: {0}")]
    WalTerminated(String),
    /// Something this version does not handle yet.
    #[error("{0}")]
    Unsupported(String),
}

/// A protocol violation during the backup's COPY.
fn protocol(detail: String) -> BackupError {
    BackupError::Server(pgrepl::Error::Protocol {
        state: "BASE_BACKUP copy",
        detail,
    })
}

enum Step {
    Tar(TarError),
    Sink(SinkError),
}

impl From<TarError> for Step {
    fn from(e: TarError) -> Self {
        Step::Tar(e)
    }
}

struct Current {
    name: String,
    parser: TarParser,
    decompressor: Option<Decompressor>,
    bytes: u64,
}

/// Feeds uncompressed archive bytes through the tar parser into the sink.
fn feed_tar(
    parser: &mut TarParser,
    name: &str,
    data: &[u8],
    sink: &mut dyn BackupSink,
    summary: &mut BackupSummary,
) -> Result<(), BackupError> {
    let (files, bytes) = (&mut summary.files, &mut summary.file_bytes);
    let fed = parser.feed(data, |ev| -> Result<(), Step> {
        match ev {
            TarEvent::Entry(h) => {
                if h.kind == crate::tar::EntryKind::File {
                    *files += 1;
                }
                sink.entry_begin(&h).map_err(Step::Sink)
            }
            TarEvent::Data(d) => {
                *bytes += d.len() as u64;
                sink.entry_data(d).map_err(Step::Sink)
            }
            TarEvent::EntryEnd => sink.entry_end().map_err(Step::Sink),
            TarEvent::End => Ok(()),
        }
    });
    match fed {
        Ok(()) => Ok(()),
        Err(Step::Sink(e)) => Err(e.into()),
        Err(Step::Tar(e)) => Err(BackupError::Archive {
            archive: name.to_owned(),
            source: e,
        }),
    }
}

/// Feeds archive bytes as received: raw to the sink, decompressed (if needed) to the parser.
fn feed_archive(
    c: &mut Current,
    data: &[u8],
    sink: &mut dyn BackupSink,
    summary: &mut BackupSummary,
) -> Result<(), BackupError> {
    match &mut c.decompressor {
        None => feed_tar(&mut c.parser, &c.name, data, sink, summary),
        Some(d) => {
            let mut failed = None;
            let (parser, name) = (&mut c.parser, &c.name);
            let r = d.push(data, |plain| {
                match feed_tar(parser, name, plain, sink, summary) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        failed = Some(e);
                        Err(String::new())
                    }
                }
            });
            match (r, failed) {
                (_, Some(e)) => Err(e),
                (Err(msg), None) => Err(BackupError::Archive {
                    archive: c.name.clone(),
                    source: TarError {
                        offset: c.bytes,
                        message: msg,
                    },
                }),
                (Ok(()), None) => Ok(()),
            }
        }
    }
}

fn finish_archive(
    cur: &mut Option<Current>,
    sink: &mut dyn BackupSink,
    summary: &mut BackupSummary,
) -> Result<(), BackupError> {
    if let Some(mut c) = cur.take() {
        if let Some(d) = c.decompressor.take() {
            let mut failed = None;
            let (parser, name) = (&mut c.parser, &c.name);
            let r = d.finish(|plain| match feed_tar(parser, name, plain, sink, summary) {
                Ok(()) => Ok(()),
                Err(e) => {
                    failed = Some(e);
                    Err(String::new())
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            r.map_err(|msg| BackupError::Archive {
                archive: c.name.clone(),
                source: TarError {
                    offset: c.bytes,
                    message: msg,
                },
            })?;
        }
        c.parser.finish().map_err(|e| BackupError::Archive {
            archive: c.name.clone(),
            source: e,
        })?;
        sink.archive_end()?;
        summary.archives.push((c.name, c.bytes));
    }
    Ok(())
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
        slot: crate::wal_stream::SlotChoice,
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
/// (true only for [`WalMethod::Fetch`]).
pub async fn take_backup(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    wal: &WalMethod,
    sink: &mut dyn BackupSink,
    on_event: impl FnMut(&BackupEvent),
) -> Result<BackupSummary, BackupError> {
    // -X stream: the second connection and its slot come first, so that WAL from before the
    // backup's checkpoint is reserved before the server chooses the start position
    let mut wal_conn = match wal {
        WalMethod::Stream { config, slot, .. } => match WalConnection::open(config, slot).await {
            Ok(w) => Some(w),
            Err(e) => {
                sink.abort();
                return Err(e.into());
            }
        },
        _ => None,
    };
    let mut streamer = None;
    let r = run(
        conn,
        options,
        wal,
        &mut wal_conn,
        &mut streamer,
        sink,
        on_event,
    )
    .await;
    if r.is_err() {
        if let Some(s) = streamer.take() {
            WalStream::abort(s);
        }
        sink.abort();
    }
    if let Some(w) = wal_conn.take() {
        // the backup never began streaming WAL (refused, or failed before its start)
        w.abandon().await;
    }
    r
}

async fn run(
    conn: &mut Connection,
    options: &BaseBackupOptions,
    wal: &WalMethod,
    wal_conn: &mut Option<WalConnection>,
    streamer: &mut Option<WalStream>,
    sink: &mut dyn BackupSink,
    mut on_event: impl FnMut(&BackupEvent),
) -> Result<BackupSummary, BackupError> {
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
    let mut locations: HashMap<String, u32> = HashMap::new();
    let mut announced: HashMap<u32, String> = HashMap::new();
    let mut estimate = None;
    let mut cur: Option<Current> = None;
    loop {
        // a WAL stream that dies (its walsender terminated) fails the backup at once, as
        // pg_basebackup's background process does, instead of at the backup's end
        let next = match streamer.as_mut() {
            Some(s) => tokio::select! {
                ev = stream.next() => ev?,
                why = s.ended_early() => return Err(BackupError::WalTerminated(why)),
            },
            None => stream.next().await?,
        };
        let Some(ev) = next else { break };
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
                    let dir = sink.wal_dir()?.ok_or_else(|| {
                        BackupError::Unsupported("this sink cannot take streamed WAL".into())
                    })?;
                    let ready = wal_conn.take().ok_or_else(|| {
                        BackupError::Unsupported("the backup started twice".into())
                    })?;
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
                for t in &ts {
                    if let (Some(oid), Some(loc)) = (t.oid, &t.location) {
                        if locations.insert(loc.clone(), oid).is_some()
                            || announced.insert(oid, loc.clone()).is_some()
                        {
                            return Err(protocol(format!(
                                "tablespace {oid} at \"{loc}\" is announced twice"
                            )));
                        }
                    }
                }
                // the server's estimate, in kB per tablespace (absent without PROGRESS)
                estimate = match ts.iter().map(|t| t.size_kb).collect::<Option<Vec<u64>>>() {
                    None => None,
                    Some(sizes) => Some(
                        sizes
                            .iter()
                            .try_fold(0u64, |a, kb| a.checked_add(*kb))
                            .and_then(|kb| kb.checked_mul(1024))
                            .ok_or_else(|| {
                                protocol("the tablespace size estimates overflow 64 bits".into())
                            })?,
                    ),
                };
                on_event(&BackupEvent::Started {
                    start_lsn: summary.start_lsn,
                    timeline: summary.timeline,
                    estimate,
                });
            }
            // with a TARGET the server keeps the archives: it names them but sends no data
            BaseBackupEvent::ArchiveStart { .. } if options.target.is_some() => {}
            BaseBackupEvent::ArchiveStart {
                name,
                tablespace_location,
            } => {
                finish_archive(&mut cur, sink, &mut summary)?;
                let oid = match &tablespace_location {
                    Some(l) => Some(*locations.get(l).ok_or_else(|| {
                        protocol(format!(
                            "archive {name} for unknown tablespace location {l}"
                        ))
                    })?),
                    None => None,
                };
                // the name becomes a file name in tar-format backups: base.tar or <oid>.tar only
                let compression = check_archive_name(&name, oid).map_err(protocol)?;
                let decompressor = Decompressor::new(compression)
                    .map_err(|e| BackupError::Unsupported(format!("archive \"{name}\": {e}")))?;
                let role = match oid {
                    None => ArchiveRole::Base {
                        tablespaces: Some(announced.clone()),
                    },
                    Some(_) => ArchiveRole::Tablespace,
                };
                sink.archive_begin(&ArchiveInfo {
                    name: name.clone(),
                    tablespace_oid: oid,
                    tablespace_location,
                })?;
                cur = Some(Current {
                    name,
                    parser: TarParser::with_rules(EntryRules::new(role)),
                    decompressor,
                    bytes: 0,
                });
            }
            BaseBackupEvent::ArchiveData(data) => {
                let c = cur.as_mut().ok_or_else(|| {
                    BackupError::Unsupported("archive data before any archive".into())
                })?;
                c.bytes += data.len() as u64;
                sink.archive_raw(&data)?;
                feed_archive(c, &data, sink, &mut summary)?;
            }
            BaseBackupEvent::Progress(done) => on_event(&BackupEvent::Progress {
                done,
                total: estimate,
            }),
            BaseBackupEvent::ManifestStart => finish_archive(&mut cur, sink, &mut summary)?,
            BaseBackupEvent::ManifestData(d) => sink.manifest(&d)?,
            BaseBackupEvent::Notice(n) => {
                if n.severity == "WARNING" {
                    summary.warnings.push(n.clone());
                }
                on_event(&BackupEvent::Notice(n));
            }
            BaseBackupEvent::Finished { end_lsn, timeline } => {
                finish_archive(&mut cur, sink, &mut summary)?;
                summary.end_lsn = end_lsn;
                summary.timeline = timeline;
                if let Some(s) = streamer.take() {
                    s.finish(end_lsn).await?;
                    sink.wal_done()?;
                }
                sink.finish(&BackupEnd {
                    start_lsn: summary.start_lsn,
                    end_lsn,
                    timeline,
                })?;
            }
            _ => {}
        }
    }
    if summary.end_lsn == Lsn(0) {
        return Err(BackupError::Unsupported(
            "the backup ended without an end position".into(),
        ));
    }
    summary.duration = began.elapsed();
    Ok(summary)
}
