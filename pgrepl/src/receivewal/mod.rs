//! A continuous, crash-safe WAL archive over START_REPLICATION: the library behind
//! `pgrepl receivewal`.
//!
//! Rules this module keeps:
//! - The flush position reported to the server covers only bytes that are durable (fsynced), so
//!   a slot never releases WAL the archive could still lose.
//! - Resuming starts from what the archive holds (the newest partial segment is streamed again
//!   from its start), else from the slot's restart_lsn, else from the server's current position.
//!   If the server no longer has the WAL needed, that is a fatal error naming the segment and the
//!   slot — never a retry loop.
//! - Every page header is checked as it lands (magic, address, timeline, system identifier); an
//!   archive holding another system's WAL is refused.
//!
//! The on-disk layout is described in [`archive`].

pub mod archive;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use pgwal::{segment_file_name, Lsn, TimelineId, WalSegSize};

use crate::commands::CreateSlotOptions;
use crate::config::Config;
use crate::connection::Connection;
use crate::stream::{ReplicationEvent, StartReplication};
pub use archive::SegmentCompression;
use archive::{scan_archive, CompletedSegment, PageChecker, SegmentWriter};

/// How to receive.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// The archive directory.
    pub dir: PathBuf,
    /// A physical slot to stream from (it must exist; see [`create_slot`]).
    pub slot: Option<String>,
    /// Report flush after every write batch (for synchronous_standby_names).
    pub synchronous: bool,
    /// Skip fsync (then nothing is durable, and flush is reported as written).
    pub no_sync: bool,
    /// Send a status update (after an fsync) at least this often.
    pub status_interval: Duration,
    /// Stop cleanly once WAL up to here is archived.
    pub endpos: Option<Lsn>,
    /// Give up on the first lost connection instead of reconnecting.
    pub no_loop: bool,
    /// Store segments compressed (zstd, or gzip as pg_receivewal does).
    pub compression: Option<SegmentCompression>,
}

impl ReceiveOptions {
    /// Defaults for `dir`: no slot, fsync on, status every 10 s, reconnecting, uncompressed.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ReceiveOptions {
            dir: dir.into(),
            slot: None,
            synchronous: false,
            no_sync: false,
            status_interval: Duration::from_secs(10),
            endpos: None,
            no_loop: false,
            compression: None,
        }
    }
}

/// What happened, for progress display and machine-readable logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveEvent {
    /// Streaming (re)started.
    Started {
        /// The server's system identifier.
        system_id: u64,
        /// The position streaming starts from.
        start: Lsn,
        /// Its timeline.
        timeline: TimelineId,
    },
    /// A segment is complete and durable under its final name.
    SegmentDone(CompletedSegment),
    /// The flush position reported to the server.
    Flushed {
        /// Written so far.
        written: Lsn,
        /// Durable so far (what the server was told).
        flushed: Lsn,
        /// The server's WAL end as of its last message.
        server_end: Lsn,
    },
    /// The streamed timeline ended; continuing on the next.
    TimelineSwitch {
        /// The timeline that ended.
        from: TimelineId,
        /// The next.
        to: TimelineId,
        /// Where the next timeline branches off.
        at: Lsn,
    },
    /// The connection was lost; retrying after `delay`.
    Reconnecting {
        /// What went wrong.
        error: String,
        /// How long until the next attempt.
        delay: Duration,
    },
}

/// Why receiving stopped cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// `endpos` was reached.
    EndPos,
    /// The shutdown future completed (SIGINT/SIGTERM in the CLI).
    Shutdown,
}

/// The outcome of a clean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveSummary {
    /// Why it stopped.
    pub reason: StopReason,
    /// Everything before this is durable in the archive.
    pub flushed: Lsn,
    /// The timeline at the stop.
    pub timeline: TimelineId,
}

/// Errors of the receiver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The replication connection failed.
    #[error(transparent)]
    Connection(#[from] crate::Error),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The archive holds another cluster's WAL.
    #[error("archive {} holds WAL of database system {archive}, but the server is system {server}", dir.display())]
    ForeignSystem {
        /// The directory.
        dir: PathBuf,
        /// System identifier in the archive.
        archive: u64,
        /// The server's.
        server: u64,
    },
    /// The WAL needed to continue is gone from the server.
    #[error("WAL segment {segment} (from {lsn}) is no longer on the server{}: the archive cannot be continued without a gap; take a new base backup (server said: {server_message})", slot.as_ref().map(|s| format!(" and slot \"{s}\" does not hold it")).unwrap_or_default())]
    WalRemoved {
        /// The missing segment's file name.
        segment: String,
        /// Where streaming wanted to start.
        lsn: Lsn,
        /// The slot used, if any.
        slot: Option<String>,
        /// The server's message.
        server_message: String,
    },
    /// The slot does not exist.
    #[error("replication slot \"{0}\" does not exist")]
    SlotMissing(String),
    /// The slot is logical.
    #[error("replication slot \"{0}\" is not a physical slot")]
    SlotNotPhysical(String),
    /// A page header that arrived is invalid.
    #[error("invalid WAL page at {lsn}: {detail}")]
    BadPage {
        /// The page.
        lsn: Lsn,
        /// What is wrong.
        detail: String,
    },
    /// The server sent WAL that does not continue what we have.
    #[error("WAL stream gap: expected data at {expected}, got {got}")]
    Gap {
        /// Where we were.
        expected: Lsn,
        /// Where the data started.
        got: Lsn,
    },
    /// The server's timeline history is inconsistent with what we stream.
    #[error("timeline switch: {0}")]
    Timeline(String),
}

impl ReceiveError {
    /// Errors that a reconnect cannot fix.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReceiveError::Connection(e) => match e {
                crate::Error::Db { error, .. } => {
                    // Authentication, permissions, undefined objects, bad requests: retrying
                    // cannot help. Connection-level failures (57P0x shutdown, 08xxx) can.
                    let c = error.code.as_str();
                    !(c.starts_with("08") || c.starts_with("57P") || c == "53300")
                }
                // a server that broke the protocol once will break it again
                crate::Error::Config(_)
                | crate::Error::Tls(_)
                | crate::Error::Auth(_)
                | crate::Error::Usage(_)
                | crate::Error::Protocol { .. } => true,
                _ => false,
            },
            ReceiveError::Io { .. } => true,
            ReceiveError::BadPage { .. } => true,
            _ => !matches!(self, ReceiveError::Gap { .. }),
        }
    }
}

/// Creates the physical slot `name` with RESERVE_WAL, so WAL is held from now on. With
/// `if_not_exists`, an existing physical slot is fine.
pub async fn create_slot(
    config: &Config,
    name: &str,
    if_not_exists: bool,
) -> Result<(), ReceiveError> {
    let mut conn = Connection::connect(config).await?;
    let r = conn
        .create_physical_slot(
            name,
            CreateSlotOptions {
                temporary: false,
                reserve_wal: true,
            },
        )
        .await;
    match r {
        Ok(_) => {}
        Err(e) if if_not_exists && e.code() == Some("42710") => {
            match conn.read_replication_slot(name).await? {
                Some(s) if s.slot_type == "physical" => {}
                Some(_) => return Err(ReceiveError::SlotNotPhysical(name.to_owned())),
                None => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    let _ = conn.close().await;
    Ok(())
}

/// Drops the slot `name`.
pub async fn drop_slot(config: &Config, name: &str) -> Result<(), ReceiveError> {
    let mut conn = Connection::connect(config).await?;
    conn.drop_replication_slot(name, false).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Whether a server error means the WAL asked for is gone, by SQLSTATE (not by its text, which
/// follows the server's `lc_messages`). The walsender reports a segment it cannot open because
/// it was recycled as "requested WAL segment ... has already been removed" with
/// `errcode_for_file_access()` on ENOENT: `58P01` (undefined_file), the one specific code.
/// The same words come from `CheckXLogRemoved` after a read that raced with recycling, where
/// errno is usually 0 and the code the generic `XX000`: that error is left retryable, and the
/// reconnect's START_REPLICATION then gets the specific one.
fn is_wal_removed(sqlstate: &str) -> bool {
    sqlstate == "58P01"
}

enum Outcome {
    Stopped(StopReason, TimelineId),
}

/// Receives WAL into `opts.dir` until `endpos`, `shutdown`, or a fatal error; reconnects with
/// backoff after a lost connection unless `no_loop`. `on_event` sees progress.
pub async fn receive_wal(
    config: &Config,
    opts: &ReceiveOptions,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(&ReceiveEvent),
) -> Result<ReceiveSummary, ReceiveError> {
    tokio::pin!(shutdown);
    let mut delay = Duration::from_millis(500);
    let mut last_flushed = Lsn(0);
    loop {
        let mut flushed = Lsn(0);
        let r = run_once(config, opts, &mut shutdown, &mut on_event, &mut flushed).await;
        if flushed > last_flushed {
            last_flushed = flushed;
            delay = Duration::from_millis(500);
        }
        match r {
            Ok(Outcome::Stopped(reason, timeline)) => {
                return Ok(ReceiveSummary {
                    reason,
                    flushed,
                    timeline,
                })
            }
            Err(e) if opts.no_loop || e.is_fatal() => return Err(e),
            Err(e) => {
                on_event(&ReceiveEvent::Reconnecting {
                    error: e.to_string(),
                    delay,
                });
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => {
                        return Ok(ReceiveSummary { reason: StopReason::Shutdown, flushed: last_flushed, timeline: TimelineId(0) });
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn run_once(
    config: &Config,
    opts: &ReceiveOptions,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    on_event: &mut impl FnMut(&ReceiveEvent),
    flushed_out: &mut Lsn,
) -> Result<Outcome, ReceiveError> {
    let mut conn = Connection::connect(config).await?;
    let id = conn.identify_system().await?;
    let seg_size: WalSegSize = conn.wal_segment_size().await?;
    let state = scan_archive(&opts.dir, seg_size)?;
    if let Some(sys) = state.system_id {
        if sys != id.system_id {
            return Err(ReceiveError::ForeignSystem {
                dir: opts.dir.clone(),
                archive: sys,
                server: id.system_id,
            });
        }
    }
    let (mut start, mut tli) = match state.resume {
        Some(r) => r,
        None => {
            let from_slot = match &opts.slot {
                Some(s) => match conn.read_replication_slot(s).await? {
                    None => return Err(ReceiveError::SlotMissing(s.clone())),
                    Some(info) if info.slot_type != "physical" => {
                        return Err(ReceiveError::SlotNotPhysical(s.clone()))
                    }
                    Some(info) => info
                        .restart_lsn
                        .map(|l| (l, info.restart_tli.unwrap_or(id.timeline))),
                },
                None => None,
            };
            from_slot.unwrap_or((id.xlogpos, id.timeline))
        }
    };
    if let (Some(s), Some(_)) = (&opts.slot, state.resume) {
        // the slot must exist even when the archive decides where to start
        if conn.read_replication_slot(s).await?.is_none() {
            return Err(ReceiveError::SlotMissing(s.clone()));
        }
    }
    start = start.segment_start(seg_size);
    if let Some(end) = opts.endpos {
        if start >= end && state.resume.is_some() {
            // nothing to do: everything up to endpos is already archived
            return Ok(Outcome::Stopped(StopReason::EndPos, tli));
        }
    }
    let mut writer =
        SegmentWriter::new(&opts.dir, seg_size, opts.compression, !opts.no_sync, start);
    let mut checker = PageChecker::new(seg_size, id.system_id, tli.max(id.timeline));
    loop {
        on_event(&ReceiveEvent::Started {
            system_id: id.system_id,
            start,
            timeline: tli,
        });
        let mut stream = match conn
            .start_replication(&StartReplication {
                slot: opts.slot.clone(),
                start,
                timeline: Some(tli),
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                if let Some(db) = e.as_db_error() {
                    if is_wal_removed(&db.code) {
                        return Err(ReceiveError::WalRemoved {
                            segment: segment_file_name(tli, start.segment(seg_size), seg_size),
                            lsn: start,
                            slot: opts.slot.clone(),
                            server_message: db.message.clone(),
                        });
                    }
                    // ReplicationSlotAcquire: ERRCODE_UNDEFINED_OBJECT
                    if db.code == "42704" {
                        if let Some(s) = &opts.slot {
                            return Err(ReceiveError::SlotMissing(s.clone()));
                        }
                    }
                }
                return Err(e.into());
            }
        };
        let mut server_end = start;
        let mut ticker = tokio::time::interval(opts.status_interval);
        ticker.tick().await;
        let mut stop: Option<StopReason> = None;
        let next_tl = loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = ticker.tick() => {
                    let flushed = writer.flush()?;
                    *flushed_out = flushed;
                    stream.send_status(writer.written, flushed, Lsn::INVALID, false).await?;
                    on_event(&ReceiveEvent::Flushed { written: writer.written, flushed, server_end });
                    continue;
                }
                _ = shutdown.as_mut() => {
                    stop = Some(StopReason::Shutdown);
                    break None;
                }
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => break None,
                Err(e) => {
                    if let Some(db) = e.as_db_error() {
                        if is_wal_removed(&db.code) {
                            return Err(ReceiveError::WalRemoved {
                                segment: segment_file_name(
                                    tli,
                                    writer.written.segment(seg_size),
                                    seg_size,
                                ),
                                lsn: writer.written,
                                slot: opts.slot.clone(),
                                server_message: db.message.clone(),
                            });
                        }
                    }
                    // keep what we have durable before giving up on this connection
                    *flushed_out = writer.flush()?;
                    return Err(e.into());
                }
            };
            match ev {
                ReplicationEvent::XLogData(x) => {
                    server_end = server_end.max(x.wal_end);
                    let mut data = &x.data[..];
                    let mut reached_end = false;
                    if let Some(end) = opts.endpos {
                        let data_end = x.data_end();
                        if data_end >= end {
                            let keep = end.0.saturating_sub(x.wal_start.0) as usize;
                            data = &data[..keep.min(data.len())];
                            reached_end = true;
                        }
                    }
                    checker.feed(x.wal_start, data)?;
                    for done in writer.write(tli, x.wal_start, data)? {
                        *flushed_out = writer.flushed;
                        on_event(&ReceiveEvent::SegmentDone(done));
                        stream
                            .send_status(writer.written, writer.flushed, Lsn::INVALID, false)
                            .await?;
                    }
                    if opts.synchronous {
                        let flushed = writer.flush()?;
                        *flushed_out = flushed;
                        stream
                            .send_status(writer.written, flushed, Lsn::INVALID, false)
                            .await?;
                    }
                    if reached_end {
                        stop = Some(StopReason::EndPos);
                        break None;
                    }
                }
                ReplicationEvent::Keepalive(k) => {
                    server_end = server_end.max(k.wal_end);
                    if k.reply_requested {
                        let flushed = writer.flush()?;
                        *flushed_out = flushed;
                        stream
                            .send_status(writer.written, flushed, Lsn::INVALID, false)
                            .await?;
                    }
                    if let Some(end) = opts.endpos {
                        if writer.written >= end {
                            stop = Some(StopReason::EndPos);
                            break None;
                        }
                    }
                }
                ReplicationEvent::Notice(n) => tracing::warn!("{n}"),
                ReplicationEvent::EndOfTimeline {
                    next_timeline,
                    next_timeline_start,
                } => break Some((next_timeline, next_timeline_start)),
                ReplicationEvent::ServerShutdown => {
                    *flushed_out = writer.flush()?;
                    return Err(crate::Error::Closed {
                        state: "START_REPLICATION streaming (server shut down)",
                    }
                    .into());
                }
            }
        };
        if let Some(reason) = stop {
            let flushed = writer.close()?;
            *flushed_out = flushed;
            let _ = stream
                .send_status(writer.written, flushed, Lsn::INVALID, false)
                .await;
            let _ = stream.finish().await;
            on_event(&ReceiveEvent::Flushed {
                written: writer.written,
                flushed,
                server_end,
            });
            let _ = conn.close().await;
            return Ok(Outcome::Stopped(reason, tli));
        }
        drop(stream);
        let Some((next, at)) = next_tl else {
            *flushed_out = writer.flush()?;
            return Err(crate::Error::Closed {
                state: "START_REPLICATION streaming",
            }
            .into());
        };
        // End of timeline: keep the old timeline's last segment as .partial, store the new
        // timeline's history, and continue from the segment holding the switch point.
        if next <= tli {
            return Err(ReceiveError::Timeline(format!(
                "server reported next timeline {next}, not after {tli}"
            )));
        }
        if at > writer.written {
            // a hole between the two timelines (pg_receivewal's check and words)
            return Err(ReceiveError::Timeline(format!(
                "server stopped streaming timeline {tli} at {}, but reported next timeline {next} to begin at {at}",
                writer.written
            )));
        }
        if at < writer.written.segment_start(seg_size) {
            return Err(ReceiveError::Timeline(format!(
                "server reported switch point {at} before what was already streamed ({})",
                writer.written
            )));
        }
        *flushed_out = writer.close()?;
        let history = conn.timeline_history(next).await?;
        writer.write_history(&history.file_name, &history.content)?;
        on_event(&ReceiveEvent::TimelineSwitch {
            from: tli,
            to: next,
            at,
        });
        tli = next;
        start = at.segment_start(seg_size);
        writer.reset(start);
        checker = PageChecker::new(seg_size, id.system_id, tli.max(id.timeline));
    }
}
