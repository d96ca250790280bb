//! `expire --repo`: retention that never breaks a chain. The decision is computed from the
//! graph of backups (each with its parent and the WAL it needs) and returned as an
//! [`ExpirePlan`] — what goes, what stays and why, bytes freed — before anything is deleted.
//!
//! Rules:
//! - `retain_full: N` keeps the N newest full backups and every incremental on them;
//! - `retain_pitr: D` keeps every point of the last D restorable: each backup that ends inside
//!   the window, the newest one that ends before it (it starts the window), and the WAL from
//!   that backup's start on. Backups kept only by `retain_full` keep no WAL beyond what they
//!   carry (tiered retention: long-lived fulls, a short window of seconds);
//! - without `retain_pitr`, the WAL from the oldest kept backup's start on is kept;
//! - a kept backup keeps all its ancestors, so an incremental never loses its parent;
//! - uploads without a commit record older than `min_age` are garbage.
//!
//! Deleting follows an order that never leaves a listed backup without a part: a backup's
//! commit record goes first (it stops being a backup), then its other objects; expired
//! backups go newest first, so children before parents; WAL last.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgwal::{Lsn, SegmentNo, TimelineId, WalSegSize};

use crate::layout::{self, WalObject};
use crate::records::{BackupKind, BackupRecord};
use crate::repo::{Repo, RepoError};

/// What to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep this many newest full backups (and the incrementals on them).
    pub retain_full: Option<usize>,
    /// Keep every point of this last stretch of time restorable.
    pub retain_pitr: Option<Duration>,
    /// Leave uploads without a commit record alone until they are this old.
    pub min_age: Duration,
}

/// Why a backup stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum KeepReason {
    /// Among the newest `retain_full` full backups, or an incremental on one.
    RetainFull,
    /// Ends inside the PITR window, or starts it.
    RetainPitr,
    /// An ancestor of a kept backup.
    Ancestor,
    /// Claimed by a running backup's lease (see [`crate::lease`]), or committed after this
    /// run marked what it would remove.
    InUse,
}

impl KeepReason {
    /// A stable name (`--json`).
    pub fn code(self) -> &'static str {
        match self {
            KeepReason::RetainFull => "retain_full",
            KeepReason::RetainPitr => "retain_pitr",
            KeepReason::Ancestor => "ancestor_of_kept",
            KeepReason::InUse => "in_use",
        }
    }
}

/// One backup's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupDecision {
    /// The backup.
    pub id: String,
    /// Why it stays; empty: it goes.
    pub keep: BTreeSet<KeepReason>,
    /// Its stored bytes.
    pub bytes: u64,
}

/// A run of WAL objects to delete, on one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDeletion {
    /// The timeline.
    pub timeline: TimelineId,
    /// First segment file.
    pub first: String,
    /// Last segment file.
    pub last: String,
    /// Objects (segments and tails).
    pub objects: usize,
    /// Their stored bytes.
    pub bytes: u64,
}

/// An upload without a commit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Garbage {
    /// The backup ID it was written under.
    pub id: String,
    /// Objects.
    pub objects: usize,
    /// Bytes.
    pub bytes: u64,
    /// The newest object's time (Unix seconds).
    pub modified: i64,
    /// Old enough to remove.
    pub remove: bool,
}

/// What `expire` does, decided before it does it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExpirePlan {
    /// Every backup, oldest first.
    pub backups: Vec<BackupDecision>,
    /// WAL kept from here on (every timeline); `None`: no WAL is removed.
    pub wal_from: Option<Lsn>,
    /// WAL to delete.
    pub wal: Vec<WalDeletion>,
    /// Uploads without a commit record.
    pub garbage: Vec<Garbage>,
    /// Bytes freed by carrying it out.
    pub bytes_freed: u64,
    /// Object keys to delete, in order.
    pub deletions: Vec<String>,
}

impl ExpirePlan {
    /// The IDs of the backups that go.
    pub fn expired(&self) -> Vec<&str> {
        self.backups
            .iter()
            .filter(|b| b.keep.is_empty())
            .map(|b| b.id.as_str())
            .collect()
    }
}

/// Why there is no plan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExpireError {
    /// Neither rule given: everything would go.
    #[error(
        "give --retain-full N and/or --retain-pitr DURATION: expire never removes every backup"
    )]
    NoRule,
    /// `retain_full: 0`.
    #[error("--retain-full must be at least 1")]
    ZeroFull,
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// The objects the plan works from (a listing), by key.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every object under `backups/`: (key, size, modified).
    pub backup_objects: Vec<(String, u64, i64)>,
    /// Every object under `wal/`: (key, size).
    pub wal_objects: Vec<(String, u64)>,
}

/// Decides, from `backups` (committed, any order) and `listing`, at `now` (Unix seconds);
/// `in_use`: backups to keep whatever the rules say (claimed by running backups).
pub fn plan(
    backups: &[BackupRecord],
    listing: &Listing,
    rules: &Retention,
    now: i64,
    seg: WalSegSize,
    in_use: &BTreeSet<String>,
) -> Result<ExpirePlan, ExpireError> {
    if rules.retain_full.is_none() && rules.retain_pitr.is_none() {
        return Err(ExpireError::NoRule);
    }
    if rules.retain_full == Some(0) {
        return Err(ExpireError::ZeroFull);
    }
    let mut all: Vec<&BackupRecord> = backups.iter().collect();
    all.sort_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)));
    let by_id: BTreeMap<&str, &BackupRecord> = all.iter().map(|b| (b.id.as_str(), *b)).collect();
    let root_of = |b: &BackupRecord| -> Option<String> {
        let mut cur = b;
        for _ in 0..=all.len() {
            match &cur.parent {
                None => return Some(cur.id.clone()),
                Some(p) => cur = by_id.get(p.as_str())?,
            }
        }
        None
    };
    let mut keep: BTreeMap<String, BTreeSet<KeepReason>> = BTreeMap::new();

    if let Some(n) = rules.retain_full {
        let fulls: BTreeSet<String> = all
            .iter()
            .rev()
            .filter(|b| b.kind == BackupKind::Full)
            .take(n)
            .map(|b| b.id.clone())
            .collect();
        for b in &all {
            if root_of(b).is_some_and(|r| fulls.contains(&r)) {
                keep.entry(b.id.clone())
                    .or_default()
                    .insert(KeepReason::RetainFull);
            }
        }
    }
    let mut pitr_from: Option<Lsn> = None;
    if let Some(d) = rules.retain_pitr {
        let window_start = now.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64);
        let inside: Vec<&&BackupRecord> =
            all.iter().filter(|b| b.end_time >= window_start).collect();
        // the newest backup that ends before the window (restores its first points)
        let opener = all.iter().rev().find(|b| b.end_time < window_start);
        for b in inside.iter().copied().chain(opener) {
            keep.entry(b.id.clone())
                .or_default()
                .insert(KeepReason::RetainPitr);
        }
        pitr_from = opener
            .or_else(|| inside.first().copied())
            .map(|b| b.start_lsn);
    }
    // ancestors of kept backups; then what running backups claim, with its ancestors (a
    // backup the rules keep anyway is not said to be in use)
    let ancestors = |keep: &mut BTreeMap<String, BTreeSet<KeepReason>>| {
        let kept: Vec<String> = keep.keys().cloned().collect();
        for id in kept {
            let mut cur = by_id.get(id.as_str()).copied();
            while let Some(p) = cur.and_then(|b| b.parent.as_deref()) {
                keep.entry(p.to_owned())
                    .or_default()
                    .insert(KeepReason::Ancestor);
                cur = by_id.get(p).copied();
            }
        }
    };
    ancestors(&mut keep);
    for id in in_use {
        if by_id.contains_key(id.as_str()) && !keep.contains_key(id) {
            keep.entry(id.clone())
                .or_default()
                .insert(KeepReason::InUse);
        }
    }
    ancestors(&mut keep);
    for reasons in keep.values_mut() {
        // a backup kept for itself is not "only an ancestor"
        if reasons.len() > 1 {
            reasons.remove(&KeepReason::Ancestor);
        }
    }

    // the WAL to keep: from the PITR window's first backup, else from the oldest kept backup
    let wal_from = match pitr_from {
        Some(l) => Some(l),
        None => all
            .iter()
            .filter(|b| keep.contains_key(&b.id))
            .map(|b| b.start_lsn)
            .min(),
    };

    // the objects of each backup (all of its prefix)
    let mut objects: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    let mut uploads: BTreeMap<&str, (usize, u64, i64)> = BTreeMap::new();
    for (key, size, modified) in &listing.backup_objects {
        let Some((id, _)) = key
            .strip_prefix(layout::BACKUPS_PREFIX)
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if by_id.contains_key(id) {
            objects.entry(id).or_default().push((key, *size));
        } else {
            let u = uploads.entry(id).or_default();
            u.0 += 1;
            u.1 += size;
            u.2 = u.2.max(*modified);
        }
    }

    let mut deletions = Vec::new();
    let mut bytes_freed = 0;
    let mut decisions = Vec::new();
    for b in &all {
        let reasons = keep.get(&b.id).cloned().unwrap_or_default();
        let bytes = objects
            .get(b.id.as_str())
            .map(|v| v.iter().map(|(_, s)| s).sum())
            .unwrap_or(0);
        decisions.push(BackupDecision {
            id: b.id.clone(),
            keep: reasons,
            bytes,
        });
    }
    // newest first: an incremental goes before its parent
    for d in decisions.iter().rev().filter(|d| d.keep.is_empty()) {
        let commit = layout::commit_key(&d.id);
        deletions.push(commit.clone());
        for (k, _) in objects.get(d.id.as_str()).into_iter().flatten() {
            if *k != commit {
                deletions.push((*k).to_owned());
            }
        }
        bytes_freed += d.bytes;
    }

    let min_age = rules.min_age.as_secs().min(i64::MAX as u64) as i64;
    let mut garbage = Vec::new();
    for (id, (n, bytes, modified)) in &uploads {
        let remove = now.saturating_sub(*modified) >= min_age;
        if remove {
            let prefix = layout::backup_prefix(id);
            for (key, _, _) in &listing.backup_objects {
                if key.starts_with(&prefix) {
                    deletions.push(key.clone());
                }
            }
            bytes_freed += bytes;
        }
        garbage.push(Garbage {
            id: (*id).to_owned(),
            objects: *n,
            bytes: *bytes,
            modified: *modified,
            remove,
        });
    }

    // WAL before wal_from's segment, every timeline; history files stay
    let mut wal: BTreeMap<TimelineId, WalDeletion> = BTreeMap::new();
    if let Some(from) = wal_from {
        let first_kept = from.segment(seg);
        let mut old: Vec<(TimelineId, SegmentNo, &str, u64)> = listing
            .wal_objects
            .iter()
            .filter_map(|(k, size)| match layout::parse_wal_key(k, seg)? {
                WalObject::Segment(t, s) | WalObject::Partial(t, s) if s.0 < first_kept.0 => {
                    Some((t, s, k.as_str(), *size))
                }
                _ => None,
            })
            .collect();
        old.sort();
        for (t, s, k, size) in old {
            let name = pgwal::segment_file_name(t, s, seg);
            let w = wal.entry(t).or_insert_with(|| WalDeletion {
                timeline: t,
                first: name.clone(),
                last: name.clone(),
                objects: 0,
                bytes: 0,
            });
            w.last = name;
            w.objects += 1;
            w.bytes += size;
            bytes_freed += size;
            deletions.push(k.to_owned());
        }
    }

    Ok(ExpirePlan {
        backups: decisions,
        wal_from,
        wal: wal.into_values().collect(),
        garbage,
        bytes_freed,
        deletions,
    })
}

/// Lists `repo` and plans (nothing is deleted): backups live leases claim are kept. `now`:
/// Unix seconds.
pub async fn plan_expire(
    repo: &Repo,
    rules: &Retention,
    now: i64,
) -> Result<ExpirePlan, ExpireError> {
    plan_keeping(repo, rules, now, &BTreeSet::new()).await
}

async fn plan_keeping(
    repo: &Repo,
    rules: &Retention,
    now: i64,
    also_keep: &BTreeSet<String>,
) -> Result<ExpirePlan, ExpireError> {
    let (mut in_use, _) = crate::lease::claimed(repo, crate::lease::now()).await?;
    in_use.extend(also_keep.iter().cloned());
    let backups = repo.backups().await?;
    let system = repo.system().await?;
    let seg = crate::info::segment_size(system.as_ref(), &backups);
    let listing = Listing {
        backup_objects: repo
            .list(layout::BACKUPS_PREFIX)
            .await?
            .into_iter()
            .map(|m| (m.key, m.size, m.modified))
            .collect(),
        wal_objects: repo
            .list(layout::WAL_PREFIX)
            .await?
            .into_iter()
            .map(|m| (m.key, m.size))
            .collect(),
    };
    plan(&backups, &listing, rules, now, seg, &in_use)
}

/// What [`expire`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExpireOutcome {
    /// The plan carried out (after the running backups' leases were read again).
    pub plan: ExpirePlan,
    /// Objects deleted.
    pub deleted: usize,
}

/// Why an expire run stopped.
fn stopped(n: usize, e: impl std::fmt::Display) -> ExpireError {
    ExpireError::Repo(RepoError::Unusable(format!(
        "expire stopped after {n} deletions: {e} (what is left is consistent: run it again)"
    )))
}

/// Plans and carries out an expiry, coordinated with running backups (see [`crate::lease`]):
/// marks the backups it means to remove, reads the leases again, keeps whatever a lease now
/// claims or whatever was committed meanwhile, then deletes in the plan's order and clears up
/// its marks and void leases.
pub async fn expire(
    repo: &Repo,
    rules: &Retention,
    now: i64,
) -> Result<ExpireOutcome, ExpireError> {
    use crate::lease;
    let first = plan_expire(repo, rules, now).await?;
    let marked: Vec<&str> = first.expired();
    let until = lease::mark_expiring(repo, &marked).await?;
    // read second: a backup that wrote its lease before this sees no mark, and is seen here
    let marked_set: BTreeSet<&str> = marked.iter().copied().collect();
    let unmarked: BTreeSet<String> = repo
        .backups()
        .await?
        .into_iter()
        .map(|b| b.id)
        .filter(|id| !marked_set.contains(id.as_str()))
        .collect();
    let plan = plan_keeping(repo, rules, now, &unmarked).await?;
    let mut n = 0;
    for key in &plan.deletions {
        // commit records only while the marks hold (a backup starting now believes them)
        if key.ends_with("/commit.json") && lease::now() + 30 > until {
            return Err(stopped(n, "its expiry marks ran out"));
        }
        repo.store().delete(key).await.map_err(|e| stopped(n, e))?;
        n += 1;
    }
    // marks of what stays, of what went, and void leases and marks
    let (_, void_leases) = lease::claimed(repo, lease::now()).await?;
    let (_, void_marks) = lease::expiring(repo, lease::now()).await?;
    let marks = marked.iter().map(|id| layout::expiring_key(id));
    for key in marks.chain(void_leases).chain(void_marks) {
        repo.store().delete(&key).await.map_err(|e| stopped(n, e))?;
    }
    Ok(ExpireOutcome { plan, deleted: n })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    /// Backup `n` starts at segment 2n and ends just after; `t` its end time.
    fn rec(id: &str, parent: Option<&str>, n: u64, t: i64) -> BackupRecord {
        BackupRecord {
            format: 1,
            id: id.into(),
            kind: if parent.is_some() {
                BackupKind::Incremental
            } else {
                BackupKind::Full
            },
            parent: parent.map(Into::into),
            full_reason: None,
            system_identifier: 1,
            server_version: 180000,
            timeline: 1,
            start_lsn: Lsn(2 * n * SEG + 0x28),
            end_lsn: Lsn(2 * n * SEG + 0x100),
            start_time: t - 1,
            end_time: t,
            wal_segment_size: SEG,
            files: 1,
            bytes: 10,
            stored_bytes: 10,
            compression: "zstd".into(),
            tablespaces: vec![],
            objects: vec![],
        }
    }

    fn graph() -> (Vec<BackupRecord>, Listing) {
        let b = vec![
            rec("F1", None, 1, 100),
            rec("I1a", Some("F1"), 2, 200),
            rec("F2", None, 3, 300),
            rec("I2a", Some("F2"), 4, 400),
            rec("I2b", Some("I2a"), 5, 500),
            rec("F3", None, 6, 600),
            rec("I3a", Some("F3"), 7, 700),
        ];
        let mut l = Listing::default();
        for r in &b {
            for o in ["pack-00000", "index", "manifest", "commit.json"] {
                l.backup_objects
                    .push((format!("backups/{}/{o}", r.id), 5, r.end_time));
            }
        }
        // an upload that never committed, long ago, and one under way
        l.backup_objects
            .push(("backups/OLD/pack-00000".into(), 7, 10));
        l.backup_objects
            .push(("backups/NOW/pack-00000".into(), 7, 749));
        let seg = WalSegSize::DEFAULT;
        for s in 0..16 {
            l.wal_objects
                .push((layout::segment_key(TimelineId(1), SegmentNo(s), seg), 3));
        }
        l.wal_objects.push((layout::history_key(TimelineId(2)), 1));
        (b, l)
    }

    fn run(full: Option<usize>, pitr: Option<u64>) -> ExpirePlan {
        let (b, l) = graph();
        let rules = Retention {
            retain_full: full,
            retain_pitr: pitr.map(Duration::from_secs),
            min_age: Duration::from_secs(600),
        };
        plan(&b, &l, &rules, 750, WalSegSize::DEFAULT, &BTreeSet::new()).unwrap()
    }

    fn kept(p: &ExpirePlan) -> Vec<&str> {
        p.backups
            .iter()
            .filter(|b| !b.keep.is_empty())
            .map(|b| b.id.as_str())
            .collect()
    }

    fn reasons(p: &ExpirePlan, id: &str) -> Vec<KeepReason> {
        let b = p.backups.iter().find(|b| b.id == id).unwrap();
        b.keep.iter().copied().collect()
    }

    #[test]
    fn retain_full_keeps_whole_chains_and_their_wal() {
        let p = run(Some(2), None);
        assert_eq!(kept(&p), ["F2", "I2a", "I2b", "F3", "I3a"]);
        assert_eq!(p.expired(), ["F1", "I1a"]);
        // WAL from F2's start (segment 6) on
        assert_eq!(p.wal_from, Some(Lsn(6 * SEG + 0x28)));
        assert_eq!(p.wal.len(), 1);
        assert_eq!(p.wal[0].objects, 6);
        assert_eq!(p.wal[0].last, "000000010000000000000005");
        // children before parents, each commit record before its objects; history stays
        let pos = |k: &str| p.deletions.iter().position(|d| d == k).unwrap();
        assert!(pos("backups/I1a/commit.json") < pos("backups/F1/commit.json"));
        assert!(pos("backups/F1/commit.json") < pos("backups/F1/pack-00000"));
        assert!(!p.deletions.iter().any(|d| d.contains("history")));
        // the old upload goes, the young one stays
        assert!(p.deletions.contains(&"backups/OLD/pack-00000".to_string()));
        assert!(!p.deletions.contains(&"backups/NOW/pack-00000".to_string()));
        assert_eq!(p.bytes_freed, 2 * 4 * 5 + 7 + 6 * 3);
    }

    #[test]
    fn retain_pitr_keeps_the_window_its_opener_and_ancestors() {
        // window from 550: I3a, F3 inside; I2b opens it, and needs I2a and F2
        let p = run(None, Some(200));
        assert_eq!(kept(&p), ["F2", "I2a", "I2b", "F3", "I3a"]);
        assert_eq!(reasons(&p, "I2b"), [KeepReason::RetainPitr]);
        assert_eq!(reasons(&p, "I2a"), [KeepReason::Ancestor]);
        // WAL from the opener's start (segment 10)
        assert_eq!(p.wal_from, Some(Lsn(10 * SEG + 0x28)));
        assert_eq!(p.wal[0].objects, 10);
    }

    #[test]
    fn tiered_fulls_keep_no_wal_beyond_the_window() {
        // window from 650: F3 opens it; three fulls kept, WAL only from F3's start
        let p = run(Some(3), Some(100));
        assert_eq!(kept(&p), ["F1", "I1a", "F2", "I2a", "I2b", "F3", "I3a"]);
        assert_eq!(
            reasons(&p, "F3"),
            [KeepReason::RetainFull, KeepReason::RetainPitr]
        );
        assert_eq!(p.wal_from, Some(Lsn(12 * SEG + 0x28)));
        assert_eq!(p.wal[0].objects, 12);
        assert!(p.expired().is_empty());
    }

    #[test]
    fn a_claimed_backup_stays_with_its_ancestors() {
        let (b, l) = graph();
        let rules = Retention {
            retain_full: Some(1),
            ..Default::default()
        };
        let claimed: BTreeSet<String> = ["I1a".to_string()].into();
        let p = plan(&b, &l, &rules, 750, WalSegSize::DEFAULT, &claimed).unwrap();
        assert_eq!(p.expired(), ["F2", "I2a", "I2b"]);
        assert_eq!(reasons(&p, "I1a"), [KeepReason::InUse]);
        assert_eq!(reasons(&p, "F1"), [KeepReason::Ancestor]);
        // and the WAL from the oldest kept backup, F1
        assert_eq!(p.wal_from, Some(Lsn(2 * SEG + 0x28)));
    }

    #[test]
    fn refuses_without_a_rule_or_with_zero() {
        let (b, l) = graph();
        let r = Retention::default();
        assert!(matches!(
            plan(&b, &l, &r, 0, WalSegSize::DEFAULT, &BTreeSet::new()),
            Err(ExpireError::NoRule)
        ));
        let r = Retention {
            retain_full: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            plan(&b, &l, &r, 0, WalSegSize::DEFAULT, &BTreeSet::new()),
            Err(ExpireError::ZeroFull)
        ));
    }

    #[test]
    fn a_kept_incremental_never_loses_an_ancestor() {
        // every subset of rules: each kept backup's ancestors are kept
        for full in [None, Some(1), Some(2), Some(5)] {
            for pitr in [None, Some(10), Some(60), Some(150), Some(300), Some(1000)] {
                if full.is_none() && pitr.is_none() {
                    continue;
                }
                let p = run(full, pitr);
                let (b, _) = graph();
                let k = kept(&p);
                for id in &k {
                    let mut cur = b.iter().find(|r| r.id == *id).unwrap();
                    while let Some(parent) = &cur.parent {
                        assert!(k.contains(&parent.as_str()), "{id} kept without {parent}");
                        cur = b.iter().find(|r| &r.id == parent).unwrap();
                    }
                }
                assert!(!k.is_empty());
            }
        }
    }
}
