//! `check --repo`: is every point the repository lists restorable? From listings, sizes and the
//! commit records only (no object is downloaded), so that a manager can run it on a schedule:
//! WAL continuity from each backup's consistent point to the archive's end, per timeline (each
//! gap by its missing segment files and the backups it cuts short); backups whose objects are
//! missing or not the size their commit record says, or whose parent is gone; timelines without
//! their history file; and leftovers (uploads without a commit record, objects no record names).

use std::collections::{BTreeMap, BTreeSet};

use pgwal::{SegmentNo, TimelineId};

use crate::info::{info, Window};
use crate::layout;
use crate::repo::{Repo, RepoError};

/// Something `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// WAL segments missing from the archive after a backup's consistent point: restoring that
    /// backup to a later point stops at the gap.
    WalGap {
        /// The timeline.
        timeline: TimelineId,
        /// The first missing segment file.
        first_missing: String,
        /// The last missing segment file.
        last_missing: String,
        /// The backups whose later points are cut off.
        affects: Vec<String>,
    },
    /// An object a backup's commit record names is not in the store.
    MissingObject {
        /// The backup.
        backup: String,
        /// The object.
        key: String,
    },
    /// An object of a backup is not the size its commit record says.
    WrongSize {
        /// The backup.
        backup: String,
        /// The object.
        key: String,
        /// The size recorded.
        expected: u64,
        /// The size stored.
        found: u64,
    },
    /// An incremental backup whose parent is not in the repository.
    MissingParent {
        /// The backup.
        backup: String,
        /// The parent it names.
        parent: String,
    },
    /// A timeline after the first whose history file is not stored: recovery cannot follow it.
    MissingHistory {
        /// The timeline.
        timeline: TimelineId,
        /// Backups on it.
        affects: Vec<String>,
    },
    /// Objects under a backup ID that has no commit record: an upload that failed or is still
    /// running (`expire` removes them once old enough). Not a backup; harmless to restores.
    UncommittedUpload {
        /// The backup ID.
        id: String,
        /// How many objects.
        objects: usize,
        /// Their stored bytes.
        bytes: u64,
        /// The newest one's modification time (Unix seconds).
        modified: i64,
    },
    /// An object under a committed backup that its record does not name. Harmless.
    UnlistedObject {
        /// The backup.
        backup: String,
        /// The object.
        key: String,
    },
}

impl Problem {
    /// Whether it makes a point the repository lists unrestorable.
    pub fn breaks_restore(&self) -> bool {
        !matches!(
            self,
            Problem::UncommittedUpload { .. } | Problem::UnlistedObject { .. }
        )
    }

    /// A stable name for the kind, for programs (`--json`).
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::WalGap { .. } => "wal_gap",
            Problem::MissingObject { .. } => "missing_object",
            Problem::WrongSize { .. } => "wrong_size",
            Problem::MissingParent { .. } => "missing_parent",
            Problem::MissingHistory { .. } => "missing_history",
            Problem::UncommittedUpload { .. } => "uncommitted_upload",
            Problem::UnlistedObject { .. } => "unlisted_object",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "no backup".to_owned()
            } else {
                v.join(", ")
            }
        };
        match self {
            Problem::WalGap {
                timeline,
                first_missing,
                last_missing,
                affects,
            } => write!(
                f,
                "WAL gap on timeline {timeline}: {first_missing} .. {last_missing} missing; cuts short {}",
                list(affects)
            ),
            Problem::MissingObject { backup, key } => {
                write!(f, "backup {backup}: object \"{key}\" is missing")
            }
            Problem::WrongSize {
                backup,
                key,
                expected,
                found,
            } => write!(
                f,
                "backup {backup}: object \"{key}\" has {found} bytes, its record says {expected}"
            ),
            Problem::MissingParent { backup, parent } => {
                write!(f, "backup {backup}: its parent {parent} is not in the repository")
            }
            Problem::MissingHistory { timeline, affects } => write!(
                f,
                "timeline {timeline} has WAL or backups but no history file; affects {}",
                list(affects)
            ),
            Problem::UncommittedUpload {
                id,
                objects,
                bytes,
                ..
            } => write!(
                f,
                "upload {id} has no commit record ({objects} objects, {bytes} bytes): not a backup"
            ),
            Problem::UnlistedObject { backup, key } => {
                write!(f, "backup {backup}: object \"{key}\" is not in its record")
            }
        }
    }
}

/// What `check` reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CheckReport {
    /// The repository.
    pub repo: String,
    /// Committed backups looked at.
    pub backups: usize,
    /// WAL segments (and tails) listed.
    pub wal_segments: usize,
    /// What was found, those that break restores first.
    pub problems: Vec<Problem>,
    /// The recoverable window.
    pub window: Option<Window>,
}

impl CheckReport {
    /// Whether every point the repository lists is restorable.
    pub fn healthy(&self) -> bool {
        !self.problems.iter().any(Problem::breaks_restore)
    }
}

/// Checks `repo` (an encrypted one needs its identity: the commit records are encrypted).
pub async fn check(repo: &Repo) -> Result<CheckReport, RepoError> {
    let inf = info(repo, false).await?;
    let seg = crate::info::segment_size(inf.system.as_ref(), &inf.backups);
    let mut problems = Vec::new();

    // WAL: the gaps between stored runs, and between a backup's end and the run after it
    let mut gaps: BTreeMap<(TimelineId, String, String), BTreeSet<String>> = BTreeMap::new();
    for g in &inf.gaps {
        gaps.entry((g.timeline, g.first_missing.clone(), g.last_missing.clone()))
            .or_default()
            .extend(g.affects.iter().cloned());
    }
    let mut wal_segments = 0;
    for tl in &inf.timelines {
        for r in &tl.ranges {
            wal_segments += ((r.end.0 - r.start.0) / seg.bytes()) as usize;
        }
        for b in inf
            .backups
            .iter()
            .filter(|b| b.timeline_id() == tl.timeline)
        {
            let need = b.end_lsn.segment(seg);
            // the first run that reaches the backup's end segment, or lies beyond it
            let Some(r) = tl.ranges.iter().find(|r| r.end.segment(seg).0 > need.0) else {
                continue; // no WAL after it: it restores to its consistent point, no further
            };
            let first = r.start.segment(seg);
            if first.0 > need.0 {
                let last = SegmentNo(first.0 - 1);
                gaps.entry((
                    tl.timeline,
                    pgwal::segment_file_name(tl.timeline, need, seg),
                    pgwal::segment_file_name(tl.timeline, last, seg),
                ))
                .or_default()
                .insert(b.id.clone());
            }
        }
        if !tl.history {
            problems.push(Problem::MissingHistory {
                timeline: tl.timeline,
                affects: inf
                    .backups
                    .iter()
                    .filter(|b| b.timeline_id() == tl.timeline)
                    .map(|b| b.id.clone())
                    .collect(),
            });
        }
    }
    for ((timeline, first_missing, last_missing), affects) in gaps {
        problems.push(Problem::WalGap {
            timeline,
            first_missing,
            last_missing,
            affects: affects.into_iter().collect(),
        });
    }

    // backups: every object their record names, at its size; parents present
    let listed = repo.list(layout::BACKUPS_PREFIX).await?;
    let sizes: BTreeMap<&str, u64> = listed.iter().map(|m| (m.key.as_str(), m.size)).collect();
    let ids: BTreeSet<&str> = inf.backups.iter().map(|b| b.id.as_str()).collect();
    for b in &inf.backups {
        if let Some(p) = &b.parent {
            if !ids.contains(p.as_str()) {
                problems.push(Problem::MissingParent {
                    backup: b.id.clone(),
                    parent: p.clone(),
                });
            }
        }
        for o in &b.objects {
            match sizes.get(o.key.as_str()) {
                None => problems.push(Problem::MissingObject {
                    backup: b.id.clone(),
                    key: o.key.clone(),
                }),
                Some(&found) if found != o.size => problems.push(Problem::WrongSize {
                    backup: b.id.clone(),
                    key: o.key.clone(),
                    expected: o.size,
                    found,
                }),
                Some(_) => {}
            }
        }
    }

    // leftovers
    let mut uploads: BTreeMap<String, (usize, u64, i64)> = BTreeMap::new();
    for m in &listed {
        let Some((id, _)) = m
            .key
            .strip_prefix(layout::BACKUPS_PREFIX)
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if let Some(b) = inf.backups.iter().find(|b| b.id == id) {
            if m.key != layout::commit_key(id) && !b.objects.iter().any(|o| o.key == m.key) {
                problems.push(Problem::UnlistedObject {
                    backup: id.to_owned(),
                    key: m.key.clone(),
                });
            }
        } else {
            let e = uploads.entry(id.to_owned()).or_default();
            e.0 += 1;
            e.1 += m.size;
            e.2 = e.2.max(m.modified);
        }
    }
    for (id, (objects, bytes, modified)) in uploads {
        problems.push(Problem::UncommittedUpload {
            id,
            objects,
            bytes,
            modified,
        });
    }
    problems.sort_by_key(|p| !p.breaks_restore());
    Ok(CheckReport {
        repo: inf.repo,
        backups: inf.backups.len(),
        wal_segments,
        problems,
        window: inf.window,
    })
}
