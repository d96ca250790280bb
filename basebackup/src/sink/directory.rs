//! The plain-format sink (as `pg_basebackup -Fp`): entries become files under a temporary
//! directory beside the target, which is fsynced and renamed to the target only when the backup
//! is complete. Tablespaces are written to their (possibly remapped) locations, and
//! `pg_tblspc/<oid>` links point there.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::outfile::OutFile;
use super::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use crate::tar::{EntryHeader, EntryKind};

/// `-T OLD=NEW`: write the tablespace at OLD on the server to NEW.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceMapping {
    /// The tablespace's location on the server.
    pub old: PathBuf,
    /// Where to write it.
    pub new: PathBuf,
}

impl TablespaceMapping {
    /// Parses `OLD=NEW` (`\=` escapes an '='), both absolute, as pg_basebackup does.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut old = String::new();
        let mut new = String::new();
        let mut seen_eq = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' && chars.peek() == Some(&'=') {
                let c = chars.next().unwrap_or('=');
                if seen_eq {
                    new.push(c)
                } else {
                    old.push(c)
                }
            } else if c == '=' {
                if seen_eq {
                    return Err("multiple \"=\" signs in tablespace mapping".into());
                }
                seen_eq = true;
            } else if seen_eq {
                new.push(c);
            } else {
                old.push(c);
            }
        }
        if !seen_eq || old.is_empty() || new.is_empty() {
            return Err(format!(
                "invalid tablespace mapping format \"{s}\", must be \"OLDDIR=NEWDIR\""
            ));
        }
        if !old.starts_with('/') {
            return Err(format!(
                "old directory is not an absolute path in tablespace mapping: {old}"
            ));
        }
        if !new.starts_with('/') {
            return Err(format!(
                "new directory is not an absolute path in tablespace mapping: {new}"
            ));
        }
        Ok(TablespaceMapping {
            old: PathBuf::from(old),
            new: PathBuf::from(new),
        })
    }
}

/// A step run on a finished plain backup before it is renamed into place.
pub type Finishing = Box<dyn FnMut(&Path) -> Result<(), SinkError> + Send>;

/// Writes a plain data directory.
pub struct DirectorySink {
    target: PathBuf,
    staging: PathBuf,
    mappings: Vec<TablespaceMapping>,
    sync: bool,
    sync_method: SyncMethod,
    root: PathBuf,
    file: Option<(OutFile, PathBuf)>,
    tablespace_dirs: Vec<PathBuf>,
    finishing: Option<Finishing>,
    keep_on_abort: bool,
    /// The directory the previous file went to, known to exist.
    last_parent: Option<PathBuf>,
}

impl std::fmt::Debug for DirectorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySink")
            .field("target", &self.target)
            .field("staging", &self.staging)
            .finish_non_exhaustive()
    }
}

fn mkdir_private(p: &Path) -> Result<(), SinkError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(|e| SinkError::io("could not create directory", p, e))
}

fn is_empty_dir(p: &Path) -> Result<bool, SinkError> {
    Ok(fs::read_dir(p)
        .map_err(|e| SinkError::io("could not read directory", p, e))?
        .next()
        .is_none())
}

/// How a finished backup (or combined directory) is made durable (`--sync-method`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMethod {
    /// fsync every file and directory, as PostgreSQL's tools do by default.
    #[default]
    Fsync,
    /// One `syncfs(2)` per file system holding the output: cheaper with many files, but it
    /// also writes out whatever else is dirty on that file system.
    Syncfs,
}

impl std::str::FromStr for SyncMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(SyncMethod::Fsync),
            "syncfs" => Ok(SyncMethod::Syncfs),
            _ => Err(format!("unrecognized sync method: {s}")),
        }
    }
}

/// Makes everything under `root` durable with `method`.
pub(crate) fn sync_tree(root: &Path, method: SyncMethod) -> Result<(), SinkError> {
    match method {
        SyncMethod::Fsync => fsync_tree(root),
        SyncMethod::Syncfs => File::open(root)
            .and_then(|f| crate::reflink::syncfs(&f))
            .map_err(|e| SinkError::io("could not synchronize file system for", root, e)),
    }
}

/// fsync every file and directory under `root`, as fsync_pgdata does.
pub(crate) fn fsync_tree(root: &Path) -> Result<(), SinkError> {
    let meta = fs::symlink_metadata(root).map_err(|e| SinkError::io("could not stat", root, e))?;
    if meta.is_dir() {
        for e in
            fs::read_dir(root).map_err(|e| SinkError::io("could not read directory", root, e))?
        {
            let e = e.map_err(|e| SinkError::io("could not read directory", root, e))?;
            fsync_tree(&e.path())?;
        }
    } else if !meta.is_file() {
        return Ok(());
    }
    File::open(root)
        .and_then(|f| f.sync_all())
        .map_err(|e| SinkError::io("could not fsync", root, e))
}

impl DirectorySink {
    /// A sink writing to `target`, which must not exist or be an empty directory.
    pub fn new(
        target: &Path,
        mappings: Vec<TablespaceMapping>,
        sync: bool,
    ) -> Result<Self, SinkError> {
        if target.exists() && !(target.is_dir() && is_empty_dir(target)?) {
            return Err(SinkError::new(format!(
                "directory \"{}\" exists but is not empty",
                target.display()
            )));
        }
        let name = target.file_name().ok_or_else(|| {
            SinkError::new(format!("invalid target directory \"{}\"", target.display()))
        })?;
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        mkdir_private(parent)?;
        let staging = parent.join(format!(".{}.pgrepl-incomplete", name.to_string_lossy()));
        if staging.exists() {
            fs::remove_dir_all(&staging)
                .map_err(|e| SinkError::io("could not remove leftover", &staging, e))?;
        }
        mkdir_private(&staging)?;
        Ok(DirectorySink {
            target: target.to_path_buf(),
            root: staging.clone(),
            staging,
            mappings,
            sync,
            sync_method: SyncMethod::Fsync,
            file: None,
            tablespace_dirs: Vec::new(),
            finishing: None,
            keep_on_abort: false,
            last_parent: None,
        })
    }

    /// Runs `f` on the finished directory (still under its temporary name) before it is
    /// synced and renamed: for recovery settings, a separate WAL directory, permissions.
    pub fn set_finishing(&mut self, f: Finishing) {
        self.finishing = Some(f);
    }

    /// How the finished backup is synced (when syncing at all): fsync by default.
    pub fn set_sync_method(&mut self, method: SyncMethod) {
        self.sync_method = method;
    }

    /// Leaves the partial directory in place when the backup fails (`--no-clean`).
    pub fn set_keep_on_abort(&mut self, keep: bool) {
        self.keep_on_abort = keep;
    }

    fn map(&self, location: &str) -> PathBuf {
        let loc = Path::new(location);
        self.mappings
            .iter()
            .find(|m| m.old == loc)
            .map(|m| m.new.clone())
            .unwrap_or_else(|| loc.to_path_buf())
    }
}

impl BackupSink for DirectorySink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.root = match &a.tablespace_location {
            None => self.staging.clone(),
            // An in-place tablespace (allow_in_place_tablespaces) is a directory inside the
            // data directory: its location is relative to it, never to our working directory.
            Some(loc) if Path::new(loc).is_relative() => {
                let rel = crate::pathbytes::to_path(loc);
                if rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(SinkError::new(format!(
                        "invalid location \"{loc}\" for tablespace {}",
                        a.tablespace_oid.map(|o| o.to_string()).unwrap_or_default()
                    )));
                }
                let dir = self.staging.join(rel);
                mkdir_private(&dir)?;
                dir
            }
            Some(loc) => {
                let dir = self.map(loc);
                if dir.exists() && !is_empty_dir(&dir)? {
                    return Err(SinkError::new(format!(
                        "directory \"{}\" exists but is not empty (tablespace {}; map it elsewhere with -T)",
                        dir.display(),
                        a.tablespace_oid.map(|o| o.to_string()).unwrap_or_default()
                    )));
                }
                mkdir_private(&dir)?;
                self.tablespace_dirs.push(dir.clone());
                dir
            }
        };
        Ok(())
    }

    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        let path = crate::pathbytes::join(&self.root, &e.path);
        match e.kind {
            EntryKind::Directory => mkdir_private(&path)?,
            EntryKind::File => {
                if let Some(parent) = path.parent() {
                    // files come directory by directory: create each parent once
                    if self.last_parent.as_deref() != Some(parent) {
                        mkdir_private(parent)?;
                        self.last_parent = Some(parent.to_path_buf());
                    }
                }
                let f = OutFile::create(&path, 0o600, Some(e.size))
                    .map_err(|err| SinkError::io("could not create file", &path, err))?;
                self.file = Some((f, path));
            }
            EntryKind::Symlink => {
                let target = e.link_target.clone().unwrap_or_default();
                // tablespace links follow the mapping
                let target = if e.path.starts_with("pg_tblspc/") {
                    self.map(&target)
                } else {
                    crate::pathbytes::to_path(&target)
                };
                if let Some(parent) = path.parent() {
                    mkdir_private(parent)?;
                }
                std::os::unix::fs::symlink(&target, &path)
                    .map_err(|err| SinkError::io("could not create symbolic link", &path, err))?;
            }
        }
        Ok(())
    }

    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        if let Some((f, path)) = &mut self.file {
            f.write_all(d)
                .map_err(|e| SinkError::io("could not write to file", path, e))?;
        }
        Ok(())
    }

    fn entry_end(&mut self) -> Result<(), SinkError> {
        if let Some((f, path)) = self.file.take() {
            f.finish()
                .map_err(|e| SinkError::io("could not write to file", &path, e))?;
        }
        Ok(())
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        self.entry_end()
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let path = self.staging.join("backup_manifest");
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| SinkError::io("could not write", &path, e))?;
        f.write_all(chunk)
            .map_err(|e| SinkError::io("could not write", &path, e))
    }

    fn wal_dir(&mut self) -> Result<Option<PathBuf>, SinkError> {
        let d = self.staging.join("pg_wal");
        mkdir_private(&d)?;
        Ok(Some(d))
    }

    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        if let Some(f) = &mut self.finishing {
            f(&self.staging)?;
        }
        if self.sync {
            for d in &self.tablespace_dirs {
                sync_tree(d, self.sync_method)?;
            }
            sync_tree(&self.staging, self.sync_method)?;
        }
        if self.target.exists() {
            // an empty target directory (checked at the start) is replaced
            fs::remove_dir(&self.target)
                .map_err(|e| SinkError::io("could not replace", &self.target, e))?;
        }
        fs::rename(&self.staging, &self.target).map_err(|e| {
            SinkError::io("could not rename the finished backup to", &self.target, e)
        })?;
        if self.sync {
            if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| SinkError::io("could not fsync", parent, e))?;
            }
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.file = None;
        if self.keep_on_abort {
            return;
        }
        let _ = fs::remove_dir_all(&self.staging);
        for d in &self.tablespace_dirs {
            if let Ok(entries) = fs::read_dir(d) {
                for e in entries.flatten() {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings() {
        let m = TablespaceMapping::parse("/a\\=b=/c").unwrap();
        assert_eq!((m.old, m.new), (PathBuf::from("/a=b"), PathBuf::from("/c")));
        assert!(TablespaceMapping::parse("a=/c").is_err());
        assert!(TablespaceMapping::parse("/a=/b=/c").is_err());
        assert!(TablespaceMapping::parse("/a").is_err());
    }
}
