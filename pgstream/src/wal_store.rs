//! Where `receive_wal` keeps what it receives: a directory ([`DirWalStore`], the
//! `pgrepl receivewal` archive) or anything else that implements [`WalStore`] — the
//! repository's WAL archive in object storage is one.
//!
//! The rule a store keeps: the position [`WalStore::flush`] returns covers only bytes that are
//! durable in it, because that is what the server is told, and a replication slot then releases
//! the WAL before it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use pgwal::{Lsn, TimelineId, WalSegSize};
use walarchive::{scan_archive, ArchiveState, CompletedSegment, SegmentCompression, SegmentWriter};

use crate::receive::ReceiveError;
use crate::wal_writer::OffThreadWriter;

/// A boxed future, as the object-safe [`WalStore`] returns them.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A WAL archive that `receive_wal` writes into.
pub trait WalStore: Send {
    /// A name for messages.
    fn describe(&self) -> String;
    /// Prepares for segments of `seg` bytes and says where streaming resumes (the start of the
    /// newest partial segment, or the end of the newest complete one) and whose WAL it holds.
    fn open(&mut self, seg: WalSegSize) -> BoxFut<'_, Result<ArchiveState, ReceiveError>>;
    /// The next write starts at `start` (a segment start): after `open`, a reconnect, or a
    /// timeline switch.
    fn start_at(&mut self, start: Lsn);
    /// Writes `data` at `start` on `tli`; returns the segments this completed (durable).
    fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> BoxFut<'_, Result<Vec<CompletedSegment>, ReceiveError>>;
    /// Makes everything written durable; returns how far that is.
    fn flush(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>>;
    /// Ends the segment being filled (durable, kept as a partial segment); returns how far is
    /// durable.
    fn close(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>>;
    /// Stores a timeline history file.
    fn write_history(
        &mut self,
        file_name: String,
        content: Bytes,
    ) -> BoxFut<'_, Result<(), ReceiveError>>;
}

/// The WAL archive directory of `pgrepl receivewal` (`.partial` while filling, fsync before
/// reporting), written off the async threads.
#[derive(Debug)]
pub struct DirWalStore {
    dir: PathBuf,
    compression: Option<SegmentCompression>,
    sync: bool,
    seg: Option<WalSegSize>,
    writer: Option<OffThreadWriter>,
}

impl DirWalStore {
    /// The archive at `dir`; `compression` for completed segments; `sync`: fsync (without it
    /// nothing is durable and flush is reported as written).
    pub fn new(
        dir: impl Into<PathBuf>,
        compression: Option<SegmentCompression>,
        sync: bool,
    ) -> Self {
        DirWalStore {
            dir: dir.into(),
            compression,
            sync,
            seg: None,
            writer: None,
        }
    }

    fn writer(&mut self) -> Result<&mut OffThreadWriter, ReceiveError> {
        self.writer.as_mut().ok_or_else(|| ReceiveError::Storage {
            archive: self.dir.display().to_string(),
            detail: "the archive was not opened".into(),
            transient: false,
        })
    }
}

impl WalStore for DirWalStore {
    fn describe(&self) -> String {
        format!("\"{}\"", self.dir.display())
    }

    fn open(&mut self, seg: WalSegSize) -> BoxFut<'_, Result<ArchiveState, ReceiveError>> {
        Box::pin(async move {
            let dir = self.dir.clone();
            let state = tokio::task::spawn_blocking(move || scan_archive(&dir, seg))
                .await
                .map_err(|e| ReceiveError::Storage {
                    archive: self.dir.display().to_string(),
                    detail: e.to_string(),
                    transient: false,
                })??;
            self.seg = Some(seg);
            Ok(state)
        })
    }

    fn start_at(&mut self, start: Lsn) {
        match (&mut self.writer, self.seg) {
            (Some(w), _) => w.reset(start),
            (None, Some(seg)) => {
                self.writer = Some(OffThreadWriter::new(SegmentWriter::new(
                    &self.dir,
                    seg,
                    self.compression,
                    self.sync,
                    start,
                )))
            }
            (None, None) => {}
        }
    }

    fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> BoxFut<'_, Result<Vec<CompletedSegment>, ReceiveError>> {
        Box::pin(async move { Ok(self.writer()?.write(tli, start, data).await?) })
    }

    fn flush(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move { Ok(self.writer()?.flush().await?) })
    }

    fn close(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move { Ok(self.writer()?.close().await?) })
    }

    fn write_history(
        &mut self,
        file_name: String,
        content: Bytes,
    ) -> BoxFut<'_, Result<(), ReceiveError>> {
        Box::pin(async move { Ok(self.writer()?.write_history(file_name, content).await?) })
    }
}
