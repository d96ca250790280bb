//! Reading a stored backup: its index, and its files as [`RangeRead`]ers, so that combine and
//! restore read exactly the chunks they need with ranged reads — no download of whole packs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use basebackup::source::{BackupSource, FileLoc, RangeRead, Tablespace};
use tokio::runtime::Handle;

use crate::layout::{self, CHUNK};
use crate::records::{BackupRecord, EntryType, IndexEntry};
use crate::repo::{Repo, RepoError};

/// Bytes per ranged read of a whole object read in order (an index).
const PIECE: u64 = 8 << 20;

/// Bytes per window of a pack read through [`PackWindows`].
const WINDOW: u64 = 8 << 20;
/// Windows kept (per backup's readers): 64 MiB at most.
const WINDOWS_KEPT: usize = 8;

type Window = Arc<tokio::sync::OnceCell<bytes::Bytes>>;
/// Windows in the order they were made, and by (pack, window number).
type WindowMap = (
    std::collections::VecDeque<(String, u64)>,
    std::collections::HashMap<(String, u64), Window>,
);

/// Stored bytes of a backup's packs, read in aligned windows of 8 MiB and kept for the files
/// that follow (a file's chunks, and the small files next to it in the pack, are then one
/// ranged GET instead of one each); the window after one read is fetched ahead in the
/// background. At most eight windows (64 MiB) are kept.
#[derive(Debug, Default)]
pub struct PackWindows {
    map: Mutex<WindowMap>,
}

impl PackWindows {
    /// An empty cache, to share among the files of one backup.
    pub fn new() -> Arc<Self> {
        Arc::new(PackWindows::default())
    }

    fn cell(&self, pack: &str, w: u64) -> Window {
        let Ok(mut g) = self.map.lock() else {
            return Arc::new(tokio::sync::OnceCell::new());
        };
        let (order, cells) = &mut *g;
        let key = (pack.to_owned(), w);
        if let Some(c) = cells.get(&key) {
            return c.clone();
        }
        let c: Window = Arc::new(tokio::sync::OnceCell::new());
        cells.insert(key.clone(), c.clone());
        order.push_back(key);
        while order.len() > WINDOWS_KEPT {
            if let Some(old) = order.pop_front() {
                cells.remove(&old);
            }
        }
        c
    }

    /// Bytes `range` of `pack` (of `pack_size` bytes), through the windows.
    fn read(
        self: &Arc<Self>,
        rt: &Handle,
        repo: &Repo,
        pack: &str,
        pack_size: u64,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, RepoError> {
        let w = range.start / WINDOW;
        if (range.end.saturating_sub(1)) / WINDOW != w || range.end > pack_size {
            // across windows (a chunk at a window's edge): read it alone
            return rt.block_on(repo.get_range(pack, range));
        }
        let fetch = |w: u64| {
            let (repo, pack) = (repo.clone(), pack.to_owned());
            async move {
                let start = w * WINDOW;
                repo.get_range(&pack, start..(start + WINDOW).min(pack_size))
                    .await
            }
        };
        let cell = self.cell(pack, w);
        let bytes = rt.block_on(cell.get_or_try_init(|| fetch(w)))?.clone();
        // the next window, ahead
        if (w + 1) * WINDOW < pack_size {
            let next = self.cell(pack, w + 1);
            if !next.initialized() {
                let f = fetch(w + 1);
                rt.spawn(async move {
                    let _ = next.get_or_try_init(|| f).await;
                });
            }
        }
        let a = (range.start - w * WINDOW) as usize;
        let b = (range.end - w * WINDOW) as usize;
        Ok(bytes.slice(a..b))
    }
}

/// Reads an object in order, in ranged pieces of at most 8 MiB.
pub async fn read_in_pieces(
    repo: &Repo,
    key: &str,
    size: u64,
    mut on_piece: impl FnMut(&[u8]) -> Result<(), RepoError>,
) -> Result<(), RepoError> {
    let mut at = 0;
    while at < size {
        let end = (at + PIECE).min(size);
        let b = repo.get_range(key, at..end).await?;
        on_piece(&b)?;
        at = end;
    }
    Ok(())
}

/// A backup's index entries, in the order they were written.
pub async fn load_index(repo: &Repo, record: &BackupRecord) -> Result<Vec<IndexEntry>, RepoError> {
    let key = layout::index_key(&record.id);
    let size = record
        .objects
        .iter()
        .find(|o| o.key == key)
        // what is read is the content (the stored size includes encryption's overhead)
        .map(|o| {
            if o.content_size > 0 {
                o.content_size
            } else {
                o.size
            }
        })
        .ok_or_else(|| RepoError::Damaged {
            repo: repo.name(),
            key: layout::commit_key(&record.id),
            detail: "the commit record lists no index".into(),
        })?;
    let damaged = |detail: String| RepoError::Damaged {
        repo: repo.name(),
        key: key.clone(),
        detail,
    };
    let mut dec =
        zstd::stream::write::Decoder::new(Vec::new()).map_err(|e| damaged(e.to_string()))?;
    let mut entries = Vec::new();
    let take_lines = |buf: &mut Vec<u8>, entries: &mut Vec<IndexEntry>| -> Result<(), RepoError> {
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            let e: IndexEntry = serde_json::from_slice(line)
                .map_err(|e| damaged(format!("entry {}: {e}", entries.len() + 1)))?;
            entries.push(e);
            start += nl + 1;
        }
        buf.drain(..start);
        // a line is an entry of a few hundred bytes; a longer one is not an index
        if buf.len() > 1 << 20 {
            return Err(damaged("an index line longer than 1 MiB".into()));
        }
        Ok(())
    };
    read_in_pieces(repo, &key, size, |piece| {
        std::io::Write::write_all(&mut dec, piece).map_err(|e| damaged(e.to_string()))?;
        take_lines(dec.get_mut(), &mut entries)
    })
    .await?;
    std::io::Write::flush(&mut dec).map_err(|e| damaged(e.to_string()))?;
    take_lines(dec.get_mut(), &mut entries)?;
    if !dec.get_ref().is_empty() {
        return Err(damaged("the index ends inside an entry".into()));
    }
    Ok(entries)
}

/// Decompressed chunks kept for the reads that follow (a 256 kB read of a 1 MiB chunk leaves
/// the rest for the next one), shared by the files of a backup so that what is kept stays
/// bounded however many files are read: one chunk per file would keep the last chunk of every
/// file read until the restore ends, memory that grows with the database.
#[derive(Debug, Default)]
pub struct ChunkCache {
    /// (file, chunk number, bytes), the most recently used last.
    kept: Mutex<std::collections::VecDeque<KeptChunk>>,
}

/// A chunk kept: (file, chunk number, bytes).
type KeptChunk = (u64, usize, Arc<Vec<u8>>);

/// Chunks a [`ChunkCache`] keeps: a file being reconstructed reads from its own version and
/// from older ones in turn.
const CHUNKS_KEPT: usize = 4;

impl ChunkCache {
    /// An empty cache, to share among the files of one backup.
    pub fn new() -> Arc<Self> {
        Arc::new(ChunkCache::default())
    }

    fn get(&self, file: u64, chunk: usize) -> Option<Arc<Vec<u8>>> {
        let mut kept = self.kept.lock().ok()?;
        let i = kept
            .iter()
            .position(|(f, c, _)| *f == file && *c == chunk)?;
        let e = kept.remove(i)?;
        let data = e.2.clone();
        kept.push_back(e);
        Some(data)
    }

    fn put(&self, file: u64, chunk: usize, data: Arc<Vec<u8>>) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.retain(|(f, c, _)| !(*f == file && *c == chunk));
            kept.push_back((file, chunk, data));
            while kept.len() > CHUNKS_KEPT {
                kept.pop_front();
            }
        }
    }

    /// Bytes kept.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.kept
            .lock()
            .map(|k| k.iter().map(|(_, _, d)| d.len()).sum())
            .unwrap_or(0)
    }
}

/// Tells the files apart in a shared [`ChunkCache`].
static NEXT_FILE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One stored file, read by chunks (recent chunks are kept for the next reads, in a cache shared
/// with the backup's other files).
pub struct StoredFile {
    rt: Handle,
    repo: Repo,
    pack: String,
    /// Where each chunk starts in the pack, and where the last ends.
    bounds: Vec<u64>,
    size: u64,
    compressed: bool,
    name: String,
    /// This file in `chunks`.
    id: u64,
    chunks: Arc<ChunkCache>,
    windows: Option<(Arc<PackWindows>, u64)>,
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFile")
            .field("pack", &self.pack)
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl StoredFile {
    /// The file of `entry` in backup `id`; `rt` reaches the store's runtime (reads block).
    pub fn new(rt: Handle, repo: Repo, id: &str, entry: &IndexEntry, compressed: bool) -> Self {
        let mut bounds = Vec::with_capacity(entry.chunks.len() + 1);
        let mut at = entry.offset;
        bounds.push(at);
        for c in &entry.chunks {
            at = at.saturating_add(u64::from(*c));
            bounds.push(at);
        }
        StoredFile {
            rt,
            repo,
            pack: if entry.archive == "meta" {
                layout::manifest_key(id)
            } else {
                layout::pack_key(id, entry.pack)
            },
            bounds,
            size: entry.size,
            compressed,
            name: format!("{id}:{}", entry.manifest_path()),
            id: NEXT_FILE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            chunks: ChunkCache::new(),
            windows: None,
        }
    }

    /// Reads through `windows`, shared with the backup's other files (`pack_size`: the size of
    /// the pack the file is in).
    pub fn with_windows(mut self, windows: Arc<PackWindows>, pack_size: u64) -> Self {
        self.windows = Some((windows, pack_size));
        self
    }

    /// Keeps its recent chunks in `chunks`, shared with the backup's other files.
    pub fn with_chunks(mut self, chunks: Arc<ChunkCache>) -> Self {
        self.chunks = chunks;
        self
    }

    fn chunk(&self, i: usize) -> std::io::Result<Arc<Vec<u8>>> {
        if let Some(data) = self.chunks.get(self.id, i) {
            return Ok(data);
        }
        let bad = |m: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} in {}: {m}", self.name, self.pack),
            )
        };
        let (Some(&a), Some(&b)) = (self.bounds.get(i), self.bounds.get(i + 1)) else {
            return Err(bad(format!("chunk {i} is not in the index")));
        };
        let raw_len = (self.size - (i as u64) * CHUNK as u64).min(CHUNK as u64) as usize;
        let stored = match &self.windows {
            Some((w, size)) => w.read(&self.rt, &self.repo, &self.pack, *size, a..b),
            None => self.rt.block_on(self.repo.get_range(&self.pack, a..b)),
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let data = if self.compressed {
            let d = zstd::bulk::decompress(&stored, raw_len)
                .map_err(|e| bad(format!("chunk {i} does not decompress: {e}")))?;
            if d.len() != raw_len {
                return Err(bad(format!(
                    "chunk {i} holds {} bytes, {raw_len} expected",
                    d.len()
                )));
            }
            d
        } else {
            if stored.len() != raw_len {
                return Err(bad(format!(
                    "chunk {i} holds {} bytes, {raw_len} expected",
                    stored.len()
                )));
            }
            stored.to_vec()
        };
        let data = Arc::new(data);
        self.chunks.put(self.id, i, data.clone());
        Ok(data)
    }
}

impl RangeRead for StoredFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{}: read past its {} bytes", self.name, self.size),
                )
            })?;
        let mut at = offset;
        let mut done = 0;
        while at < end {
            let i = (at / CHUNK as u64) as usize;
            let c = self.chunk(i)?;
            let within = (at - i as u64 * CHUNK as u64) as usize;
            let n = (c.len() - within).min((end - at) as usize);
            buf[done..done + n].copy_from_slice(&c[within..within + n]);
            done += n;
            at += n as u64;
        }
        Ok(())
    }
}

/// A stored backup as a [`BackupSource`] for combine and restore: every file a [`StoredFile`].
pub fn open_source(
    rt: &Handle,
    repo: &Repo,
    record: &BackupRecord,
    index: &[IndexEntry],
) -> Result<BackupSource, RepoError> {
    let compressed = record.compression != "none";
    let windows = PackWindows::new();
    let chunks = ChunkCache::new();
    let sizes: std::collections::HashMap<&str, u64> = record
        .objects
        .iter()
        .map(|o| {
            (
                o.key.as_str(),
                if o.content_size > 0 {
                    o.content_size
                } else {
                    o.size
                },
            )
        })
        .collect();
    let mut files = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    let mut tablespaces = BTreeMap::new();
    let mut manifest = None;
    for t in &record.tablespaces {
        tablespaces.insert(
            t.oid.to_string(),
            Tablespace {
                oid: t.oid.to_string(),
                location: PathBuf::from(&t.location),
            },
        );
    }
    for e in index {
        let path = e.manifest_path();
        match e.kind {
            EntryType::Dir => {
                dirs.insert(path, ());
            }
            EntryType::Link => {}
            EntryType::File => {
                let mut f = StoredFile::new(rt.clone(), repo.clone(), &record.id, e, compressed)
                    .with_chunks(chunks.clone());
                if let Some(size) = sizes.get(f.pack.as_str()) {
                    f = f.with_windows(windows.clone(), *size);
                }
                let reader = Arc::new(f);
                let loc = FileLoc {
                    path: PathBuf::from(format!("{}/{}", record.id, path)),
                    offset: 0,
                    size: e.size,
                    mtime: e.mtime,
                    reader: Some(reader),
                };
                if e.archive == "meta" {
                    manifest = Some(loc);
                } else {
                    files.insert(path, loc);
                }
            }
        }
    }
    Ok(BackupSource::from_parts(
        PathBuf::from(format!("{} backup {}", repo.name(), record.id)),
        manifest,
        files,
        dirs,
        tablespaces,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_cache_keeps_a_few_recent_chunks_whatever_the_number_of_files() {
        let cache = ChunkCache::new();
        for file in 0..1000u64 {
            cache.put(file, 0, Arc::new(vec![file as u8; CHUNK]));
        }
        assert_eq!(cache.bytes(), CHUNKS_KEPT * CHUNK);
        assert!(cache.get(0, 0).is_none(), "the oldest chunk is gone");
        assert_eq!(cache.get(999, 0).unwrap()[0], 999u64 as u8);
        // a chunk read again is kept over older ones
        let oldest = 1000 - CHUNKS_KEPT as u64;
        assert!(cache.get(oldest, 0).is_some());
        cache.put(5000, 1, Arc::new(vec![1; 10]));
        assert!(cache.get(oldest, 0).is_some(), "recently used: kept");
        assert!(
            cache.get(oldest + 1, 0).is_none(),
            "least recently used: dropped"
        );
        // the same chunk put twice is kept once
        cache.put(5000, 1, Arc::new(vec![2; 10]));
        assert_eq!(cache.get(5000, 1).unwrap()[0], 2);
        assert_eq!(cache.kept.lock().unwrap().len(), CHUNKS_KEPT);
    }
}
