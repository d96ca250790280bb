//! BASE_BACKUP on a connection: the response as a sequence of typed events.
//!
//! Sequence from `protocol-replication` and `src/backend/backup/basebackup_copy.c`: a result set
//! with the start position, one with the tablespaces, one CopyOut carrying every archive and the
//! manifest, a result set with the end position, and — only then — the command's completion,
//! which a checksum failure can still turn into an error.

use std::collections::VecDeque;

use bytes::Bytes;
use pgwal::{Lsn, TimelineId};
use postgres_protocol::message::frontend;

use crate::backup::{BackupCopyMessage, BaseBackupOptions};
use crate::connection::Connection;
use crate::error::{DbError, Error, Result};
use crate::message::BackendMessage;

/// A tablespace of the backup, as result set 2 lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// The tablespace OID; `None` for the main data directory (always last).
    pub oid: Option<u32>,
    /// Its location on the server; `None` for the main data directory.
    pub location: Option<String>,
    /// Estimated size in kB, when PROGRESS was requested.
    pub size_kb: Option<u64>,
}

/// One step of a base backup.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaseBackupEvent {
    /// The backup began: WAL from `start_lsn` on `timeline` is needed to restore it.
    Started {
        /// The backup's start (redo) position.
        start_lsn: Lsn,
        /// Its timeline.
        timeline: TimelineId,
    },
    /// The tablespaces, main data directory last.
    Tablespaces(Vec<TablespaceInfo>),
    /// An archive begins.
    ArchiveStart {
        /// `base.tar`, `<oid>.tar`, with `.gz`/`.lz4`/`.zst` when compressed by the server.
        name: String,
        /// The tablespace location; `None` for the main data directory.
        tablespace_location: Option<String>,
    },
    /// Bytes of the current archive (a tar stream, compressed if the server compresses).
    ArchiveData(Bytes),
    /// Bytes read from the data directory so far (cumulative, before compression).
    Progress(u64),
    /// The backup manifest follows.
    ManifestStart,
    /// Manifest bytes.
    ManifestData(Bytes),
    /// A NoticeResponse or WARNING (for example a page checksum failure).
    Notice(DbError),
    /// The backup completed: the server confirmed the command. Always the last event.
    Finished {
        /// The backup's end position: WAL up to here must be replayed to be consistent.
        end_lsn: Lsn,
        /// Its timeline.
        timeline: TimelineId,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Copy,
    Trailer,
    Done,
}

/// A running BASE_BACKUP. Pull events with [`BaseBackupStream::next`]; data is read from the
/// socket only when asked for, so a slow consumer slows the server (TCP backpressure), and memory
/// stays at the connection's receive buffer.
#[derive(Debug)]
pub struct BaseBackupStream<'a> {
    conn: &'a mut Connection,
    phase: Phase,
    pending: VecDeque<BaseBackupEvent>,
    set_index: usize,
    rows: Vec<Vec<Option<Bytes>>>,
    in_set: bool,
    in_manifest: bool,
    seen_archive: bool,
    end: Option<(Lsn, TimelineId)>,
    error: Option<DbError>,
}

impl Connection {
    /// Starts BASE_BACKUP with `options`.
    pub async fn base_backup(
        &mut self,
        options: &BaseBackupOptions,
    ) -> Result<BaseBackupStream<'_>> {
        self.check_idle()?;
        if options.label.contains('\0') {
            return Err(Error::Usage(
                "backup label cannot contain a NUL byte".into(),
            ));
        }
        self.state = "BASE_BACKUP";
        frontend::query(&options.to_command(), self.buffer())
            .map_err(|e| Error::Usage(e.to_string()))?;
        self.flush().await?;
        Ok(BaseBackupStream {
            conn: self,
            phase: Phase::Header,
            pending: VecDeque::new(),
            set_index: 0,
            rows: Vec::new(),
            in_set: false,
            in_manifest: false,
            seen_archive: false,
            end: None,
            error: None,
        })
    }
}

fn text(v: &Option<Bytes>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn lsn_tli(state: &'static str, rows: &[Vec<Option<Bytes>>]) -> Result<(Lsn, TimelineId)> {
    let row = match rows {
        [row] if row.len() >= 2 => row,
        _ => return Err(Error::protocol(state, "expected one row of (recptr, tli)")),
    };
    let lsn = text(&row[0])
        .ok_or_else(|| Error::protocol(state, "recptr is NULL"))?
        .parse::<Lsn>()
        .map_err(|e| Error::protocol(state, e.to_string()))?;
    let tli = text(&row[1])
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(|| Error::protocol(state, "tli is not a number"))?;
    Ok((lsn, TimelineId(tli)))
}

impl BaseBackupStream<'_> {
    /// The next event; `None` after [`BaseBackupEvent::Finished`]. An error from the server (at
    /// any point, including after the last archive) ends the stream with `Err`, and the
    /// connection is usable again afterwards.
    pub async fn next(&mut self) -> Result<Option<BaseBackupEvent>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            match self.phase {
                Phase::Done => return Ok(None),
                Phase::Header => {
                    let m = self.conn.recv().await?;
                    match m {
                        BackendMessage::RowDescription(_) => {
                            self.close_set()?;
                            self.in_set = true;
                        }
                        BackendMessage::DataRow(r) if self.in_set => self.rows.push(r),
                        BackendMessage::CommandComplete(_) => self.close_set()?,
                        BackendMessage::CopyOutResponse => {
                            self.close_set()?;
                            if self.set_index < 2 {
                                return Err(self.violation("COPY began before the start position and tablespaces were sent"));
                            }
                            self.phase = Phase::Copy;
                            self.conn.state = "BASE_BACKUP copy";
                            self.conn.bulk = true;
                        }
                        BackendMessage::NoticeResponse(n) => {
                            return Ok(Some(BaseBackupEvent::Notice(n)))
                        }
                        BackendMessage::ErrorResponse(e) => return Err(self.fail(e).await),
                        other => {
                            return Err(self.violation(&format!("unexpected message {other:?}")))
                        }
                    }
                }
                Phase::Copy => match self.conn.recv().await? {
                    BackendMessage::CopyData(body) => {
                        let msg = BackupCopyMessage::decode(&body).map_err(|e| {
                            self.conn.broken = Some("protocol violation");
                            Error::protocol("BASE_BACKUP copy", e.to_string())
                        })?;
                        return Ok(Some(match msg {
                            BackupCopyMessage::NewArchive {
                                name,
                                tablespace_location,
                            } => {
                                if self.in_manifest {
                                    return Err(self.violation("new archive after the manifest"));
                                }
                                self.seen_archive = true;
                                BaseBackupEvent::ArchiveStart {
                                    name,
                                    tablespace_location: (!tablespace_location.is_empty())
                                        .then_some(tablespace_location),
                                }
                            }
                            BackupCopyMessage::Data(d) if self.in_manifest => {
                                BaseBackupEvent::ManifestData(d)
                            }
                            BackupCopyMessage::Data(d) => {
                                if !self.seen_archive {
                                    return Err(
                                        self.violation("archive data before any archive began")
                                    );
                                }
                                BaseBackupEvent::ArchiveData(d)
                            }
                            BackupCopyMessage::Progress(p) => BaseBackupEvent::Progress(p),
                            BackupCopyMessage::ManifestStart => {
                                self.in_manifest = true;
                                BaseBackupEvent::ManifestStart
                            }
                        }));
                    }
                    BackendMessage::CopyDone => {
                        self.conn.bulk = false;
                        self.phase = Phase::Trailer;
                        self.conn.state = "BASE_BACKUP end";
                    }
                    BackendMessage::NoticeResponse(n) => {
                        return Ok(Some(BaseBackupEvent::Notice(n)))
                    }
                    BackendMessage::ErrorResponse(e) => return Err(self.fail(e).await),
                    other => return Err(self.violation(&format!("unexpected message {other:?}"))),
                },
                Phase::Trailer => match self.conn.recv().await? {
                    BackendMessage::RowDescription(_) => {
                        self.rows.clear();
                        self.in_set = true;
                    }
                    BackendMessage::DataRow(r) if self.in_set => self.rows.push(r),
                    BackendMessage::CommandComplete(_) => {
                        if self.in_set {
                            self.end = Some(lsn_tli("BASE_BACKUP end", &self.rows)?);
                            self.in_set = false;
                        }
                    }
                    BackendMessage::NoticeResponse(n) => {
                        return Ok(Some(BaseBackupEvent::Notice(n)))
                    }
                    BackendMessage::ErrorResponse(e) => self.error = Some(e),
                    BackendMessage::ReadyForQuery(_) => {
                        self.phase = Phase::Done;
                        self.conn.state = "idle";
                        if let Some(e) = self.error.take() {
                            return Err(self.conn.db_error(e));
                        }
                        let (end_lsn, timeline) = self.end.ok_or_else(|| {
                            Error::protocol("BASE_BACKUP end", "the server sent no end position")
                        })?;
                        return Ok(Some(BaseBackupEvent::Finished { end_lsn, timeline }));
                    }
                    other => return Err(self.violation(&format!("unexpected message {other:?}"))),
                },
            }
        }
    }

    fn close_set(&mut self) -> Result<()> {
        if !self.in_set {
            return Ok(());
        }
        self.in_set = false;
        let rows = std::mem::take(&mut self.rows);
        match self.set_index {
            0 => {
                let (start_lsn, timeline) = lsn_tli("BASE_BACKUP start", &rows)?;
                self.pending.push_back(BaseBackupEvent::Started {
                    start_lsn,
                    timeline,
                });
            }
            1 => {
                let mut ts = Vec::with_capacity(rows.len());
                for r in &rows {
                    let oid = match text(r.first().unwrap_or(&None)) {
                        None => None,
                        Some(s) => Some(s.parse::<u32>().map_err(|_| {
                            Error::protocol(
                                "BASE_BACKUP start",
                                format!("bad tablespace oid \"{s}\""),
                            )
                        })?),
                    };
                    ts.push(TablespaceInfo {
                        oid,
                        location: text(r.get(1).unwrap_or(&None)),
                        size_kb: text(r.get(2).unwrap_or(&None)).and_then(|s| s.parse().ok()),
                    });
                }
                self.pending.push_back(BaseBackupEvent::Tablespaces(ts));
            }
            _ => return Err(self.violation("more than two result sets before COPY")),
        }
        self.set_index += 1;
        Ok(())
    }

    fn violation(&mut self, detail: &str) -> Error {
        self.conn.broken = Some("protocol violation");
        self.phase = Phase::Done;
        Error::protocol(self.conn.state, detail.to_owned())
    }

    async fn fail(&mut self, e: DbError) -> Error {
        let err = self.conn.db_error(e);
        self.phase = Phase::Done;
        self.conn.bulk = false;
        if let Err(drain) = self.conn.drain_until_ready().await {
            tracing::debug!("after BASE_BACKUP error: {drain}");
        }
        self.conn.state = "idle";
        err
    }
}

impl Drop for BaseBackupStream<'_> {
    fn drop(&mut self) {
        self.conn.bulk = false;
        if self.phase != Phase::Done && self.conn.broken.is_none() {
            self.conn.broken = Some("a BASE_BACKUP stream was dropped before it ended");
        }
    }
}
