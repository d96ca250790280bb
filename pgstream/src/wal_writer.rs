//! The WAL archive writer, run off the async threads.
//!
//! Writing a segment, compressing it and fsync can take milliseconds to seconds; on a runtime
//! thread that would hold up every other task on it (the keepalive replies of a WAL stream,
//! another backup). Each operation of [`SegmentWriter`] therefore runs on Tokio's blocking pool,
//! awaited in order: the stream's task waits for its own writes, nothing else does. WAL messages
//! are at most 128 kB (`MAX_SEND_SIZE`), so one hop per message costs little.

use bytes::Bytes;
use pgwal::{Lsn, TimelineId};
use walarchive::{CompletedSegment, SegmentWriter, WriteError};

/// A [`SegmentWriter`] whose operations run on the blocking pool.
#[derive(Debug)]
pub(crate) struct OffThreadWriter {
    inner: Option<SegmentWriter>,
}

/// The writer was lost: a blocking task panicked or the runtime is shutting down.
fn lost() -> WriteError {
    WriteError::Io {
        path: Default::default(),
        what: "run the WAL writer for",
        source: std::io::Error::other("the blocking task ended"),
    }
}

impl OffThreadWriter {
    pub(crate) fn new(w: SegmentWriter) -> Self {
        OffThreadWriter { inner: Some(w) }
    }

    async fn run<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut SegmentWriter) -> Result<R, WriteError> + Send + 'static,
    ) -> Result<R, WriteError> {
        let mut w = self.inner.take().ok_or_else(lost)?;
        let (w, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut w);
            (w, r)
        })
        .await
        .map_err(|_| lost())?;
        self.inner = Some(w);
        r
    }

    /// Writes `data` at `start` on `tli`; returns the segments this completed (durable).
    pub(crate) async fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> Result<Vec<CompletedSegment>, WriteError> {
        self.run(move |w| w.write(tli, start, &data)).await
    }

    /// Makes everything written durable; returns how far that is.
    pub(crate) async fn flush(&mut self) -> Result<Lsn, WriteError> {
        self.run(|w| w.flush()).await
    }

    /// Closes the segment being filled (durable, left as `.partial`).
    pub(crate) async fn close(&mut self) -> Result<Lsn, WriteError> {
        self.run(|w| w.close()).await
    }

    /// Closes the segment being filled as a full-size segment (zero-padded), as pg_wal needs.
    pub(crate) async fn close_padded(&mut self) -> Result<(), WriteError> {
        self.run(|w| w.close_padded().map(drop)).await
    }

    /// Stores a timeline history file.
    pub(crate) async fn write_history(
        &mut self,
        name: String,
        content: Bytes,
    ) -> Result<(), WriteError> {
        self.run(move |w| w.write_history(&name, &content)).await
    }

    /// Starts again at `start` (a new timeline, a reconnect).
    pub(crate) fn reset(&mut self, start: Lsn) {
        if let Some(w) = &mut self.inner {
            w.reset(start);
        }
    }
}
