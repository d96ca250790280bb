//! The repository's WAL archive: written by `receivewal --repo` ([`RepoWalStore`], a
//! `pgstream` [`WalStore`]), read by restore planning ([`RepoWal`], a `basebackup`
//! [`WalSource`]) and served to recovery one file at a time ([`fetch`]).
//!
//! Completed segments are stored compressed under their names; the segment being streamed is
//! held in memory (one segment) and its tail stored as `<segment>.partial.zst` at least every
//! `partial_interval`, replaced as it grows. The flush position told to the server is what the
//! repository holds: completed segments plus the last stored tail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basebackup::restore::WalSource;
use basebackup::source::FileLoc;
use bytes::Bytes;
use pgstream::wal_store::BoxFut;
use pgstream::{ReceiveError, WalStore};
use pgwal::page::PageHeader;
use pgwal::timeline::TimelineHistory;
use pgwal::{Lsn, SegmentNo, TimelineId, WalSegSize};
use tokio::runtime::Handle;
use walarchive::{ArchiveState, CompletedSegment};

use crate::layout::{self, WalObject};
use crate::repo::{Repo, RepoError};
use crate::store::{PutMode, StoreError};

/// The largest WAL segment there is.
const MAX_SEGMENT: u64 = 1 << 30;

fn storage_err(repo: &Repo, e: RepoError) -> ReceiveError {
    let transient = match &e {
        RepoError::Store(s) => s.is_transient(),
        _ => false,
    };
    ReceiveError::Storage {
        archive: repo.name(),
        detail: match e {
            RepoError::Store(s) => s.to_string(),
            e => e.to_string(),
        },
        transient,
    }
}

/// What the repository's WAL archive holds, by timeline and segment.
#[derive(Debug, Clone, Default)]
pub struct WalListing {
    /// Completed segments and partial tails: `(timeline, segment)` → (key, stored size,
    /// partial?, modified). A completed segment hides a partial one of the same name.
    pub segments: BTreeMap<(TimelineId, SegmentNo), (String, u64, bool, i64)>,
    /// History files by timeline.
    pub histories: BTreeMap<TimelineId, String>,
}

/// Lists the WAL archive.
pub async fn list_wal(repo: &Repo, seg: WalSegSize) -> Result<WalListing, RepoError> {
    let mut out = WalListing::default();
    for m in repo.list(layout::WAL_PREFIX).await? {
        match layout::parse_wal_key(&m.key, seg) {
            Some(WalObject::Segment(t, s)) => {
                out.segments
                    .insert((t, s), (m.key, m.size, false, m.modified));
            }
            Some(WalObject::Partial(t, s)) => {
                out.segments
                    .entry((t, s))
                    .or_insert((m.key, m.size, true, m.modified));
            }
            Some(WalObject::History(t)) => {
                out.histories.insert(t, m.key);
            }
            None => {}
        }
    }
    Ok(out)
}

/// Compresses a segment (or tail) with zstd off the async threads.
pub(crate) async fn compress_off_thread(data: Vec<u8>, level: i32) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || zstd::bulk::compress(&data, level))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map(Bytes::from)
}

/// `receivewal --repo`'s store. See the module documentation.
#[derive(Debug)]
pub struct RepoWalStore {
    repo: Repo,
    level: i32,
    partial_interval: Duration,
    seg: Option<WalSegSize>,
    seg_start: Lsn,
    tli: TimelineId,
    buf: Vec<u8>,
    durable: Lsn,
    stored_tail: usize,
    tail_key: Option<String>,
    last_tail: Instant,
}

impl RepoWalStore {
    /// A store writing into `repo`, completed segments compressed with zstd at `level`, the
    /// tail stored at least every `partial_interval` (zero: at every flush).
    pub fn new(repo: Repo, level: i32, partial_interval: Duration) -> Self {
        RepoWalStore {
            repo,
            level,
            partial_interval,
            seg: None,
            seg_start: Lsn(0),
            tli: TimelineId(1),
            buf: Vec::new(),
            durable: Lsn(0),
            stored_tail: 0,
            tail_key: None,
            last_tail: Instant::now(),
        }
    }

    fn seg(&self) -> Result<WalSegSize, ReceiveError> {
        self.seg.ok_or_else(|| ReceiveError::Storage {
            archive: self.repo.name(),
            detail: "the archive was not opened".into(),
            transient: false,
        })
    }

    async fn compress(&self, data: Vec<u8>) -> Result<Bytes, ReceiveError> {
        compress_off_thread(data, self.level)
            .await
            .map_err(|e| ReceiveError::Storage {
                archive: self.repo.name(),
                detail: format!("compressing WAL: {e}"),
                transient: false,
            })
    }

    /// Stores the tail of the segment being filled; it is then durable.
    async fn store_tail(&mut self) -> Result<(), ReceiveError> {
        if self.buf.len() <= self.stored_tail {
            return Ok(());
        }
        let seg = self.seg()?;
        let key = layout::partial_key(self.tli, self.seg_start.segment(seg), seg);
        let data = self.compress(self.buf.clone()).await?;
        self.repo
            .put_object(&key, data, PutMode::Overwrite)
            .await
            .map_err(|e| storage_err(&self.repo, e))?;
        self.stored_tail = self.buf.len();
        self.durable = Lsn(self.seg_start.0 + self.buf.len() as u64);
        self.tail_key = Some(key);
        self.last_tail = Instant::now();
        Ok(())
    }

    /// Stores the completed segment and removes its tail.
    async fn store_segment(&mut self) -> Result<CompletedSegment, ReceiveError> {
        let seg = self.seg()?;
        let no = self.seg_start.segment(seg);
        let key = layout::segment_key(self.tli, no, seg);
        let buf = std::mem::take(&mut self.buf);
        let data = self.compress(buf).await?;
        self.repo
            .put_object(&key, data, PutMode::Overwrite)
            .await
            .map_err(|e| storage_err(&self.repo, e))?;
        let end = Lsn(self.seg_start.0 + seg.bytes());
        if let Some(k) = self.tail_key.take() {
            self.repo
                .store()
                .delete(&k)
                .await
                .map_err(|e| storage_err(&self.repo, e.into()))?;
        }
        self.durable = end;
        self.seg_start = end;
        self.stored_tail = 0;
        self.buf.reserve(seg.bytes() as usize);
        Ok(CompletedSegment {
            file_name: pgwal::segment_file_name(self.tli, no, seg),
            timeline: self.tli,
            end,
        })
    }
}

impl WalStore for RepoWalStore {
    fn describe(&self) -> String {
        self.repo.name()
    }

    fn open(&mut self, seg: WalSegSize) -> BoxFut<'_, Result<ArchiveState, ReceiveError>> {
        Box::pin(async move {
            self.seg = Some(seg);
            let listing = list_wal(&self.repo, seg)
                .await
                .map_err(|e| storage_err(&self.repo, e))?;
            // as pg_receivewal: the highest segment, then timeline; a complete one is streamed
            // on from its end, a partial one again from its start
            let best = listing
                .segments
                .iter()
                .max_by_key(|((t, s), (_, _, partial, _))| (s.0, t.0, !partial));
            let resume = best.and_then(|((t, s), (key, _, partial, _))| {
                if *partial {
                    self.tail_key = Some(key.clone());
                    s.start_lsn(seg).map(|l| (l, *t))
                } else {
                    s.start_lsn(seg).map(|l| (Lsn(l.0 + seg.bytes()), *t))
                }
            });
            // from the binding's name: a writer of an encrypted repository has no identity
            let system_id = self
                .repo
                .bound_system()
                .await
                .map_err(|e| storage_err(&self.repo, e))?;
            Ok(ArchiveState { resume, system_id })
        })
    }

    fn start_at(&mut self, start: Lsn) {
        let seg = self.seg.unwrap_or(WalSegSize::DEFAULT);
        self.seg_start = start.segment_start(seg);
        self.buf.clear();
        self.stored_tail = 0;
        self.durable = self.seg_start;
        self.last_tail = Instant::now();
    }

    fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> BoxFut<'_, Result<Vec<CompletedSegment>, ReceiveError>> {
        Box::pin(async move {
            let seg = self.seg()?;
            let at = Lsn(self.seg_start.0 + self.buf.len() as u64);
            if start != at {
                return Err(ReceiveError::Storage {
                    archive: self.repo.name(),
                    detail: format!("write at {start}, but the segment being filled ends at {at}"),
                    transient: false,
                });
            }
            if tli != self.tli {
                // a new timeline begins with its own copy of the segment
                self.tli = tli;
                if self.buf.is_empty() {
                    self.tail_key = None;
                }
            }
            let mut done = Vec::new();
            let mut data = &data[..];
            while !data.is_empty() {
                let room = seg.bytes() as usize - self.buf.len();
                let n = room.min(data.len());
                self.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.buf.len() == seg.bytes() as usize {
                    done.push(self.store_segment().await?);
                }
            }
            Ok(done)
        })
    }

    fn flush(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move {
            if self.last_tail.elapsed() >= self.partial_interval {
                self.store_tail().await?;
            }
            Ok(self.durable)
        })
    }

    fn close(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move {
            self.store_tail().await?;
            Ok(self.durable)
        })
    }

    fn write_history(
        &mut self,
        file_name: String,
        content: Bytes,
    ) -> BoxFut<'_, Result<(), ReceiveError>> {
        Box::pin(async move {
            let tli = file_name
                .strip_suffix(".history")
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .ok_or_else(|| ReceiveError::Storage {
                    archive: self.repo.name(),
                    detail: format!("invalid history file name \"{file_name}\""),
                    transient: false,
                })?;
            self.repo
                .put_object(
                    &layout::history_key(TimelineId(tli)),
                    content,
                    PutMode::Overwrite,
                )
                .await
                .map_err(|e| storage_err(&self.repo, e))
        })
    }
}

/// Checks a segment's bytes: its first page is the segment's, of system `system_id`, of segment
/// size `seg`.
pub fn check_segment(
    data: &[u8],
    tli_seg: (TimelineId, SegmentNo),
    seg: WalSegSize,
    system_id: Option<u64>,
) -> Result<(), String> {
    let h = PageHeader::parse(data).ok_or("does not start with a WAL page header")?;
    let long = h.long.ok_or("does not start with a WAL long page header")?;
    if u64::from(long.seg_size) != seg.bytes() {
        return Err(format!(
            "declares segment size {}, the repository's is {}",
            long.seg_size,
            seg.bytes()
        ));
    }
    let expect = tli_seg.1.start_lsn(seg).unwrap_or(Lsn(0));
    if h.page_addr != expect {
        return Err(format!(
            "starts at {}, but segment {} starts at {expect}: the object holds another segment",
            h.page_addr,
            pgwal::segment_file_name(tli_seg.0, tli_seg.1, seg)
        ));
    }
    if let Some(sys) = system_id {
        if long.system_id != sys {
            return Err(format!(
                "is WAL of database system {}, the repository's is {sys}",
                long.system_id
            ));
        }
    }
    Ok(())
}

/// Reads and checks one stored segment (or tail): decompressed, at most one segment.
pub async fn read_segment(
    repo: &Repo,
    key: &str,
    tli_seg: (TimelineId, SegmentNo),
    seg: WalSegSize,
    partial: bool,
    system_id: Option<u64>,
) -> Result<Vec<u8>, RepoError> {
    let stored = repo.get_object(key, MAX_SEGMENT + (1 << 20)).await?;
    decode_segment(&repo.name(), key, &stored, tli_seg, seg, partial, system_id)
}

/// A stored segment's bytes, decompressed and checked (the CPU half of [`read_segment`]).
fn decode_segment(
    repo: &str,
    key: &str,
    stored: &[u8],
    tli_seg: (TimelineId, SegmentNo),
    seg: WalSegSize,
    partial: bool,
    system_id: Option<u64>,
) -> Result<Vec<u8>, RepoError> {
    let damaged = |detail: String| RepoError::Damaged {
        repo: repo.to_owned(),
        key: key.to_owned(),
        detail,
    };
    let data = zstd::bulk::decompress(stored, seg.bytes() as usize)
        .map_err(|e| damaged(format!("does not decompress: {e}")))?;
    if !partial && data.len() as u64 != seg.bytes() {
        return Err(damaged(format!(
            "holds {} bytes, a segment has {}",
            data.len(),
            seg.bytes()
        )));
    }
    check_segment(&data, tli_seg, seg, system_id).map_err(damaged)?;
    Ok(data)
}

/// The timeline whose copy of segment `s` recovery reads, following `history` from `current`:
/// the timeline of the segment's last byte (a switch inside it puts it on the new timeline).
fn owner(
    history: &TimelineHistory,
    current: TimelineId,
    s: SegmentNo,
    seg: WalSegSize,
) -> TimelineId {
    let start = s.start_lsn(seg).unwrap_or(Lsn(0));
    history.timeline_of(current, Lsn(start.0 + seg.bytes() - 1))
}

/// The repository's WAL, with the WAL a backup carries, as a [`WalSource`] for restore planning
/// (blocking: it runs where combine runs).
#[derive(Debug)]
pub struct RepoWal {
    rt: Handle,
    repo: Repo,
    seg: WalSegSize,
    system_id: Option<u64>,
    listing: WalListing,
    /// The backup's own WAL files, by segment.
    carried: BTreeMap<(TimelineId, SegmentNo), FileLoc>,
}

impl RepoWal {
    /// The archive as listed, plus `carried` (the `pg_wal/` files of the backup restored).
    pub fn new(
        rt: Handle,
        repo: Repo,
        seg: WalSegSize,
        system_id: Option<u64>,
        listing: WalListing,
        carried: &BTreeMap<String, FileLoc>,
    ) -> Self {
        let carried = carried
            .iter()
            .filter_map(|(path, loc)| {
                let name = path.strip_prefix("pg_wal/")?;
                let p = pgwal::parse_wal_file_name(name, seg)?;
                (p.kind == pgwal::WalFileKind::SEGMENT)
                    .then_some(((p.timeline, p.segment?), loc.clone()))
            })
            .collect();
        RepoWal {
            rt,
            repo,
            seg,
            system_id,
            listing,
            carried,
        }
    }
}

impl WalSource for RepoWal {
    fn describe(&self) -> String {
        format!("WAL archive of {}", self.repo.name())
    }

    fn history(&self, tli: TimelineId) -> Option<String> {
        let key = self.listing.histories.get(&tli)?;
        let b = self.rt.block_on(self.repo.get_object(key, 1 << 20)).ok()?;
        String::from_utf8(b.to_vec()).ok()
    }

    fn read_from(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
        on_segment: &mut dyn FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<(), String> {
        let mut s = start.segment(self.seg);
        loop {
            let Some(seg_start) = s.start_lsn(self.seg) else {
                return Ok(());
            };
            let t = owner(history, current, s, self.seg);
            let data = if let Some((key, _, partial, _)) = self.listing.segments.get(&(t, s)) {
                let d = self
                    .rt
                    .block_on(read_segment(
                        &self.repo,
                        key,
                        (t, s),
                        self.seg,
                        *partial,
                        self.system_id,
                    ))
                    .map_err(|e| e.to_string())?;
                if !on_segment(seg_start, &d) || *partial {
                    return Ok(());
                }
                continue_with(&mut s);
                continue;
            } else if let Some(loc) = self.carried.get(&(t, s)) {
                let mut d = vec![0u8; loc.size.min(MAX_SEGMENT) as usize];
                loc.open()
                    .and_then(|o| o.read_exact_at(&mut d, loc.offset))
                    .map_err(|e| format!("{}: {e}", loc.path.display()))?;
                d
            } else {
                return Ok(());
            };
            if !on_segment(seg_start, &data) {
                return Ok(());
            }
            continue_with(&mut s);
        }
    }

    fn last_segment(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
    ) -> Option<Lsn> {
        self.last_listed(current, history, start)
    }
}

impl RepoWal {
    fn last_listed(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
    ) -> Option<Lsn> {
        let mut s = start.segment(self.seg);
        let mut last = None;
        loop {
            let t = owner(history, current, s, self.seg);
            let partial = match self.listing.segments.get(&(t, s)) {
                Some((_, _, partial, _)) => *partial,
                None if self.carried.contains_key(&(t, s)) => false,
                None => return last,
            };
            last = s.start_lsn(self.seg);
            if partial || last.is_none() {
                return last;
            }
            continue_with(&mut s);
        }
    }
}

fn continue_with(s: &mut SegmentNo) {
    s.0 = s.0.saturating_add(1);
}

/// What [`fetch`] served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The object it came from (or the prefetch cache).
    pub from: String,
    /// Bytes written.
    pub bytes: u64,
}

/// Why [`fetch`] could not serve a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Not a segment or history file name.
    #[error("invalid WAL file name \"{0}\"")]
    BadName(String),
    /// The repository does not have it.
    #[error("{name} is not in {repo}")]
    Missing {
        /// The file.
        name: String,
        /// The repository.
        repo: String,
    },
    /// It is there but damaged, or the repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Writing the destination failed.
    #[error("could not write \"{}\": {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn write_atomically(dest: &Path, data: &[u8]) -> Result<(), FetchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dest.with_extension("pgrepl-tmp");
    let w = |source| FetchError::Write {
        path: tmp.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(w)?;
    f.write_all(data).map_err(w)?;
    drop(f);
    std::fs::rename(&tmp, dest).map_err(|source| FetchError::Write {
        path: dest.to_path_buf(),
        source,
    })
}

/// Where prefetched segments wait: `cache`, at most `depth` of them.
#[derive(Debug, Clone)]
pub struct Prefetch {
    /// The cache directory (0700; created when missing).
    pub cache: PathBuf,
    /// Segments fetched ahead, at most.
    pub depth: usize,
}

/// Serves WAL file `name` (`%f`) from the repository to `dest` (`%p`), as a restore_command
/// must: a segment (a stored tail zero-padded to full size), or a history file. With
/// `prefetch`, the segments that follow are fetched in parallel into the cache, so that replay
/// does not wait on one request per segment.
pub async fn fetch(
    repo: &Repo,
    name: &str,
    dest: &Path,
    prefetch: Option<&Prefetch>,
) -> Result<Served, FetchError> {
    if name.ends_with(".history") {
        let tli = name
            .strip_suffix(".history")
            .filter(|t| t.len() == 8)
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .ok_or_else(|| FetchError::BadName(name.to_owned()))?;
        let key = layout::history_key(TimelineId(tli));
        let data = match repo.get_object(&key, 16 << 20).await {
            Ok(d) => d,
            Err(RepoError::Store(StoreError::NotFound { .. })) => {
                return Err(FetchError::Missing {
                    name: name.to_owned(),
                    repo: repo.name(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        write_atomically(dest, &data)?;
        return Ok(Served {
            from: key,
            bytes: data.len() as u64,
        });
    }
    let (seg, system_id) = segment_size_and_system(repo).await?;
    let (tli, no) = parse_segment_name(name, seg)?;
    if let Some(p) = prefetch {
        let cached = p.cache.join(name);
        if let Ok(data) = std::fs::read(&cached) {
            let _ = std::fs::remove_file(&cached);
            if data.len() as u64 == seg.bytes() {
                write_atomically(dest, &data)?;
                refill(repo, tli, no, seg, system_id, p).await;
                return Ok(Served {
                    from: cached.display().to_string(),
                    bytes: data.len() as u64,
                });
            }
        }
    }
    let (key, partial) =
        find_segment(repo, tli, no, seg)
            .await?
            .ok_or_else(|| FetchError::Missing {
                name: name.to_owned(),
                repo: repo.name(),
            })?;
    let mut data = read_segment(repo, &key, (tli, no), seg, partial, system_id).await?;
    data.resize(seg.bytes() as usize, 0);
    write_atomically(dest, &data)?;
    if let Some(p) = prefetch {
        if !partial {
            refill(repo, tli, no, seg, system_id, p).await;
        }
    }
    Ok(Served {
        from: key,
        bytes: data.len() as u64,
    })
}

/// Serves `name` (`%f`) to `dest` (`%p`) from the prefetch cache alone, without opening the
/// repository: `Ok(None)` when the cache does not hold it. Only whole segments that were read
/// from the repository and checked are ever cached, so what is there is served as is.
pub fn serve_cached(cache: &Path, name: &str, dest: &Path) -> Result<Option<Served>, FetchError> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let cached = cache.join(name);
    let Ok(meta) = std::fs::metadata(&cached) else {
        return Ok(None);
    };
    if WalSegSize::new(meta.len()).is_err() {
        let _ = std::fs::remove_file(&cached);
        return Ok(None);
    }
    // the cache sits beside the data directory: a rename moves the segment into place without
    // copying 16 MB; across filesystems it is copied
    if std::fs::rename(&cached, dest).is_err() {
        let data = match std::fs::read(&cached) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        write_atomically(dest, &data)?;
        let _ = std::fs::remove_file(&cached);
    }
    prune_cache(cache, name);
    Ok(Some(Served {
        from: cached.display().to_string(),
        bytes: meta.len(),
    }))
}

/// How many segments the cache holds.
pub fn cached_segments(cache: &Path) -> usize {
    std::fs::read_dir(cache)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Keeps the prefetch cache filled ahead of recovery, as a background process beside it: the
/// `depth` segments after `name` that are not there yet, then, each time recovery takes
/// segments out of the cache, the ones after those. Returns when the repository has no next
/// segment on this timeline, or when recovery has taken nothing for `idle`.
pub async fn refill_after(
    repo: &Repo,
    name: &str,
    prefetch: &Prefetch,
    idle: std::time::Duration,
) -> Result<(), FetchError> {
    let (seg, system_id) = segment_size_and_system(repo).await?;
    let (tli, mut base) = parse_segment_name(name, seg)?;
    let mut last_change = std::time::Instant::now();
    loop {
        if refill(repo, tli, base, seg, system_id, prefetch).await {
            return Ok(());
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            // the oldest segment still cached is the next recovery takes; an empty cache means
            // it has taken all of them
            let next = cached_numbers(&prefetch.cache, tli, seg)
                .first()
                .map_or(base.0 + prefetch.depth as u64, |n| n - 1);
            if next > base.0 {
                base = SegmentNo(next);
                last_change = std::time::Instant::now();
                break;
            }
            if last_change.elapsed() > idle {
                return Ok(());
            }
        }
    }
}

/// Removes the segments of `name`'s timeline before it from the cache: recovery, now asking
/// for `name`, will not ask for them again (one fetched ahead while recovery fetched it
/// itself would otherwise hold a place in the cache for good).
pub fn prune_cache(cache: &Path, name: &str) {
    let is_segment = |n: &str| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_segment(name) {
        return;
    }
    let Ok(rd) = std::fs::read_dir(cache) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str().filter(|n| is_segment(n)) else {
            continue;
        };
        // same timeline, earlier log/segment: names order as positions do, whatever the
        // segment size
        if n[..8].eq_ignore_ascii_case(&name[..8])
            && n[8..].to_ascii_uppercase() < name[8..].to_ascii_uppercase()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The numbers of the segments of `tli` in the cache, in order.
fn cached_numbers(cache: &Path, tli: TimelineId, seg: WalSegSize) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(cache)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name();
                    let p = pgwal::parse_wal_file_name(n.to_str()?, seg)?;
                    (p.kind == pgwal::WalFileKind::SEGMENT && p.timeline == tli)
                        .then_some(p.segment?.0)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The repository's WAL segment size (the default when it does not say) and system identifier.
async fn segment_size_and_system(repo: &Repo) -> Result<(WalSegSize, Option<u64>), RepoError> {
    let system = repo.system().await?;
    let seg = system
        .as_ref()
        .and_then(|s| s.wal_segment_size)
        .and_then(|b| WalSegSize::new(b).ok())
        .unwrap_or(WalSegSize::DEFAULT);
    Ok((seg, system.map(|s| s.system_identifier)))
}

/// A segment name's timeline and number.
fn parse_segment_name(name: &str, seg: WalSegSize) -> Result<(TimelineId, SegmentNo), FetchError> {
    let bad = || FetchError::BadName(name.to_owned());
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let p = pgwal::parse_wal_file_name(name, seg).ok_or_else(bad)?;
    Ok((p.timeline, p.segment.ok_or_else(bad)?))
}

async fn find_segment(
    repo: &Repo,
    tli: TimelineId,
    no: SegmentNo,
    seg: WalSegSize,
) -> Result<Option<(String, bool)>, RepoError> {
    let full = layout::segment_key(tli, no, seg);
    if repo.store().head(&full).await?.is_some() {
        return Ok(Some((full, false)));
    }
    let tail = layout::partial_key(tli, no, seg);
    if repo.store().head(&tail).await?.is_some() {
        return Ok(Some((tail, true)));
    }
    Ok(None)
}

/// Fills the cache with the `depth` segments after `no` that it lacks, nearest first, two at a
/// time (each decompressed on a blocking thread, so two cores work while recovery replays).
/// Returns `true` when the repository has no segment among them to give (the archive's end);
/// what cannot be fetched is simply not cached.
async fn refill(
    repo: &Repo,
    tli: TimelineId,
    no: SegmentNo,
    seg: WalSegSize,
    system_id: Option<u64>,
    p: &Prefetch,
) -> bool {
    if std::fs::DirBuilder::new()
        .recursive(true)
        .create(&p.cache)
        .is_err()
    {
        return true;
    }
    let wanted: Vec<SegmentNo> = (1..=p.depth as u64)
        .map(|i| SegmentNo(no.0 + i))
        .filter(|s| {
            !p.cache
                .join(pgwal::segment_file_name(tli, *s, seg))
                .exists()
        })
        .collect();
    for pair in wanted.chunks(2) {
        let jobs = pair.iter().map(|&s| {
            let path = p.cache.join(pgwal::segment_file_name(tli, s, seg));
            async move {
                let key = layout::segment_key(tli, s, seg);
                let stored = match repo.get_object(&key, MAX_SEGMENT + (1 << 20)).await {
                    Ok(b) => b,
                    Err(_) => return false,
                };
                let name = repo.name();
                tokio::task::spawn_blocking(move || {
                    decode_segment(&name, &key, &stored, (tli, s), seg, false, system_id)
                        .is_ok_and(|d| write_atomically(&path, &d).is_ok())
                })
                .await
                .unwrap_or(false)
            }
        });
        let got = futures_util::future::join_all(jobs).await;
        if !got.iter().any(|g| *g) {
            return true;
        }
    }
    false
}
