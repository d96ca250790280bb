//! Backup sinks: where a streamed base backup goes.
//!
//! A backup reaches a sink as a sequence of pushed events: an archive begins, its raw bytes (as
//! the server sent them, possibly compressed), the entries parsed from them (header, data chunks,
//! end), the archive ends; then the manifest bytes; then the end of the backup. A sink uses what
//! it needs: [`DirectorySink`] writes entries as files, [`TarSink`] keeps the raw archives,
//! [`VerifySink`] checks entries against the manifest, and [`Tee`] feeds two sinks. Nothing may
//! look complete before [`BackupSink::finish`] succeeds; [`BackupSink::abort`] cleans up.

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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A file operation failed.
    #[error("{what} \"{}\": {source}", path.display())]
    Io {
        /// What was being done ("could not create file", ...).
        what: String,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a stream (standard output, a compressor) or running the sink failed.
    #[error("{what}: {source}")]
    Stream {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// What was received does not match the server's manifest (the verifying sink).
    #[error("{0}")]
    Mismatch(String),
    /// The sink cannot take what the backup holds or asks (a compressed archive to rewrite, a
    /// second tablespace on one stream, a directory that is not empty).
    #[error("{0}")]
    Refused(String),
}

impl SinkError {
    /// The sink cannot take what arrived: `message` says what.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError::Refused(message.into())
    }

    /// An I/O error not tied to one file, with a message saying what was being done.
    pub fn with_source(message: impl Into<String>, e: std::io::Error) -> Self {
        SinkError::Stream {
            what: message.into(),
            source: e,
        }
    }

    /// An I/O error on `path` while doing `what`.
    pub fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Self {
        SinkError::Io {
            what: what.to_owned(),
            path: path.to_path_buf(),
            source: e,
        }
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

pub use directory::{DirectorySink, Finishing, MappingError, SyncMethod, TablespaceMapping};
pub use tarfile::{ClientCompression, TarSink, ZstdCompression};
pub use tarstream::TarStreamSink;
pub use verify::VerifySink;
