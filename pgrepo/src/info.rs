//! `info --repo`: what a repository holds — backups and their chains, the WAL per timeline with
//! its gaps, and the window of points one can restore to — from listings and the records, plus
//! one read of the newest WAL to date its end.

use std::collections::BTreeMap;

use pgwal::xact::decode_xact_end;
use pgwal::{DecoderOptions, Lsn, SegmentNo, TimelineId, WalDecoder, WalSegSize};

use crate::records::{BackupRecord, SystemRecord};
use crate::repo::{chain_of, Repo, RepoError};
use crate::wal::{list_wal, read_segment, WalListing};

/// A run of consecutive segments of one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    /// Its first byte.
    pub start: Lsn,
    /// The end of its last segment (for a partial tail, how much of it is filled is not in a
    /// listing: the window's end reads it).
    pub end: Lsn,
    /// Whether its last segment is a partial tail.
    pub ends_partial: bool,
}

/// Segments missing between two stored ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalGap {
    /// The timeline.
    pub timeline: TimelineId,
    /// The first missing segment's file name.
    pub first_missing: String,
    /// The last missing segment's file name.
    pub last_missing: String,
    /// The backups whose restore to a later point needs them.
    pub affects: Vec<String>,
}

/// The WAL of one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineWal {
    /// The timeline.
    pub timeline: TimelineId,
    /// Its runs of stored segments.
    pub ranges: Vec<WalRange>,
    /// Whether its history file is stored (timelines after the first need one).
    pub history: bool,
}

/// The points one can restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The earliest: the oldest backup's consistent point.
    pub earliest_lsn: Lsn,
    /// Its time (the backup's end, Unix seconds, client clock).
    pub earliest_time: i64,
    /// The latest: the end of the WAL that continues from the newest backup without a gap.
    pub latest_lsn: Lsn,
    /// The last commit time there (µs since 2000-01-01 UTC), when the WAL was read.
    pub latest_commit_time: Option<i64>,
}

/// What a repository holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RepoInfo {
    /// The repository.
    pub repo: String,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The cluster it belongs to.
    pub system: Option<SystemRecord>,
    /// Committed backups, oldest first.
    pub backups: Vec<BackupRecord>,
    /// Chains, each oldest first (a full backup and the incrementals on it).
    pub chains: Vec<Vec<String>>,
    /// WAL per timeline.
    pub timelines: Vec<TimelineWal>,
    /// Gaps in the WAL.
    pub gaps: Vec<WalGap>,
    /// The recoverable window, when there is a backup.
    pub window: Option<Window>,
}

fn ranges_of(
    listing: &WalListing,
    seg: WalSegSize,
) -> BTreeMap<TimelineId, Vec<(SegmentNo, SegmentNo, bool)>> {
    let mut out: BTreeMap<TimelineId, Vec<(SegmentNo, SegmentNo, bool)>> = BTreeMap::new();
    for ((t, s), (_, _, partial, _)) in &listing.segments {
        let v = out.entry(*t).or_default();
        match v.last_mut() {
            Some((_, last, p)) if last.0 + 1 == s.0 && !*p => {
                *last = *s;
                *p = *partial;
            }
            _ => v.push((*s, *s, *partial)),
        }
    }
    let _ = seg;
    out
}

/// The repository's WAL segment size: the binding's, else the newest backup's, else 16 MB.
pub(crate) fn segment_size(system: Option<&SystemRecord>, backups: &[BackupRecord]) -> WalSegSize {
    system
        .and_then(|s| s.wal_segment_size)
        .or_else(|| backups.last().map(|b| b.wal_segment_size))
        .and_then(|b| WalSegSize::new(b).ok())
        .unwrap_or(WalSegSize::DEFAULT)
}

/// Gathers what `repo` holds. `read_wal_end`: read the newest WAL once to date the window's end.
pub async fn info(repo: &Repo, read_wal_end: bool) -> Result<RepoInfo, RepoError> {
    let system = repo.system().await?;
    let backups = repo.backups().await?;
    let seg = segment_size(system.as_ref(), &backups);
    let listing = list_wal(repo, seg).await?;
    let runs = ranges_of(&listing, seg);

    let mut chains = Vec::new();
    for b in backups.iter().filter(|b| b.parent.is_none()) {
        let mut chain = vec![b.id.clone()];
        // descendants in order of their end
        for d in &backups {
            if let Some(c) = chain_of(&backups, &d.id) {
                if c.first().is_some_and(|f| f.id == b.id) && d.id != b.id {
                    chain.push(d.id.clone());
                }
            }
        }
        chains.push(chain);
    }

    let mut timelines = Vec::new();
    let mut gaps = Vec::new();
    for (t, v) in &runs {
        let ranges = v
            .iter()
            .map(|(a, b, p)| WalRange {
                start: a.start_lsn(seg).unwrap_or(Lsn(0)),
                end: b
                    .start_lsn(seg)
                    .map(|l| Lsn(l.0 + seg.bytes()))
                    .unwrap_or(Lsn(0)),
                ends_partial: *p,
            })
            .collect::<Vec<_>>();
        for w in v.windows(2) {
            let (first, last) = (SegmentNo(w[0].1 .0 + 1), SegmentNo(w[1].0 .0 - 1));
            let gap_start = first.start_lsn(seg).unwrap_or(Lsn(0));
            let affects = backups
                .iter()
                .filter(|b| b.timeline_id() == *t && b.end_lsn <= gap_start)
                .map(|b| b.id.clone())
                .collect();
            gaps.push(WalGap {
                timeline: *t,
                first_missing: pgwal::segment_file_name(*t, first, seg),
                last_missing: pgwal::segment_file_name(*t, last, seg),
                affects,
            });
        }
        timelines.push(TimelineWal {
            timeline: *t,
            ranges,
            history: t.0 == 1 || listing.histories.contains_key(t),
        });
    }

    let window = match (backups.first(), backups.iter().max_by_key(|b| b.end_lsn)) {
        (Some(oldest), Some(newest)) => {
            // the WAL run on the newest backup's timeline that holds its end, if any
            let run = runs.get(&newest.timeline_id()).and_then(|v| {
                v.iter().find(|(a, b, _)| {
                    let s = newest.end_lsn.segment(seg);
                    a.0 <= s.0 && s.0 <= b.0
                })
            });
            let (latest_lsn, last_seg) = match run {
                Some((_, b, _)) => (
                    b.start_lsn(seg)
                        .map(|l| Lsn(l.0 + seg.bytes()))
                        .unwrap_or(newest.end_lsn),
                    Some((newest.timeline_id(), *b)),
                ),
                None => (newest.end_lsn, None),
            };
            let mut latest_commit_time = None;
            let mut latest = latest_lsn;
            if let (true, Some(k)) = (read_wal_end, last_seg) {
                if let Some((key, _, partial, _)) = listing.segments.get(&k) {
                    let sys = system.as_ref().map(|s| s.system_identifier);
                    let data = read_segment(repo, key, k, seg, *partial, sys).await?;
                    let (end, t) = last_commit(&data, k.1, seg, sys);
                    latest_commit_time = t;
                    if let Some(e) = end {
                        latest = e;
                    }
                }
            }
            Some(Window {
                earliest_lsn: oldest.end_lsn,
                earliest_time: oldest.end_time,
                latest_lsn: latest.max(newest.end_lsn),
                latest_commit_time,
            })
        }
        _ => None,
    };
    Ok(RepoInfo {
        repo: repo.name(),
        encrypted: repo.format().encryption.is_some(),
        system,
        backups,
        chains,
        timelines,
        gaps,
        window,
    })
}

/// The end of the last valid record in a segment, and the last commit time in it.
fn last_commit(
    data: &[u8],
    s: SegmentNo,
    seg: WalSegSize,
    system_id: Option<u64>,
) -> (Option<Lsn>, Option<i64>) {
    let Some(start) = s.start_lsn(seg) else {
        return (None, None);
    };
    let mut opts = DecoderOptions::new(seg);
    opts.system_id = system_id;
    let Ok(mut d) = WalDecoder::new(start, opts) else {
        return (None, None);
    };
    d.feed(data);
    let (mut end, mut time) = (None, None);
    while let Ok(Some(r)) = d.next_record() {
        end = Some(r.end_lsn);
        if let Ok(Some(x)) = decode_xact_end(&r) {
            time = Some(x.time);
        }
    }
    (end, time)
}
