//! `receivewal --repo --spool DIR`: WAL is made durable in a local spool directory first (the
//! server's slot advances past what is fsynced there) and carried into the repository behind
//! the stream, so that an object store that is slow or down does not hold back the server's
//! WAL — at the price that, until the spool drains, the newest WAL lives on this host only.
//!
//! The spool is a `receivewal -D` archive ([`DirWalStore`], uncompressed). Completed segments
//! are stored in the repository as soon as they complete and then removed from the spool; the
//! tail of the segment being filled is stored at least every `partial_interval`; history files
//! go up and are removed. An upload that fails is retried with backoff while streaming goes
//! on; whatever a run leaves in the spool goes up when the next one starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgstream::wal_store::BoxFut;
use pgstream::{DirWalStore, ReceiveError, WalStore};
use pgwal::{parse_wal_file_name, Lsn, TimelineId, WalFileKind, WalSegSize};
use tokio::task::JoinHandle;
use walarchive::{ArchiveState, CompletedSegment};

use crate::layout;
use crate::repo::{Repo, RepoError};
use crate::store::PutMode;
use crate::wal::list_wal;

/// What the spool reports as it carries WAL into the repository.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SpoolEvent {
    /// A file went into the repository (`partial`: a tail, replaced as it grows).
    Stored {
        /// Its name in the spool.
        file_name: String,
        /// A tail of the segment being filled.
        partial: bool,
    },
    /// Storing failed; it is tried again after `retry`, and the WAL stays in the spool.
    Failed {
        /// What went wrong (names the repository).
        error: String,
        /// When the next try is.
        retry: Duration,
        /// Completed segments waiting in the spool.
        waiting: usize,
    },
}

type OnEvent = Arc<dyn Fn(&SpoolEvent) + Send + Sync>;

/// A [`WalStore`] that spools locally and drains into a repository. See the module docs.
pub struct SpoolWalStore {
    dir: DirWalStore,
    spool: PathBuf,
    repo: Repo,
    level: i32,
    partial_interval: Duration,
    seg: Option<WalSegSize>,
    on_event: OnEvent,
    /// Tails stored, by spool file name, with the size stored.
    tails: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    drain: Option<JoinHandle<Result<(), DrainFailed>>>,
    segments_waiting: bool,
    last_tail: Instant,
    failures: u32,
    retry_at: Option<Instant>,
}

impl std::fmt::Debug for SpoolWalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolWalStore")
            .field("spool", &self.spool)
            .field("repo", &self.repo.name())
            .finish_non_exhaustive()
    }
}

impl SpoolWalStore {
    /// Spools into `spool` (created 0700; fsync before reporting unless `sync` is false) and
    /// drains into `repo`, segments compressed with zstd at `level`, the tail stored at least
    /// every `partial_interval`.
    pub fn new(
        repo: Repo,
        spool: impl Into<PathBuf>,
        sync: bool,
        level: i32,
        partial_interval: Duration,
        on_event: impl Fn(&SpoolEvent) + Send + Sync + 'static,
    ) -> Self {
        let spool = spool.into();
        SpoolWalStore {
            dir: DirWalStore::new(&spool, None, sync),
            spool,
            repo,
            level,
            partial_interval,
            seg: None,
            on_event: Arc::new(on_event),
            tails: Default::default(),
            drain: None,
            segments_waiting: true,
            last_tail: Instant::now(),
            failures: 0,
            retry_at: None,
        }
    }

    /// Collects a finished drain; a failure schedules a retry (backoff up to 30 s).
    async fn reap(&mut self) -> Result<(), ReceiveError> {
        if !self.drain.as_ref().is_some_and(|d| d.is_finished()) {
            return Ok(());
        }
        self.wait_drain().await
    }

    async fn wait_drain(&mut self) -> Result<(), ReceiveError> {
        let Some(d) = self.drain.take() else {
            return Ok(());
        };
        match d.await {
            Ok(Ok(())) => {
                self.failures = 0;
                self.retry_at = None;
                Ok(())
            }
            Ok(Err(DrainFailed {
                error,
                store,
                waiting,
            })) => {
                if !store {
                    // not the store being away (the WAL waits safely in the spool for it):
                    // the spool cannot be read, or the repository refuses what it is given
                    return Err(ReceiveError::Storage {
                        archive: self.repo.name(),
                        detail: error,
                        transient: false,
                    });
                }
                self.failures = self.failures.saturating_add(1);
                let retry =
                    Duration::from_secs(1 << self.failures.min(5)).min(Duration::from_secs(30));
                self.retry_at = Some(Instant::now() + retry);
                self.segments_waiting = true;
                (self.on_event)(&SpoolEvent::Failed {
                    error,
                    retry,
                    waiting,
                });
                Ok(())
            }
            Err(e) => Err(ReceiveError::Storage {
                archive: self.repo.name(),
                detail: format!("the spool's uploader failed: {e}"),
                transient: false,
            }),
        }
    }

    /// Starts a drain when one is due and none runs.
    fn kick(&mut self, force_tail: bool) {
        let Some(seg) = self.seg else { return };
        if self.drain.is_some() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let tail_due = force_tail || self.last_tail.elapsed() >= self.partial_interval;
        if !self.segments_waiting && !tail_due {
            return;
        }
        self.segments_waiting = false;
        if tail_due {
            self.last_tail = Instant::now();
        }
        let job = Drain {
            repo: self.repo.clone(),
            spool: self.spool.clone(),
            seg,
            level: self.level,
            tails: tail_due.then(|| self.tails.clone()),
            on_event: self.on_event.clone(),
        };
        self.drain = Some(tokio::spawn(job.run()));
    }

    /// Waits for the drain under way, then carries everything in the spool (the tail too) into
    /// the repository once. Returns the number of completed segments still waiting in the
    /// spool (0 when everything went up); call it when streaming stops.
    pub async fn finish(&mut self) -> Result<usize, ReceiveError> {
        self.wait_drain().await?;
        self.retry_at = None;
        self.segments_waiting = true;
        self.kick(true);
        self.wait_drain().await?;
        let seg = self.seg.unwrap_or(WalSegSize::DEFAULT);
        let spool = self.spool.clone();
        Ok(
            tokio::task::spawn_blocking(move || spooled(&spool, seg).map(|v| v.done.len()))
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or(0),
        )
    }
}

/// What the spool holds: history files and completed segments (oldest first), and partial
/// segments.
#[derive(Debug, Default)]
struct Spooled {
    done: Vec<String>,
    partials: Vec<String>,
}

fn spooled(spool: &Path, seg: WalSegSize) -> std::io::Result<Spooled> {
    let mut out = Spooled::default();
    let mut done = Vec::new();
    for e in std::fs::read_dir(spool)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let Some(p) = parse_wal_file_name(&name, seg) else {
            continue;
        };
        match (p.kind, p.segment) {
            // history files first: a timeline's segments are useless to recovery without it
            (WalFileKind::History, _) => done.push(((0, 0, p.timeline.0), name)),
            (k, Some(s)) if k == WalFileKind::SEGMENT => done.push(((1, s.0, p.timeline.0), name)),
            (k, Some(_)) if k == WalFileKind::PARTIAL => out.partials.push(name),
            _ => {}
        }
    }
    done.sort();
    out.done = done.into_iter().map(|(_, n)| n).collect();
    out.partials.sort();
    Ok(out)
}

/// Why a drain stopped.
#[derive(Debug)]
struct DrainFailed {
    error: String,
    /// The store failed (try again later); otherwise streaming stops.
    store: bool,
    waiting: usize,
}

/// A drain's step failed: the store, or something else.
enum Step {
    Repo(RepoError),
    Spool(PathBuf, std::io::Error),
}

impl From<RepoError> for Step {
    fn from(e: RepoError) -> Self {
        Step::Repo(e)
    }
}

impl Step {
    fn failed(self, repo: &Repo, waiting: usize) -> DrainFailed {
        match self {
            Step::Repo(e) => DrainFailed {
                store: matches!(e, RepoError::Store(_)),
                error: match e {
                    RepoError::Store(s) => format!("{}: {s}", repo.name()),
                    e => e.to_string(),
                },
                waiting,
            },
            Step::Spool(path, e) => DrainFailed {
                error: format!("spool \"{}\": {e}", path.display()),
                store: false,
                waiting,
            },
        }
    }
}

/// One pass of carrying the spool into the repository.
struct Drain {
    repo: Repo,
    spool: PathBuf,
    seg: WalSegSize,
    level: i32,
    /// Store the tails too (with what was stored of each so far).
    tails: Option<Arc<std::sync::Mutex<HashMap<String, u64>>>>,
    on_event: OnEvent,
}

impl Drain {
    async fn run(self) -> Result<(), DrainFailed> {
        let spool = self.spool.clone();
        let seg = self.seg;
        let listed = tokio::task::spawn_blocking(move || spooled(&spool, seg))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(|e| Step::Spool(self.spool.clone(), e).failed(&self.repo, 0))?;
        let mut waiting = listed.done.len();
        for name in &listed.done {
            self.store_done(name)
                .await
                .map_err(|e| e.failed(&self.repo, waiting))?;
            waiting -= 1;
            (self.on_event)(&SpoolEvent::Stored {
                file_name: name.clone(),
                partial: false,
            });
        }
        if let Some(tails) = &self.tails {
            let newest = listed.partials.iter().max_by_key(|n| sort_key(n)).cloned();
            for name in &listed.partials {
                let stored = self
                    .store_tail(name, tails, Some(name) != newest.as_ref())
                    .await
                    .map_err(|e| e.failed(&self.repo, waiting))?;
                if stored {
                    (self.on_event)(&SpoolEvent::Stored {
                        file_name: name.clone(),
                        partial: true,
                    });
                }
            }
        }
        Ok(())
    }

    async fn read(&self, name: &str) -> Result<Option<Vec<u8>>, Step> {
        let path = self.spool.join(name);
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            // completed (renamed) or removed meanwhile
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Step::Spool(path, e)),
        }
    }

    async fn compress(&self, data: Vec<u8>) -> Result<Bytes, Step> {
        crate::wal::compress_off_thread(data, self.level)
            .await
            .map_err(|e| Step::Spool(self.spool.clone(), e))
    }

    /// Stores a completed segment (removing its tail from the repository) or a history file,
    /// then removes it from the spool.
    async fn store_done(&self, name: &str) -> Result<(), Step> {
        let Some(p) = parse_wal_file_name(name, self.seg) else {
            return Ok(());
        };
        let Some(data) = self.read(name).await? else {
            return Ok(());
        };
        match p.segment {
            None => {
                self.repo
                    .put_object(
                        &layout::history_key(p.timeline),
                        data.into(),
                        PutMode::Overwrite,
                    )
                    .await?
            }
            Some(s) => {
                if data.len() as u64 != self.seg.bytes() {
                    return Err(Step::Spool(
                        self.spool.join(name),
                        std::io::Error::other(format!(
                            "a completed segment of {} bytes, not {}",
                            data.len(),
                            self.seg.bytes()
                        )),
                    ));
                }
                let z = self.compress(data).await?;
                self.repo
                    .put_object(
                        &layout::segment_key(p.timeline, s, self.seg),
                        z,
                        PutMode::Overwrite,
                    )
                    .await?;
                self.repo
                    .store()
                    .delete(&layout::partial_key(p.timeline, s, self.seg))
                    .await
                    .map_err(RepoError::from)?;
            }
        }
        // stored: the spool's copy may go (a crash before this stores it again, harmlessly)
        let path = self.spool.join(name);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Step::Spool(path, e)),
        }
    }

    /// Stores a partial segment's bytes when they grew since the last time; an older one than
    /// the newest (a timeline that ended) leaves the spool once stored. Says whether it stored.
    async fn store_tail(
        &self,
        name: &str,
        tails: &std::sync::Mutex<HashMap<String, u64>>,
        stale: bool,
    ) -> Result<bool, Step> {
        let Some(p) = parse_wal_file_name(name, self.seg) else {
            return Ok(false);
        };
        let Some(s) = p.segment else { return Ok(false) };
        let Some(data) = self.read(name).await? else {
            return Ok(false);
        };
        let len = data.len() as u64;
        let before = tails.lock().map(|t| t.get(name).copied()).unwrap_or(None);
        let mut stored = false;
        if len > 0 && before != Some(len) {
            // a prefix of the server's WAL: bytes not yet fsynced here are still the server's
            let z = self.compress(data).await?;
            self.repo
                .put_object(
                    &layout::partial_key(p.timeline, s, self.seg),
                    z,
                    PutMode::Overwrite,
                )
                .await?;
            if let Ok(mut t) = tails.lock() {
                t.insert(name.to_string(), len);
            }
            stored = true;
        }
        if stale {
            let path = self.spool.join(name);
            let _ = tokio::fs::remove_file(&path).await;
            if let Ok(mut t) = tails.lock() {
                t.remove(name);
            }
        }
        Ok(stored)
    }
}

/// Orders segment file names by segment, then timeline.
fn sort_key(name: &str) -> (String, String) {
    let (tli, rest) = name.split_at(8.min(name.len()));
    (rest.to_string(), tli.to_string())
}

impl WalStore for SpoolWalStore {
    fn describe(&self) -> String {
        format!(
            "\"{}\" (spooling for {})",
            self.spool.display(),
            self.repo.name()
        )
    }

    fn open(&mut self, seg: WalSegSize) -> BoxFut<'_, Result<ArchiveState, ReceiveError>> {
        Box::pin(async move {
            self.seg = Some(seg);
            let local = self.dir.open(seg).await?;
            let listing = list_wal(&self.repo, seg)
                .await
                .map_err(|e| self.storage(e))?;
            // as RepoWalStore::open: the newest segment the repository holds
            let remote = listing
                .segments
                .iter()
                .max_by_key(|((t, s), (_, _, partial, _))| (s.0, t.0, !partial))
                .and_then(|((t, s), (_, _, partial, _))| {
                    let start = s.start_lsn(seg)?;
                    Some(if *partial {
                        (start, *t)
                    } else {
                        (Lsn(start.0 + seg.bytes()), *t)
                    })
                });
            let bound = self
                .repo
                .bound_system()
                .await
                .map_err(|e| self.storage(e))?;
            if let (Some(a), Some(b)) = (local.system_id, bound) {
                if a != b {
                    return Err(ReceiveError::ForeignSystem {
                        dir: self.describe(),
                        archive: a,
                        server: b,
                    });
                }
            }
            // whichever is further: the spool holds what the repository does not have yet
            let resume = match (local.resume, remote) {
                (Some(l), Some(r)) => Some(if (r.0, r.1 .0) > (l.0, l.1 .0) { r } else { l }),
                (l, r) => l.or(r),
            };
            self.segments_waiting = true;
            self.kick(false);
            Ok(ArchiveState {
                resume,
                system_id: bound.or(local.system_id),
            })
        })
    }

    fn start_at(&mut self, start: Lsn) {
        self.dir.start_at(start);
    }

    fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        data: Bytes,
    ) -> BoxFut<'_, Result<Vec<CompletedSegment>, ReceiveError>> {
        Box::pin(async move {
            let done = self.dir.write(tli, start, data).await?;
            if !done.is_empty() {
                self.segments_waiting = true;
                self.reap().await?;
                self.kick(false);
            }
            Ok(done)
        })
    }

    fn flush(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move {
            let durable = self.dir.flush().await?;
            self.reap().await?;
            self.kick(false);
            Ok(durable)
        })
    }

    fn close(&mut self) -> BoxFut<'_, Result<Lsn, ReceiveError>> {
        Box::pin(async move {
            let durable = self.dir.close().await?;
            self.reap().await?;
            self.kick(false);
            Ok(durable)
        })
    }

    fn write_history(
        &mut self,
        file_name: String,
        content: Bytes,
    ) -> BoxFut<'_, Result<(), ReceiveError>> {
        Box::pin(async move {
            self.dir.write_history(file_name, content).await?;
            self.segments_waiting = true;
            Ok(())
        })
    }
}

impl SpoolWalStore {
    fn storage(&self, e: RepoError) -> ReceiveError {
        let transient = match &e {
            RepoError::Store(s) => s.is_transient(),
            _ => false,
        };
        ReceiveError::Storage {
            archive: self.repo.name(),
            detail: e.to_string(),
            transient,
        }
    }
}
