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
//! - What the server sends is checked by [`pgwal::receiver::Receiver`] before it is written
//!   (position, page headers, timeline switches); an archive holding another system's WAL is
//!   refused.
//!
//! The on-disk layout is [`walarchive::write`]'s. Writes and fsyncs run off the async threads.
//!
//! Cancellation: dropping the future closes the connection (the server then releases the
//! walsender; a permanent slot stays, as it must) and leaves the archive as a crash would: the
//! newest segment as `.partial`, streamed again from its start by the next run.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use pgrepl::{
    Config, Connection, CreateSlotOptions, Lsn, ReplicationEvent, ReplicationStream,
    StartReplication, TimelineId,
};
use pgwal::receiver::Receiver;
use pgwal::{segment_file_name, WalSegSize};
use walarchive::{CompletedSegment, SegmentCompression, WriteError};

use crate::wal_store::{DirWalStore, WalStore};

/// How to receive.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// Store segments compressed (zstd, or gzip and lz4 as pg_receivewal does).
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
    Connection(#[from] pgrepl::Error),
    /// Writing the archive failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// What the server sent is wrong (a gap, a bad page, an impossible timeline switch).
    #[error(transparent)]
    Stream(#[from] pgwal::receiver::ReceiveError),
    /// Storing WAL failed (a store other than a directory: object storage).
    #[error("WAL archive {archive}: {detail}")]
    Storage {
        /// The archive.
        archive: String,
        /// What failed.
        detail: String,
        /// Whether trying again later may help (the store did not answer).
        transient: bool,
    },
    /// The archive holds another cluster's WAL.
    #[error(
        "archive {dir} holds WAL of database system {archive}, but the server is system {server}"
    )]
    ForeignSystem {
        /// The archive.
        dir: String,
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
}

/// Connection errors that a reconnect cannot fix (the judgement [`ReceiveError::is_fatal`]
/// makes of them, for callers that connect before streaming).
pub fn connection_error_is_fatal(e: &pgrepl::Error) -> bool {
    match e {
        pgrepl::Error::Db { error, .. } => {
            // Authentication, permissions, undefined objects, bad requests: retrying
            // cannot help. Connection-level failures (57P0x shutdown, 08xxx) can, and
            // so can the generic XX000 (see `is_wal_removed`).
            let c = error.code.as_str();
            !(c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "XX000")
        }
        // host keys, client keys and forwarding policy stay as they are; a lost tunnel
        // or a bastion that did not answer may come back
        pgrepl::Error::Ssh(e) => e.is_fatal(),
        // a server that broke the protocol once will break it again
        pgrepl::Error::Config(_)
        | pgrepl::Error::Tls(_)
        | pgrepl::Error::Auth(_)
        | pgrepl::Error::Usage(_)
        | pgrepl::Error::Protocol { .. } => true,
        _ => false,
    }
}

impl ReceiveError {
    /// Errors that a reconnect cannot fix.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReceiveError::Connection(e) => connection_error_is_fatal(e),
            // a gap can come from a server restarted from a backup: a new connection resolves it
            ReceiveError::Stream(pgwal::receiver::ReceiveError::Gap { .. }) => false,
            ReceiveError::Storage { transient, .. } => !transient,
            _ => true,
        }
    }
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
        // duplicate_object
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

/// Receives WAL into `opts.dir` until `endpos`, `shutdown`, or a fatal error; reconnects with
/// backoff after a lost connection unless `no_loop`. `on_event` sees progress.
pub async fn receive_wal(
    config: &Config,
    opts: &ReceiveOptions,
    shutdown: impl Future<Output = ()>,
    on_event: impl FnMut(&ReceiveEvent),
) -> Result<ReceiveSummary, ReceiveError> {
    let mut store = DirWalStore::new(&opts.dir, opts.compression, !opts.no_sync);
    receive_wal_into(config, opts, &mut store, shutdown, on_event).await
}

/// As [`receive_wal`], into any [`WalStore`] (`opts.dir` and `opts.compression` are the
/// directory store's and are not used).
pub async fn receive_wal_into(
    config: &Config,
    opts: &ReceiveOptions,
    store: &mut dyn WalStore,
    shutdown: impl Future<Output = ()>,
    mut on_event: impl FnMut(&ReceiveEvent),
) -> Result<ReceiveSummary, ReceiveError> {
    tokio::pin!(shutdown);
    let mut delay = Duration::from_millis(500);
    let mut last_flushed = Lsn(0);
    loop {
        let mut flushed = Lsn(0);
        let r = run_once(
            config,
            opts,
            store,
            &mut shutdown,
            &mut on_event,
            &mut flushed,
        )
        .await;
        if flushed > last_flushed {
            last_flushed = flushed;
            delay = Duration::from_millis(500);
        }
        match r {
            Ok((reason, timeline)) => {
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

/// Where to start: what the archive holds, else the slot's restart_lsn, else the server's
/// current position; checks that the archive is this system's and the slot exists.
async fn starting_point(
    conn: &mut Connection,
    opts: &ReceiveOptions,
    store: &mut dyn WalStore,
    id: &pgrepl::SystemIdentity,
    seg_size: WalSegSize,
) -> Result<(Lsn, TimelineId, bool), ReceiveError> {
    let state = store.open(seg_size).await?;
    if let Some(sys) = state.system_id {
        if sys != id.system_id {
            return Err(ReceiveError::ForeignSystem {
                dir: store.describe(),
                archive: sys,
                server: id.system_id,
            });
        }
    }
    let slot = match &opts.slot {
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
    let resumed = state.resume.is_some();
    let (start, tli) = state.resume.or(slot).unwrap_or((id.xlogpos, id.timeline));
    Ok((start.segment_start(seg_size), tli, resumed))
}

/// Maps START_REPLICATION's refusal to what it means.
fn refused(
    e: pgrepl::Error,
    opts: &ReceiveOptions,
    tli: TimelineId,
    at: Lsn,
    seg_size: WalSegSize,
) -> ReceiveError {
    if let Some(db) = e.as_db_error() {
        if is_wal_removed(&db.code) {
            return ReceiveError::WalRemoved {
                segment: segment_file_name(tli, at.segment(seg_size), seg_size),
                lsn: at,
                slot: opts.slot.clone(),
                server_message: db.message.clone(),
            };
        }
        // ReplicationSlotAcquire: ERRCODE_UNDEFINED_OBJECT
        if db.code == "42704" {
            if let Some(s) = &opts.slot {
                return ReceiveError::SlotMissing(s.clone());
            }
        }
    }
    e.into()
}

async fn run_once(
    config: &Config,
    opts: &ReceiveOptions,
    store: &mut dyn WalStore,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    on_event: &mut impl FnMut(&ReceiveEvent),
    flushed_out: &mut Lsn,
) -> Result<(StopReason, TimelineId), ReceiveError> {
    let mut conn = Connection::connect(config).await?;
    let id = conn.identify_system().await?;
    let seg_size: WalSegSize = conn.wal_segment_size().await?;
    let (start, tli, resumed) = starting_point(&mut conn, opts, store, &id, seg_size).await?;
    if let Some(end) = opts.endpos {
        if start >= end && resumed {
            // nothing to do: everything up to endpos is already archived
            return Ok((StopReason::EndPos, tli));
        }
    }
    let mut rx = Receiver::new(start, tli, seg_size, id.system_id);
    rx.set_stop(opts.endpos);
    store.start_at(start);
    let mut st = Archiving {
        rx,
        writer: store,
        flushed_out,
    };
    loop {
        let (tli, start) = (st.rx.timeline(), st.rx.received());
        on_event(&ReceiveEvent::Started {
            system_id: id.system_id,
            start,
            timeline: tli,
        });
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: opts.slot.clone(),
                start,
                timeline: Some(tli),
            })
            .await
            .map_err(|e| refused(e, opts, tli, start, seg_size))?;
        let ended = st
            .stream_timeline(&mut stream, opts, seg_size, shutdown, on_event)
            .await?;
        let (next, at) = match ended {
            TimelineEnded::Stop(reason) => {
                st.rx.durable(st.writer.close().await?);
                *st.flushed_out = st.rx.flushed();
                let s = st.rx.status();
                let _ = stream
                    .send_status(s.write, s.flush, Lsn::INVALID, false)
                    .await;
                let _ = stream.finish().await;
                on_event(&ReceiveEvent::Flushed {
                    written: s.write,
                    flushed: s.flush,
                    server_end: st.rx.server_end(),
                });
                let _ = conn.close().await;
                return Ok((reason, st.rx.timeline()));
            }
            TimelineEnded::Switch(next, at) => (next, at),
        };
        drop(stream);
        // End of timeline: keep the old timeline's last segment as .partial, store the new
        // timeline's history, and continue from the segment holding the switch point.
        let sw = st.rx.end_of_timeline(next, at)?;
        *st.flushed_out = st.writer.close().await?;
        let history = conn.timeline_history(next).await?;
        st.writer
            .write_history(history.file_name, history.content)
            .await?;
        on_event(&ReceiveEvent::TimelineSwitch {
            from: sw.from,
            to: sw.to,
            at: sw.at,
        });
        st.writer.start_at(sw.resume);
    }
}

/// How streaming one timeline ended (a lost connection is an error).
enum TimelineEnded {
    /// Stop cleanly: endpos reached or shutdown asked.
    Stop(StopReason),
    /// The server ended the timeline and named the next, and where it begins.
    Switch(TimelineId, Lsn),
}

/// One connection's archiving: the receiver's checks, the writer off the async threads, and
/// the durable position the caller learns even when this connection fails.
struct Archiving<'a, 'w> {
    rx: Receiver,
    writer: &'w mut dyn WalStore,
    flushed_out: &'a mut Lsn,
}

impl Archiving<'_, '_> {
    /// Makes everything written durable, then tells the server: never the other way round.
    async fn flush_and_report(
        &mut self,
        stream: &mut ReplicationStream<'_>,
    ) -> Result<pgwal::receiver::Status, ReceiveError> {
        self.rx.durable(self.writer.flush().await?);
        *self.flushed_out = self.rx.flushed();
        self.report(stream).await
    }

    /// Sends the receiver's status (flush covers only what is durable).
    async fn report(
        &mut self,
        stream: &mut ReplicationStream<'_>,
    ) -> Result<pgwal::receiver::Status, ReceiveError> {
        let s = self.rx.status();
        stream
            .send_status(s.write, s.flush, Lsn::INVALID, false)
            .await?;
        Ok(s)
    }

    /// Streams until the timeline ends, a stop, or an error; status on every tick.
    async fn stream_timeline(
        &mut self,
        stream: &mut ReplicationStream<'_>,
        opts: &ReceiveOptions,
        seg_size: WalSegSize,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        on_event: &mut impl FnMut(&ReceiveEvent),
    ) -> Result<TimelineEnded, ReceiveError> {
        let mut ticker = tokio::time::interval(opts.status_interval);
        ticker.tick().await;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = ticker.tick() => {
                    let s = self.flush_and_report(stream).await?;
                    on_event(&ReceiveEvent::Flushed { written: s.write, flushed: s.flush, server_end: self.rx.server_end() });
                    continue;
                }
                _ = shutdown.as_mut() => return Ok(TimelineEnded::Stop(StopReason::Shutdown)),
            };
            let ev = match ev {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    *self.flushed_out = self.writer.flush().await?;
                    return Err(pgrepl::Error::Closed {
                        state: "START_REPLICATION streaming",
                    }
                    .into());
                }
                Err(e) => {
                    // keep what we have durable before giving up on this connection
                    *self.flushed_out = self.writer.flush().await?;
                    let (tli, at) = (self.rx.timeline(), self.rx.received());
                    return Err(refused(e, opts, tli, at, seg_size));
                }
            };
            match ev {
                ReplicationEvent::XLogData(x) => {
                    let reached = self.xlogdata(x, stream, opts, on_event).await?;
                    if reached {
                        return Ok(TimelineEnded::Stop(StopReason::EndPos));
                    }
                }
                ReplicationEvent::Keepalive(k) => {
                    if self.rx.keepalive(k.wal_end, k.reply_requested) {
                        self.flush_and_report(stream).await?;
                    }
                    if self.rx.stopped() {
                        return Ok(TimelineEnded::Stop(StopReason::EndPos));
                    }
                }
                ReplicationEvent::Notice(n) => tracing::warn!("{n}"),
                ReplicationEvent::EndOfTimeline {
                    next_timeline,
                    next_timeline_start,
                } => return Ok(TimelineEnded::Switch(next_timeline, next_timeline_start)),
                ReplicationEvent::ServerShutdown => {
                    *self.flushed_out = self.writer.flush().await?;
                    return Err(pgrepl::Error::Closed {
                        state: "START_REPLICATION streaming (server shut down)",
                    }
                    .into());
                }
                _ => {}
            }
        }
    }

    /// Checks and writes one XLogData; reports each completed segment (durable once renamed)
    /// and, when synchronous, every write. Returns whether endpos is reached.
    async fn xlogdata(
        &mut self,
        x: pgrepl::replication::XLogData,
        stream: &mut ReplicationStream<'_>,
        opts: &ReceiveOptions,
        on_event: &mut impl FnMut(&ReceiveEvent),
    ) -> Result<bool, ReceiveError> {
        let inc = self.rx.xlogdata(x.wal_start, x.wal_end, &x.data)?;
        let (len, reached) = (inc.data.len(), inc.stop);
        let done = self
            .writer
            .write(inc.timeline, inc.start, x.data.slice(..len))
            .await?;
        self.rx.written(self.rx.received());
        for seg in done {
            self.rx.durable(seg.end);
            *self.flushed_out = self.rx.flushed();
            on_event(&ReceiveEvent::SegmentDone(seg));
            self.report(stream).await?;
        }
        if opts.synchronous {
            self.flush_and_report(stream).await?;
        }
        Ok(reached)
    }
}
