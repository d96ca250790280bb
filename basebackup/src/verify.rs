//! Verifying a backup on disk, plain or tar (compressed or not): the manifest (strictly), the
//! system identifier against `global/pg_control`, every file (missing, extra, size, checksum),
//! and the WAL the backup needs, decoded by pgwal from the backup's own WAL or a WAL archive.
//! Unlike pg_verifybackup, the WAL of a tar backup is checked too (read from `pg_wal.tar`).
//!
//! Files ignored as pg_verifybackup ignores them: `backup_manifest`, `pg_wal/`,
//! `postgresql.auto.conf`, `recovery.signal`, `standby.signal`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use pgwal::timeline::TimelineHistory;
use pgwal::{DecoderOptions, Lsn, WalDecoder, WalSegSize};
use walarchive::WalDir;

use crate::checksum::{ChecksumKind, FileHasher};
use crate::manifest::{Manifest, ManifestParser};
use crate::source::BackupSource;
use crate::tar::{EntryKind, TarEvent};

const IGNORED: &[&str] = &[
    "backup_manifest",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Read WAL from this archive instead of the backup.
    pub wal_archive: Option<PathBuf>,
    /// Skip the WAL check.
    pub skip_wal: bool,
    /// Stop at the first problem.
    pub exit_on_error: bool,
    /// Read the manifest from here instead of `BACKUP/backup_manifest`.
    pub manifest_path: Option<PathBuf>,
    /// Check sizes but not checksums.
    pub skip_checksums: bool,
    /// Paths (relative to the backup) to leave out, with everything under them.
    pub ignore: Vec<String>,
    /// The backup's format; `None`: tar if a `base.tar[.gz|.zst|.lz4]` is there, else plain.
    pub format: Option<BackupFormat>,
}

/// The two layouts of a backup directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFormat {
    /// A data directory.
    Plain,
    /// `base.tar`, `<oid>.tar`, `pg_wal.tar` (each possibly compressed) and `backup_manifest`.
    Tar,
}

/// What a top-level file of a tar-format backup may be called: `base`, `pg_wal` or a
/// tablespace OID, then `.tar`, `.tgz`, `.tar.gz`, `.tar.lz4` or `.tar.zst` (as
/// pg_verifybackup accepts them). `None` for anything else.
fn tar_member_stem(name: &str) -> Option<&str> {
    let (stem, suffix) = name.split_at(name.find('.')?);
    if !matches!(
        suffix,
        ".tar" | ".tgz" | ".tar.gz" | ".tar.lz4" | ".tar.zst"
    ) {
        return None;
    }
    let is_oid = !stem.is_empty()
        && stem.bytes().all(|b| b.is_ascii_digit())
        && stem.parse::<u32>().is_ok_and(|n| n > 0);
    (stem == "base" || stem == "pg_wal" || is_oid).then_some(stem)
}

impl VerifyOptions {
    /// Whether `path` is, or lies under, an ignored path.
    pub fn is_ignored(&self, path: &str) -> bool {
        self.ignore.iter().any(|i| {
            let i = i.trim_end_matches('/');
            path == i || path.strip_prefix(i).is_some_and(|r| r.starts_with('/'))
        })
    }
}

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingKind {
    /// The manifest cannot be read, or is not a valid manifest.
    Manifest,
    /// pg_control is missing, or its system identifier is not the manifest's.
    Control,
    /// A file the manifest lists is not in the backup.
    Missing,
    /// A file in the backup is not in the manifest.
    Extra,
    /// A file's size is not the manifest's.
    Size,
    /// A file's checksum is not the manifest's.
    Checksum,
    /// A file or directory could not be read.
    Read,
    /// An archive of a tar backup is malformed, or holds what a backup may not.
    Archive,
    /// The WAL the backup needs is missing or does not decode.
    Wal,
}

/// One problem found: what kind, where (a path, an LSN), and pg_verifybackup's words for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem.
    pub kind: FindingKind,
    /// The file or archive concerned (manifest-relative for files), if any.
    pub path: Option<String>,
    /// The WAL position concerned, if any.
    pub lsn: Option<Lsn>,
    /// What is wrong, worded as pg_verifybackup words it.
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // messages that quote their file (as pg_verifybackup's do) need no prefix
        match &self.path {
            Some(p) if !self.detail.contains(&format!("\"{p}\"")) => {
                write!(f, "{p}: {}", self.detail)
            }
            _ => f.write_str(&self.detail),
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Every problem, in the order found.
    pub findings: Vec<Finding>,
    /// Files checked.
    pub files_checked: usize,
    /// WAL records decoded.
    pub wal_records: u64,
    /// Bytes of the files checked.
    pub bytes_checked: u64,
}

struct Ctx<'a> {
    report: VerifyReport,
    opts: &'a VerifyOptions,
}

impl Ctx<'_> {
    /// Records a finding; true if verification stops at the first (`-e`).
    fn found(&mut self, f: Finding) -> bool {
        self.report.findings.push(f);
        self.opts.exit_on_error
    }

    fn file(&mut self, kind: FindingKind, path: &str, detail: impl Into<String>) -> bool {
        self.found(Finding {
            kind,
            path: Some(path.to_owned()),
            lsn: None,
            detail: detail.into(),
        })
    }

    fn general(&mut self, kind: FindingKind, detail: impl Into<String>) -> bool {
        self.found(Finding {
            kind,
            path: None,
            lsn: None,
            detail: detail.into(),
        })
    }

    fn wal(&mut self, lsn: Option<Lsn>, detail: impl Into<String>) -> bool {
        self.found(Finding {
            kind: FindingKind::Wal,
            path: None,
            lsn,
            detail: detail.into(),
        })
    }
}

/// What a backup's files turned out to be: path -> (size, checksum in the manifest's algorithm).
type Seen = BTreeMap<String, (u64, Vec<u8>)>;

fn ignored(path: &str) -> bool {
    IGNORED.contains(&path) || path == "pg_wal" || path.starts_with("pg_wal/")
}

fn hash_file(path: &Path, kind: ChecksumKind) -> std::io::Result<(u64, Vec<u8>)> {
    let mut f = fs::File::open(path)?;
    let mut h = FileHasher::new(kind);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    Ok((n, h.finish()))
}

fn walk_plain(
    root: &Path,
    rel: &str,
    kinds: &BTreeMap<String, ChecksumKind>,
    out: &mut Seen,
    errs: &mut Vec<Finding>,
) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            errs.push(Finding {
                kind: FindingKind::Read,
                path: Some(rel.to_owned()),
                lsn: None,
                detail: format!("could not open directory \"{}\": {e}", dir.display()),
            });
            return;
        }
    };
    for e in entries.flatten() {
        let name = crate::pathbytes::from_os(&e.file_name());
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ignored(&path) {
            continue;
        }
        // pg_tblspc/<oid> links lead into tablespaces, which the manifest lists under that path
        let meta = match fs::metadata(e.path()) {
            Ok(m) => m,
            Err(err) => {
                errs.push(Finding {
                    kind: FindingKind::Read,
                    path: Some(path),
                    lsn: None,
                    detail: format!(
                        "could not stat file or directory \"{}\": {err}",
                        e.path().display()
                    ),
                });
                continue;
            }
        };
        if meta.is_dir() {
            walk_plain(root, &path, kinds, out, errs);
        } else if meta.is_file() {
            let kind = kinds.get(&path).copied().unwrap_or(ChecksumKind::None);
            match hash_file(&e.path(), kind) {
                Ok(v) => {
                    out.insert(path, v);
                }
                Err(err) => errs.push(Finding {
                    kind: FindingKind::Read,
                    path: Some(path),
                    lsn: None,
                    detail: format!("could not open file \"{}\": {err}", e.path().display()),
                }),
            }
        }
    }
}

/// Reads an archive (decompressing by its name) and calls `on` for each event.
fn read_archive(path: &Path, mut on: impl FnMut(TarEvent<'_>)) -> Result<(), String> {
    crate::archive_file::read_archive_file(path, None, |ev, _| on(ev)).map_err(|e| e.to_string())
}

/// The timeline history the backup's WAL follows, from the manifest's WAL ranges: the server
/// lists one range per timeline, newest first, each older one ending at its switch point
/// (`AddWALInfoToBackupManifest`). Read this way, WAL of a backup that crossed a timeline
/// switch (a standby whose upstream was promoted) is found on the timeline that holds it,
/// whether or not a history file came with the backup.
fn history_of(ranges: &[crate::manifest::WalRange]) -> TimelineHistory {
    TimelineHistory {
        entries: ranges
            .iter()
            .skip(1)
            .rev()
            .map(|r| pgwal::timeline::HistoryEntry {
                timeline: r.timeline,
                switch_point: r.end,
                reason: String::new(),
            })
            .collect(),
    }
}

/// The timeline whose file holds segment `s` for recovery: the newest one that has begun by the
/// segment's last byte (the segment of a switch is read from the new timeline's copy).
fn owner_of_segment(
    history: &TimelineHistory,
    newest: pgwal::TimelineId,
    start: Lsn,
    seg: WalSegSize,
) -> pgwal::TimelineId {
    // (segment starts come from file names: the last possible one ends at u64::MAX exactly)
    history.timeline_of(newest, Lsn(start.0.saturating_add(seg.bytes() - 1)))
}

/// Checks the WAL of `m` by decoding, from the first range's start to its end, segments fed by
/// `next_segments` (which calls the sink with each segment's start LSN and bytes, in order).
fn check_wal_stream(
    ctx: &mut Ctx<'_>,
    m: &Manifest,
    seg: WalSegSize,
    feed: impl FnOnce(&mut dyn FnMut(Lsn, &[u8]) -> bool) -> Result<(), String>,
) {
    // ranges are newest timeline first; the backup needs from the oldest start to the newest end
    let (Some(first), Some(last)) = (m.wal_ranges.last(), m.wal_ranges.first()) else {
        ctx.wal(None, "the manifest lists no WAL range");
        return;
    };
    let (start, end) = (first.start, last.end);
    let mut opts = DecoderOptions::new(seg);
    opts.system_id = m.system_identifier;
    let mut decoder: Option<WalDecoder> = None;
    let mut reached = Lsn(0);
    let mut records = 0u64;
    let mut failure: Option<String> = None;
    let r = feed(&mut |seg_start: Lsn, bytes: &[u8]| {
        let d = decoder.get_or_insert_with(|| {
            WalDecoder::starting_at(seg_start, start, opts).unwrap_or_else(|_| {
                WalDecoder::new(seg_start, opts).expect("segment starts are page-aligned")
            })
        });
        d.feed(bytes);
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    records += 1;
                    reached = r.end_lsn;
                    if reached >= end {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    failure = Some(e.to_string());
                    return false;
                }
            }
        }
    });
    ctx.report.wal_records += records;
    // worded as pg_verifybackup words it ("WAL parsing failed for timeline N"), with the cause
    let tli = last.timeline;
    if let Err(e) = r {
        ctx.wal(None, format!("WAL parsing failed for timeline {tli}: {e}"));
    } else if let Some(f) = failure {
        if reached < end {
            ctx.wal(
                Some(reached),
                format!(
                    "WAL parsing failed for timeline {tli}: {f} (the backup needs WAL up to {end})"
                ),
            );
        }
    } else if reached < end {
        ctx.wal(
            Some(reached),
            format!("WAL parsing failed for timeline {tli}: WAL ends at {reached}, before the backup's end {end}"),
        );
    }
}

/// `exit_on_error` was set and a problem was found: stop where we are.
struct Stop;

/// Turns [`Ctx`]'s "stop now" answer into `?`.
fn go_on(stop: bool) -> Result<(), Stop> {
    if stop {
        Err(Stop)
    } else {
        Ok(())
    }
}

/// What the backup holds, as read from disk or its archives.
#[derive(Default)]
struct OnDisk {
    /// Every file: its size and checksum (of the manifest's kind).
    seen: Seen,
    /// The first 8 kB of global/pg_control.
    pg_control: Option<Vec<u8>>,
    /// pg_wal.tar[.*] of a tar backup.
    wal_tar: Option<PathBuf>,
    /// base.tar[.*] of a tar backup.
    base_tar: Option<PathBuf>,
    /// Archives that could not be read to their end, with the path prefix of their files ("" for
    /// base.tar: everything outside pg_tblspc/): their unread files are counted, not listed.
    damaged: Vec<(String, String)>,
}

/// Verifies the backup at `path`: its manifest, the system identifier, every file, then the WAL
/// it needs. With `exit_on_error`, the report ends at the first finding.
pub fn verify_backup(path: &Path, opts: &VerifyOptions) -> VerifyReport {
    let mut ctx = Ctx {
        report: VerifyReport::default(),
        opts,
    };
    let _ = verify_phases(&mut ctx, path);
    ctx.report
}

fn verify_phases(ctx: &mut Ctx<'_>, path: &Path) -> Result<(), Stop> {
    let opts = ctx.opts;
    let m = read_manifest(ctx, path)?;
    let kinds: BTreeMap<String, ChecksumKind> = m
        .files
        .iter()
        .map(|f| {
            let k = if opts.skip_checksums || opts.is_ignored(&f.path) {
                ChecksumKind::None
            } else {
                f.checksum_kind
            };
            (f.path.clone(), k)
        })
        .collect();
    let is_tar = match opts.format {
        Some(f) => f == BackupFormat::Tar,
        None => ["base.tar", "base.tar.gz", "base.tar.zst", "base.tar.lz4"]
            .iter()
            .any(|n| path.join(n).exists()),
    };
    let on_disk = if is_tar {
        read_tar_backup(ctx, path, &kinds)?
    } else {
        read_plain_backup(ctx, path, &kinds)?
    };
    check_system_identifier(ctx, &m, &on_disk)?;
    check_files(ctx, &m, &on_disk)?;
    if !opts.skip_wal {
        check_wal(ctx, path, &m, on_disk);
    }
    Ok(())
}

/// Verifies a backup whose files are read through a [`BackupSource`] (a backup stored in a
/// repository, read where it is): the manifest, the system identifier, every file against the
/// manifest (sizes and checksums, read in pieces), and unless `skip_wal`, the WAL the backup
/// carries under `pg_wal/`, decoded from its start to its end. `wal_archive`, `format` and
/// `manifest_path` of `opts` do not apply.
pub fn verify_source(source: &BackupSource, opts: &VerifyOptions) -> VerifyReport {
    let mut ctx = Ctx {
        report: VerifyReport::default(),
        opts,
    };
    let _ = verify_source_phases(&mut ctx, source);
    ctx.report
}

fn verify_source_phases(ctx: &mut Ctx<'_>, source: &BackupSource) -> Result<(), Stop> {
    let opts = ctx.opts;
    let Some(mloc) = &source.manifest else {
        ctx.general(
            FindingKind::Manifest,
            format!(
                "{}: the backup has no backup_manifest",
                source.root.display()
            ),
        );
        return Err(Stop);
    };
    let m = mloc
        .reader()
        .map_err(|e| e.to_string())
        .and_then(|r| ManifestParser::parse_reader(r).map_err(|e| e.to_string()))
        .map_err(|e| {
            ctx.general(FindingKind::Manifest, e);
            Stop
        })?;
    let kinds: BTreeMap<&str, ChecksumKind> = m
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.checksum_kind))
        .collect();
    let mut on_disk = OnDisk::default();
    for (path, loc) in &source.files {
        if ignored(path) || opts.is_ignored(path) {
            continue;
        }
        let kind = match kinds.get(path.as_str()) {
            Some(k) if !opts.skip_checksums => *k,
            _ => ChecksumKind::None,
        };
        let mut h = FileHasher::new(kind);
        let mut n = 0u64;
        let mut control = Vec::new();
        let r = loc.reader().and_then(|mut r| {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    return Ok(());
                }
                h.update(&buf[..k]);
                if path == "global/pg_control" && control.len() < 8192 {
                    let take = k.min(8192 - control.len());
                    control.extend_from_slice(&buf[..take]);
                }
                n += k as u64;
            }
        });
        match r {
            Ok(()) => {
                if path == "global/pg_control" {
                    on_disk.pg_control = Some(control);
                }
                on_disk.seen.insert(path.clone(), (n, h.finish()));
            }
            Err(e) => go_on(ctx.file(
                FindingKind::Read,
                path,
                format!("could not read file \"{path}\": {e}"),
            ))?,
        }
    }
    check_system_identifier(ctx, &m, &on_disk)?;
    check_files(ctx, &m, &on_disk)?;
    if !opts.skip_wal {
        check_wal_source(ctx, &m, source, on_disk.pg_control.as_deref());
    }
    Ok(())
}

/// The WAL a stored backup carries (its `pg_wal/` files), decoded from start to end.
fn check_wal_source(
    ctx: &mut Ctx<'_>,
    m: &Manifest,
    source: &BackupSource,
    control: Option<&[u8]>,
) {
    let seg = control
        .and_then(|c| crate::control::ControlFile::parse(c).ok())
        .and_then(|c| WalSegSize::new(u64::from(c.wal_segment_size)).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    let history = history_of(&m.wal_ranges);
    let newest = m.wal_ranges.first().map(|r| r.timeline);
    // segments by position; of one present on two timelines, the one recovery reads
    let mut segments: BTreeMap<Lsn, &crate::source::FileLoc> = BTreeMap::new();
    for (path, loc) in &source.files {
        let Some(name) = path.strip_prefix("pg_wal/") else {
            continue;
        };
        let Some((t, start)) = pgwal::parse_wal_file_name(name, seg)
            .filter(|p| p.kind == pgwal::WalFileKind::SEGMENT)
            .and_then(|p| Some((p.timeline, p.segment?.start_lsn(seg)?)))
        else {
            continue;
        };
        if newest.is_some_and(|n| owner_of_segment(&history, n, start, seg) == t) {
            segments.insert(start, loc);
        }
    }
    let first = m.wal_ranges.last().cloned();
    check_wal_stream(ctx, m, seg, |sink| {
        if segments.is_empty() {
            if let Some(f) = &first {
                return Err(format!(
                    "WAL segment {} (from {}) is not in {}",
                    pgwal::segment_file_name(f.timeline, f.start.segment(seg), seg),
                    f.start,
                    source.root.display()
                ));
            }
        }
        for (start, loc) in segments {
            let mut buf = Vec::with_capacity(loc.size.min(seg.bytes()) as usize);
            loc.reader()
                .and_then(|r| r.take(seg.bytes() + 1).read_to_end(&mut buf))
                .map_err(|e| format!("could not read {}: {e}", loc.path.display()))?;
            buf.truncate(seg.bytes() as usize);
            if !sink(start, &buf) {
                break;
            }
        }
        Ok(())
    });
}

/// The manifest, parsed in pieces: memory grows with the number of files, not with its text.
fn read_manifest(ctx: &mut Ctx<'_>, path: &Path) -> Result<Manifest, Stop> {
    let manifest_path = ctx
        .opts
        .manifest_path
        .clone()
        .unwrap_or_else(|| path.join("backup_manifest"));
    let manifest_file = fs::File::open(&manifest_path).map_err(|e| {
        ctx.general(
            FindingKind::Manifest,
            format!("could not open file \"{}\": {e}", manifest_path.display()),
        );
        Stop
    })?;
    ManifestParser::parse_reader(manifest_file).map_err(|e| {
        ctx.general(FindingKind::Manifest, e.to_string());
        Stop
    })
}

/// A plain backup: every file walked and hashed.
fn read_plain_backup(
    ctx: &mut Ctx<'_>,
    path: &Path,
    kinds: &BTreeMap<String, ChecksumKind>,
) -> Result<OnDisk, Stop> {
    let mut on_disk = OnDisk::default();
    let mut errs = Vec::new();
    walk_plain(path, "", kinds, &mut on_disk.seen, &mut errs);
    for e in errs {
        go_on(ctx.found(e))?;
    }
    on_disk.pg_control = fs::read(path.join("global/pg_control")).ok();
    Ok(on_disk)
}

/// A tar backup: only archives named as pg_basebackup names them, each read as a stream and
/// every file in it hashed; pg_wal's archive is kept for the WAL phase.
fn read_tar_backup(
    ctx: &mut Ctx<'_>,
    path: &Path,
    kinds: &BTreeMap<String, ChecksumKind>,
) -> Result<OnDisk, Stop> {
    let opts = ctx.opts;
    let mut on_disk = OnDisk::default();
    let mut names: Vec<String> = fs::read_dir(path)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        if name == "backup_manifest" || opts.is_ignored(&name) {
            continue;
        }
        // only regular files named as pg_basebackup names its archives belong here
        let regular = fs::metadata(path.join(&name)).is_ok_and(|m| m.is_file());
        let stem = match tar_member_stem(&name) {
            Some(s) if regular => s.to_owned(),
            _ => {
                let why = if regular {
                    format!("file \"{name}\" is not expected in a tar format backup")
                } else {
                    format!("file \"{name}\" is not a regular file")
                };
                go_on(ctx.file(FindingKind::Extra, &name, why))?;
                continue;
            }
        };
        if stem == "pg_wal" {
            on_disk.wal_tar = Some(path.join(&name));
            continue;
        }
        let prefix = if stem == "base" {
            on_disk.base_tar = Some(path.join(&name));
            String::new()
        } else {
            format!("pg_tblspc/{stem}/")
        };
        let r = hash_archive(&path.join(&name), &prefix, kinds, &mut on_disk);
        if let Err(e) = r {
            go_on(ctx.file(FindingKind::Archive, &name, e))?;
            on_disk.damaged.push((name.clone(), prefix.clone()));
        }
    }
    Ok(on_disk)
}

/// Hashes every file of one archive into `on_disk.seen` (paths under `prefix`), keeping
/// pg_control's first 8 kB.
fn hash_archive(
    archive: &Path,
    prefix: &str,
    kinds: &BTreeMap<String, ChecksumKind>,
    on_disk: &mut OnDisk,
) -> Result<(), String> {
    let mut current: Option<(String, u64, FileHasher)> = None;
    let mut control = None;
    let seen = &mut on_disk.seen;
    let r = read_archive(archive, |ev| match ev {
        TarEvent::Entry(h) if h.kind == EntryKind::File => {
            let p = format!("{prefix}{}", h.path);
            let kind = kinds.get(&p).copied().unwrap_or(ChecksumKind::None);
            if p == "global/pg_control" {
                control = Some(Vec::new());
            }
            current = Some((p, 0, FileHasher::new(kind)));
        }
        TarEvent::Data(d) => {
            if let Some((p, n, h)) = &mut current {
                *n += d.len() as u64;
                h.update(d);
                if p == "global/pg_control" {
                    if let Some(c) = &mut control {
                        c.extend_from_slice(&d[..d.len().min(8192usize.saturating_sub(c.len()))]);
                    }
                }
            }
        }
        TarEvent::EntryEnd => {
            if let Some((p, n, h)) = current.take() {
                if !ignored(&p) {
                    seen.insert(p, (n, h.finish()));
                }
            }
        }
        _ => {}
    });
    if control.is_some() {
        on_disk.pg_control = control;
    }
    r
}

/// pg_control is there and names the manifest's system.
fn check_system_identifier(ctx: &mut Ctx<'_>, m: &Manifest, on_disk: &OnDisk) -> Result<(), Stop> {
    match (&on_disk.pg_control, m.system_identifier) {
        (Some(c), Some(sys)) if c.len() >= 8 => {
            let in_control = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
            if in_control != sys {
                go_on(ctx.general(
                    FindingKind::Control,
                    format!(
                        "manifest system identifier is {sys}, but control file has {in_control}"
                    ),
                ))?;
            }
        }
        // a damaged base archive is reported already, with what it left unread
        (None, _) if on_disk.damaged.iter().any(|(_, p)| p.is_empty()) => {}
        (None, _) => go_on(ctx.file(
            FindingKind::Control,
            "global/pg_control",
            "missing from the backup",
        ))?,
        _ => {}
    }
    Ok(())
}

/// Files, reported in pg_verifybackup's order: what is on disk (extra files, sizes), then what
/// is missing, then checksums.
fn check_files(ctx: &mut Ctx<'_>, m: &Manifest, on_disk: &OnDisk) -> Result<(), Stop> {
    let opts = ctx.opts;
    let seen = &on_disk.seen;
    let listed: HashSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    let skip = |p: &str| ignored(p) || opts.is_ignored(p);
    for p in seen.keys().filter(|p| !skip(p)) {
        if !listed.contains(p.as_str()) {
            go_on(ctx.file(
                FindingKind::Extra,
                p,
                format!("\"{p}\" is present on disk but not in the manifest"),
            ))?;
        }
    }
    let mut mismatched = Vec::new();
    for f in m.files.iter().filter(|f| !skip(&f.path)) {
        if let Some((size, sum)) = seen.get(&f.path) {
            ctx.report.files_checked += 1;
            ctx.report.bytes_checked += *size;
            if *size != f.size {
                go_on(ctx.file(
                    FindingKind::Size,
                    &f.path,
                    format!(
                        "\"{}\" has size {size} on disk but size {} in the manifest",
                        f.path, f.size
                    ),
                ))?;
            } else if !opts.skip_checksums
                && f.checksum_kind != ChecksumKind::None
                && *sum != f.checksum
            {
                mismatched.push(f.path.clone());
            }
        }
    }
    let damaged = &on_disk.damaged;
    let mut unread = vec![0usize; damaged.len()];
    for f in m.files.iter().filter(|f| !skip(&f.path)) {
        if seen.contains_key(&f.path) {
            continue;
        }
        let in_damaged = damaged.iter().position(|(_, prefix)| {
            if prefix.is_empty() {
                !f.path.starts_with("pg_tblspc/")
            } else {
                f.path.starts_with(prefix.as_str())
            }
        });
        if let Some(i) = in_damaged {
            unread[i] += 1;
        } else {
            go_on(ctx.file(
                FindingKind::Missing,
                &f.path,
                format!("\"{}\" is present in the manifest but not on disk", f.path),
            ))?;
        }
    }
    for ((name, _), n) in damaged.iter().zip(unread) {
        if n > 0 {
            go_on(ctx.file(
                FindingKind::Archive,
                name,
                format!(
                    "{n} files listed in the manifest were not checked: archive \"{name}\" could not be read to its end"
                ),
            ))?;
        }
    }
    for p in mismatched {
        go_on(ctx.file(
            FindingKind::Checksum,
            &p,
            format!("checksum mismatch for file \"{p}\""),
        ))?;
    }
    Ok(())
}

/// The WAL the backup needs, from the archive given, pg_wal.tar, base.tar's pg_wal/ (`-X
/// fetch`), or the plain backup's pg_wal: decoded from the start to the end of every range.
fn check_wal(ctx: &mut Ctx<'_>, path: &Path, m: &Manifest, on_disk: OnDisk) {
    let seg = on_disk
        .pg_control
        .as_deref()
        .and_then(|c| crate::control::ControlFile::parse(c).ok())
        .and_then(|c| WalSegSize::new(u64::from(c.wal_segment_size)).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    let tar = on_disk
        .wal_tar
        .map(|t| (t, ""))
        // -X fetch: the server put the WAL into base.tar, under pg_wal/
        .or_else(|| on_disk.base_tar.map(|t| (t, "pg_wal/")));
    match (&ctx.opts.wal_archive, tar) {
        (Some(dir), _) => check_wal_dir(ctx, m, &WalDir::new(dir, seg)),
        (None, Some((t, prefix))) => check_wal_tar(ctx, m, seg, &t, prefix),
        (None, None) => check_wal_dir(ctx, m, &WalDir::new(path.join("pg_wal"), seg)),
    }
}

/// The WAL ranges read from a directory of segments.
fn check_wal_dir(ctx: &mut Ctx<'_>, m: &Manifest, wd: &WalDir) {
    let (Some(first), Some(last)) = (m.wal_ranges.last(), m.wal_ranges.first()) else {
        ctx.wal(None, "the manifest lists no WAL range");
        return;
    };
    let history = history_of(&m.wal_ranges);
    let (tli, start, end) = (last.timeline, first.start, last.end);
    check_wal_stream(ctx, m, wd.seg_size(), |sink| {
        wd.read_range(tli, &history, start, Some(end), |s, b, _| {
            let _ = sink(s, b);
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
}

/// The WAL ranges read from the segments inside a tar archive (under `prefix`).
fn check_wal_tar(ctx: &mut Ctx<'_>, m: &Manifest, seg: WalSegSize, t: &Path, prefix: &str) {
    let history = history_of(&m.wal_ranges);
    let newest = m.wal_ranges.first().map(|r| r.timeline);
    check_wal_stream(ctx, m, seg, |sink| {
        let mut seg_start: Option<Lsn> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut cont = true;
        let mut fed = false;
        read_archive(t, |ev| match ev {
            TarEvent::Entry(h) => {
                seg_start = h
                    .path
                    .strip_prefix(prefix)
                    .filter(|_| h.kind == EntryKind::File)
                    .and_then(|name| pgwal::parse_wal_file_name(name, seg))
                    .filter(|p| p.kind == pgwal::WalFileKind::SEGMENT)
                    .and_then(|p| Some((p.timeline, p.segment?.start_lsn(seg)?)))
                    // of a segment present on two timelines, the one recovery reads
                    .filter(|&(t, s)| {
                        newest.is_some_and(|n| owner_of_segment(&history, n, s, seg) == t)
                    })
                    .map(|(_, s)| s);
                buf.clear();
            }
            // a segment's bytes, never more than a segment holds (the entry's size is the
            // archive's word, and the decoder reports a short or long segment)
            TarEvent::Data(d) if seg_start.is_some() => {
                let room = (seg.bytes() as usize + 1).saturating_sub(buf.len());
                buf.extend_from_slice(&d[..d.len().min(room)]);
            }
            TarEvent::EntryEnd => {
                if let (Some(s), true) = (seg_start, cont) {
                    fed = true;
                    buf.truncate(seg.bytes() as usize);
                    cont = sink(s, &buf);
                }
            }
            _ => {}
        })?;
        match (fed, m.wal_ranges.last()) {
            (false, Some(first)) => Err(format!(
                "WAL segment {} (from {}) is not in {}",
                pgwal::segment_file_name(first.timeline, first.start.segment(seg), seg),
                first.start,
                t.display()
            )),
            _ => Ok(()),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{history_of, owner_of_segment, tar_member_stem};
    use pgwal::timeline::TimelineHistory;
    use pgwal::{Lsn, TimelineId, WalSegSize};

    #[test]
    fn timelines_of_a_backup_that_crossed_a_switch() {
        use crate::manifest::WalRange;
        let seg = WalSegSize::new(16 << 20).unwrap();
        let range = |t: u32, start: u64, end: u64| WalRange {
            timeline: TimelineId(t),
            start: Lsn(start),
            end: Lsn(end),
        };
        let seg_start = |n: u64| Lsn(n << 24);
        // one timeline: everything is on it
        let h = history_of(&[range(1, 0x200_0028, 0x300_0100)]);
        assert!(h.entries.is_empty());
        assert_eq!(
            owner_of_segment(&h, TimelineId(1), seg_start(3), seg),
            TimelineId(1)
        );
        // switched on a segment boundary (0/3000000): segment 2 is timeline 1's, 3 is 2's
        let h = history_of(&[
            range(2, 0x300_0000, 0x301_1B18),
            range(1, 0x200_0028, 0x300_0000),
        ]);
        assert_eq!(h.entries.len(), 1);
        assert_eq!(h.entries[0].timeline, TimelineId(1));
        assert_eq!(h.entries[0].switch_point, Lsn(0x300_0000));
        let owner =
            |h: &TimelineHistory, n| owner_of_segment(h, TimelineId(2), seg_start(n), seg).0;
        assert_eq!((owner(&h, 2), owner(&h, 3)), (1, 2));
        // switched inside segment 2 and again inside 4: the segment of a switch is read from
        // the newer timeline's copy
        let h = history_of(&[
            range(3, 0x480_0000, 0x500_0000),
            range(2, 0x280_0000, 0x480_0000),
            range(1, 0x100_0028, 0x280_0000),
        ]);
        let owner = |n| owner_of_segment(&h, TimelineId(3), seg_start(n), seg).0;
        assert_eq!(
            (owner(1), owner(2), owner(3), owner(4), owner(5)),
            (1, 2, 2, 3, 3)
        );
        // the last segment a file name can give (as a damaged or hostile tar might)
        let last = Lsn(u64::MAX - (seg.bytes() - 1));
        assert_eq!(
            owner_of_segment(&h, TimelineId(3), last, seg),
            TimelineId(3)
        );
    }

    #[test]
    fn tar_member_names_as_pg_verifybackup_takes_them() {
        for (name, stem) in [
            ("base.tar", "base"),
            ("base.tar.gz", "base"),
            ("base.tgz", "base"),
            ("base.tar.zst", "base"),
            ("base.tar.lz4", "base"),
            ("pg_wal.tar", "pg_wal"),
            ("16385.tar.gz", "16385"),
        ] {
            assert_eq!(tar_member_stem(name), Some(stem), "{name}");
        }
        for name in [
            "PG_VERSION",
            "base",
            "base.zip",
            "base.tar.bz2",
            "0.tar",
            "4294967296.tar",
            "12a.tar",
            ".tar",
            "pg_wal",
        ] {
            assert_eq!(tar_member_stem(name), None, "{name}");
        }
    }
}
