//! The sink's side of a backup, on a thread of its own.
//!
//! The backup's async task only frames what the server sends and hands the archive bytes over a
//! bounded channel; this thread decompresses, parses the tar stream (checking every entry
//! against its archive's rules) and calls the [`BackupSink`]. Disk writes, compression, fsync
//! and checksums therefore never run on a runtime thread, where they would hold up the WAL
//! stream's keepalive replies; and the bounded channel is the backpressure: when the sink is
//! slow, the channel fills, the task stops reading the socket, and the server waits.
//!
//! If the backup's task ends without saying the backup is complete (an error, or its future was
//! dropped), the thread aborts the sink: nothing is left that looks complete.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use basebackup::archive_rules::{ArchiveRole, EntryRules};
use basebackup::decompress::{ArchiveCompression, DecompressError, Decompressor};
use basebackup::sink::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use basebackup::tar::{EntryKind, TarError, TarEvent, TarParser};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::backup::BackupError;

/// Archive bytes in flight between the task and the thread (each a CopyData payload, at most
/// a few hundred kB): the most the channel holds.
const IN_FLIGHT: usize = 16;

/// What the backup's task tells the sink thread.
#[derive(Debug)]
pub(crate) enum ToSink {
    /// An archive begins.
    Archive {
        info: ArchiveInfo,
        compression: ArchiveCompression,
        role: ArchiveRole,
    },
    /// Bytes of the current archive, as sent.
    Data(Bytes),
    /// The archives are over; the manifest begins.
    ManifestStart,
    /// Bytes of the manifest.
    Manifest(Bytes),
    /// Where streamed WAL goes.
    WalDir(oneshot::Sender<Result<Option<PathBuf>, SinkError>>),
    /// The streamed WAL is complete.
    WalDone,
    /// The server confirmed the backup: finish the sink.
    Finish(BackupEnd),
}

/// Counts the thread keeps for the summary.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    /// Archives, with their sizes as sent.
    pub archives: Vec<(String, u64)>,
    /// Regular files.
    pub files: u64,
    /// Bytes of file data.
    pub file_bytes: u64,
}

/// The running thread: send it work, then await its outcome.
#[derive(Debug)]
pub(crate) struct SinkThread<S> {
    tx: Option<mpsc::Sender<ToSink>>,
    /// The thread's outcome, until it has been awaited.
    done: Option<oneshot::Receiver<Result<(Counts, S), BackupError>>>,
    /// Set by the thread when the sink failed, before it aborts the sink (which removes the
    /// directory that streamed WAL goes to: a WAL stream that fails after that was stopped
    /// by the sink's failure, which is the error to report).
    failed: Arc<AtomicBool>,
}

impl<S: BackupSink + Send + 'static> SinkThread<S> {
    pub(crate) fn start(sink: S) -> Result<Self, BackupError> {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let (done_tx, done) = oneshot::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        std::thread::Builder::new()
            .name("pgrepl-sink".into())
            .spawn(move || {
                let _ = done_tx.send(run(sink, rx, &flag));
            })
            .map_err(|e| {
                BackupError::Sink(SinkError::with_source(
                    "could not start the sink's thread",
                    e,
                ))
            })?;
        Ok(SinkThread {
            tx: Some(tx),
            done: Some(done),
            failed,
        })
    }

    /// Hands `msg` over, waiting while the channel is full. If the thread has stopped (the
    /// sink failed), its error.
    pub(crate) async fn send(&mut self, msg: ToSink) -> Result<(), BackupError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        Err(self.outcome_error().await)
    }

    /// Asks the sink where streamed WAL goes.
    pub(crate) async fn wal_dir(&mut self) -> Result<Option<PathBuf>, BackupError> {
        let (tx, rx) = oneshot::channel();
        self.send(ToSink::WalDir(tx)).await?;
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(self.outcome_error().await),
        }
    }

    /// Whether the sink has failed (its error is then [`Self::outcome_error`]).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The thread stopped early: what stopped it.
    pub(crate) async fn outcome_error(&mut self) -> BackupError {
        self.tx = None;
        match self.done.take() {
            Some(done) => match done.await {
                Ok(Err(e)) => e,
                _ => BackupError::Sink(SinkError::new("the sink's thread ended early")),
            },
            None => BackupError::Sink(SinkError::new("the sink's thread has stopped")),
        }
    }

    /// The backup failed: the thread aborts the sink; waits until it has.
    pub(crate) async fn abandon(mut self) {
        self.tx = None;
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    /// Tells the thread the backup is complete and waits for the sink to finish.
    pub(crate) async fn finish(mut self, end: BackupEnd) -> Result<(Counts, S), BackupError> {
        self.send(ToSink::Finish(end)).await?;
        self.tx = None;
        match self.done.take() {
            Some(done) => done.await.unwrap_or_else(|_| {
                Err(BackupError::Sink(SinkError::new(
                    "the sink's thread ended without a result",
                )))
            }),
            None => Err(BackupError::Sink(SinkError::new(
                "the sink's thread has stopped",
            ))),
        }
    }
}

/// The archive being parsed.
struct Current {
    name: String,
    parser: TarParser,
    decompressor: Option<Decompressor>,
    bytes: u64,
}

/// A failure while feeding an archive: the archive's or the sink's.
enum Step {
    Tar(TarError),
    Sink(SinkError),
}

impl From<TarError> for Step {
    fn from(e: TarError) -> Self {
        Step::Tar(e)
    }
}

fn archive_error(name: &str, e: TarError) -> BackupError {
    BackupError::Archive {
        archive: name.to_owned(),
        source: e,
    }
}

/// Feeds uncompressed archive bytes through the tar parser into the sink.
fn feed_tar(
    parser: &mut TarParser,
    name: &str,
    data: &[u8],
    sink: &mut dyn BackupSink,
    counts: &mut Counts,
) -> Result<(), BackupError> {
    let (files, bytes) = (&mut counts.files, &mut counts.file_bytes);
    let fed = parser.feed(data, |ev| -> Result<(), Step> {
        match ev {
            TarEvent::Entry(h) => {
                if h.kind == EntryKind::File {
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
        Err(Step::Tar(e)) => Err(archive_error(name, e)),
    }
}

/// A failure while feeding compressed bytes: the decompressor's, or what came after it.
enum Fed {
    Decompress(DecompressError),
    Backup(BackupError),
}

impl From<DecompressError> for Fed {
    fn from(e: DecompressError) -> Self {
        Fed::Decompress(e)
    }
}

impl Fed {
    fn into_backup(self, archive: &str) -> BackupError {
        match self {
            Fed::Backup(e) => e,
            Fed::Decompress(source) => BackupError::Decompress {
                archive: archive.to_owned(),
                source,
            },
        }
    }
}

/// Feeds archive bytes as received: decompressed (if needed) to the parser.
fn feed_archive(
    c: &mut Current,
    data: &[u8],
    sink: &mut dyn BackupSink,
    counts: &mut Counts,
) -> Result<(), BackupError> {
    let Some(d) = &mut c.decompressor else {
        return feed_tar(&mut c.parser, &c.name, data, sink, counts);
    };
    let (parser, name) = (&mut c.parser, &c.name);
    d.push(data, |plain| {
        feed_tar(parser, name, plain, sink, counts).map_err(Fed::Backup)
    })
    .map_err(|e| e.into_backup(&c.name))
}

/// Ends the current archive: the decompressor and the parser must both be complete.
fn finish_archive(
    cur: &mut Option<Current>,
    sink: &mut dyn BackupSink,
    counts: &mut Counts,
) -> Result<(), BackupError> {
    let Some(mut c) = cur.take() else {
        return Ok(());
    };
    if let Some(d) = c.decompressor.take() {
        let (parser, name) = (&mut c.parser, &c.name);
        d.finish(|plain| feed_tar(parser, name, plain, sink, counts).map_err(Fed::Backup))
            .map_err(|e| e.into_backup(&c.name))?;
    }
    c.parser.finish().map_err(|e| archive_error(&c.name, e))?;
    sink.archive_end()?;
    counts.archives.push((c.name, c.bytes));
    Ok(())
}

/// The thread's loop: until the backup is finished, or the channel closes without that.
fn run<S: BackupSink>(
    mut sink: S,
    mut rx: mpsc::Receiver<ToSink>,
    failed: &AtomicBool,
) -> Result<(Counts, S), BackupError> {
    let mut counts = Counts::default();
    let mut cur: Option<Current> = None;
    let r = loop {
        let Some(msg) = rx.blocking_recv() else {
            break Err(BackupError::Cancelled);
        };
        let step = match msg {
            ToSink::Archive {
                info,
                compression,
                role,
            } => finish_archive(&mut cur, &mut sink, &mut counts).and_then(|()| {
                let decompressor = Decompressor::new(compression).map_err(|e| {
                    BackupError::Sink(SinkError::with_source(
                        format!("archive \"{}\": could not start decompressing", info.name),
                        e,
                    ))
                })?;
                sink.archive_begin(&info)?;
                cur = Some(Current {
                    name: info.name,
                    parser: TarParser::with_rules(EntryRules::new(role)),
                    decompressor,
                    bytes: 0,
                });
                Ok(())
            }),
            ToSink::Data(d) => match &mut cur {
                None => Err(BackupError::Protocol(
                    "archive data before any archive began".into(),
                )),
                Some(c) => {
                    c.bytes += d.len() as u64;
                    sink.archive_raw(&d)
                        .map_err(BackupError::from)
                        .and_then(|()| feed_archive(c, &d, &mut sink, &mut counts))
                }
            },
            ToSink::ManifestStart => finish_archive(&mut cur, &mut sink, &mut counts),
            ToSink::Manifest(d) => sink.manifest(&d).map_err(BackupError::from),
            ToSink::WalDir(reply) => {
                let _ = reply.send(sink.wal_dir());
                Ok(())
            }
            ToSink::WalDone => sink.wal_done().map_err(BackupError::from),
            ToSink::Finish(end) => {
                break finish_archive(&mut cur, &mut sink, &mut counts)
                    .and_then(|()| sink.finish(&end).map_err(BackupError::from));
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    match r {
        Ok(()) => Ok((counts, sink)),
        Err(e) => {
            failed.store(true, Ordering::Release);
            sink.abort();
            Err(e)
        }
    }
}
