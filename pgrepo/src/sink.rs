//! A backup streamed into the repository: the [`BackupSink`] that packs a backup's files into
//! few objects while it arrives, and commits it last.
//!
//! Every file is cut into chunks of [`layout::CHUNK`] bytes, each compressed on its own and
//! appended to the current pack object (a new pack begins, at a file boundary, once one holds
//! `max_pack_bytes`); the index records where each file's chunks are, so that any block of any
//! file is one ranged read away. Packs and the index are streamed uploads: memory holds one
//! chunk, one buffered write and the store's parts in flight, whatever the database size.
//! WAL streamed beside the backup (`-X stream`) is spooled in a local directory until the
//! backup ends (the server decides how much), then packed with the backup as archive `pg_wal`.
//!
//! The sink runs on a thread of its own (see `pgstream`); it reaches the async store through a
//! runtime handle. Nothing is visible as a backup until [`BackupSink::finish`] has written the
//! commit record, create-only; [`BackupSink::abort`] aborts the uploads and deletes the packs
//! already written.

use std::path::{Path, PathBuf};

use basebackup::sink::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use basebackup::tar::{EntryHeader, EntryKind};
use bytes::Bytes;
use tokio::runtime::Handle;

use crate::layout::{self, CHUNK};
use crate::records::{
    BackupKind, BackupRecord, EntryType, IndexEntry, StoredObject, TablespaceRecord,
};
use crate::repo::{Repo, RepoError};
use crate::store::{PutMode, Upload};

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkCompression {
    /// Stored as they are.
    None,
    /// zstd at this level.
    Zstd(i32),
}

impl ChunkCompression {
    /// The name in the commit record.
    pub fn name(self) -> &'static str {
        match self {
            ChunkCompression::None => "none",
            ChunkCompression::Zstd(_) => "zstd",
        }
    }
}

/// What the sink needs to know beyond what the stream tells it.
#[derive(Debug, Clone)]
pub struct BackupMeta {
    /// The new backup's ID.
    pub id: String,
    /// Full or incremental.
    pub kind: BackupKind,
    /// The parent of an incremental.
    pub parent: Option<String>,
    /// Why a full backup was taken when `auto` was asked.
    pub full_reason: Option<String>,
    /// The server's system identifier.
    pub system_identifier: u64,
    /// Its `server_version_num`.
    pub server_version: u32,
    /// Its WAL segment size.
    pub wal_segment_size: u64,
    /// When the backup started (Unix seconds).
    pub start_time: i64,
}

/// Where streamed WAL waits, and how big a pack may grow.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Chunk compression.
    pub compression: ChunkCompression,
    /// A new pack begins (at a file boundary) past this size.
    pub max_pack_bytes: u64,
    /// The directory under which the streamed WAL is spooled.
    pub spool_parent: PathBuf,
}

fn sink_err(e: RepoError) -> SinkError {
    SinkError::with_source("repository", std::io::Error::other(e.to_string()))
}

/// An object being uploaded, with writes gathered into pieces of about 1 MiB.
#[derive(Debug)]
struct ObjectWriter {
    key: String,
    upload: Option<Box<dyn Upload>>,
    pending: Vec<u8>,
    written: u64,
}

const WRITE_PIECE: usize = 1 << 20;

impl ObjectWriter {
    fn start(rt: &Handle, repo: &Repo, key: String) -> Result<Self, SinkError> {
        let upload = rt.block_on(repo.upload(&key)).map_err(sink_err)?;
        Ok(ObjectWriter {
            key,
            upload: Some(upload),
            pending: Vec::with_capacity(WRITE_PIECE),
            written: 0,
        })
    }

    fn write(&mut self, rt: &Handle, data: &[u8]) -> Result<(), SinkError> {
        self.pending.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.pending.len() >= WRITE_PIECE {
            self.push(rt)?;
        }
        Ok(())
    }

    fn push(&mut self, rt: &Handle) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(
            &mut self.pending,
            Vec::with_capacity(WRITE_PIECE),
        ));
        let up = self
            .upload
            .as_mut()
            .ok_or_else(|| SinkError::new("upload already ended"))?;
        rt.block_on(up.write(piece))
            .map_err(|e| sink_err(RepoError::Store(e)))
    }

    fn finish(mut self, rt: &Handle) -> Result<StoredObject, SinkError> {
        self.push(rt)?;
        let up = self
            .upload
            .take()
            .ok_or_else(|| SinkError::new("upload already ended"))?;
        let size = rt
            .block_on(up.finish())
            .map_err(|e| sink_err(RepoError::Store(e)))?;
        Ok(StoredObject {
            key: self.key.clone(),
            size,
            content_size: self.written,
        })
    }

    fn abort(mut self, rt: &Handle) {
        if let Some(up) = self.upload.take() {
            rt.block_on(up.abort());
        }
    }
}

/// A file being packed.
#[derive(Debug)]
struct FileInProgress {
    entry: IndexEntry,
    chunk: Vec<u8>,
}

/// The index being written: its upload and the zstd stream in front of it.
struct IndexWriter(ObjectWriter, zstd::stream::write::Encoder<'static, Vec<u8>>);

impl std::fmt::Debug for IndexWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IndexWriter")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

/// The sink. See the module documentation.
#[derive(Debug)]
pub struct RepoSink {
    rt: Handle,
    repo: Repo,
    meta: BackupMeta,
    settings: SinkSettings,
    pack: Option<ObjectWriter>,
    pack_no: u32,
    objects: Vec<StoredObject>,
    index: Option<IndexWriter>,
    archive: String,
    tablespaces: Vec<TablespaceRecord>,
    file: Option<FileInProgress>,
    manifest: Option<FileInProgress>,
    manifest_object: Option<ObjectWriter>,
    spool: Option<PathBuf>,
    files: u64,
    bytes: u64,
    record: Option<BackupRecord>,
}

impl RepoSink {
    /// A sink for a new backup into `repo`; `rt` reaches the runtime the store runs on.
    pub fn new(rt: Handle, repo: Repo, meta: BackupMeta, settings: SinkSettings) -> Self {
        RepoSink {
            rt,
            repo,
            meta,
            settings,
            pack: None,
            pack_no: 0,
            objects: Vec::new(),
            index: None,
            archive: "base".into(),
            tablespaces: Vec::new(),
            file: None,
            manifest: None,
            manifest_object: None,
            spool: None,
            files: 0,
            bytes: 0,
            record: None,
        }
    }

    /// The commit record, once [`BackupSink::finish`] wrote it.
    pub fn record(&self) -> Option<&BackupRecord> {
        self.record.as_ref()
    }

    fn index_line(&mut self, e: &IndexEntry) -> Result<(), SinkError> {
        if self.index.is_none() {
            let w = ObjectWriter::start(&self.rt, &self.repo, layout::index_key(&self.meta.id))?;
            let enc = zstd::stream::write::Encoder::new(Vec::new(), 3)
                .map_err(|e| SinkError::with_source("zstd", e))?;
            self.index = Some(IndexWriter(w, enc));
        }
        let mut line =
            serde_json::to_vec(e).map_err(|e| SinkError::new(format!("index entry: {e}")))?;
        line.push(b'\n');
        let rt = self.rt.clone();
        let Some(IndexWriter(w, enc)) = &mut self.index else {
            return Ok(());
        };
        std::io::Write::write_all(enc, &line).map_err(|e| SinkError::with_source("zstd", e))?;
        if enc.get_ref().len() >= WRITE_PIECE {
            let out = std::mem::take(enc.get_mut());
            w.write(&rt, &out)?;
        }
        Ok(())
    }

    /// The pack to append a new file to (a new one past the size limit).
    fn pack_for_new_file(&mut self) -> Result<(), SinkError> {
        let full = self
            .pack
            .as_ref()
            .is_some_and(|p| p.written >= self.settings.max_pack_bytes);
        if full {
            if let Some(p) = self.pack.take() {
                self.objects.push(p.finish(&self.rt)?);
                self.pack_no += 1;
            }
        }
        if self.pack.is_none() {
            self.pack = Some(ObjectWriter::start(
                &self.rt,
                &self.repo,
                layout::pack_key(&self.meta.id, self.pack_no),
            )?);
        }
        Ok(())
    }

    fn begin_file(
        &mut self,
        archive: &str,
        path: &str,
        mode: u32,
        mtime: i64,
    ) -> Result<FileInProgress, SinkError> {
        self.pack_for_new_file()?;
        let offset = self.pack.as_ref().map_or(0, |p| p.written);
        Ok(FileInProgress {
            entry: IndexEntry {
                archive: archive.to_owned(),
                path: path.to_owned(),
                kind: EntryType::File,
                mode,
                mtime,
                size: 0,
                link: None,
                pack: self.pack_no,
                offset,
                chunks: Vec::new(),
            },
            chunk: Vec::with_capacity(CHUNK),
        })
    }

    fn flush_chunk(&mut self, f: &mut FileInProgress) -> Result<(), SinkError> {
        if f.chunk.is_empty() {
            return Ok(());
        }
        let stored = match self.settings.compression {
            ChunkCompression::None => std::mem::take(&mut f.chunk),
            ChunkCompression::Zstd(level) => {
                let c = zstd::bulk::compress(&f.chunk, level)
                    .map_err(|e| SinkError::with_source("zstd", e))?;
                f.chunk.clear();
                c
            }
        };
        let to = if f.entry.archive == "meta" {
            self.manifest_object.as_mut()
        } else {
            self.pack.as_mut()
        };
        let p = to.ok_or_else(|| SinkError::new("no object open for the file's data"))?;
        p.write(&self.rt, &stored)?;
        f.entry.chunks.push(stored.len() as u32);
        Ok(())
    }

    fn feed(&mut self, f: &mut FileInProgress, mut data: &[u8]) -> Result<(), SinkError> {
        while !data.is_empty() {
            let room = CHUNK - f.chunk.len();
            let n = room.min(data.len());
            f.chunk.extend_from_slice(&data[..n]);
            f.entry.size += n as u64;
            data = &data[n..];
            if f.chunk.len() == CHUNK {
                self.flush_chunk(f)?;
            }
        }
        Ok(())
    }

    fn end_file(&mut self, mut f: FileInProgress) -> Result<(), SinkError> {
        self.flush_chunk(&mut f)?;
        if f.entry.archive != "meta" {
            self.files += 1;
            self.bytes += f.entry.size;
        }
        self.index_line(&f.entry)
    }

    /// Packs the spooled WAL as archive `pg_wal` (directories first, then files, by name).
    fn pack_spool(&mut self, dir: &Path) -> Result<(), SinkError> {
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((d, rel)) = stack.pop() {
            let mut names: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
            for e in std::fs::read_dir(&d)
                .map_err(|e| SinkError::io("could not read directory", &d, e))?
            {
                let e = e.map_err(|e| SinkError::io("could not read directory", &d, e))?;
                let m = e
                    .metadata()
                    .map_err(|er| SinkError::io("could not stat", &e.path(), er))?;
                names.push((e.file_name().to_string_lossy().into_owned(), e.path(), m));
            }
            names.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, path, m) in names {
                let p = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                use std::os::unix::fs::MetadataExt;
                if m.is_dir() {
                    self.index_line(&IndexEntry {
                        archive: "pg_wal".into(),
                        path: p.clone(),
                        kind: EntryType::Dir,
                        mode: 0o700,
                        mtime: m.mtime(),
                        size: 0,
                        link: None,
                        pack: 0,
                        offset: 0,
                        chunks: Vec::new(),
                    })?;
                    stack.push((path, p));
                } else if m.is_file() {
                    let mut f = self.begin_file("pg_wal", &p, 0o600, m.mtime())?;
                    let mut file = std::fs::File::open(&path)
                        .map_err(|e| SinkError::io("could not open", &path, e))?;
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let n = std::io::Read::read(&mut file, &mut buf)
                            .map_err(|e| SinkError::io("could not read", &path, e))?;
                        if n == 0 {
                            break;
                        }
                        self.feed(&mut f, &buf[..n])?;
                    }
                    self.end_file(f)?;
                }
            }
        }
        Ok(())
    }

    fn remove_spool(&mut self) {
        if let Some(d) = self.spool.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl BackupSink for RepoSink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.archive = match a.tablespace_oid {
            None => "base".into(),
            Some(oid) => {
                self.tablespaces.push(TablespaceRecord {
                    oid,
                    location: a.tablespace_location.clone().unwrap_or_default(),
                });
                oid.to_string()
            }
        };
        Ok(())
    }

    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        match e.kind {
            EntryKind::File => {
                let archive = self.archive.clone();
                let f = self.begin_file(&archive, &e.path, e.mode, e.mtime)?;
                self.file = Some(f);
                Ok(())
            }
            EntryKind::Directory | EntryKind::Symlink => {
                let entry = IndexEntry {
                    archive: self.archive.clone(),
                    path: e.path.clone(),
                    kind: if e.kind == EntryKind::Directory {
                        EntryType::Dir
                    } else {
                        EntryType::Link
                    },
                    mode: e.mode,
                    mtime: e.mtime,
                    size: 0,
                    link: e.link_target.clone(),
                    pack: 0,
                    offset: 0,
                    chunks: Vec::new(),
                };
                self.index_line(&entry)
            }
        }
    }

    fn entry_data(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let Some(mut f) = self.file.take() else {
            return Ok(());
        };
        let r = self.feed(&mut f, data);
        self.file = Some(f);
        r
    }

    fn entry_end(&mut self) -> Result<(), SinkError> {
        match self.file.take() {
            Some(f) => self.end_file(f),
            None => Ok(()),
        }
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let mut f = match self.manifest.take() {
            Some(f) => f,
            None => {
                // in an object of its own: the packs may still grow (streamed WAL)
                self.manifest_object = Some(ObjectWriter::start(
                    &self.rt,
                    &self.repo,
                    layout::manifest_key(&self.meta.id),
                )?);
                FileInProgress {
                    entry: IndexEntry {
                        archive: "meta".into(),
                        path: "backup_manifest".into(),
                        kind: EntryType::File,
                        mode: 0o600,
                        mtime: self.meta.start_time,
                        size: 0,
                        link: None,
                        pack: 0,
                        offset: 0,
                        chunks: Vec::new(),
                    },
                    chunk: Vec::with_capacity(CHUNK),
                }
            }
        };
        let r = self.feed(&mut f, chunk);
        self.manifest = Some(f);
        r
    }

    fn wal_dir(&mut self) -> Result<Option<PathBuf>, SinkError> {
        let dir = self
            .settings
            .spool_parent
            .join(format!("pgrepl-wal-spool-{}", self.meta.id));
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&dir)
            .map_err(|e| SinkError::io("could not create directory", &dir, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| SinkError::io("could not chmod", &dir, e))?;
        self.spool = Some(dir.clone());
        Ok(Some(dir))
    }

    fn wal_done(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        if let Some(dir) = self.spool.clone() {
            self.pack_spool(&dir)?;
            self.remove_spool();
        }
        match self.manifest.take() {
            Some(f) => self.end_file(f)?,
            None => return Err(SinkError::new("the server sent no backup manifest")),
        }
        if let Some(p) = self.pack.take() {
            self.objects.push(p.finish(&self.rt)?);
        }
        if let Some(m) = self.manifest_object.take() {
            self.objects.push(m.finish(&self.rt)?);
        }
        if let Some(IndexWriter(mut w, enc)) = self.index.take() {
            let rest = enc
                .finish()
                .map_err(|e| SinkError::with_source("zstd", e))?;
            w.write(&self.rt, &rest)?;
            self.objects.push(w.finish(&self.rt)?);
        }
        let end_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let record = BackupRecord {
            format: layout::FORMAT_VERSION,
            id: self.meta.id.clone(),
            kind: self.meta.kind,
            parent: self.meta.parent.clone(),
            full_reason: self.meta.full_reason.clone(),
            system_identifier: self.meta.system_identifier,
            server_version: self.meta.server_version,
            timeline: end.timeline.0,
            start_lsn: end.start_lsn,
            end_lsn: end.end_lsn,
            start_time: self.meta.start_time,
            end_time,
            wal_segment_size: self.meta.wal_segment_size,
            files: self.files,
            bytes: self.bytes,
            stored_bytes: self.objects.iter().map(|o| o.size).sum(),
            compression: self.settings.compression.name().into(),
            tablespaces: self.tablespaces.clone(),
            objects: self.objects.clone(),
        };
        // the commit: last, and create-only
        self.rt
            .block_on(self.repo.put_record(
                &layout::commit_key(&self.meta.id),
                &record,
                PutMode::Create,
            ))
            .map_err(sink_err)?;
        self.record = Some(record);
        Ok(())
    }

    fn abort(&mut self) {
        if let Some(p) = self.pack.take() {
            p.abort(&self.rt);
        }
        if let Some(m) = self.manifest_object.take() {
            m.abort(&self.rt);
        }
        if let Some(IndexWriter(w, _)) = self.index.take() {
            w.abort(&self.rt);
        }
        for o in std::mem::take(&mut self.objects) {
            let _ = self.rt.block_on(self.repo.store().delete(&o.key));
        }
        self.remove_spool();
    }
}

impl Drop for RepoSink {
    fn drop(&mut self) {
        self.remove_spool();
    }
}
