//! Backup sinks: where a streamed base backup goes.
//!
//! A backup reaches a sink as a sequence of pushed events: an archive begins, its raw bytes (as
//! the server sent them, possibly compressed), the entries parsed from them (header, data chunks,
//! end), the archive ends; then the manifest bytes; then the end of the backup. A sink uses what
//! it needs: [`DirectorySink`] writes entries as files, [`TarSink`] keeps the raw archives,
//! [`VerifySink`] checks entries against the manifest, and [`Tee`] feeds two sinks. Nothing may
//! look complete before [`BackupSink::finish`] succeeds; [`BackupSink::abort`] cleans up.

use std::fmt;

use pgwal::{Lsn, TimelineId};

use crate::tar::EntryHeader;

/// An archive of the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// `base.tar` or `<oid>.tar` (with a compression suffix when the server compresses).
    pub name: String,
    /// The tablespace OID, `None` for the main data directory.
    pub tablespace_oid: Option<u32>,
    /// The tablespace's location on the server.
    pub tablespace_location: Option<String>,
}

/// How the backup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupEnd {
    /// Start (redo) position.
    pub start_lsn: Lsn,
    /// End position.
    pub end_lsn: Lsn,
    /// Timeline.
    pub timeline: TimelineId,
}

/// A sink's failure, naming the place.
#[derive(Debug)]
pub struct SinkError {
    /// What went wrong.
    pub message: String,
    /// The I/O error, if any.
    pub source: Option<std::io::Error>,
}

impl SinkError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error, with a message saying where.
    pub fn with_source(message: impl Into<String>, e: std::io::Error) -> Self {
        SinkError {
            message: message.into(),
            source: Some(e),
        }
    }

    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        SinkError {
            message: format!("{what} \"{}\"", path.display()),
            source: Some(e),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {e}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Receives a backup as it streams. Sinks are `Send`: a backup runs its sink on a thread of its
/// own, off the async threads.
pub trait BackupSink: Send {
    /// An archive begins.
    fn archive_begin(&mut self, archive: &ArchiveInfo) -> Result<(), SinkError>;
    /// Raw archive bytes, exactly as the server sent them.
    fn archive_raw(&mut self, _raw: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    /// An entry of the current archive begins.
    fn entry_begin(&mut self, _entry: &EntryHeader) -> Result<(), SinkError> {
        Ok(())
    }
    /// Data of the current entry.
    fn entry_data(&mut self, _data: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    /// The current entry is complete.
    fn entry_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// The current archive is complete.
    fn archive_end(&mut self) -> Result<(), SinkError>;
    /// Bytes of the backup manifest.
    fn manifest(&mut self, _chunk: &[u8]) -> Result<(), SinkError> {
        Ok(())
    }
    /// Where WAL streamed beside the backup (`-X stream`) goes; `None` if this sink takes none.
    fn wal_dir(&mut self) -> Result<Option<std::path::PathBuf>, SinkError> {
        Ok(None)
    }
    /// The streamed WAL is complete in [`BackupSink::wal_dir`].
    fn wal_done(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// The server confirmed the backup: make it durable and complete.
    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError>;
    /// The backup failed: remove whatever could look like a backup.
    fn abort(&mut self) {}
}

impl<S: BackupSink + ?Sized> BackupSink for Box<S> {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        (**self).archive_begin(a)
    }
    fn archive_raw(&mut self, raw: &[u8]) -> Result<(), SinkError> {
        (**self).archive_raw(raw)
    }
    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        (**self).entry_begin(e)
    }
    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        (**self).entry_data(d)
    }
    fn entry_end(&mut self) -> Result<(), SinkError> {
        (**self).entry_end()
    }
    fn archive_end(&mut self) -> Result<(), SinkError> {
        (**self).archive_end()
    }
    fn manifest(&mut self, c: &[u8]) -> Result<(), SinkError> {
        (**self).manifest(c)
    }
    fn wal_dir(&mut self) -> Result<Option<std::path::PathBuf>, SinkError> {
        (**self).wal_dir()
    }
    fn wal_done(&mut self) -> Result<(), SinkError> {
        (**self).wal_done()
    }
    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        (**self).finish(end)
    }
    fn abort(&mut self) {
        (**self).abort()
    }
}

/// Feeds every event to two sinks (for example a verifier and a writer).
#[derive(Debug)]
pub struct Tee<A, B>(pub A, pub B);

impl<A: BackupSink, B: BackupSink> BackupSink for Tee<A, B> {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.0.archive_begin(a)?;
        self.1.archive_begin(a)
    }
    fn archive_raw(&mut self, raw: &[u8]) -> Result<(), SinkError> {
        self.0.archive_raw(raw)?;
        self.1.archive_raw(raw)
    }
    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        self.0.entry_begin(e)?;
        self.1.entry_begin(e)
    }
    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        self.0.entry_data(d)?;
        self.1.entry_data(d)
    }
    fn entry_end(&mut self) -> Result<(), SinkError> {
        self.0.entry_end()?;
        self.1.entry_end()
    }
    fn archive_end(&mut self) -> Result<(), SinkError> {
        self.0.archive_end()?;
        self.1.archive_end()
    }
    fn manifest(&mut self, c: &[u8]) -> Result<(), SinkError> {
        self.0.manifest(c)?;
        self.1.manifest(c)
    }
    fn wal_dir(&mut self) -> Result<Option<std::path::PathBuf>, SinkError> {
        Ok(self.1.wal_dir()?.or(self.0.wal_dir()?))
    }
    fn wal_done(&mut self) -> Result<(), SinkError> {
        self.0.wal_done()?;
        self.1.wal_done()
    }
    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        // the first sink (the verifier, by convention) decides before the second commits
        self.0.finish(end)?;
        self.1.finish(end)
    }
    fn abort(&mut self) {
        self.0.abort();
        self.1.abort();
    }
}

/// A sink that keeps nothing: for `--target` backups, whose archives stay on the server.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl BackupSink for NullSink {
    fn archive_begin(&mut self, _archive: &ArchiveInfo) -> Result<(), SinkError> {
        Ok(())
    }
    fn archive_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        Ok(())
    }
}

pub(crate) mod directory;
mod outfile;
mod tarfile;
mod tarstream;
mod verify;

pub use directory::{DirectorySink, Finishing, SyncMethod, TablespaceMapping};
pub use tarfile::{ClientCompression, TarSink, ZstdCompression};
pub use tarstream::TarStreamSink;
pub use verify::VerifySink;
