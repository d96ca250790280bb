//! `-X stream`: WAL from the backup's start, received on a second replication connection with a
//! temporary slot while the backup runs, so the backup is self-contained without racing the
//! server's WAL recycling at the end. Segments are written complete and full-size (the last one
//! zero-padded), as a data directory's pg_wal must hold them; on a timeline after the first, the
//! timeline's history file is stored with them.

use std::path::PathBuf;

use pgrepl::receivewal::archive::{PageChecker, SegmentWriter};
use pgrepl::receivewal::ReceiveError;
use pgrepl::{
    Config, Connection, CreateSlotOptions, Lsn, ReplicationEvent, StartReplication, TimelineId,
};
use tokio::sync::watch;

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

/// A running WAL stream; [`WalStream::finish`] it at the backup's end position.
#[derive(Debug)]
pub struct WalStream {
    stop: watch::Sender<Option<Lsn>>,
    task: tokio::task::JoinHandle<Result<(), ReceiveError>>,
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
            mut conn,
            seg,
            slot,
            ..
        } = self;
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            let first = start.segment_start(seg);
            let mut writer = SegmentWriter::new(&dir, seg, None, sync, first);
            let (mut tli, mut from) = (timeline, first);
            let mut end: Option<Lsn> = None;
            // -s: status messages on a timer as well as on request; a timer that never fires
            // when there is no interval
            let period = status_interval.unwrap_or(std::time::Duration::from_secs(86_400 * 365));
            // One pass per timeline: a standby whose upstream is promoted while it is backed up
            // moves to the new timeline, and its walsender ends ours there; pg_basebackup then
            // goes on streaming on the next timeline, and so do we.
            loop {
                let mut checker = PageChecker::new(seg, system_id, tli);
                // A later timeline's history goes beside its WAL, as pg_basebackup stores it: a
                // server restored from the backup reads its ancestry there (when it ends a
                // recovery on a new timeline, the new history file is built from this one).
                if tli.0 > 1 {
                    let history = conn.timeline_history(tli).await?;
                    writer.write_history(&history.file_name, &history.content)?;
                }
                let mut stream = conn
                    .start_replication(&StartReplication {
                        slot: slot.clone(),
                        start: from,
                        timeline: Some(tli),
                    })
                    .await?;
                if status_interval.is_some() {
                    // at once, as pg_basebackup does: a slot made without reserving WAL (or one
                    // behind) starts holding WAL from here, and pg_stat_replication shows us
                    stream
                        .send_status(writer.written, writer.flushed, Lsn::INVALID, false)
                        .await?;
                }
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let switch = loop {
                    if end.is_some_and(|e| writer.written >= e) {
                        break None;
                    }
                    tokio::select! {
                        ev = stream.next() => match ev? {
                            Some(ReplicationEvent::XLogData(x)) => {
                                checker.feed(x.wal_start, &x.data)?;
                                writer.write(tli, x.wal_start, &x.data)?;
                            }
                            Some(ReplicationEvent::Keepalive(k)) => {
                                if k.reply_requested {
                                    let flushed = writer.flush()?;
                                    stream.send_status(writer.written, flushed, Lsn::INVALID, false).await?;
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
                            stream.send_status(writer.written, writer.flushed, Lsn::INVALID, false).await?;
                        }
                        changed = rx.changed() => {
                            if changed.is_err() {
                                // the backup was abandoned
                                return Ok(());
                            }
                            end = *rx.borrow();
                        }
                    }
                };
                let Some((next, at)) = switch else {
                    writer.close_padded()?;
                    // Terminate at once: the walsender exits cleanly on it, and ending the COPY
                    // politely would first drain the rest of the switched-from segment the
                    // server keeps sending
                    drop(stream);
                    let _ = conn.close().await;
                    return Ok(());
                };
                drop(stream);
                if at > writer.written {
                    // a hole between the two timelines (pg_basebackup's check and words)
                    return Err(ReceiveError::Timeline(format!(
                        "server stopped streaming timeline {tli} at {}, but reported next timeline {next} to begin at {at}",
                        writer.written
                    )));
                }
                if next <= tli || at < writer.written.segment_start(seg) {
                    return Err(ReceiveError::Timeline(format!(
                        "server reported next timeline {next} starting at {at} after streaming timeline {tli} up to {}",
                        writer.written
                    )));
                }
                // the old timeline's last segment stays full-size, as pg_basebackup leaves it;
                // the new timeline's copy of it is streamed again from its start
                writer.close_padded()?;
                tli = next;
                from = at.segment_start(seg);
                writer.reset(from);
            }
        });
        Ok(WalStream { stop: tx, task })
    }
}

impl WalStream {
    /// Waits until WAL up to `end` is written (and fsynced, if asked), then ends the stream.
    pub async fn finish(self, end: Lsn) -> Result<(), ReceiveError> {
        let _ = self.stop.send(Some(end));
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ReceiveError::Timeline(format!(
                "the WAL streaming task failed: {e}"
            ))),
        }
    }

    /// Resolves only if the stream ends before it was told to (the connection failed, the
    /// walsender was terminated): what ended it.
    pub async fn ended_early(&mut self) -> String {
        match (&mut self.task).await {
            Ok(Ok(())) => "the WAL stream ended before the backup did".into(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the WAL streaming task failed: {e}"),
        }
    }

    /// Stops streaming at once (the backup failed).
    pub fn abort(self) {
        self.task.abort();
    }
}
