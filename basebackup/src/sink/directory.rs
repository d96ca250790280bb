//! The plain-format sink (as `pg_basebackup -Fp`): entries become files under a temporary
//! directory beside the target, which is fsynced and renamed to the target only when the backup
//! is complete. Tablespaces are written to their (possibly remapped) locations, and
//! `pg_tblspc/<oid>` links point there; with a separate WAL directory (`--waldir`) the WAL goes
//! there directly and `pg_wal` is a link to it.
//!
//! Every entry is written beneath its archive's root through a [`SafeDir`]: no link below a
//! root is ever followed, whatever the archive holds (which entries are allowed at all was
//! checked by the archive's [`crate::archive_rules::EntryRules`] before the entry got here).

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::outfile::{OutFile, Pace};
use super::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use crate::safe_dir::{split_entry_path, SafeDir};
use crate::standby::StandbySettings;
use crate::tar::{EntryHeader, EntryKind};

/// `-T OLD=NEW`: write the tablespace at OLD on the server to NEW.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceMapping {
    /// The tablespace's location on the server.
    pub old: PathBuf,
    /// Where to write it.
    pub new: PathBuf,
}

/// A `-T OLD=NEW` argument that cannot be used (pg_basebackup's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// More than one unescaped '='.
    #[error("multiple \"=\" signs in tablespace mapping")]
    MultipleEquals,
    /// Not `OLD=NEW` with both sides non-empty.
    #[error("invalid tablespace mapping format \"{0}\", must be \"OLDDIR=NEWDIR\"")]
    Format(String),
    /// OLD is relative.
    #[error("old directory is not an absolute path in tablespace mapping: {0}")]
    OldNotAbsolute(String),
    /// NEW is relative.
    #[error("new directory is not an absolute path in tablespace mapping: {0}")]
    NewNotAbsolute(String),
}

impl TablespaceMapping {
    /// Parses `OLD=NEW` (`\=` escapes an '='), both absolute, as pg_basebackup does.
    pub fn parse(s: &str) -> Result<Self, MappingError> {
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
                    return Err(MappingError::MultipleEquals);
                }
                seen_eq = true;
            } else if seen_eq {
                new.push(c);
            } else {
                old.push(c);
            }
        }
        if !seen_eq || old.is_empty() || new.is_empty() {
            return Err(MappingError::Format(s.to_owned()));
        }
        if !old.starts_with('/') {
            return Err(MappingError::OldNotAbsolute(old));
        }
        if !new.starts_with('/') {
            return Err(MappingError::NewNotAbsolute(new));
        }
        Ok(TablespaceMapping {
            old: PathBuf::from(old),
            new: PathBuf::from(new),
        })
    }
}

/// A step run on a finished plain backup before it is renamed into place.
pub type Finishing = Box<dyn FnMut(&Path) -> Result<(), SinkError> + Send>;

/// Where the entries of the current archive go.
#[derive(Debug)]
struct Root {
    dir: SafeDir,
    /// The directory the previous file went to (relative to `dir`), known to exist.
    last_parent: Option<(PathBuf, SafeDir)>,
    /// Whether this is the base archive (where `pg_wal` and the tablespace links are).
    base: bool,
}

/// Writes a plain data directory.
pub struct DirectorySink {
    target: PathBuf,
    staging: PathBuf,
    staging_dir: SafeDir,
    mappings: Vec<TablespaceMapping>,
    sync: bool,
    sync_method: SyncMethod,
    /// How the disk keeps up with direct writes (without sync, a slow one gets page-cache
    /// writes instead).
    pace: Arc<Pace>,
    root: Option<Root>,
    file: Option<(OutFile, PathBuf)>,
    /// Tablespace directories written, and whether this sink created them.
    tablespace_dirs: Vec<(PathBuf, bool)>,
    /// `--waldir`: the directory and, once made, the link `pg_wal` to it.
    wal_dir: Option<SafeDir>,
    wal_dir_created: bool,
    wal_linked: bool,
    manifest: Option<File>,
    standby: Option<StandbySettings>,
    finishing: Option<Finishing>,
    keep_on_abort: bool,
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

/// Threads fsyncing a tree. An fsync is mostly a wait for the device's cache flush, and
/// flushes that overlap are shared: 1000 files of 8 kB took 0.45 s one at a time, 0.24 s with
/// 8 threads and 0.17 s with 32; a scale-100 data directory spent 0.83 s in 1018 fsyncs one
/// at a time.
const FSYNC_THREADS: usize = 16;

/// fsync every file and directory under `root`, as fsync_pgdata does (links are not followed:
/// tablespaces and a separate WAL directory are synced as trees of their own), from
/// [`FSYNC_THREADS`] threads. The first failure is reported.
pub(crate) fn fsync_tree(root: &Path) -> Result<(), SinkError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(256);
    let rx = Mutex::new(rx);
    let failure: Mutex<Option<SinkError>> = Mutex::new(None);
    let failed = AtomicBool::new(false);
    let fsync = |p: &Path| {
        if let Err(e) = File::open(p).and_then(|f| f.sync_all()) {
            failed.store(true, Ordering::Relaxed);
            failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| SinkError::io("could not fsync", p, e));
        }
    };
    let walked = std::thread::scope(|s| {
        let mut workers = 0;
        for _ in 0..FSYNC_THREADS {
            let spawned = std::thread::Builder::new()
                .name("pgrepl-fsync".into())
                .spawn_scoped(s, || loop {
                    let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    match next {
                        Ok(p) => fsync(&p),
                        Err(_) => return,
                    }
                });
            if spawned.is_err() {
                break;
            }
            workers += 1;
        }
        // without a thread, the walk makes the fsyncs itself
        let walked = walk_files(root, &failed, &mut |p| {
            if workers == 0 {
                fsync(&p);
            } else {
                let _ = tx.send(p);
            }
        });
        drop(tx);
        walked
    });
    walked?;
    match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Calls `each` with every regular file and directory under `root` (a directory after its
/// entries), without following links; stops early once `stop` is set.
fn walk_files(
    root: &Path,
    stop: &AtomicBool,
    each: &mut dyn FnMut(PathBuf),
) -> Result<(), SinkError> {
    if stop.load(Ordering::Relaxed) {
        return Ok(());
    }
    let meta = fs::symlink_metadata(root).map_err(|e| SinkError::io("could not stat", root, e))?;
    if meta.is_dir() {
        for e in
            fs::read_dir(root).map_err(|e| SinkError::io("could not read directory", root, e))?
        {
            let e = e.map_err(|e| SinkError::io("could not read directory", root, e))?;
            walk_files(&e.path(), stop, each)?;
        }
    } else if !meta.is_file() {
        return Ok(());
    }
    each(root.to_path_buf());
    Ok(())
}

/// Removes what a failed backup wrote into `dir` (a tablespace or WAL directory): the whole
/// directory if the backup created it, else its contents (it was empty before).
fn remove_written(dir: &Path, created: bool) {
    if created {
        let _ = fs::remove_dir_all(dir);
    } else {
        empty_dir(dir);
    }
}

/// Removes what is inside `dir`, keeping `dir`.
fn empty_dir(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let is_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            let _ = if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
        }
    }
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
        if fs::symlink_metadata(&staging).is_ok() {
            fs::remove_dir_all(&staging)
                .or_else(|_| fs::remove_file(&staging))
                .map_err(|e| SinkError::io("could not remove leftover", &staging, e))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(|e| SinkError::io("could not create directory", &staging, e))?;
        let staging_dir = SafeDir::open(&staging)
            .map_err(|e| SinkError::io("could not open directory", &staging, e))?;
        Ok(DirectorySink {
            target: target.to_path_buf(),
            staging,
            staging_dir,
            mappings,
            sync,
            sync_method: SyncMethod::Fsync,
            pace: Pace::new(!sync),
            root: None,
            file: None,
            tablespace_dirs: Vec::new(),
            wal_dir: None,
            wal_dir_created: false,
            wal_linked: false,
            manifest: None,
            standby: None,
            finishing: None,
            keep_on_abort: false,
        })
    }

    /// Runs `f` on the finished directory (still under its temporary name) before it is
    /// synced and renamed: for permissions, or anything else of the caller's.
    pub fn set_finishing(&mut self, f: Finishing) {
        self.finishing = Some(f);
    }

    /// Without sync, writes every file through the page cache from the first byte, instead of
    /// writing large files directly until the disk is seen to hold the backup up. For
    /// incremental backups: most of their files are small pieces of changed blocks, the end of
    /// each direct file waits for the device, and the whole is over before the disk can be
    /// judged. (With sync asked for, this changes nothing: direct writes leave the fsync little
    /// to do.)
    pub fn set_page_cache(&mut self) {
        self.pace.start_buffered();
    }

    /// The pace the sink's large files share.
    pub(crate) fn pace(&self) -> &Arc<Pace> {
        &self.pace
    }

    /// How the finished backup is synced (when syncing at all): fsync by default.
    pub fn set_sync_method(&mut self, method: SyncMethod) {
        self.sync_method = method;
    }

    /// Leaves the partial directory in place when the backup fails (`--no-clean`).
    pub fn set_keep_on_abort(&mut self, keep: bool) {
        self.keep_on_abort = keep;
    }

    /// The staging directory (for the tar sink, which keeps its archives there).
    pub(crate) fn staging_dir(&self) -> &SafeDir {
        &self.staging_dir
    }

    /// `-R`: the finished backup starts as a standby (see [`StandbySettings`]).
    pub fn set_standby(&mut self, settings: StandbySettings) {
        self.standby = Some(settings);
    }

    /// `--waldir`: WAL goes into `dir` (absolute; absent or empty), and `pg_wal` is a link to
    /// it. WAL from the server (`-X fetch`) and streamed WAL (`-X stream`) are written there
    /// directly, and synced there.
    pub fn set_wal_dir(&mut self, dir: &Path) -> Result<(), SinkError> {
        if !dir.is_absolute() {
            return Err(SinkError::new(
                "WAL directory location must be an absolute path",
            ));
        }
        if dir.exists() && !(dir.is_dir() && is_empty_dir(dir)?) {
            return Err(SinkError::new(format!(
                "directory \"{}\" exists but is not empty",
                dir.display()
            )));
        }
        self.wal_dir_created = !dir.exists();
        let d = SafeDir::create(dir, 0o700)
            .map_err(|e| SinkError::io("could not create directory", dir, e))?;
        self.wal_dir = Some(d);
        Ok(())
    }

    fn map(&self, location: &str) -> PathBuf {
        let loc = crate::pathbytes::to_path(location);
        self.mappings
            .iter()
            .find(|m| m.old == loc)
            .map(|m| m.new.clone())
            .unwrap_or(loc)
    }

    /// The link `pg_wal` -> the WAL directory, made once.
    fn link_wal(&mut self) -> Result<(), SinkError> {
        if let (Some(w), false) = (&self.wal_dir, self.wal_linked) {
            self.staging_dir
                .symlink(OsStr::new("pg_wal"), w.path())
                .map_err(|e| {
                    SinkError::io("could not create the link", &self.staging.join("pg_wal"), e)
                })?;
            self.wal_linked = true;
        }
        Ok(())
    }

    fn root(&mut self) -> Result<&mut Root, SinkError> {
        self.root
            .as_mut()
            .ok_or_else(|| SinkError::new("an entry arrived outside any archive"))
    }

    /// The directory an entry's parent is (made when missing), under `dir`.
    fn parent_of<'a>(root: &'a mut Root, parent: &Path) -> Result<&'a SafeDir, SinkError> {
        if root.last_parent.as_ref().map(|(p, _)| p.as_path()) != Some(parent) {
            let d = root.dir.dir(parent, true, 0o700).map_err(|e| {
                SinkError::io(
                    "could not create directory",
                    &root.dir.path().join(parent),
                    e,
                )
            })?;
            root.last_parent = Some((parent.to_path_buf(), d));
        }
        Ok(&root.last_parent.as_ref().expect("set above").1)
    }

    /// Writes the files `-R` asks for into the finished staging directory.
    fn write_standby(&self, s: &StandbySettings) -> Result<(), SinkError> {
        let auto = self.staging.join(crate::standby::AUTO_CONF);
        let mut existing = Vec::new();
        match self
            .staging_dir
            .open_file(OsStr::new(crate::standby::AUTO_CONF))
        {
            Ok(mut f) => {
                f.read_to_end(&mut existing)
                    .map_err(|e| SinkError::io("could not read", &auto, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SinkError::io("could not open", &auto, e)),
        }
        for (name, content) in s.files(existing) {
            let tmp = format!("{name}.pgrepl-tmp");
            let p = self.staging.join(name);
            let mut f = self
                .staging_dir
                .create_file(OsStr::new(&tmp), 0o600, false)
                .map_err(|e| SinkError::io("could not create", &p, e))?;
            f.write_all(&content)
                .map_err(|e| SinkError::io("could not write", &p, e))?;
            drop(f);
            self.staging_dir
                .rename(OsStr::new(&tmp), &self.staging_dir, OsStr::new(name))
                .map_err(|e| SinkError::io("could not write", &p, e))?;
        }
        Ok(())
    }
}

impl BackupSink for DirectorySink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        let ts = a.tablespace_oid.map(|o| o.to_string()).unwrap_or_default();
        let dir = match &a.tablespace_location {
            None => self
                .staging_dir
                .dir(Path::new(""), false, 0o700)
                .map_err(|e| SinkError::io("could not open directory", &self.staging, e))?,
            // An in-place tablespace (allow_in_place_tablespaces) is a directory inside the
            // data directory: its location is pg_tblspc/<oid>, relative to it.
            Some(loc) if !loc.starts_with('/') => {
                if *loc != format!("pg_tblspc/{ts}") {
                    return Err(SinkError::new(format!(
                        "invalid location \"{loc}\" for tablespace {ts}"
                    )));
                }
                self.staging_dir
                    .dir(Path::new(loc), true, 0o700)
                    .map_err(|e| {
                        SinkError::io("could not create directory", &self.staging.join(loc), e)
                    })?
            }
            Some(loc) => {
                let dir = self.map(loc);
                if dir.exists() && !is_empty_dir(&dir)? {
                    return Err(SinkError::new(format!(
                        "directory \"{}\" exists but is not empty (tablespace {ts}; map it elsewhere with -T)",
                        dir.display(),
                    )));
                }
                let created = !dir.exists();
                let d = SafeDir::create(&dir, 0o700)
                    .map_err(|e| SinkError::io("could not create directory", &dir, e))?;
                self.tablespace_dirs.push((dir, created));
                d
            }
        };
        self.root = Some(Root {
            dir,
            last_parent: None,
            base: a.tablespace_oid.is_none(),
        });
        Ok(())
    }

    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        let base = self.root()?.base;
        // --waldir: the base archive's pg_wal goes to the WAL directory
        if base && self.wal_dir.is_some() && (e.path == "pg_wal" || e.path.starts_with("pg_wal/")) {
            self.link_wal()?;
            let Some(rel) = e.path.strip_prefix("pg_wal/") else {
                return Ok(()); // the directory itself: the link stands for it
            };
            let wal = self.wal_dir.as_ref().expect("checked above");
            let mut root = Root {
                dir: wal
                    .dir(Path::new(""), false, 0o700)
                    .map_err(|err| SinkError::io("could not open directory", wal.path(), err))?,
                last_parent: None,
                base: false,
            };
            let entry = EntryHeader {
                path: rel.to_owned(),
                ..e.clone()
            };
            return self.write_entry(&mut root, &entry);
        }
        let mut root = self
            .root
            .take()
            .ok_or_else(|| SinkError::new("an entry arrived outside any archive"))?;
        let r = self.write_entry(&mut root, e);
        self.root = Some(root);
        r
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
        self.root = None;
        self.entry_end()
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let path = self.staging.join("backup_manifest");
        if self.manifest.is_none() {
            let f = self
                .staging_dir
                .create_file(OsStr::new("backup_manifest"), 0o600, false)
                .map_err(|e| SinkError::io("could not create", &path, e))?;
            self.manifest = Some(f);
        }
        let f = self.manifest.as_mut().expect("opened above");
        f.write_all(chunk)
            .map_err(|e| SinkError::io("could not write", &path, e))
    }

    fn wal_dir(&mut self) -> Result<Option<PathBuf>, SinkError> {
        if let Some(w) = &self.wal_dir {
            let p = w.path().to_path_buf();
            self.link_wal()?;
            return Ok(Some(p));
        }
        let d = self.staging.join("pg_wal");
        self.staging_dir
            .dir(Path::new("pg_wal"), true, 0o700)
            .map_err(|e| SinkError::io("could not create directory", &d, e))?;
        Ok(Some(d))
    }

    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        if let Some(mut f) = self.manifest.take() {
            f.flush().map_err(|e| {
                SinkError::io("could not write", &self.staging.join("backup_manifest"), e)
            })?;
        }
        if self.wal_dir.is_some() {
            // -X none with --waldir: the link still stands for the (empty) WAL directory
            self.link_wal()?;
        }
        if let Some(s) = self.standby.clone() {
            self.write_standby(&s)?;
        }
        if let Some(f) = &mut self.finishing {
            f(&self.staging)?;
        }
        if self.sync {
            for (d, _) in &self.tablespace_dirs {
                sync_tree(d, self.sync_method)?;
            }
            if let Some(w) = &self.wal_dir {
                sync_tree(w.path(), self.sync_method)?;
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
        self.manifest = None;
        if self.keep_on_abort {
            return;
        }
        let _ = fs::remove_dir_all(&self.staging);
        for (d, created) in &self.tablespace_dirs {
            remove_written(d, *created);
        }
        if let Some(w) = &self.wal_dir {
            remove_written(w.path(), self.wal_dir_created);
        }
    }
}

impl DirectorySink {
    /// Creates the entry `e` beneath `root`.
    fn write_entry(&mut self, root: &mut Root, e: &EntryHeader) -> Result<(), SinkError> {
        let (parent, name) = split_entry_path(&e.path);
        let shown = crate::pathbytes::join(root.dir.path(), &e.path);
        match e.kind {
            EntryKind::Directory => {
                root.dir
                    .dir(&crate::pathbytes::to_path(&e.path), true, 0o700)
                    .map_err(|err| SinkError::io("could not create directory", &shown, err))?;
            }
            EntryKind::File => {
                let dir = Self::parent_of(root, &parent)?;
                let f = OutFile::create_in(
                    dir,
                    &name,
                    &shown,
                    0o600,
                    Some(e.size),
                    super::outfile::DIRECT_BUF,
                    &self.pace,
                )
                .map_err(|err| SinkError::io("could not create file", &shown, err))?;
                self.file = Some((f, shown));
            }
            EntryKind::Symlink => {
                // only pg_tblspc/<oid> of the base archive gets here: the link follows -T
                let target = self.map(e.link_target.as_deref().unwrap_or_default());
                let dir = Self::parent_of(root, &parent)?;
                dir.symlink(&name, &target)
                    .map_err(|err| SinkError::io("could not create symbolic link", &shown, err))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_to_fsync_is_every_file_and_directory_and_no_link() {
        let root = std::env::temp_dir().join(format!("fsync-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("base/5")).unwrap();
        for i in 0..300 {
            fs::write(root.join(format!("base/5/{i}")), b"x").unwrap();
        }
        fs::write(root.join("PG_VERSION"), b"18").unwrap();
        let outside = std::env::temp_dir().join(format!("fsync-out-{}", std::process::id()));
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("not-ours"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let mut seen = Vec::new();
        walk_files(&root, &AtomicBool::new(false), &mut |p| seen.push(p)).unwrap();
        assert_eq!(
            seen.len(),
            300 + 1 + 3,
            "300 files, PG_VERSION, base/5, base, the root"
        );
        assert!(seen.iter().all(|p| p.starts_with(&root)));
        let pos = |p: &Path| seen.iter().position(|q| q == p).unwrap();
        assert!(pos(&root.join("base/5/7")) < pos(&root.join("base/5")));
        assert!(pos(&root.join("base")) < pos(&root));
        fsync_tree(&root).unwrap();
        let e = fsync_tree(&root.join("absent")).unwrap_err().to_string();
        assert!(e.contains("absent"), "{e}");
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn mappings() {
        let m = TablespaceMapping::parse("/a\\=b=/c").unwrap();
        assert_eq!((m.old, m.new), (PathBuf::from("/a=b"), PathBuf::from("/c")));
        assert!(TablespaceMapping::parse("a=/c").is_err());
        assert!(TablespaceMapping::parse("/a=/b=/c").is_err());
        assert!(TablespaceMapping::parse("/a").is_err());
    }
}
