//! A backup on disk as a set of files that can be read at any offset: a plain directory
//! (tablespace links followed), or a tar backup (`base.tar`, `<oid>.tar`, `pg_wal.tar`, each
//! optionally `.gz` / `.zst`) indexed in place. Compressed archives cannot be read at an offset,
//! so they are decompressed once into a scratch tar that is indexed the same way and removed with
//! the source.
//!
//! Paths are manifest-relative: `pg_tblspc/<oid>/...` for tablespaces, `pg_wal/...` for WAL.
//!
//! A backup kept elsewhere (a repository in object storage) is a source too: its files carry a
//! [`RangeRead`] instead of a local path, and [`BackupSource::from_parts`] builds it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::decompress::ArchiveCompression;
use crate::tar::{EntryKind, TarEvent};

static SCRATCH_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A backup on disk that cannot be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A file or directory could not be read (`what` says how far it got).
    #[error("could not {what} \"{}\": {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("open backup", "read directory", ...).
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The backup is not a directory.
    #[error("backup \"{}\" is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// An archive of a tar backup is malformed, holds what a backup may not, or does not
    /// decompress.
    #[error(transparent)]
    Archive(crate::archive_file::ArchiveFileError),
    /// A file of the backup directory is not an archive of a tar backup.
    #[error("\"{}\": not an archive", path.display())]
    NotAnArchive {
        /// The file.
        path: PathBuf,
    },
    /// A file read whole (a label, a map, pg_control) is larger than such a file can be.
    #[error("\"{path}\" is {size} bytes, more than the {max} bytes such a file can have")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The most accepted.
        max: u64,
    },
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SourceError + 'a {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Bytes that can be read at any offset: a file of a backup kept somewhere other than a local
/// directory. Reads are blocking (combine runs on threads of its own).
pub trait RangeRead: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`, or fails (a short read is an error).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
pub struct FileLoc {
    /// The file holding them (the file itself, or an archive); for a file with a `reader`, a
    /// name for messages.
    pub path: PathBuf,
    /// Offset of the first byte in `path` (or in the reader).
    pub offset: u64,
    /// Length.
    pub size: u64,
    /// Modification time (Unix seconds).
    pub mtime: i64,
    /// Read through this instead of opening `path`.
    pub reader: Option<std::sync::Arc<dyn RangeRead>>,
}

impl FileLoc {
    /// Bytes of a local file (or archive) at `offset`.
    pub fn local(path: PathBuf, offset: u64, size: u64, mtime: i64) -> Self {
        FileLoc {
            path,
            offset,
            size,
            mtime,
            reader: None,
        }
    }

    /// Whether the bytes are a whole local file of their own (not inside an archive, not
    /// remote): only such a file can be linked or cloned.
    pub fn is_whole_file(&self) -> bool {
        self.reader.is_none() && self.offset == 0 && !is_archive_name(&self.path)
    }

    /// Opens what holds the bytes.
    pub fn open(&self) -> std::io::Result<Opened> {
        match &self.reader {
            Some(r) => Ok(Opened::Remote(r.clone())),
            None => File::open(&self.path).map(Opened::File),
        }
    }

    /// A sequential reader of the file's bytes.
    pub fn reader(&self) -> std::io::Result<LocReader> {
        Ok(LocReader {
            src: self.open()?,
            pos: self.offset,
            end: self.offset + self.size,
        })
    }
}

/// An opened [`FileLoc`]: a local file, or a remote reader.
#[derive(Debug)]
pub enum Opened {
    /// A local file (whole, or an archive holding the bytes).
    File(File),
    /// Read through a [`RangeRead`].
    Remote(std::sync::Arc<dyn RangeRead>),
}

impl Opened {
    /// Fills `buf` from `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        match self {
            Opened::File(f) => f.read_exact_at(buf, offset),
            Opened::Remote(r) => r.read_exact_at(buf, offset),
        }
    }

    /// The local file, when it is one (for copy_file_range, reflinks, links).
    pub fn as_file(&self) -> Option<&File> {
        match self {
            Opened::File(f) => Some(f),
            Opened::Remote(_) => None,
        }
    }
}

/// Reads a [`FileLoc`]'s bytes in order.
#[derive(Debug)]
pub struct LocReader {
    src: Opened,
    pos: u64,
    end: u64,
}

impl std::io::Read for LocReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.end - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn is_archive_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains(".tar"))
}

/// A tablespace of the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    /// Its OID (the name under `pg_tblspc`).
    pub oid: String,
    /// Its location on the server when the backup was taken (the link target, or the path in
    /// `tablespace_map`).
    pub location: PathBuf,
}

/// An opened backup.
#[derive(Debug)]
pub struct BackupSource {
    /// The backup's directory, as given (for a remote backup, its name).
    pub root: PathBuf,
    /// Its backup_manifest, if it has one.
    pub manifest: Option<FileLoc>,
    /// Whether it is a tar backup.
    pub is_tar: bool,
    /// Files by manifest-relative path.
    pub files: BTreeMap<String, FileLoc>,
    /// Directories by manifest-relative path (`pg_tblspc/<oid>` of linked tablespaces excluded).
    pub dirs: BTreeMap<String, ()>,
    /// Linked tablespaces by OID.
    pub tablespaces: BTreeMap<String, Tablespace>,
    scratch: Vec<PathBuf>,
}

impl Drop for BackupSource {
    fn drop(&mut self) {
        for p in &self.scratch {
            let _ = fs::remove_file(p);
        }
    }
}

fn mtime_of(m: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
}

impl BackupSource {
    /// Opens the backup at `root`. Compressed archives are decompressed into `scratch_dir`.
    pub fn open(root: &Path, scratch_dir: &Path) -> Result<Self, SourceError> {
        let meta = fs::metadata(root).map_err(io(root, "open backup"))?;
        if !meta.is_dir() {
            return Err(SourceError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let is_tar = ["base.tar", "base.tar.gz", "base.tar.zst", "base.tar.lz4"]
            .iter()
            .any(|n| root.join(n).exists());
        let mpath = root.join("backup_manifest");
        let manifest = fs::metadata(&mpath)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| FileLoc::local(mpath, 0, m.len(), mtime_of(&m)));
        let mut s = BackupSource {
            root: root.to_path_buf(),
            manifest,
            is_tar,
            files: BTreeMap::new(),
            dirs: BTreeMap::new(),
            tablespaces: BTreeMap::new(),
            scratch: Vec::new(),
        };
        if is_tar {
            s.index_tar(scratch_dir)?;
        } else {
            s.walk_plain(root, "")?;
        }
        Ok(s)
    }

    /// A backup whose files are read through their [`FileLoc`]s (a remote backup): `name`
    /// stands for its root in messages.
    pub fn from_parts(
        name: PathBuf,
        manifest: Option<FileLoc>,
        files: BTreeMap<String, FileLoc>,
        dirs: BTreeMap<String, ()>,
        tablespaces: BTreeMap<String, Tablespace>,
    ) -> Self {
        BackupSource {
            root: name,
            manifest,
            is_tar: false,
            files,
            dirs,
            tablespaces,
            scratch: Vec::new(),
        }
    }

    /// Reads a whole small file of the backup (a label, a map, pg_control), if present; one
    /// larger than 16 MiB is refused rather than read into memory.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, SourceError> {
        const MAX: u64 = 16 << 20;
        let Some(loc) = self.files.get(rel) else {
            return Ok(None);
        };
        if loc.size > MAX {
            return Err(SourceError::TooLarge {
                path: self.describe(rel),
                size: loc.size,
                max: MAX,
            });
        }
        let f = loc.open().map_err(io(&loc.path, "open file"))?;
        let mut buf = vec![0u8; loc.size as usize];
        f.read_exact_at(&mut buf, loc.offset)
            .map_err(io(&loc.path, "read a file of the backup from"))?;
        Ok(Some(buf))
    }

    /// A name for messages: the backup path and the file.
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.root.display())
    }

    fn walk_plain(&mut self, dir: &Path, rel: &str) -> Result<(), SourceError> {
        let entries = fs::read_dir(dir).map_err(io(dir, "open directory"))?;
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for e in entries {
            let e = e.map_err(io(dir, "read directory"))?;
            let name = crate::pathbytes::from_os(&e.file_name());
            names.push((name, e.path()));
        }
        names.sort();
        for (name, path) in names {
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let lmeta = fs::symlink_metadata(&path).map_err(io(&path, "stat"))?;
            if lmeta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(io(&path, "read link"))?;
                if rel == "pg_tblspc" {
                    self.tablespaces.insert(
                        name.clone(),
                        Tablespace {
                            oid: name.clone(),
                            location: target,
                        },
                    );
                    self.walk_plain(&path, &child)?;
                } else if child == "pg_wal" {
                    self.dirs.insert(child.clone(), ());
                    self.walk_plain(&path, &child)?;
                }
                // other links are not part of a backup; skipped as pg_combinebackup does
                continue;
            }
            if lmeta.is_dir() {
                self.dirs.insert(child.clone(), ());
                self.walk_plain(&path, &child)?;
            } else if lmeta.is_file() {
                self.files.insert(
                    child,
                    FileLoc::local(path, 0, lmeta.len(), mtime_of(&lmeta)),
                );
            }
        }
        Ok(())
    }

    fn index_tar(&mut self, scratch_dir: &Path) -> Result<(), SourceError> {
        let mut names: Vec<String> = fs::read_dir(&self.root)
            .map_err(io(&self.root, "open directory"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n.contains(".tar"))
            .collect();
        names.sort();
        let mut map_text: Option<String> = None;
        for name in names {
            let stem = name.split('.').next().unwrap_or_default().to_owned();
            let prefix = match stem.as_str() {
                "base" => String::new(),
                "pg_wal" => "pg_wal/".to_owned(),
                s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("pg_tblspc/{s}/")
                }
                _ => continue,
            };
            let archive = self.root.join(&name);
            let comp =
                ArchiveCompression::from_name(&name).ok_or_else(|| SourceError::NotAnArchive {
                    path: archive.clone(),
                })?;
            let (readable, mut spill) = if comp == ArchiveCompression::None {
                (archive.clone(), None)
            } else {
                let tmp = scratch_dir.join(format!(
                    ".pgrepl-scratch-{}-{}-{stem}.tar",
                    std::process::id(),
                    SCRATCH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                self.scratch.push(tmp.clone());
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(io(&tmp, "create"))?;
                (tmp, Some(f))
            };
            let mut found_map = None;
            scan_archive(&archive, spill.as_mut(), |h, data_offset| {
                let p = format!("{prefix}{}", h.path);
                match h.kind {
                    EntryKind::Directory => {
                        self.dirs.insert(p, ());
                    }
                    EntryKind::Symlink => {
                        if let (Some(oid), Some(t)) = (p.strip_prefix("pg_tblspc/"), &h.link_target)
                        {
                            if !oid.contains('/') {
                                self.tablespaces.insert(
                                    oid.to_owned(),
                                    Tablespace {
                                        oid: oid.to_owned(),
                                        location: PathBuf::from(t),
                                    },
                                );
                            }
                        }
                    }
                    EntryKind::File => {
                        if p == "tablespace_map" {
                            found_map = Some(());
                        }
                        self.files.insert(
                            p,
                            FileLoc::local(readable.clone(), data_offset, h.size, h.mtime),
                        );
                    }
                }
            })
            .map_err(SourceError::Archive)?;
            if found_map.is_some() {
                map_text = self
                    .read("tablespace_map")?
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
            }
            if !prefix.is_empty() && prefix.starts_with("pg_tblspc/") {
                let oid = stem.clone();
                self.tablespaces.entry(oid.clone()).or_insert(Tablespace {
                    oid,
                    location: PathBuf::new(),
                });
            }
        }
        // tablespace_map: "<oid> <path>" per line (a path may contain spaces)
        if let Some(text) = map_text {
            for line in text.lines() {
                if let Some((oid, path)) = line.split_once(' ') {
                    self.tablespaces.insert(
                        oid.to_owned(),
                        Tablespace {
                            oid: oid.to_owned(),
                            location: PathBuf::from(path),
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

/// Indexes the archive at `path`: calls `on` for each entry with the offset of its data in the
/// uncompressed tar (written to `spill` when given, for a compressed archive).
fn scan_archive(
    path: &Path,
    spill: Option<&mut File>,
    mut on: impl FnMut(&crate::tar::EntryHeader, u64),
) -> Result<(), crate::archive_file::ArchiveFileError> {
    let mut pending: Option<crate::tar::EntryHeader> = None;
    crate::archive_file::read_archive_file(path, spill, |ev, at| match ev {
        TarEvent::Entry(h) => {
            if h.size == 0 {
                on(&h, 0);
            } else {
                pending = Some(h);
            }
        }
        TarEvent::Data(_) => {
            if let Some(h) = pending.take() {
                on(&h, at);
            }
        }
        _ => {}
    })
}
