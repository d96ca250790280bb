//! `-X stream`: WAL from the backup's start, received on a second replication connection with a
//! temporary slot while the backup runs, so the backup is self-contained without racing the
//! server's WAL recycling at the end. Segments are written complete and full-size (the last one
//! zero-padded), as a data directory's pg_wal must hold them; on a timeline after the first, the
//! timeline's history file is stored with them.

use std::path::PathBuf;

use pgrepl::{
    Config, Connection, CreateSlotOptions, Lsn, ReplicationEvent, StartReplication, TimelineId,
};
use pgwal::receiver::Receiver;
use tokio::sync::watch;
use walarchive::SegmentWriter;

use crate::receive::ReceiveError;
use crate::wal_writer::OffThreadWriter;

/// Which replication slot the stream uses (`-S`, `-C`, `--no-slot`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SlotChoice {
    /// A temporary slot, dropped when the connection ends (the default).
    #[default]
    Temporary,
    /// An existing slot.
    Existing(String),
    /// A permanent slot created (with WAL reserved) before streaming.
    Create(String),
    /// No slot: WAL may be recycled before it is streamed.
    NoSlot,
}

/// A running WAL stream; [`WalStream::finish`] it at the backup's end position. Dropping it
/// aborts the stream's task (its connection closes, and the server drops a temporary slot).
#[derive(Debug)]
pub struct WalStream {
    stop: watch::Sender<Option<Lsn>>,
    task: Option<tokio::task::JoinHandle<Result<(), ReceiveError>>>,
}

impl Drop for WalStream {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The second connection, opened and its slot created before BASE_BACKUP is sent.
///
/// A physical slot created with RESERVE_WAL holds WAL from the server's latest redo pointer, so
/// a slot that exists before the backup's checkpoint chooses the start position holds the
/// backup's start segment whatever checkpoints run before streaming begins. Created after the
/// start position was sent (as pg_basebackup up to 18 does), a concurrent checkpoint could
/// recycle that segment first and the backup would fail at its end.
#[derive(Debug)]
pub struct WalConnection {
    conn: Connection,
    seg: pgwal::WalSegSize,
    choice: SlotChoice,
    slot: Option<String>,
}

impl WalConnection {
    /// Connects and creates the slot (a temporary one, or the permanent one `-C` asked for).
    pub async fn open(config: &Config, slot: &SlotChoice) -> Result<WalConnection, ReceiveError> {
        let mut conn = Connection::connect(config).await?;
        let seg = conn.wal_segment_size().await?;
        let mut w = WalConnection {
            conn,
            seg,
            choice: slot.clone(),
            slot: None,
        };
        w.create_slot().await?;
        Ok(w)
    }

    /// The backup never began (the server refused it, or it failed before its start): drops
    /// the permanent slot [`WalConnection::open`] created, so a refused backup leaves none
    /// behind, and closes the connection (which drops a temporary slot).
    pub async fn abandon(mut self) {
        if let (SlotChoice::Create(_), Some(name)) = (&self.choice, &self.slot) {
            let _ = self.conn.drop_replication_slot(name, false).await;
        }
        let _ = self.conn.close().await;
    }

    async fn create_slot(&mut self) -> Result<(), ReceiveError> {
        self.slot = match &self.choice {
            SlotChoice::Temporary | SlotChoice::Create(_) => {
                let (name, temporary) = match &self.choice {
                    SlotChoice::Create(n) => (n.clone(), false),
                    _ => (format!("pgrepl_{}", std::process::id()), true),
                };
                self.conn
                    .create_physical_slot(
                        &name,
                        CreateSlotOptions {
                            temporary,
                            reserve_wal: true,
                        },
                    )
                    .await?;
                Some(name)
            }
            SlotChoice::Existing(n) => {
                // fail now rather than after copying the whole cluster (READ_REPLICATION_SLOT
                // is PostgreSQL 15+; older servers say so at START_REPLICATION)
                if self.conn.server_version().major >= 15 {
                    match self.conn.read_replication_slot(n).await? {
                        None => return Err(ReceiveError::SlotMissing(n.clone())),
                        Some(i) if i.slot_type != "physical" => {
                            return Err(ReceiveError::SlotNotPhysical(n.clone()))
                        }
                        Some(_) => {}
                    }
                }
                Some(n.clone())
            }
            SlotChoice::NoSlot => None,
        };
        Ok(())
    }

    /// Starts streaming from the segment holding `start` into `dir`, in a task of its own.
    pub async fn stream(
        self,
        dir: PathBuf,
        start: Lsn,
        timeline: TimelineId,
        system_id: u64,
        sync: bool,
        status_interval: Option<std::time::Duration>,
    ) -> Result<WalStream, ReceiveError> {
        let WalConnection {
            conn, seg, slot, ..
        } = self;
        let (tx, stop_rx) = watch::channel(None);
        let task = tokio::spawn(stream_task(
            conn,
            dir,
            seg,
            slot,
            start,
            timeline,
            system_id,
            sync,
            status_interval,
            stop_rx,
        ));
        Ok(WalStream {
            stop: tx,
            task: Some(task),
        })
    }
}

/// The stream's task: one pass per timeline until WAL up to the end position is written.
#[allow(clippy::too_many_arguments)]
async fn stream_task(
    mut conn: Connection,
    dir: PathBuf,
    seg: pgwal::WalSegSize,
    slot: Option<String>,
    start: Lsn,
    timeline: TimelineId,
    system_id: u64,
    sync: bool,
    status_interval: Option<std::time::Duration>,
    mut stop_rx: watch::Receiver<Option<Lsn>>,
) -> Result<(), ReceiveError> {
    let first = start.segment_start(seg);
    let mut writer = OffThreadWriter::new(SegmentWriter::new(&dir, seg, None, sync, first));
    let mut rx = Receiver::new(first, timeline, seg, system_id);
    // -s: status messages on a timer as well as on request; a timer that never fires when there
    // is no interval
    let period = status_interval.unwrap_or(std::time::Duration::from_secs(86_400 * 365));
    // One pass per timeline: a standby whose upstream is promoted while it is backed up moves to
    // the new timeline, and its walsender ends ours there; pg_basebackup then goes on streaming
    // on the next timeline, and so do we.
    loop {
        let tli = rx.timeline();
        // A later timeline's history goes beside its WAL, as pg_basebackup stores it: a server
        // restored from the backup reads its ancestry there (when it ends a recovery on a new
        // timeline, the new history file is built from this one).
        if tli.0 > 1 {
            let history = conn.timeline_history(tli).await?;
            writer
                .write_history(history.file_name, history.content)
                .await?;
        }
        let mut stream = conn
            .start_replication(&StartReplication {
                slot: slot.clone(),
                start: rx.received(),
                timeline: Some(tli),
            })
            .await?;
        if status_interval.is_some() {
            // at once, as pg_basebackup does: a slot made without reserving WAL (or one behind)
            // starts holding WAL from here, and pg_stat_replication shows us
            let s = rx.status();
            stream
                .send_status(s.write, s.flush, Lsn::INVALID, false)
                .await?;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let switch = loop {
            if rx.stopped() {
                break None;
            }
            tokio::select! {
                ev = stream.next() => match ev? {
                    Some(ReplicationEvent::XLogData(x)) => {
                        let inc = rx.xlogdata(x.wal_start, x.wal_end, &x.data)?;
                        let len = inc.data.len();
                        writer.write(inc.timeline, inc.start, x.data.slice(..len)).await?;
                        rx.written(rx.received());
                    }
                    Some(ReplicationEvent::Keepalive(k)) => {
                        if rx.keepalive(k.wal_end, k.reply_requested) {
                            rx.durable(writer.flush().await?);
                            let s = rx.status();
                            stream.send_status(s.write, s.flush, Lsn::INVALID, false).await?;
                        }
                    }
                    Some(ReplicationEvent::EndOfTimeline { next_timeline, next_timeline_start }) => {
                        break Some((next_timeline, next_timeline_start));
                    }
                    Some(_) => {}
                    None => {
                        return Err(pgrepl::Error::Closed { state: "WAL streaming for the backup" }.into());
                    }
                },
                _ = ticks.tick(), if status_interval.is_some() => {
                    let s = rx.status();
                    stream.send_status(s.write, s.flush, Lsn::INVALID, false).await?;
                }
                changed = stop_rx.changed() => {
                    if changed.is_err() {
                        // the backup was abandoned
                        return Ok(());
                    }
                    let end = *stop_rx.borrow();
                    rx.set_stop(end);
                }
            }
        };
        let Some((next, at)) = switch else {
            writer.close_padded().await?;
            // Terminate at once: the walsender exits cleanly on it, and ending the COPY politely
            // would first drain the rest of the switched-from segment the server keeps sending
            drop(stream);
            let _ = conn.close().await;
            return Ok(());
        };
        drop(stream);
        // the old timeline's last segment stays full-size, as pg_basebackup leaves it; the new
        // timeline's copy of it is streamed again from its start
        let sw = rx.end_of_timeline(next, at)?;
        writer.close_padded().await?;
        writer.reset(sw.resume);
    }
}

impl WalStream {
    /// Waits until WAL up to `end` is written (and fsynced, if asked), then ends the stream.
    pub async fn finish(mut self, end: Lsn) -> Result<(), WalStreamError> {
        let _ = self.stop.send(Some(end));
        let Some(task) = self.task.take() else {
            return Err(WalStreamError::Ended(
                "the WAL stream was already over".into(),
            ));
        };
        match task.await {
            Ok(r) => r.map_err(WalStreamError::Receive),
            Err(e) => Err(WalStreamError::Ended(format!(
                "the WAL streaming task failed: {e}"
            ))),
        }
    }

    /// Resolves only if the stream ends before it was told to (the connection failed, the
    /// walsender was terminated): what ended it.
    pub async fn ended_early(&mut self) -> String {
        let Some(task) = &mut self.task else {
            return "the WAL stream was already over".into();
        };
        let why = match task.await {
            Ok(Ok(())) => "the WAL stream ended before the backup did".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the WAL streaming task failed: {e}"),
        };
        self.task = None;
        why
    }
}

/// The WAL stream of a backup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalStreamError {
    /// Receiving or writing the WAL failed.
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    /// The stream's task ended before its work was done.
    #[error("{0}")]
    Ended(String),
}

impl WalStream {
    /// Stops streaming at once (the backup failed).
    pub fn abort(self) {
        drop(self);
    }
}
