//! Point-in-time restore: lay out a data directory from a backup chain (combined, or a single
//! full backup copied), then configure archive recovery — `recovery.signal`, and in
//! `postgresql.auto.conf` a `restore_command` that fetches from the WAL archive plus the
//! recovery target — so that starting the server replays to the target.
//!
//! Before anything is written, the archive's WAL is decoded from the backup's start (past the
//! backup's consistent point, only the archive's last segments when its listing shows no gap
//! before them, for a time or LSN target or none; recovery checks the rest as it replays): a target
//! that recovery would reach before the backup is consistent (PostgreSQL then stops with
//! "requested recovery stop point is before consistent recovery point"), or never reach in the
//! archive ("recovery ended before configured recovery target was reached"), is refused here
//! with the positions that make it so.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pgwal::timeline::{history_file_name, TimelineHistory};
use pgwal::xact::decode_xact_end;
use pgwal::xlog::{decode_xlog, XlogRecord};
use pgwal::{DecoderOptions, Lsn, TimelineId, WalDecoder, WalSegSize};
use walarchive::WalDir;

use crate::combine::{combine, CombineError, CombineOptions, CombineSummary};
use crate::control::ControlFile;
use crate::manifest::read_manifest_file;
use crate::source::BackupSource;

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's timestamp epoch).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// `recovery_target = 'immediate'`: as soon as the backup is consistent.
    Immediate,
    /// `recovery_target_time`: the text given, and its value in µs since 2000-01-01 UTC.
    Time(String, i64),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`.
    Xid(u32),
    /// `recovery_target_name`: a restore point.
    Name(String),
}

/// Parses a timestamp with an explicit zone — `YYYY-MM-DD HH:MM:SS[.frac]` followed by `Z`,
/// `UTC`, `GMT` or a numeric offset `±HH[:MM]` — into µs since 2000-01-01 UTC.
pub fn parse_timestamp(s: &str) -> Result<i64, RestoreError> {
    let bad = || RestoreError::BadTime {
        text: s.chars().take(100).collect(),
    };
    let t = s.trim();
    let (date, rest) = t.split_at(t.find([' ', 'T']).ok_or_else(bad)?);
    let rest = &rest[1..];
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 {
        return Err(bad());
    }
    // split the time from the zone
    let zone_at = rest.find(['+', '-', 'Z', 'U', 'G', ' ']).ok_or_else(bad)?;
    let (time, zone) = rest.split_at(zone_at);
    let zone = zone.trim();
    let offset_s: i64 = match zone {
        "Z" | "UTC" | "GMT" | "+00" | "+00:00" => 0,
        z if z.starts_with('+') || z.starts_with('-') => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let body = &z[1..];
            let (h, m) = match body.split_once(':') {
                Some((h, m)) => (h, m),
                None if body.len() == 4 => body.split_at(2),
                None => (body, "0"),
            };
            let h: i64 = h.parse().map_err(|_| bad())?;
            let m: i64 = m.parse().map_err(|_| bad())?;
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let tp: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if tp.len() != 3
        || !(0..24).contains(&tp[0])
        || !(0..60).contains(&tp[1])
        || !(0..61).contains(&tp[2])
    {
        return Err(bad());
    }
    if !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut us_frac = 0i64;
    for (i, c) in frac.bytes().take(6).enumerate() {
        us_frac += i64::from(c - b'0') * 10i64.pow(5 - i as u32);
    }
    // days from civil (proleptic Gregorian)
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let unix_s = days * 86_400 + tp[0] * 3600 + tp[1] * 60 + tp[2] - offset_s;
    Ok(unix_s * 1_000_000 + us_frac - PG_EPOCH_OFFSET_US)
}

/// Formats µs since 2000-01-01 as UTC text PostgreSQL accepts.
pub fn format_timestamp(us: i64) -> String {
    let unix_us = us + PG_EPOCH_OFFSET_US;
    let secs = unix_us.div_euclid(1_000_000);
    let frac = unix_us.rem_euclid(1_000_000);
    let base = crate::manifest::format_gmt(secs);
    format!("{}.{frac:06}+00", base.trim_end_matches(" GMT"))
}

/// What the restored server does at its recovery target (`recovery_target_action`).
///
/// PostgreSQL's own default is `pause`, which leaves a read-only server waiting for
/// `pg_wal_replay_resume()`; someone who restores wants a usable primary, so ours is `promote`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TargetAction {
    /// End recovery at the target and start accepting writes.
    #[default]
    Promote,
    /// Pause at the target (read-only) until `pg_wal_replay_resume()`.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

impl TargetAction {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

impl std::str::FromStr for TargetAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "promote" => Ok(TargetAction::Promote),
            "pause" => Ok(TargetAction::Pause),
            "shutdown" => Ok(TargetAction::Shutdown),
            _ => Err(format!(
                "invalid target action \"{s}\", must be \"pause\", \"promote\" or \"shutdown\""
            )),
        }
    }
}

/// Options of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The data directory to create (absent or empty).
    pub data_dir: PathBuf,
    /// The WAL archive (as `pgrepl receivewal` writes it).
    pub wal_archive: PathBuf,
    /// Where to stop; `None` replays to the end of the archive.
    pub target: Option<RecoveryTarget>,
    /// What the server does once it reaches the target (`recovery_target_action`).
    pub target_action: TargetAction,
    /// The full restore_command, `%f` and `%p` included.
    pub restore_command: String,
    /// Everything else is as for combine (tablespace mappings, sync, copy method).
    pub combine: CombineOptions,
}

/// What the archive and the backup say about the restore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreSummary {
    /// What was written.
    pub combine: CombineSummary,
    /// Where the backup becomes consistent (its end LSN).
    pub consistent_at: Lsn,
    /// The last commit time (µs since 2000) before the backup is consistent, if any.
    pub consistent_time: Option<i64>,
    /// How far the archive's WAL goes.
    pub archive_end: Lsn,
    /// The last commit time (µs since 2000) in the archive.
    pub last_commit_time: Option<i64>,
}

/// What a scan of the archive found.
#[derive(Debug, Default, PartialEq, Eq)]
struct Scan {
    /// Latest commit/abort time before `end`.
    max_time_before_end: Option<i64>,
    /// The end of the second of the backup's start checkpoint (a checkpoint's time has whole
    /// seconds; commits before the backup's start are no later than this).
    start_time: Option<i64>,
    /// Latest commit/abort time overall.
    last_time: Option<i64>,
    /// Where the xid target's commit/abort lies.
    xid_at: Option<Lsn>,
    /// Where the restore point lies.
    name_at: Option<Lsn>,
    /// The last record end decoded.
    reached: Lsn,
}

/// Why a restore was refused or failed; nothing is left in the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The target cannot be reached from this backup with this archive, or the archive lacks
    /// the backup's WAL (the positions and times are in the message).
    #[error("{problem}")]
    Unreachable {
        /// What stands in the way.
        problem: String,
    },
    /// A target time that is not a timestamp with a zone.
    #[error("invalid target time \"{text}\": expected YYYY-MM-DD HH:MM:SS[.ffffff] with a zone (Z, UTC or +HH:MM)")]
    BadTime {
        /// What was given.
        text: String,
    },
    /// The newest backup's manifest cannot be used.
    #[error("\"{}\": {source} (restore needs the newest backup's manifest for its WAL range)", path.display())]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: crate::manifest::ManifestError,
    },
    /// Laying out the data directory failed.
    #[error(transparent)]
    Combine(#[from] CombineError),
    /// Writing the recovery settings failed.
    #[error("could not write {file} in \"{}\": {source}", dir.display())]
    Write {
        /// The data directory.
        dir: PathBuf,
        /// The file.
        file: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn err<T>(m: impl Into<String>) -> Result<T, RestoreError> {
    Err(RestoreError::Unreachable { problem: m.into() })
}

/// A WAL archive a restore replays from: a directory, or a repository's WAL.
pub trait WalSource {
    /// A name for messages.
    fn describe(&self) -> String;
    /// The text of `tli`'s history file, if the archive has it.
    fn history(&self, tli: TimelineId) -> Option<String>;
    /// Feeds the WAL of `current` (and the timelines of its `history`) from `start`'s segment
    /// as far as the archive goes without a gap, segment by segment (its start and bytes),
    /// until `on_segment` returns `false`.
    fn read_from(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
        on_segment: &mut dyn FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<(), String>;
    /// The start of the last segment the archive holds without a gap from `start`'s segment
    /// on (as [`WalSource::read_from`] would follow it), when its listing tells without
    /// reading WAL. `None` (the default) makes a plan decode all of it.
    fn last_segment(
        &self,
        _current: TimelineId,
        _history: &TimelineHistory,
        _start: Lsn,
    ) -> Option<Lsn> {
        None
    }
}

/// A WAL archive directory, as `pgrepl receivewal` writes it.
#[derive(Debug, Clone)]
pub struct DirWal {
    dir: PathBuf,
    seg: WalSegSize,
}

impl DirWal {
    /// The archive at `dir`, of segments of `seg` bytes.
    pub fn new(dir: impl Into<PathBuf>, seg: WalSegSize) -> Self {
        DirWal {
            dir: dir.into(),
            seg,
        }
    }
}

impl WalSource for DirWal {
    fn describe(&self) -> String {
        format!("WAL archive \"{}\"", self.dir.display())
    }
    fn history(&self, tli: TimelineId) -> Option<String> {
        fs::read_to_string(self.dir.join(history_file_name(tli))).ok()
    }
    fn read_from(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
        on_segment: &mut dyn FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<(), String> {
        let mut go_on = true;
        WalDir::new(&self.dir, self.seg)
            .read_range(current, history, start, None, |s, b, _| {
                if go_on {
                    go_on = on_segment(s, b);
                }
            })
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn last_segment(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
    ) -> Option<Lsn> {
        WalDir::new(&self.dir, self.seg).last_contiguous(current, history, start)
    }
}

fn scan_archive(
    wal: &dyn WalSource,
    seg: WalSegSize,
    system_id: Option<u64>,
    tli: TimelineId,
    start: Lsn,
    end: Lsn,
    target: Option<&RecoveryTarget>,
) -> Result<Scan, RestoreError> {
    // follow the newest timeline in the archive whose history includes ours, as recovery's
    // default recovery_target_timeline = 'latest' does
    let mut current = tli;
    let mut history = TimelineHistory::default();
    for t in (tli.0.saturating_add(1)..tli.0.saturating_add(1000)).rev() {
        if let Some(text) = wal.history(TimelineId(t)) {
            if let Ok(h) = TimelineHistory::parse(&text) {
                if h.timeline_of(TimelineId(t), start) == tli {
                    current = TimelineId(t);
                    history = h;
                    break;
                }
            }
        }
    }
    let mut opts = DecoderOptions::new(seg);
    opts.system_id = system_id;
    let name = wal.describe();
    // A time or LSN target (or none) needs, past the backup's own WAL, only where the archive
    // ends and its last commit: when a listing says how far the archive runs without a gap,
    // the WAL between is not decoded (recovery checks every record of it as it replays). An
    // xid or a restore point is searched for from the start.
    let listed = match target {
        None | Some(RecoveryTarget::Time(..)) | Some(RecoveryTarget::Lsn(_)) => {
            wal.last_segment(current, &history, start)
        }
        _ => None,
    };
    let tail = listed.is_some();
    let satisfied = |scan: &Scan| {
        scan.reached >= end
            && match target {
                None => false,
                Some(RecoveryTarget::Immediate) => true,
                Some(RecoveryTarget::Lsn(l)) => scan.reached > *l,
                Some(RecoveryTarget::Time(_, t)) => scan.last_time.is_some_and(|last| last > *t),
                Some(RecoveryTarget::Xid(_)) => scan.xid_at.is_some(),
                Some(RecoveryTarget::Name(_)) => scan.name_at.is_some(),
            }
    };
    let mut scan = Scan::default();
    let run = decode_run(
        wal,
        current,
        &history,
        (start.segment_start(seg), Some(start)),
        opts,
        end,
        target,
        &mut scan,
        &|scan| satisfied(scan) || (tail && scan.reached >= end),
    )
    .map_err(|e| RestoreError::Unreachable {
        problem: format!("{name}: {e}"),
    })?;
    if let Some(f) = run.failure {
        return err(format!(
            "{name}: {f} (the backup needs WAL from {start} to {end})"
        ));
    }
    if scan.reached < end {
        return err(format!(
            "{name} ends at {}, before the backup is consistent at {end}: the backup's WAL is missing",
            scan.reached
        ));
    }
    if !tail || satisfied(&scan) || run.ended {
        return Ok(scan);
    }
    let Some(last) = listed else {
        return Ok(scan);
    };
    // the archive's last segment, to its end; then, while no commit has been seen, the
    // stretches before it (1, 2, 4 … segments, each decoded until its records reach the
    // stretch after it), back to where the first decoding stopped
    let resume = run.next.segment_start(seg);
    let mut upto: Option<Lsn> = None;
    let mut from = last.max(resume);
    let mut stretch = 1u64;
    loop {
        let first = (from == resume).then_some(run.next);
        let mut t = Scan::default();
        decode_run(
            wal,
            current,
            &history,
            (from, first),
            opts,
            end,
            target,
            &mut t,
            &|t| upto.is_some_and(|u| t.reached >= u),
        )
        .map_err(|e| RestoreError::Unreachable {
            problem: format!("{name}: {e}"),
        })?;
        if upto.is_none() {
            scan.reached = scan.reached.max(t.reached);
        }
        scan.last_time = scan.last_time.max(t.last_time);
        if t.last_time.is_some() || first.is_some() {
            return Ok(scan);
        }
        upto = Some(from);
        from = Lsn(from.0.saturating_sub(stretch * seg.bytes())).max(resume);
        stretch *= 2;
    }
}

/// How a [`decode_run`] ended.
struct Run {
    /// Where the next record starts.
    next: Lsn,
    /// Valid WAL ended (or the archive did) before `stop` said so.
    ended: bool,
    /// A decoding error before the backup's consistent point.
    failure: Option<String>,
}

/// Decodes the archive's WAL from `from` — the segment start, and the first record there
/// (`None`: the first that begins in that segment) — into `scan`, until `stop` holds at a
/// segment's end or valid WAL ends.
#[allow(clippy::too_many_arguments)]
fn decode_run(
    wal: &dyn WalSource,
    current: TimelineId,
    history: &TimelineHistory,
    from: (Lsn, Option<Lsn>),
    opts: DecoderOptions,
    end: Lsn,
    target: Option<&RecoveryTarget>,
    scan: &mut Scan,
    stop: &dyn Fn(&Scan) -> bool,
) -> Result<Run, String> {
    let mut decoder: Option<WalDecoder> = None;
    let mut run = Run {
        next: from.1.unwrap_or(from.0),
        ended: true,
        failure: None,
    };
    wal.read_from(current, history, from.0, &mut |seg_start, bytes| {
        if run.failure.is_some() {
            return false;
        }
        let d = match &mut decoder {
            Some(d) => d,
            None => {
                let d = match from.1 {
                    Some(first) => WalDecoder::starting_at(seg_start, first, opts),
                    None => WalDecoder::new(seg_start, opts),
                };
                match d {
                    Ok(d) => decoder.insert(d),
                    Err(e) => {
                        run.failure = Some(e.to_string());
                        return false;
                    }
                }
            }
        };
        d.feed(bytes);
        loop {
            match d.next_record() {
                Ok(Some(rec)) => {
                    scan.reached = rec.end_lsn;
                    note_record(&rec, end, target, scan);
                }
                Ok(None) => {
                    run.next = d.position();
                    if stop(scan) {
                        run.ended = false;
                        return false;
                    }
                    return true;
                }
                Err(e) => {
                    // the end of valid WAL (a partial segment's zeroed tail ends it normally)
                    if scan.reached < end {
                        run.failure = Some(e.to_string());
                    }
                    return false;
                }
            }
        }
    })?;
    Ok(run)
}

/// What one record tells the plan: commit times, the start checkpoint, the targets.
fn note_record(
    rec: &pgwal::Record<'_>,
    end: Lsn,
    target: Option<&RecoveryTarget>,
    scan: &mut Scan,
) {
    if let Ok(Some(x)) = decode_xact_end(rec) {
        if rec.lsn < end {
            scan.max_time_before_end = Some(
                scan.max_time_before_end
                    .map_or(x.time, |m: i64| m.max(x.time)),
            );
        }
        scan.last_time = Some(scan.last_time.map_or(x.time, |m: i64| m.max(x.time)));
        if matches!(target, Some(RecoveryTarget::Xid(t)) if *t == x.xid) && scan.xid_at.is_none() {
            scan.xid_at = Some(rec.lsn);
        }
    } else if let Ok(Some(x)) = decode_xlog(rec) {
        match x {
            XlogRecord::Checkpoint(c) if scan.start_time.is_none() && rec.lsn < end => {
                // whole seconds: commits before the start may lie anywhere in that second, so
                // the bound is the second's end
                scan.start_time = Some((c.time + 1) * 1_000_000 - PG_EPOCH_OFFSET_US);
            }
            XlogRecord::RestorePoint { name, .. }
                if scan.name_at.is_none()
                    && matches!(target, Some(RecoveryTarget::Name(n)) if *n == name) =>
            {
                scan.name_at = Some(rec.lsn);
            }
            _ => {}
        }
    }
}

/// Checks the target against what the archive holds; returns the summary's scan figures.
fn check_target(
    scan: &Scan,
    target: Option<&RecoveryTarget>,
    end: Lsn,
) -> Result<(), RestoreError> {
    let before = "is before the backup's consistent point";
    match target {
        None | Some(RecoveryTarget::Immediate) => Ok(()),
        Some(RecoveryTarget::Lsn(l)) => {
            if *l < end {
                return err(format!(
                    "target LSN {l} {before} {end}: restore from an older backup, or choose a later target"
                ));
            }
            if *l > scan.reached {
                return err(format!(
                    "target LSN {l} is beyond the end of the WAL archive ({}): recovery would end before reaching it",
                    scan.reached
                ));
            }
            Ok(())
        }
        Some(RecoveryTarget::Time(text, t)) => {
            let floor = scan.max_time_before_end.into_iter().chain(scan.start_time).max();
            if let Some(f) = floor {
                if *t < f {
                    return err(format!(
                        "target time \"{text}\" {before} (the backup covers transactions up to {}): restore from an older backup, or choose a later target",
                        format_timestamp(f)
                    ));
                }
            }
            match scan.last_time {
                Some(last) if *t >= last => err(format!(
                    "target time \"{text}\" is not before any commit in the WAL archive (the last is at {}): recovery would end before reaching it; restore without a target to replay everything",
                    format_timestamp(last)
                )),
                None => err(format!(
                    "target time \"{text}\": the WAL archive holds no commit after the backup, so recovery cannot reach it"
                )),
                _ => Ok(()),
            }
        }
        Some(RecoveryTarget::Xid(x)) => match scan.xid_at {
            None => err(format!(
                "target xid {x} does not end in the WAL archive after the backup's start (archive ends at {})",
                scan.reached
            )),
            Some(at) if at < end => err(format!(
                "target xid {x} ends at {at}, which {before} {end}"
            )),
            _ => Ok(()),
        },
        Some(RecoveryTarget::Name(n)) => match scan.name_at {
            None => err(format!(
                "restore point \"{n}\" is not in the WAL archive after the backup's start (archive ends at {})",
                scan.reached
            )),
            Some(at) if at < end => err(format!(
                "restore point \"{n}\" at {at} {before} {end}"
            )),
            _ => Ok(()),
        },
    }
}

/// A GUC string literal: single quotes doubled.
fn guc_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A word for `sh -c`: left alone when it is plainly safe, single-quoted otherwise.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What a restore of a chain with an archive will do, found before anything is written: where
/// the backup becomes consistent, how far the archive's WAL reaches, and between which commit
/// times a target can lie. [`plan_restore`] makes one; [`restore`] carries it out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestorePlan {
    /// The backups, oldest first (the newest is the one restored).
    pub backups: Vec<PathBuf>,
    /// The timeline the newest backup was taken on.
    pub timeline: TimelineId,
    /// Where replay starts (the newest backup's start LSN).
    pub start: Lsn,
    /// Where the backup becomes consistent (its end LSN): no target may lie before it.
    pub consistent_at: Lsn,
    /// The last commit time (µs since 2000-01-01 UTC) the backup already covers, if known: a
    /// time target must be later.
    pub consistent_time: Option<i64>,
    /// How far the archive's WAL was read (on the newest timeline that descends from ours):
    /// to its end without a target, or until what the target needs was seen.
    pub archive_end: Lsn,
    /// The last commit time (µs since 2000) read from the archive: a time target must be
    /// earlier.
    pub last_commit_time: Option<i64>,
    /// The target the plan was checked against.
    pub target: Option<RecoveryTarget>,
}

/// Checks that `backups` (oldest first) restored with the WAL in `wal_archive` reach `target`,
/// reading the newest backup's manifest and decoding the archive's WAL from the backup's start;
/// writes nothing. A target before the consistent point or beyond the archive is refused with
/// the positions that make it so.
pub fn plan_restore(
    backups: &[PathBuf],
    wal_archive: &Path,
    target: Option<&RecoveryTarget>,
) -> Result<RestorePlan, RestoreError> {
    let Some(newest) = backups.last() else {
        return err("no backup given");
    };
    if !wal_archive.is_dir() {
        return err(format!(
            "WAL archive \"{}\" is not a directory",
            wal_archive.display()
        ));
    }
    let mpath = newest.join("backup_manifest");
    let m = read_manifest_file(&mpath).map_err(|source| RestoreError::Manifest {
        path: mpath.clone(),
        source,
    })?;
    let seg = fs::read(newest.join("global/pg_control"))
        .ok()
        .and_then(|b| ControlFile::parse(&b).ok())
        .and_then(|c| WalSegSize::new(c.wal_segment_size as u64).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    plan_with(
        backups.to_vec(),
        &mpath,
        &m,
        &DirWal::new(wal_archive, seg),
        seg,
        target,
    )
}

/// As [`plan_restore`], for opened backups (oldest first) and any [`WalSource`].
pub fn plan_restore_sources(
    sources: &[BackupSource],
    wal: &dyn WalSource,
    target: Option<&RecoveryTarget>,
) -> Result<RestorePlan, RestoreError> {
    let Some(newest) = sources.last() else {
        return err("no backup given");
    };
    let Some(loc) = &newest.manifest else {
        return err(format!(
            "backup \"{}\" has no backup_manifest",
            newest.root.display()
        ));
    };
    let m = loc
        .reader()
        .map_err(|source| crate::manifest::ManifestError::Read {
            path: loc.path.clone(),
            source,
        })
        .and_then(crate::manifest::ManifestParser::parse_reader)
        .map_err(|source| RestoreError::Manifest {
            path: loc.path.clone(),
            source,
        })?;
    let seg = newest
        .read("global/pg_control")
        .ok()
        .flatten()
        .and_then(|b| ControlFile::parse(b.as_slice()).ok())
        .and_then(|c| WalSegSize::new(c.wal_segment_size as u64).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    let names = sources.iter().map(|s| s.root.clone()).collect();
    plan_with(names, &loc.path, &m, wal, seg, target)
}

fn plan_with(
    backups: Vec<PathBuf>,
    mpath: &Path,
    m: &crate::manifest::Manifest,
    wal: &dyn WalSource,
    seg: WalSegSize,
    target: Option<&RecoveryTarget>,
) -> Result<RestorePlan, RestoreError> {
    let (Some(first), Some(last)) = (m.wal_ranges.last(), m.wal_ranges.first()) else {
        return err(format!("\"{}\" lists no WAL range", mpath.display()));
    };
    let (start, end) = (first.start, last.end);
    let scan = scan_archive(
        wal,
        seg,
        m.system_identifier,
        first.timeline,
        start,
        end,
        target,
    )?;
    check_target(&scan, target, end)?;
    Ok(RestorePlan {
        backups,
        timeline: first.timeline,
        start,
        consistent_at: end,
        consistent_time: scan
            .max_time_before_end
            .into_iter()
            .chain(scan.start_time)
            .max(),
        archive_end: scan.reached,
        last_commit_time: scan.last_time,
        target: target.cloned(),
    })
}

/// Restores `backups` (oldest first) into `opts.data_dir`, configured to recover from
/// `opts.wal_archive` to `opts.target`: [`plan_restore`], then the chain combined and the
/// recovery settings written. On failure the data directory is removed.
pub fn restore(backups: &[PathBuf], opts: &RestoreOptions) -> Result<RestoreSummary, RestoreError> {
    let plan = plan_restore(backups, &opts.wal_archive, opts.target.as_ref())?;
    let mut copts = opts.combine.clone();
    copts.output = opts.data_dir.clone();
    let summary = combine(backups, &copts)?;
    configure_recovery(opts, plan, summary)
}

/// As [`restore`], for opened backups (oldest first) and any [`WalSource`] (`opts.wal_archive`
/// is not used: the WAL comes from `wal`, and `opts.restore_command` fetches it the same way).
pub fn restore_sources(
    sources: Vec<BackupSource>,
    wal: &dyn WalSource,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, RestoreError> {
    let plan = plan_restore_sources(&sources, wal, opts.target.as_ref())?;
    restore_planned(sources, plan, opts)
}

/// Carries out a plan [`plan_restore_sources`] made for `sources` (without reading the WAL
/// again).
pub fn restore_planned(
    sources: Vec<BackupSource>,
    plan: RestorePlan,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, RestoreError> {
    let mut copts = opts.combine.clone();
    copts.output = opts.data_dir.clone();
    let summary = crate::combine::combine_sources(sources, &copts)?;
    configure_recovery(opts, plan, summary)
}

/// Writes the recovery settings into the combined data directory; on failure removes it.
fn configure_recovery(
    opts: &RestoreOptions,
    plan: RestorePlan,
    summary: CombineSummary,
) -> Result<RestoreSummary, RestoreError> {
    let finish = || -> Result<(), RestoreError> {
        let io = |file: &'static str, source: std::io::Error| RestoreError::Write {
            dir: opts.data_dir.clone(),
            file,
            source,
        };
        let mut conf = String::from("\n# recovery settings written by pgrepl restore\n");
        conf.push_str(&format!(
            "restore_command = {}\n",
            guc_quote(&opts.restore_command)
        ));
        conf.push_str("recovery_target_timeline = 'latest'\n");
        match &opts.target {
            None => {}
            Some(RecoveryTarget::Immediate) => conf.push_str("recovery_target = 'immediate'\n"),
            Some(RecoveryTarget::Time(text, _)) => {
                conf.push_str(&format!("recovery_target_time = {}\n", guc_quote(text)))
            }
            Some(RecoveryTarget::Lsn(l)) => {
                conf.push_str(&format!("recovery_target_lsn = '{l}'\n"))
            }
            Some(RecoveryTarget::Xid(x)) => {
                conf.push_str(&format!("recovery_target_xid = '{x}'\n"))
            }
            Some(RecoveryTarget::Name(n)) => {
                conf.push_str(&format!("recovery_target_name = {}\n", guc_quote(n)))
            }
        }
        if opts.target.is_some() {
            conf.push_str(&format!(
                "recovery_target_action = '{}'\n",
                opts.target_action.as_str()
            ));
        }
        let auto = opts.data_dir.join("postgresql.auto.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&auto)
            .map_err(|e| io("postgresql.auto.conf", e))?;
        f.write_all(conf.as_bytes())
            .map_err(|e| io("postgresql.auto.conf", e))?;
        if opts.combine.sync {
            f.sync_all().map_err(|e| io("postgresql.auto.conf", e))?;
        }
        let sig = opts.data_dir.join("recovery.signal");
        let s = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&sig)
            .map_err(|e| io("recovery.signal", e))?;
        if opts.combine.sync {
            s.sync_all().map_err(|e| io("recovery.signal", e))?;
            if let Ok(d) = fs::File::open(&opts.data_dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    };
    if let Err(e) = finish() {
        // a data directory without its recovery settings would start as the backup: remove it
        let _ = fs::remove_dir_all(&opts.data_dir);
        return Err(e);
    }
    Ok(RestoreSummary {
        combine: summary,
        consistent_at: plan.consistent_at,
        consistent_time: plan.consistent_time,
        archive_end: plan.archive_end,
        last_commit_time: plan.last_commit_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    use pgwal::writer::{RecordSpec, WalWriter};
    use pgwal::WalVersion;

    const SYSTEM: u64 = 7_000_000_000_000_000_001;

    /// A directory archive that counts the segments it feeds, with or without its listing.
    struct Counting {
        dir: DirWal,
        listing: bool,
        fed: Cell<usize>,
    }

    impl WalSource for Counting {
        fn describe(&self) -> String {
            self.dir.describe()
        }
        fn history(&self, tli: TimelineId) -> Option<String> {
            self.dir.history(tli)
        }
        fn read_from(
            &self,
            current: TimelineId,
            history: &TimelineHistory,
            start: Lsn,
            on_segment: &mut dyn FnMut(Lsn, &[u8]) -> bool,
        ) -> Result<(), String> {
            self.dir.read_from(current, history, start, &mut |s, b| {
                self.fed.set(self.fed.get() + 1);
                on_segment(s, b)
            })
        }
        fn last_segment(
            &self,
            current: TimelineId,
            history: &TimelineHistory,
            start: Lsn,
        ) -> Option<Lsn> {
            self.listing
                .then(|| self.dir.last_segment(current, history, start))
                .flatten()
        }
    }

    /// A 1 MiB-segment archive of `segments` segments from segment 1: filler records, with a
    /// commit at `commit_time(i)` after every 40th filler while `commits(i)`; returns the
    /// directory, the first record and the commits' (LSN, time).
    fn archive(
        name: &str,
        segments: u64,
        commits: impl Fn(usize) -> bool,
    ) -> (PathBuf, Lsn, Vec<(Lsn, i64)>) {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let dir =
            std::env::temp_dir().join(format!("pgrepl-restore-plan-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let base = Lsn(seg.bytes());
        let mut w = WalWriter::new(base, seg, TimelineId(1), SYSTEM, WalVersion::V18);
        let limit = base.0 + segments * seg.bytes() - 64 * 1024;
        let mut first = None;
        let mut made = Vec::new();
        let mut i = 0usize;
        loop {
            let filler = RecordSpec {
                rmid: 10, // heap: nothing a plan looks at
                main_data: vec![i as u8; 1500 + i % 700],
                ..Default::default()
            };
            let l = w.append(&filler);
            first.get_or_insert(l);
            if l.0 > limit {
                break;
            }
            if i % 40 == 39 && commits(i / 40) {
                let time = 800_000_000_000_000 + (i as i64 / 40) * 1_000_000;
                let c = w.append(&RecordSpec {
                    rmid: 1, // transaction: a commit and its time
                    info: 0,
                    xid: 1000 + i as u32,
                    main_data: time.to_le_bytes().to_vec(),
                    ..Default::default()
                });
                made.push((c, time));
            }
            i += 1;
        }
        let (_, mut bytes) = w.finish();
        bytes.resize((segments * seg.bytes()) as usize, 0);
        for (k, chunk) in bytes.chunks(seg.bytes() as usize).enumerate() {
            let no = pgwal::SegmentNo(1 + k as u64);
            let name = pgwal::segment_file_name(TimelineId(1), no, seg);
            fs::write(dir.join(name), chunk).unwrap();
        }
        (dir, first.unwrap(), made)
    }

    fn plan_both(
        dir: &Path,
        start: Lsn,
        end: Lsn,
        target: Option<&RecoveryTarget>,
    ) -> ((Scan, usize), (Scan, usize)) {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let run = |listing| {
            let src = Counting {
                dir: DirWal::new(dir, seg),
                listing,
                fed: Cell::new(0),
            };
            let scan =
                scan_archive(&src, seg, Some(SYSTEM), TimelineId(1), start, end, target).unwrap();
            (scan, src.fed.get())
        };
        (run(false), run(true))
    }

    /// With a listing, a time or LSN target's plan (or one without a target) decodes the
    /// backup's WAL and the archive's last segment only, and finds the archive's end and last
    /// commit as decoding all of it does.
    #[test]
    fn a_listed_archive_is_planned_from_its_tail() {
        let (dir, start, commits) = archive("tail", 24, |_| true);
        let end = commits[2].0;
        let ((all, all_fed), _) = plan_both(&dir, start, end, None);
        assert_eq!(all.last_time, Some(commits.last().unwrap().1));
        assert!(all.reached > commits.last().unwrap().0);
        assert_eq!(all_fed, 24);
        let t = commits[commits.len() / 2].1 + 500_000;
        let mid = RecoveryTarget::Time("mid".into(), t);
        for target in [Some(&mid), None, Some(&RecoveryTarget::Lsn(commits[30].0))] {
            let (_, (tail, fed)) = plan_both(&dir, start, end, target);
            assert_eq!(tail, all, "{target:?}");
            assert!(fed <= 2, "{target:?}: {fed} segments read");
        }
        let (_, (tail, _)) = plan_both(&dir, start, end, Some(&mid));
        check_target(&tail, Some(&mid), end).unwrap();
        let late = RecoveryTarget::Time("late".into(), commits.last().unwrap().1);
        let (_, (tail, _)) = plan_both(&dir, start, end, Some(&late));
        let e = check_target(&tail, Some(&late), end).unwrap_err();
        assert!(e.to_string().contains("not before any commit"), "{e}");
        let beyond = RecoveryTarget::Lsn(Lsn(all.reached.0 + 8));
        let (_, (tail, _)) = plan_both(&dir, start, end, Some(&beyond));
        let e = check_target(&tail, Some(&beyond), end).unwrap_err();
        assert!(e.to_string().contains("beyond the end"), "{e}");
        // an xid is still searched for from the start
        let xid = RecoveryTarget::Xid(1000 + 40 * 100 + 39);
        let (_, (tail, fed)) = plan_both(&dir, start, end, Some(&xid));
        assert!(tail.xid_at.is_some() && fed < 24, "{tail:?} {fed}");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Commits only in the first half: the tail is walked back until it holds one, and a gap
    /// ends the archive for both ways of planning.
    #[test]
    fn a_tail_without_commits_is_walked_back_and_a_gap_ends_it() {
        let (dir, start, commits) = archive("quiet", 24, |i| i < 60);
        let end = commits[1].0;
        let ((full, _), (tail, fed)) = plan_both(&dir, start, end, None);
        assert_eq!(full, tail);
        assert_eq!(tail.last_time, Some(commits.last().unwrap().1));
        // the whole archive at most, and one segment more per stretch walked back
        assert!(fed <= 24 + 6, "{fed}");
        let seg = WalSegSize::new(1 << 20).unwrap();
        fs::remove_file(dir.join(pgwal::segment_file_name(
            TimelineId(1),
            pgwal::SegmentNo(12),
            seg,
        )))
        .unwrap();
        let ((full, _), (tail, _)) = plan_both(&dir, start, end, None);
        assert_eq!(full, tail);
        assert_eq!(tail.reached.segment(seg), pgwal::SegmentNo(11));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("2000-01-01 00:00:00+00").unwrap(), 0);
        assert_eq!(
            parse_timestamp("2000-01-01 01:00:00.5+01").unwrap(),
            500_000
        );
        assert_eq!(parse_timestamp("2000-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert_eq!(parse_timestamp("1999-12-31 19:00:00-05:00").unwrap(), 0);
        assert_eq!(
            parse_timestamp("2026-11-24 23:30:00.123456 UTC").unwrap(),
            parse_timestamp("2026-11-25 01:00:00.123456+01:30").unwrap()
        );
        assert!(parse_timestamp("2026-11-24 23:30:00").is_err());
        assert!(parse_timestamp("yesterday").is_err());
        let t = parse_timestamp("2026-02-28 12:34:56.000789+00").unwrap();
        assert_eq!(format_timestamp(t), "2026-02-28 12:34:56.000789+00");
        assert_eq!(parse_timestamp(&format_timestamp(t)).unwrap(), t);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/pgrepl"), "/usr/bin/pgrepl");
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
        assert_eq!(guc_quote("a'b"), "'a''b'");
    }
}
