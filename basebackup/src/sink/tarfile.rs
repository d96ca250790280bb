//! The tar-format sink (as `pg_basebackup -Ft`): each archive is written exactly as the server
//! sent it (so server-compressed archives are kept as they are), plus `backup_manifest`, under a
//! temporary directory renamed to the target when the backup is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::directory::fsync_tree;
use super::{ArchiveInfo, BackupEnd, BackupSink, DirectorySink, SinkError};

/// Writes `base.tar`, `<oid>.tar` and `backup_manifest`.
#[derive(Debug)]
pub struct TarSink {
    // The directory logic (empty target, staging beside it, rename on finish) is the plain sink's.
    dir: DirectorySink,
    staging: PathBuf,
    sync: bool,
    current: Option<(BufWriter<File>, PathBuf)>,
}

impl TarSink {
    /// A sink writing to `target` (absent or empty).
    pub fn new(target: &Path, sync: bool) -> Result<Self, SinkError> {
        let dir = DirectorySink::new(target, Vec::new(), sync)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(TarSink {
            staging: parent.join(format!(".{name}.pgrepl-incomplete")),
            dir,
            sync,
            current: None,
        })
    }
}

impl BackupSink for TarSink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        let path = self.staging.join(&a.name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SinkError::io("could not create file", &path, e))?;
        self.current = Some((BufWriter::with_capacity(1 << 20, f), path));
        Ok(())
    }

    fn archive_raw(&mut self, raw: &[u8]) -> Result<(), SinkError> {
        if let Some((f, p)) = &mut self.current {
            f.write_all(raw)
                .map_err(|e| SinkError::io("could not write to file", p, e))?;
        }
        Ok(())
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        if let Some((mut f, p)) = self.current.take() {
            f.flush()
                .map_err(|e| SinkError::io("could not write to file", &p, e))?;
        }
        Ok(())
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        self.dir.manifest(chunk)
    }

    fn wal_dir(&mut self) -> Result<Option<PathBuf>, SinkError> {
        let d = self.staging.join(".pg_wal.stream");
        std::fs::create_dir_all(&d)
            .map_err(|e| SinkError::io("could not create directory", &d, e))?;
        Ok(Some(d))
    }

    /// Packs the streamed segments into `pg_wal.tar`, as pg_basebackup -Ft -X stream does.
    fn wal_done(&mut self) -> Result<(), SinkError> {
        let src = self.staging.join(".pg_wal.stream");
        let mut names: Vec<String> = fs::read_dir(&src)
            .map_err(|e| SinkError::io("could not read directory", &src, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let path = self.staging.join("pg_wal.tar");
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SinkError::io("could not create file", &path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        let werr = |e| SinkError::io("could not write to file", &path, e);
        for n in &names {
            let file = src.join(n);
            let meta =
                fs::metadata(&file).map_err(|e| SinkError::io("could not stat", &file, e))?;
            let header = crate::tar::encode_header(&crate::tar::EntryHeader {
                path: n.clone(),
                kind: crate::tar::EntryKind::File,
                mode: 0o600,
                size: meta.len(),
                mtime: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
                link_target: None,
            })
            .map_err(SinkError::new)?;
            out.write_all(&header).map_err(werr)?;
            let mut r = File::open(&file).map_err(|e| SinkError::io("could not open", &file, e))?;
            std::io::copy(&mut r, &mut out).map_err(werr)?;
            let pad = (512 - meta.len() % 512) % 512;
            out.write_all(&vec![0u8; pad as usize]).map_err(werr)?;
        }
        out.write_all(&[0u8; 1024]).map_err(werr)?;
        out.flush().map_err(werr)?;
        fs::remove_dir_all(&src).map_err(|e| SinkError::io("could not remove", &src, e))
    }

    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        self.archive_end()?;
        if self.sync {
            fsync_tree(&self.staging)?;
        }
        self.dir.finish(end)
    }

    fn abort(&mut self) {
        self.current = None;
        let _ = fs::remove_dir_all(&self.staging);
    }
}
