//! Combining a chain of backups — a full backup, then its incrementals, oldest to newest — into a
//! runnable data directory, as pg_combinebackup does but for PostgreSQL 17 and 18 alike and from
//! plain or tar (`.gz`, `.zst`) backups.
//!
//! Everything that can be checked is checked before anything is written (control files and
//! system identifiers, the backup_label chain, manifests, INCREMENTAL files in the full backup,
//! the output and tablespace directories). The result is written under a temporary name beside
//! the output and renamed when complete, with a backup_manifest (WAL ranges of the newest
//! backup) and the newest backup_label without its INCREMENTAL FROM lines. On error the partial
//! output is removed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::backup_label::{strip_incremental, BackupLabel};
use crate::checksum::{ChecksumKind, FileHasher};
use crate::control::{ControlError, ControlFile};
use crate::incremental::{self, BlockSource, IncrementalError, IncrementalHeader, Version, BLCKSZ};
use crate::manifest::{Manifest, ManifestError, ManifestParser, ManifestWriter};
use crate::safe_dir::SafeDir;
use crate::sink::TablespaceMapping;
use crate::source::{BackupSource, FileLoc, Opened, SourceError};

/// How whole files are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMethod {
    /// read() and write().
    #[default]
    Copy,
    /// copy_file_range(2): the kernel copies (and may share blocks on file systems that can).
    CopyFileRange,
    /// A reflink clone (FICLONE); fails on file systems without it.
    Clone,
    /// A hard link to the source file (`--link`, as pg_combinebackup 18's): no copy at all,
    /// but the result shares its files with the backups, so starting a server on it changes
    /// them. Files inside tar archives are copied.
    Link,
}

/// Options of a combine.
#[derive(Debug, Clone, Default)]
pub struct CombineOptions {
    /// The output directory: absent or empty.
    pub output: PathBuf,
    /// `-T OLD=NEW`: OLD is the tablespace's location in the newest backup.
    pub tablespace_mappings: Vec<TablespaceMapping>,
    /// The manifest's checksum algorithm; by default the newest backup's.
    pub manifest_checksums: Option<ChecksumKind>,
    /// Write no backup_manifest.
    pub no_manifest: bool,
    /// fsync the result before returning.
    pub sync: bool,
    /// How (`sync`): fsync every file, or syncfs.
    pub sync_method: crate::sink::SyncMethod,
    /// How whole files are copied.
    pub copy_method: CopyMethod,
    /// Where compressed archives are decompressed to (default: the output's parent).
    pub scratch_dir: Option<PathBuf>,
    /// Check the chain and the output, write nothing.
    pub dry_run: bool,
}

/// What a combine did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CombineSummary {
    /// Files written.
    pub files: u64,
    /// Of which reconstructed from incremental files.
    pub reconstructed: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The system identifier.
    pub system_identifier: u64,
}

/// Why a combine failed (nothing complete-looking is left behind).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CombineError {
    /// The backups do not form a chain that can be combined, or the output cannot be used
    /// (pg_combinebackup's checks, in its words, naming the backup or directory).
    #[error("{problem}")]
    Chain {
        /// What is wrong.
        problem: String,
    },
    /// A backup cannot be opened or read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A backup's pg_control cannot be used.
    #[error("{path}: {source}")]
    Control {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: ControlError,
    },
    /// A backup's backup_label cannot be used.
    #[error("{path}: {problem}")]
    Label {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A backup's manifest cannot be used.
    #[error("\"{}\": {source}", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// An INCREMENTAL file cannot be used.
    #[error("\"{path}\": {source}")]
    Incremental {
        /// The file.
        path: String,
        /// What is wrong.
        #[source]
        source: IncrementalError,
    },
    /// A file of a backup could not be read.
    #[error("could not read file \"{}\": {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The output could not be written.
    #[error("could not {what} \"{}\": {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn fail<T>(problem: impl Into<String>) -> Result<T, CombineError> {
    Err(CombineError::Chain {
        problem: problem.into(),
    })
}

impl From<String> for CombineError {
    fn from(problem: String) -> Self {
        CombineError::Chain { problem }
    }
}

fn write_err(path: &Path, what: &'static str, source: std::io::Error) -> CombineError {
    CombineError::Write {
        path: path.to_path_buf(),
        what,
        source,
    }
}

struct Input {
    src: BackupSource,
    label_text: String,
    manifest: Option<Manifest>,
    checksums: BTreeMap<String, (ChecksumKind, Vec<u8>, u64)>,
}

fn empty_or_absent(p: &Path) -> Result<bool, CombineError> {
    match fs::read_dir(p) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(write_err(p, "open directory", e)),
    }
}

/// Opens the chain's backups.
fn open_chain(backups: &[PathBuf], scratch: &Path) -> Result<Vec<BackupSource>, CombineError> {
    if backups.is_empty() {
        return fail("no input directories specified");
    }
    let mut sources = Vec::with_capacity(backups.len());
    for b in backups {
        sources.push(BackupSource::open(b, scratch)?);
    }
    Ok(sources)
}

/// Checks the chain (in the order pg_combinebackup checks it) and reads its manifests.
fn load_chain(
    sources: Vec<BackupSource>,
    need_manifest: bool,
) -> Result<(Vec<Input>, u64), CombineError> {
    if sources.is_empty() {
        return fail("no input directories specified");
    }
    // control files: CRC, version, one system identifier
    let mut system_id = None;
    let mut version = None;
    for s in sources.iter().rev() {
        let path = s.describe("global/pg_control");
        let bytes = s
            .read("global/pg_control")?
            .ok_or_else(|| format!("could not open file \"{path}\": No such file or directory"))?;
        let c = match ControlFile::parse(&bytes) {
            Ok(c) => c,
            // a lone full backup of a release before 17 (no incremental backups there) is
            // only copied: its system identifier, the first field of every version, is all
            // that is checked
            Err(crate::control::ControlError::UnknownVersion { version })
                if sources.len() == 1 && bytes.len() >= 8 =>
            {
                let id = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
                system_id = Some(id);
                let _ = version;
                continue;
            }
            Err(source) => {
                return Err(CombineError::Control {
                    path: path.clone(),
                    source,
                })
            }
        };
        match system_id {
            None => system_id = Some(c.system_identifier),
            Some(id) if id != c.system_identifier => {
                return fail(format!(
                    "{path}: expected system identifier {id}, but found {}",
                    c.system_identifier
                ))
            }
            _ => {}
        }
        match version {
            None => version = Some(c.version),
            Some(v) if v != c.version => {
                return fail(format!(
                    "{path}: control file version {} differs from the newest backup's {v}: \
                     backups of different PostgreSQL major versions cannot be combined",
                    c.version
                ))
            }
            _ => {}
        }
        if c.blcksz as u64 != BLCKSZ || c.relseg_size != incremental::RELSEG_SIZE {
            return fail(format!(
                "{path}: block size {} and segment size {} blocks are not supported \
                 (only {BLCKSZ} and {})",
                c.blcksz,
                c.relseg_size,
                incremental::RELSEG_SIZE
            ));
        }
    }
    let system_id = system_id.unwrap_or_default();
    // backup labels, newest to oldest
    let n = sources.len();
    let mut labels: Vec<Option<(String, BackupLabel)>> = vec![None; n];
    let mut check: Option<(Lsn, TimelineId)> = None;
    for i in (0..n).rev() {
        let s = &sources[i];
        let root = s.root.display().to_string();
        let path = s.describe("backup_label");
        let text = s
            .read("backup_label")?
            .ok_or_else(|| format!("could not open file \"{path}\": No such file or directory"))?;
        let text = String::from_utf8(text).map_err(|_| CombineError::Label {
            path: path.clone(),
            problem: "not UTF-8".into(),
        })?;
        let l = BackupLabel::parse(&text).map_err(|e| CombineError::Label {
            path: path.clone(),
            problem: e.to_string(),
        })?;
        if i > 0 && l.incremental_from.is_none() {
            return fail(format!(
                "backup at \"{root}\" is a full backup, but only the first backup should be a full backup"
            ));
        }
        if i == 0 && l.incremental_from.is_some() {
            return fail(format!(
                "backup at \"{root}\" is an incremental backup, but the first backup should be a full backup"
            ));
        }
        if let Some((lsn, tli)) = check {
            if l.start_tli != tli {
                return fail(format!(
                    "backup at \"{root}\" starts on timeline {}, but expected {tli}",
                    l.start_tli
                ));
            }
            if l.start_lsn != lsn {
                return fail(format!(
                    "backup at \"{root}\" starts at LSN {}, but expected {lsn}",
                    l.start_lsn
                ));
            }
        }
        check = l.incremental_from;
        labels[i] = Some((text, l));
    }
    // manifests
    let mut inputs = Vec::with_capacity(n);
    for (i, (src, label)) in sources.into_iter().zip(labels).enumerate() {
        let Some((label_text, _)) = label else {
            return fail("internal error: label missing");
        };
        let mpath = src
            .manifest
            .as_ref()
            .map(|l| l.path.clone())
            .unwrap_or_else(|| src.root.join("backup_manifest"));
        let manifest = match &src.manifest {
            Some(loc) => {
                let r = loc.reader().map_err(|source| CombineError::Read {
                    path: mpath.clone(),
                    source,
                })?;
                Some(
                    ManifestParser::parse_reader(r).map_err(|source| CombineError::Manifest {
                        path: mpath.clone(),
                        source,
                    })?,
                )
            }
            None => {
                if i == n - 1 && need_manifest {
                    return fail(format!(
                        "could not open file \"{}\": No such file or directory (the newest backup's manifest is needed; use --no-manifest to write none)",
                        mpath.display()
                    ));
                }
                None
            }
        };
        if let Some(m) = &manifest {
            if let Some(id) = m.system_identifier {
                if id != system_id {
                    return fail(format!(
                        "\"{}\": manifest system identifier is {id}, but control file has {system_id}",
                        mpath.display()
                    ));
                }
            }
        }
        let checksums = manifest
            .as_ref()
            .map(|m| {
                m.files
                    .iter()
                    .map(|f| {
                        (
                            f.path.clone(),
                            (f.checksum_kind, f.checksum.clone(), f.size),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        inputs.push(Input {
            src,
            label_text,
            manifest,
            checksums,
        });
    }
    // the full backup must hold no INCREMENTAL files
    if let Some(p) = inputs[0]
        .src
        .files
        .keys()
        .find(|p| incremental::reconstructed_path(p).is_some())
    {
        return fail(format!(
            "full backup contains unexpected incremental file \"{}\"",
            inputs[0].src.describe(p)
        ));
    }
    Ok((inputs, system_id))
}

use pgwal::{Lsn, TimelineId};

/// Writes files, keeping what the manifest needs.
struct Writer<'a> {
    opts: &'a CombineOptions,
    kind: ChecksumKind,
    manifest: Option<ManifestWriter>,
    summary: CombineSummary,
    buf: Vec<u8>,
}

/// Where combine writes: the staging directory and each relocated tablespace's directory.
/// Every file and directory is made beneath one of them through a [`SafeDir`], never through
/// a link (the only links in the output are the `pg_tblspc/<oid>` ones made here, and files of
/// those tablespaces are written in their own directories, not through the links).
struct OutTree {
    staging: SafeDir,
    tablespaces: BTreeMap<String, SafeDir>,
}

/// A manifest-relative path placed in the output: the root it goes under and the path below it.
struct OutPath<'a> {
    root: &'a SafeDir,
    rel: PathBuf,
    shown: PathBuf,
}

impl OutTree {
    fn place(&self, rel: &str) -> OutPath<'_> {
        if let Some(rest) = rel.strip_prefix("pg_tblspc/") {
            let (oid, tail) = rest.split_once('/').unwrap_or((rest, ""));
            if let Some(root) = self.tablespaces.get(oid) {
                return OutPath {
                    root,
                    rel: crate::pathbytes::to_path(tail),
                    shown: crate::pathbytes::join(root.path(), tail),
                };
            }
        }
        OutPath {
            root: &self.staging,
            rel: crate::pathbytes::to_path(rel),
            shown: crate::pathbytes::join(self.staging.path(), rel),
        }
    }
}

impl OutPath<'_> {
    /// The directory holding this path (made when missing) and the last component.
    fn parent(&self) -> Result<(SafeDir, std::ffi::OsString), CombineError> {
        let name = self
            .rel
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let parent = self.rel.parent().unwrap_or(Path::new(""));
        let d = self.root.dir(parent, true, 0o700).map_err(|e| {
            format!(
                "could not create directory \"{}\": {e}",
                self.root.path().join(parent).display()
            )
        })?;
        Ok((d, name))
    }

    /// Makes this path a directory (and its parents).
    fn mkdir(&self) -> Result<(), CombineError> {
        self.root
            .dir(&self.rel, true, 0o700)
            .map(drop)
            .map_err(|e| {
                format!(
                    "could not create directory \"{}\": {e}",
                    self.shown.display()
                )
                .into()
            })
    }

    /// Creates this path as a new file, 0600.
    fn create(&self) -> Result<File, CombineError> {
        let (dir, name) = self.parent()?;
        dir.create_file(&name, 0o600, false)
            .map_err(|e| write_err(&self.shown, "create file", e))
    }
}

fn read_err(loc: &FileLoc, source: std::io::Error) -> CombineError {
    CombineError::Read {
        path: loc.path.clone(),
        source,
    }
}

impl Writer<'_> {
    fn record(
        &mut self,
        rel: &str,
        out: &OutPath<'_>,
        file: &File,
        sum: &[u8],
    ) -> Result<(), CombineError> {
        let meta = file
            .metadata()
            .map_err(|e| write_err(&out.shown, "stat", e))?;
        self.summary.files += 1;
        self.summary.bytes += meta.len();
        if rel.starts_with("pg_wal/") || rel == "pg_wal" {
            return Ok(());
        }
        if let Some(m) = &mut self.manifest {
            use std::os::unix::fs::MetadataExt;
            m.add_file(rel, meta.len(), meta.mtime(), self.kind, sum);
        }
        Ok(())
    }

    fn needs_sum(&self, rel: &str) -> bool {
        self.manifest.is_some() && self.kind != ChecksumKind::None && !rel.starts_with("pg_wal/")
    }

    /// Hashes `len` bytes of `f` from `offset`.
    fn hash_range(
        &mut self,
        f: &Opened,
        offset: u64,
        len: u64,
        h: &mut FileHasher,
    ) -> std::io::Result<()> {
        let mut done = 0u64;
        while done < len {
            let k = ((len - done) as usize).min(self.buf.len());
            f.read_exact_at(&mut self.buf[..k], offset + done)?;
            h.update(&self.buf[..k]);
            done += k as u64;
        }
        Ok(())
    }

    /// Copies `len` bytes of `src` from `offset` to the end of `dst`, hashing them into `h`.
    fn copy_range(
        &mut self,
        src: &Opened,
        offset: u64,
        len: u64,
        dst: &mut File,
        h: Option<&mut FileHasher>,
        method: CopyMethod,
    ) -> std::io::Result<()> {
        if let (CopyMethod::CopyFileRange, Some(file)) = (method, src.as_file()) {
            // std copies File→File (a Take of a File included) with copy_file_range(2)
            let mut s = file.try_clone()?;
            s.seek(SeekFrom::Start(offset))?;
            let n = std::io::copy(&mut (&s).take(len), dst)?;
            if n != len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("read only {n} of {len} bytes"),
                ));
            }
            if let Some(h) = h {
                self.hash_range(src, offset, len, h)?;
            }
            return Ok(());
        }
        let mut h = h;
        let mut done = 0u64;
        while done < len {
            let k = ((len - done) as usize).min(self.buf.len());
            src.read_exact_at(&mut self.buf[..k], offset + done)?;
            if let Some(h) = h.as_deref_mut() {
                h.update(&self.buf[..k]);
            }
            dst.write_all(&self.buf[..k])?;
            done += k as u64;
        }
        Ok(())
    }

    /// Copies a whole file, reusing the source manifest's checksum when it fits.
    fn copy_file(
        &mut self,
        rel: &str,
        loc: &FileLoc,
        known: Option<&(ChecksumKind, Vec<u8>, u64)>,
        out: &OutPath<'_>,
    ) -> Result<(), CombineError> {
        let reuse = known
            .filter(|(k, sum, size)| *k == self.kind && *size == loc.size && !sum.is_empty())
            .map(|(_, s, _)| s.clone());
        let mut hasher =
            (self.needs_sum(rel) && reuse.is_none()).then(|| FileHasher::new(self.kind));
        let src = loc.open().map_err(|e| read_err(loc, e))?;
        let method = self.opts.copy_method;
        if method == CopyMethod::Link && loc.is_whole_file() {
            let (dir, name) = out.parent()?;
            rustix::fs::linkat(
                rustix::fs::CWD,
                &loc.path,
                dir.as_fd(),
                &name,
                rustix::fs::AtFlags::empty(),
            )
            .map_err(|e| {
                format!(
                    "could not link \"{}\" to \"{}\": {}",
                    loc.path.display(),
                    out.shown.display(),
                    std::io::Error::from(e)
                )
            })?;
            let sum = match (reuse, hasher) {
                (Some(s), _) => s,
                (None, Some(mut h)) => {
                    self.hash_range(&src, 0, loc.size, &mut h)
                        .map_err(|e| read_err(loc, e))?;
                    h.finish()
                }
                (None, None) => Vec::new(),
            };
            let Some(linked) = src.as_file() else {
                return fail(format!("\"{}\" is not a local file", loc.path.display()));
            };
            return self.record(rel, out, linked, &sum);
        }
        let mut dst = out.create()?;
        if method == CopyMethod::Clone {
            let Some(src_file) = src.as_file().filter(|_| loc.is_whole_file()) else {
                return fail(format!(
                    "could not clone \"{}\" to \"{}\": files inside a tar archive cannot be cloned (use --copy or --copy-file-range)",
                    loc.path.display(),
                    out.shown.display()
                ));
            };
            crate::reflink::clone(src_file, &dst).map_err(|e| {
                format!(
                    "could not clone file \"{}\" to \"{}\": {e}",
                    loc.path.display(),
                    out.shown.display()
                )
            })?;
            if let Some(h) = &mut hasher {
                self.hash_range(&src, 0, loc.size, h)
                    .map_err(|e| read_err(loc, e))?;
            }
        } else {
            let method = if method == CopyMethod::Link {
                CopyMethod::Copy
            } else {
                method
            };
            self.copy_range(
                &src,
                loc.offset,
                loc.size,
                &mut dst,
                hasher.as_mut(),
                method,
            )
            .map_err(|e| {
                format!(
                    "could not copy \"{}\" to \"{}\": {e}",
                    loc.path.display(),
                    out.shown.display()
                )
            })?;
        }
        let sum = match (reuse, hasher) {
            (Some(s), _) => s,
            (None, Some(h)) => h.finish(),
            (None, None) => Vec::new(),
        };
        self.record(rel, out, &dst, &sum)
    }
}

fn read_header(
    src: &BackupSource,
    rel: &str,
    loc: &FileLoc,
) -> Result<IncrementalHeader, CombineError> {
    let f = loc.open().map_err(|e| read_err(loc, e))?;
    let what = src.describe(rel);
    let mut fixed = [0u8; incremental::FIXED_LEN];
    if loc.size < fixed.len() as u64 {
        return fail(format!(
            "\"{what}\": file is {} bytes, too short for an incremental file header",
            loc.size
        ));
    }
    f.read_exact_at(&mut fixed, loc.offset)
        .map_err(|e| read_err(loc, e))?;
    let need = incremental::header_bytes_needed(&fixed).map_err(|e| format!("\"{what}\": {e}"))?;
    if need as u64 > loc.size {
        return fail(format!(
            "\"{what}\": file is truncated: its header needs {need} bytes, the file has {}",
            loc.size
        ));
    }
    let mut bytes = vec![0u8; need];
    f.read_exact_at(&mut bytes, loc.offset)
        .map_err(|e| read_err(loc, e))?;
    IncrementalHeader::parse(&bytes, loc.size).map_err(|e| format!("\"{what}\": {e}").into())
}

/// Combines `backups` (oldest first) into `opts.output`.
pub fn combine(backups: &[PathBuf], opts: &CombineOptions) -> Result<CombineSummary, CombineError> {
    let scratch = opts.scratch_dir.clone().unwrap_or_else(|| {
        opts.output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    });
    // pg_combinebackup checks the output before the inputs
    if !empty_or_absent(&opts.output)? {
        return fail(format!(
            "directory \"{}\" exists but is not empty",
            opts.output.display()
        ));
    }
    combine_sources(open_chain(backups, &scratch)?, opts)
}

/// Combines opened backups (oldest first) into `opts.output`: backups kept elsewhere than a
/// local directory (a repository) come in as [`BackupSource::from_parts`].
pub fn combine_sources(
    sources: Vec<BackupSource>,
    opts: &CombineOptions,
) -> Result<CombineSummary, CombineError> {
    let output = &opts.output;
    if !empty_or_absent(output)? {
        return fail(format!(
            "directory \"{}\" exists but is not empty",
            output.display()
        ));
    }
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let (inputs, system_id) = load_chain(sources, !opts.no_manifest)?;
    let newest = inputs
        .last()
        .expect("load_chain checks for at least one backup");

    // tablespaces: where each goes; all must be absent or empty
    let mut ts_out: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (oid, ts) in &newest.src.tablespaces {
        let mapped = opts
            .tablespace_mappings
            .iter()
            .find(|m| m.old == ts.location)
            .map(|m| m.new.clone());
        // An in-place tablespace (allow_in_place_tablespaces) has no link and no entry in
        // tablespace_map, or a location relative to the data directory: its files stay under
        // pg_tblspc/<oid> in the output, where the server looks for them.
        let Some(dest) = mapped.or_else(|| ts.location.is_absolute().then(|| ts.location.clone()))
        else {
            continue;
        };
        if !dest.is_absolute() {
            return fail(format!(
                "tablespace {oid}: location \"{}\" is not absolute",
                dest.display()
            ));
        }
        if !empty_or_absent(&dest)? {
            return fail(format!(
                "tablespace {oid}: directory \"{}\" exists but is not empty",
                dest.display()
            ));
        }
        ts_out.insert(oid.clone(), dest);
    }
    for m in &opts.tablespace_mappings {
        if !newest.src.tablespaces.values().any(|t| t.location == m.old) {
            return fail(format!(
                "old directory \"{}\" in a tablespace mapping is not a tablespace of the backup",
                m.old.display()
            ));
        }
    }

    if opts.dry_run {
        return Ok(CombineSummary {
            system_identifier: system_id,
            files: newest.src.files.len() as u64,
            reconstructed: newest
                .src
                .files
                .keys()
                .filter(|p| incremental::reconstructed_path(p).is_some())
                .count() as u64,
            bytes: 0,
        });
    }
    let kind = opts.manifest_checksums.unwrap_or_else(|| {
        newest
            .manifest
            .as_ref()
            .and_then(|m| m.files.first().map(|f| f.checksum_kind))
            .unwrap_or(ChecksumKind::Crc32c)
    });
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "combined".into());
    let staging = parent.join(format!(".{name}.pgrepl-incomplete"));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| write_err(&staging, "remove", e))?;
    }
    let mut created_ts: Vec<PathBuf> = Vec::new();
    let mut w = Writer {
        opts,
        kind,
        manifest: (!opts.no_manifest).then(|| ManifestWriter::new(Some(system_id))),
        summary: CombineSummary {
            system_identifier: system_id,
            ..Default::default()
        },
        buf: vec![0u8; 256 * 1024],
    };
    let result = write_all(&inputs, &mut w, &staging, &ts_out, &mut created_ts);
    let result = result.and_then(|tree| {
        if let Some(m) = w.manifest.take() {
            let ranges = newest
                .manifest
                .as_ref()
                .map(|m| m.wal_ranges.clone())
                .unwrap_or_default();
            let bytes = m.finish(&ranges);
            let out = tree.place("backup_manifest");
            let mut f = out.create()?;
            f.write_all(&bytes)
                .map_err(|e| write_err(&out.shown, "write", e))?;
        }
        drop(tree);
        if opts.sync {
            for d in std::iter::once(&staging).chain(created_ts.iter()) {
                crate::sink::directory::sync_tree(d, opts.sync_method)
                    .map_err(|e| e.to_string())?;
            }
        }
        if output.exists() {
            fs::remove_dir(output).map_err(|e| write_err(output, "replace", e))?;
        }
        fs::rename(&staging, output).map_err(|e| {
            format!(
                "could not rename \"{}\" to \"{}\": {e}",
                staging.display(),
                output.display()
            )
        })?;
        if opts.sync {
            if let Ok(d) = File::open(&parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        for d in &created_ts {
            if let Ok(it) = fs::read_dir(d) {
                for e in it.flatten() {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        return Err(e);
    }
    Ok(w.summary)
}

fn mkdir(p: &Path) -> Result<(), CombineError> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => fail(format!(
            "could not create directory \"{}\": {e}",
            p.display()
        )),
    }
}

fn write_all(
    inputs: &[Input],
    w: &mut Writer<'_>,
    staging: &Path,
    ts_out: &BTreeMap<String, PathBuf>,
    created_ts: &mut Vec<PathBuf>,
) -> Result<OutTree, CombineError> {
    let newest = inputs.last().expect("at least one backup");
    mkdir(staging)?;
    let open = |p: &Path| SafeDir::open(p).map_err(|e| write_err(p, "open directory", e));
    let mut tree = OutTree {
        staging: open(staging)?,
        tablespaces: BTreeMap::new(),
    };
    for (oid, dest) in ts_out {
        mkdir(dest)?;
        created_ts.push(dest.clone());
        tree.tablespaces.insert(oid.clone(), open(dest)?);
        let links = tree
            .staging
            .dir(Path::new("pg_tblspc"), true, 0o700)
            .map_err(|e| {
                format!(
                    "could not create directory \"{}\": {e}",
                    staging.join("pg_tblspc").display()
                )
            })?;
        links
            .symlink(std::ffi::OsStr::new(oid), dest)
            .map_err(|e| format!("could not create link for tablespace {oid}: {e}"))?;
    }
    for oid in newest.src.tablespaces.keys() {
        if !ts_out.contains_key(oid) {
            // in place: a directory of the data directory (a tar backup lists none for it)
            tree.place(&format!("pg_tblspc/{oid}")).mkdir()?;
        }
    }
    for d in newest.src.dirs.keys() {
        tree.place(d).mkdir()?;
    }
    for (rel, loc) in &newest.src.files {
        if rel == "backup_manifest" || rel == "backup_label" || rel == "tablespace_map" {
            continue;
        }
        match incremental::reconstructed_path(rel) {
            Some(out_rel) => {
                reconstruct(inputs, w, rel, loc, &out_rel, &tree.place(&out_rel))?;
            }
            None => {
                w.copy_file(rel, loc, newest.checksums.get(rel), &tree.place(rel))?;
            }
        }
    }
    // the label of a full backup
    let label = strip_incremental(&newest.label_text);
    let out = tree.place("backup_label");
    let mut f = out.create()?;
    f.write_all(label.as_bytes())
        .map_err(|e| write_err(&out.shown, "write", e))?;
    let mut h = FileHasher::new(w.kind);
    h.update(label.as_bytes());
    w.record("backup_label", &out, &f, &h.finish())?;
    drop(f);
    Ok(tree)
}

fn reconstruct(
    inputs: &[Input],
    w: &mut Writer<'_>,
    rel: &str,
    loc: &FileLoc,
    out_rel: &str,
    out: &OutPath<'_>,
) -> Result<(), CombineError> {
    let n = inputs.len();
    let newest = &inputs[n - 1];
    let latest = read_header(&newest.src, rel, loc)?;
    let inc_name = rel.to_owned();
    // older versions, newest first, up to a full file
    let mut headers: Vec<IncrementalHeader> = Vec::new();
    let mut locs: Vec<(usize, &FileLoc, bool)> = Vec::new(); // (input index, where, full?)
    for i in (0..n - 1).rev() {
        let s = &inputs[i].src;
        if let Some(l) = s.files.get(out_rel) {
            locs.push((i, l, true));
            break;
        }
        match s.files.get(&inc_name) {
            Some(l) => {
                headers.push(read_header(s, &inc_name, l)?);
                locs.push((i, l, false));
            }
            None => {
                return fail(format!(
                    "could not open file \"{}\": No such file or directory (needed to reconstruct \"{out_rel}\")",
                    s.describe(out_rel)
                ))
            }
        }
    }
    let mut hi = headers.iter();
    let versions: Vec<Version<'_>> = locs
        .iter()
        .map(|(_, l, full)| {
            if *full {
                Version::Full { size: l.size }
            } else {
                Version::Incremental(hi.next().expect("one header per incremental version"))
            }
        })
        .collect();
    let plan = incremental::plan(&latest, &versions).map_err(|e| {
        format!(
            "could not reconstruct \"{out_rel}\": {e} (the chain's oldest backup must hold the full file)"
        )
    })?;
    w.summary.reconstructed += 1;
    if let Some(b) = plan.whole_copy_of {
        let (i, l, _) = locs[b - 1];
        return w.copy_file(out_rel, l, inputs[i].checksums.get(out_rel), out);
    }
    // sources: 0 = newest incremental file, k = locs[k-1]
    let mut files: Vec<Option<Opened>> = (0..=locs.len()).map(|_| None).collect();
    let loc_of = |b: usize| -> &FileLoc {
        if b == 0 {
            loc
        } else {
            locs[b - 1].1
        }
    };
    let mut hasher = w.needs_sum(out_rel).then(|| FileHasher::new(w.kind));
    let mut dst = out.create()?;
    let method = match w.opts.copy_method {
        CopyMethod::Clone | CopyMethod::Link => CopyMethod::Copy,
        m => m,
    };
    let wr = |e: std::io::Error| -> CombineError { write_err(&out.shown, "write", e) };
    let mut i = 0usize;
    while i < plan.blocks.len() {
        // a run of blocks from one source at consecutive offsets, or of zeros
        let first = plan.blocks[i];
        let mut j = i + 1;
        while j < plan.blocks.len() {
            let next_ok = match (first, plan.blocks[j]) {
                (BlockSource::Zero, BlockSource::Zero) => true,
                (
                    BlockSource::Backup {
                        backup: a,
                        offset: o,
                    },
                    BlockSource::Backup {
                        backup: b,
                        offset: p,
                    },
                ) => a == b && p == o + (j - i) as u64 * BLCKSZ,
                _ => false,
            };
            if !next_ok {
                break;
            }
            j += 1;
        }
        let len = (j - i) as u64 * BLCKSZ;
        match first {
            BlockSource::Zero => {
                let mut left = len;
                while left > 0 {
                    let k = (left as usize).min(w.buf.len());
                    w.buf[..k].fill(0);
                    if let Some(h) = &mut hasher {
                        h.update(&w.buf[..k]);
                    }
                    dst.write_all(&w.buf[..k]).map_err(wr)?;
                    left -= k as u64;
                }
            }
            BlockSource::Backup { backup, offset } => {
                let l = loc_of(backup);
                if files[backup].is_none() {
                    files[backup] = Some(l.open().map_err(|e| read_err(l, e))?);
                }
                let src = files[backup].as_ref().expect("opened above");
                if offset.checked_add(len).is_none_or(|e| e > l.size) {
                    return fail(format!(
                        "could not reconstruct \"{out_rel}\": \"{}\" is shorter than its blocks need",
                        l.path.display()
                    ));
                }
                w.copy_range(
                    src,
                    l.offset + offset,
                    len,
                    &mut dst,
                    hasher.as_mut(),
                    method,
                )
                .map_err(|e| {
                    format!(
                        "could not copy blocks into \"{}\": {e}",
                        out.shown.display()
                    )
                })?;
            }
        }
        i = j;
    }
    let sum = hasher.map(FileHasher::finish).unwrap_or_default();
    w.record(out_rel, out, &dst, &sum)
}
