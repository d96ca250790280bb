//! START_REPLICATION ... PHYSICAL: the WAL stream as typed events.
//!
//! Flow from `protocol-replication` in the PostgreSQL documentation and
//! `src/backend/replication/walsender.c` (`StartReplication`, `WalSndDone`); the client side of
//! the end-of-timeline exchange as in `src/bin/pg_basebackup/receivelog.c`.

use bytes::BytesMut;
use pgwal::{Lsn, TimelineId};
use postgres_protocol::message::frontend;

use crate::commands::validate_slot_name;
use crate::connection::Connection;
use crate::error::{DbError, Error, Result};
use crate::message::BackendMessage;
use crate::quote::quote_ident;
use crate::replication::{
    pg_now, HotStandbyFeedback, PrimaryKeepalive, StandbyMessage, StandbyStatusUpdate, WalMessage,
    XLogData,
};

/// Where and how to start streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartReplication {
    /// A physical slot to stream from (its restart_lsn follows our flush reports).
    pub slot: Option<String>,
    /// The first position wanted (pg_receivewal starts at a segment boundary).
    pub start: Lsn,
    /// The timeline; `None` means the server's current one.
    pub timeline: Option<TimelineId>,
}

/// What the server sends while streaming.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// A chunk of WAL.
    XLogData(XLogData),
    /// A keepalive; answer with a status update if it asks for a reply.
    Keepalive(PrimaryKeepalive),
    /// A NoticeResponse.
    Notice(DbError),
    /// The timeline being streamed ended (the server was promoted past it). Continue on
    /// `next_timeline` from `next_timeline_start`. The stream is over after this.
    EndOfTimeline {
        /// The timeline that follows.
        next_timeline: TimelineId,
        /// Where it branches off.
        next_timeline_start: Lsn,
    },
    /// The server is shutting down (CommandComplete without CopyDone). The stream is over and
    /// the connection is closed.
    ServerShutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// The server sent CopyDone; our CopyDone is buffered and must be flushed.
    ReplyCopyDone,
    /// We sent CopyDone (the caller ended the stream); the server's CopyDone is awaited.
    ClientEnded,
    /// Both sides ended the copy; reading the closing result set.
    Results,
    Done,
}

/// A running START_REPLICATION stream. It borrows the connection until it ends.
///
/// [`ReplicationStream::next`] is cancel-safe: dropping its future (say, in a `select!` with a
/// timer) loses no message. Sending is buffered in the connection, so a cancelled send is
/// completed by the next one and never duplicated. Dropping the stream before it ends leaves the
/// connection unusable (it is still in COPY mode); call [`ReplicationStream::finish`] to end it
/// cleanly.
#[derive(Debug)]
pub struct ReplicationStream<'a> {
    conn: &'a mut Connection,
    phase: Phase,
    next_timeline: Option<(TimelineId, Lsn)>,
    ended_by_client: bool,
}

impl Connection {
    /// START_REPLICATION [SLOT s] PHYSICAL lsn [TIMELINE tli].
    ///
    /// If the requested timeline is historic and `start` is at its end, the server skips COPY
    /// mode; the stream then yields [`ReplicationEvent::EndOfTimeline`] straight away.
    pub async fn start_replication(
        &mut self,
        opts: &StartReplication,
    ) -> Result<ReplicationStream<'_>> {
        self.check_idle()?;
        let mut sql = String::from("START_REPLICATION");
        if let Some(s) = &opts.slot {
            validate_slot_name(s)?;
            sql.push_str(&format!(" SLOT {}", quote_ident(s)));
        }
        sql.push_str(&format!(" PHYSICAL {}", opts.start));
        if let Some(t) = opts.timeline {
            if t.0 == 0 {
                return Err(Error::Usage("timeline 0 is invalid".into()));
            }
            sql.push_str(&format!(" TIMELINE {}", t.0));
        }
        self.state = "START_REPLICATION";
        frontend::query(&sql, self.buffer()).map_err(|e| Error::Usage(e.to_string()))?;
        self.flush().await?;
        loop {
            match self.recv().await? {
                BackendMessage::CopyBothResponse => break,
                BackendMessage::NoticeResponse(n) => self.notice(&n),
                BackendMessage::ErrorResponse(e) => {
                    let err = self.db_error(e);
                    self.drain_until_ready().await?;
                    self.state = "idle";
                    return Err(err);
                }
                // Historic timeline requested exactly at its end: no COPY, just the result set.
                m @ (BackendMessage::RowDescription(_) | BackendMessage::DataRow(_)) => {
                    let mut s = ReplicationStream {
                        conn: self,
                        phase: Phase::Results,
                        next_timeline: None,
                        ended_by_client: false,
                    };
                    s.result_message(m)?;
                    return Ok(s);
                }
                other => {
                    return Err(Error::protocol(
                        "START_REPLICATION",
                        format!("unexpected message {other:?}"),
                    ))
                }
            }
        }
        self.state = "START_REPLICATION streaming";
        Ok(ReplicationStream {
            conn: self,
            phase: Phase::Streaming,
            next_timeline: None,
            ended_by_client: false,
        })
    }
}

impl ReplicationStream<'_> {
    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<ReplicationEvent>> {
        loop {
            match self.phase {
                Phase::Done => return Ok(None),
                Phase::Streaming => match self.conn.recv().await? {
                    BackendMessage::CopyData(body) => {
                        let msg = WalMessage::decode(&body).map_err(|e| {
                            self.conn.broken = Some("protocol violation");
                            Error::protocol("START_REPLICATION streaming", e.to_string())
                        })?;
                        return Ok(Some(match msg {
                            WalMessage::XLogData(x) => ReplicationEvent::XLogData(x),
                            WalMessage::Keepalive(k) => ReplicationEvent::Keepalive(k),
                        }));
                    }
                    BackendMessage::NoticeResponse(n) => {
                        return Ok(Some(ReplicationEvent::Notice(n)))
                    }
                    BackendMessage::CopyDone => {
                        frontend::copy_done(self.conn.buffer());
                        self.phase = Phase::ReplyCopyDone;
                    }
                    BackendMessage::CommandComplete(_) => {
                        // Controlled shutdown: the walsender ends without CopyDone and exits.
                        self.phase = Phase::Done;
                        self.conn.broken = Some("the server shut down");
                        return Ok(Some(ReplicationEvent::ServerShutdown));
                    }
                    BackendMessage::ErrorResponse(e) => return Err(self.fail(e)),
                    other => {
                        self.conn.broken = Some("protocol violation");
                        return Err(Error::protocol(
                            "START_REPLICATION streaming",
                            format!("unexpected message {other:?}"),
                        ));
                    }
                },
                Phase::ReplyCopyDone => {
                    self.conn.flush().await?;
                    self.conn.state = "START_REPLICATION end of timeline";
                    self.phase = Phase::Results;
                }
                Phase::ClientEnded => match self.conn.recv().await? {
                    BackendMessage::CopyData(_) | BackendMessage::NoticeResponse(_) => {}
                    BackendMessage::CopyDone => self.phase = Phase::Results,
                    BackendMessage::CommandComplete(_) => {
                        // The server finished without CopyDone (shutting down meanwhile).
                        self.phase = Phase::Results;
                    }
                    BackendMessage::ErrorResponse(e) => return Err(self.fail(e)),
                    other => {
                        return Err(Error::protocol(
                            "START_REPLICATION ending",
                            format!("unexpected message {other:?}"),
                        ))
                    }
                },
                Phase::Results => {
                    let m = self.conn.recv().await?;
                    if let BackendMessage::ReadyForQuery(_) = m {
                        self.phase = Phase::Done;
                        self.conn.state = "idle";
                        if let (Some((tli, start)), false) =
                            (self.next_timeline, self.ended_by_client)
                        {
                            return Ok(Some(ReplicationEvent::EndOfTimeline {
                                next_timeline: tli,
                                next_timeline_start: start,
                            }));
                        }
                        return Ok(None);
                    }
                    if let BackendMessage::NoticeResponse(n) = m {
                        return Ok(Some(ReplicationEvent::Notice(n)));
                    }
                    self.result_message(m)?;
                }
            }
        }
    }

    fn result_message(&mut self, m: BackendMessage) -> Result<()> {
        match m {
            BackendMessage::RowDescription(_) | BackendMessage::CommandComplete(_) => Ok(()),
            BackendMessage::DataRow(row) => {
                let get = |i: usize| -> Option<String> {
                    row.get(i)
                        .and_then(|v| v.as_ref())
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let tli = get(0)
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|&t| t > 0)
                    .ok_or_else(|| {
                        Error::protocol("START_REPLICATION end of timeline", "bad next_tli")
                    })?;
                let start: Lsn = get(1)
                    .ok_or_else(|| {
                        Error::protocol(
                            "START_REPLICATION end of timeline",
                            "next_tli_startpos is NULL",
                        )
                    })?
                    .parse()
                    .map_err(|e| {
                        Error::protocol(
                            "START_REPLICATION end of timeline",
                            format!("next_tli_startpos: {e}"),
                        )
                    })?;
                self.next_timeline = Some((TimelineId(tli), start));
                Ok(())
            }
            BackendMessage::ErrorResponse(e) => Err(self.fail(e)),
            other => Err(Error::protocol(
                "START_REPLICATION end of timeline",
                format!("unexpected message {other:?}"),
            )),
        }
    }

    fn fail(&mut self, e: DbError) -> Error {
        let err = self.conn.db_error(e);
        // After an ErrorResponse in COPY both the server leaves COPY mode; the remaining
        // messages up to ReadyForQuery are read by drain() if the caller wants the connection
        // back; until then it is marked unusable.
        self.phase = Phase::Done;
        self.conn.broken = Some("the replication stream failed");
        err
    }

    /// Sends a standby status update. `flush` must only cover WAL that is durable.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<()> {
        self.send(StandbyMessage::Status(StandbyStatusUpdate {
            write,
            flush,
            apply,
            client_time: pg_now(),
            reply_requested,
        }))
        .await
    }

    /// Sends hot-standby feedback (a backup tool normally never does).
    pub async fn send_hot_standby_feedback(&mut self, feedback: HotStandbyFeedback) -> Result<()> {
        self.send(StandbyMessage::HotStandbyFeedback(feedback))
            .await
    }

    async fn send(&mut self, msg: StandbyMessage) -> Result<()> {
        if self.phase != Phase::Streaming {
            return Err(Error::Usage(
                "the replication stream has ended; nothing can be sent".into(),
            ));
        }
        let mut payload = BytesMut::with_capacity(40);
        msg.encode(&mut payload);
        let data =
            frontend::CopyData::new(payload.freeze()).map_err(|e| Error::Usage(e.to_string()))?;
        data.write(self.conn.buffer());
        self.conn.flush().await
    }

    /// Ends the stream from our side (CopyDone), discards WAL still in flight, and waits until
    /// the server is ready for the next command. Returns the next timeline if the server reported
    /// one.
    pub async fn finish(mut self) -> Result<Option<(TimelineId, Lsn)>> {
        if self.phase == Phase::Streaming {
            frontend::copy_done(self.conn.buffer());
            self.conn.flush().await?;
            self.ended_by_client = true;
            self.phase = Phase::ClientEnded;
        }
        while self.phase != Phase::Done {
            self.next().await?;
        }
        Ok(self.next_timeline)
    }
}

impl Drop for ReplicationStream<'_> {
    fn drop(&mut self) {
        if self.phase != Phase::Done && self.conn.broken.is_none() {
            self.conn.broken = Some("a replication stream was dropped before it ended");
        }
    }
}
