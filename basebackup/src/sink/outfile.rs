//! Output files for the sinks: large files bypass the page cache.
//!
//! A backup is written once and not read again soon, so copying it into the page cache only
//! costs CPU (the copy and the page allocations are most of a backup client's time) and evicts
//! what the backup host had cached. [`OutFile`] writes large files with `O_DIRECT` from an
//! aligned buffer: the device reads our buffer, nothing is copied, and a later fsync has little
//! left to do. Small files, and filesystems that refuse `O_DIRECT` (at open or at the first
//! write), get ordinary buffered writes through the same buffer.
//!
//! The file's length is exact at every [`Write::flush`]: a partial last block is written padded
//! with zeros and the file is then truncated to its true length; the tail stays buffered, so
//! writing may go on after a flush.
//!
//! Direct writes wait for the device. When the user does not want to wait for the disk
//! (`--no-sync`) and the disk is slower than the page cache, that wait is what the backup's
//! time is made of; a sink's files therefore share a [`Pace`], which watches how long the
//! backup waits for its direct writes and, once that is a large share of its time, sends the
//! rest of the backup through the page cache: the open file's writes drop `O_DIRECT` (one in
//! flight at a time), and later files are written as small ones are. A sink may also start in
//! the page cache ([`Pace::start_buffered`]), for backups too short for the pace to judge.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use crate::safe_dir::SafeDir;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Direct I/O alignment of memory, offsets and lengths (covers 512- and 4096-byte devices).
const ALIGN: usize = 4096;
/// The buffer of a direct file: one write per 4 MiB (a virtio request of 4096 kB).
pub(crate) const DIRECT_BUF: usize = 4 << 20;
/// Files at least this large are written directly.
pub(crate) const DIRECT_MIN: u64 = 1 << 20;
/// The most one call writes through the page cache. The kernel gives a write a folio as large
/// as the write, and large folios come from the large free blocks that VMs hand back to their
/// host (virtio-balloon free page reporting takes blocks of 2 MiB and more): each page of those
/// costs a fault on the host when first written. 1.5 GB into the page cache, a second after
/// the memory was freed, took 3.7-5.2 s of system time in writes of 4 MiB, 1.2 s in writes of
/// 1 MiB and 0.43-0.66 s in writes of 128 or 256 KiB (`dd`, three tries each). Later, on a
/// machine where 256 KiB writes of 1.5 GB took 2.4-3.0 s, 32 KiB writes took 0.57-3.06 s
/// (median 0.66 s), and a tar backup written wholly through the page cache took 2.12-2.53 s
/// with 32 KiB writes against 2.70-5.00 s with 256 KiB (four rounds each; pg_basebackup,
/// which writes 4-28 KiB per call, 2.34-3.67 s).
pub(crate) const BUFFERED_PIECE: usize = 32 << 10;
/// Threads writing a direct file: two writes in flight keep a virtio disk busier than one
/// (a 1.5 GB file: 0.72 s against 0.83 s).
const WRITERS: usize = 2;
/// Buffers of a direct file: one being filled while the others are written.
const DIRECT_BLOCKS: usize = WRITERS + 1;

/// Bytes a sink writes directly before its [`Pace`] judges the disk.
const PACE_MIN_BYTES: u64 = 32 << 20;
/// Waiting for the device that is never too much: a disk that keeps up still has the odd
/// slow write, and the writes that end each file are waited for (on a disk that keeps up,
/// 5-110 ms in all over a 1.5 GB backup).
const PACE_MIN_WAIT: Duration = Duration::from_millis(150);
/// The share of the time since the first direct write that waiting for the device may take
/// before the rest goes through the page cache: a half. (On a disk that keeps up the backup
/// waits a few per cent of its time; on one slower than the network, most of it. The judgement
/// is early, as the time lost to the slow disk is never made up.)
const PACE_MAX_WAIT_DIVISOR: u32 = 2;

/// How a sink's direct writes keep up with the backup, shared by all its files (see the
/// module's documentation). Only a pace made with `adaptive` (no sync asked for) ever turns to
/// the page cache: a durable backup waits for the disk either way, and direct writes leave its
/// fsync little to do.
#[derive(Debug)]
pub(crate) struct Pace {
    adaptive: bool,
    buffered: AtomicBool,
    state: Mutex<PaceState>,
}

#[derive(Debug, Default)]
struct PaceState {
    /// When the first direct write was handed to a writer.
    started: Option<Instant>,
    /// Bytes handed to writers.
    bytes: u64,
    /// Time spent waiting for writes to complete.
    waited: Duration,
}

impl Pace {
    pub(crate) fn new(adaptive: bool) -> Arc<Pace> {
        Arc::new(Pace {
            adaptive,
            buffered: AtomicBool::new(false),
            state: Mutex::new(PaceState::default()),
        })
    }

    /// Whether the sink's large files now go through the page cache.
    pub(crate) fn buffered(&self) -> bool {
        self.buffered.load(Ordering::Relaxed)
    }

    fn submitted(&self, n: usize) {
        if !self.adaptive {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.started.get_or_insert_with(Instant::now);
        s.bytes += n as u64;
    }

    fn waited(&self, d: Duration) {
        if !self.adaptive || self.buffered() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.waited += d;
        let Some(started) = s.started else { return };
        if disk_too_slow(s.bytes, s.waited, started.elapsed()) {
            self.buffered.store(true, Ordering::Relaxed);
        }
    }

    /// Sends every file through the page cache from the start, if no sync was asked for (a
    /// durable backup keeps its direct writes): for backups whose writes the pace cannot judge
    /// in time (see [`crate::sink::DirectorySink::set_page_cache`]).
    pub(crate) fn start_buffered(&self) {
        if self.adaptive {
            self.buffered.store(true, Ordering::Relaxed);
        }
    }

    /// Turns to the page cache now (for tests).
    #[cfg(test)]
    fn force_buffered(&self) {
        self.buffered.store(true, Ordering::Relaxed);
    }
}

/// Whether a backup that has handed `bytes` to direct writes over `elapsed`, and waited
/// `waited` of it for them to complete, is being held up by the disk.
fn disk_too_slow(bytes: u64, waited: Duration, elapsed: Duration) -> bool {
    bytes >= PACE_MIN_BYTES && waited >= PACE_MIN_WAIT && waited * PACE_MAX_WAIT_DIVISOR >= elapsed
}

/// An aligned buffer: `buf[start..start + cap]`, never reallocated.
struct Block {
    buf: Vec<u8>,
    start: usize,
}

impl Block {
    fn new(cap: usize) -> Block {
        let buf = vec![0u8; cap + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block { buf, start }
    }

    fn get(&self, n: usize) -> &[u8] {
        &self.buf[self.start..self.start + n]
    }

    fn get_mut(&mut self, from: usize, to: usize) -> &mut [u8] {
        &mut self.buf[self.start + from..self.start + to]
    }
}

/// The open file, shared by its writer threads (positioned writes need no exclusion).
struct Disk {
    file: File,
    direct: AtomicBool,
    /// Held while `O_DIRECT` is being cleared, so that writers retry only after it is.
    clearing: Mutex<()>,
}

impl Disk {
    /// Writes at `pos`. A filesystem that accepted `O_DIRECT` at open but refuses the write
    /// gets the flag cleared on the open file (`fcntl(F_SETFL)`: no second open by name, so
    /// nothing can be swapped in under us), then the write is made again.
    fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        if !self.direct.load(Ordering::Acquire) {
            return self.write_buffered(data, pos);
        }
        match self.file.write_all_at(data, pos) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && self.direct.load(Ordering::Acquire) =>
            {
                self.go_buffered()?;
                self.write_buffered(data, pos)
            }
            r => r,
        }
    }

    /// Writes through the page cache, [`BUFFERED_PIECE`] bytes per call.
    fn write_buffered(&self, data: &[u8], pos: u64) -> io::Result<()> {
        in_pieces(data, pos, |piece, at| self.file.write_all_at(piece, at))
    }

    /// Clears `O_DIRECT`: later writes go through the page cache.
    fn go_buffered(&self) -> io::Result<()> {
        let _held = self.clearing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.direct.swap(false, Ordering::AcqRel) {
            clear_direct(&self.file)?;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn into_file(self) -> File {
        self.file
    }
}

/// Hands `data`, to be written at `pos`, to `write` in pieces of at most [`BUFFERED_PIECE`].
fn in_pieces(
    data: &[u8],
    pos: u64,
    mut write: impl FnMut(&[u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut at = pos;
    for piece in data.chunks(BUFFERED_PIECE) {
        write(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// A write for the writer thread: `block[..len]` at `pos`, then the file cut to `set_len`.
struct Job {
    block: Block,
    len: usize,
    pos: u64,
    set_len: Option<u64>,
}

/// Where the buffered bytes go: straight to the file (buffered files) or to threads that
/// write while the next buffer fills (direct files, whose writes wait for the device).
enum Out {
    Inline(Disk),
    Thread {
        jobs: Option<SyncSender<Job>>,
        done: Receiver<io::Result<Block>>,
        disk: Option<Arc<Disk>>,
        workers: Vec<JoinHandle<()>>,
        in_flight: usize,
        spare: Vec<Block>,
        allocated: usize,
    },
}

/// A writer thread: takes the next job, writes it, hands the buffer back. Jobs may complete
/// out of order; the file's owner waits for all of them before it relies on the length.
fn writer(disk: Arc<Disk>, jobs: Arc<Mutex<Receiver<Job>>>, done: SyncSender<io::Result<Block>>) {
    loop {
        let job = match jobs.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let r = disk
            .write_at(job.block.get(job.len), job.pos)
            .and_then(|()| match job.set_len {
                Some(l) => disk.set_len(l),
                None => Ok(()),
            });
        let failed = r.is_err();
        if done.send(r.map(|()| job.block)).is_err() || failed {
            return;
        }
    }
}

/// A file being written, directly or buffered.
pub(crate) struct OutFile {
    out: Out,
    path: PathBuf,
    cur: Block,
    cap: usize,
    /// Bytes buffered in `cur`.
    len: usize,
    /// Bytes of the file before the buffered ones (a multiple of ALIGN for aligned files).
    pos: u64,
    /// Whether writes go out in whole blocks: the file was opened for direct I/O.
    aligned: bool,
    pace: Option<Arc<Pace>>,
}

impl std::fmt::Debug for OutFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutFile")
            .field("path", &self.path)
            .field("aligned", &self.aligned)
            .finish_non_exhaustive()
    }
}

/// Opens `path` (which must not exist) with `mode`, `O_DIRECT` when `direct`.
#[cfg(test)]
fn open(path: &Path, mode: u32, direct: bool) -> io::Result<File> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.write(true).create_new(true).mode(mode);
    #[cfg(target_os = "linux")]
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = direct;
    o.open(path)
}

/// Clears `O_DIRECT` on an open file.
fn clear_direct(f: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let flags = rustix::fs::fcntl_getfl(f)?;
        rustix::fs::fcntl_setfl(f, flags - rustix::fs::OFlags::DIRECT)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
    Ok(())
}

fn writer_gone() -> io::Error {
    io::Error::other("the file's writer thread ended")
}

impl OutFile {
    /// Creates `path` (which must not exist) with `mode`; `size_hint` is the expected length
    /// when known (a tar entry's size), `None` for archives of unknown length, which are
    /// written directly.
    #[cfg(test)]
    pub(crate) fn create(path: &Path, mode: u32, size_hint: Option<u64>) -> io::Result<OutFile> {
        Self::create_with(path, mode, size_hint, DIRECT_BUF)
    }

    /// As `create`, with `block` bytes per direct write (a multiple of 4096).
    #[cfg(test)]
    pub(crate) fn create_with(
        path: &Path,
        mode: u32,
        size_hint: Option<u64>,
        block: usize,
    ) -> io::Result<OutFile> {
        Self::create_by(path, size_hint, block, None, |direct| {
            open(path, mode, direct)
        })
    }

    /// Creates the file `name` in `dir` (never through a link; see [`SafeDir`]); `path` names it
    /// in messages. `block` bytes go to each direct write (a multiple of 4096; [`DIRECT_BUF`] by
    /// default, less for the output of a compressor, which is smaller and slower to come).
    /// Large files follow the sink's `pace`.
    pub(crate) fn create_in(
        dir: &SafeDir,
        name: &std::ffi::OsStr,
        path: &Path,
        mode: u32,
        size_hint: Option<u64>,
        block: usize,
        pace: &Arc<Pace>,
    ) -> io::Result<OutFile> {
        Self::create_by(path, size_hint, block, Some(pace), |direct| {
            dir.create_file(name, mode, direct)
        })
    }

    /// Creates the file with `opener` (given whether to ask for `O_DIRECT`). A large file is
    /// written directly by threads, or, once `pace` has turned to the page cache, as a small
    /// one is.
    fn create_by(
        path: &Path,
        size_hint: Option<u64>,
        block: usize,
        pace: Option<&Arc<Pace>>,
        opener: impl Fn(bool) -> io::Result<File>,
    ) -> io::Result<OutFile> {
        let block = block.max(ALIGN) / ALIGN * ALIGN;
        let large = size_hint.is_none_or(|s| s >= DIRECT_MIN);
        let paced_buffered = pace.is_some_and(|p| p.buffered());
        let want_direct = large && !paced_buffered;
        let (file, direct) = if want_direct {
            match opener(true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (opener(false)?, false),
                Err(e) => return Err(e),
            }
        } else {
            (opener(false)?, false)
        };
        let disk = Disk {
            file,
            direct: AtomicBool::new(direct),
            clearing: Mutex::new(()),
        };
        let (cap, out) = if direct {
            let (jobs, rx) = sync_channel(DIRECT_BLOCKS);
            let (tx, done) = sync_channel(DIRECT_BLOCKS);
            let disk = Arc::new(disk);
            let rx = Arc::new(Mutex::new(rx));
            let mut workers = Vec::with_capacity(WRITERS);
            for _ in 0..WRITERS {
                let (disk, rx, tx) = (disk.clone(), rx.clone(), tx.clone());
                workers.push(
                    std::thread::Builder::new()
                        .name("pgrepl-writer".into())
                        .spawn(move || writer(disk, rx, tx))?,
                );
            }
            (
                block,
                Out::Thread {
                    jobs: Some(jobs),
                    done,
                    disk: Some(disk),
                    workers,
                    in_flight: 0,
                    spare: Vec::new(),
                    allocated: 1,
                },
            )
        } else {
            let cap = size_hint
                .unwrap_or(DIRECT_BUF as u64)
                .clamp(8192, 256 * 1024) as usize;
            (cap, Out::Inline(disk))
        };
        Ok(OutFile {
            out,
            path: path.to_path_buf(),
            cur: Block::new(cap),
            cap,
            len: 0,
            pos: 0,
            aligned: direct,
            pace: pace.cloned(),
        })
    }

    /// Whether the file was opened for direct I/O.
    #[cfg(test)]
    pub(crate) fn is_direct(&self) -> bool {
        self.aligned
    }

    /// Whether the file's writes currently go out directly.
    #[cfg(test)]
    fn writes_directly(&self) -> bool {
        match &self.out {
            Out::Inline(d) => d.direct.load(Ordering::Acquire),
            Out::Thread { disk, .. } => disk
                .as_ref()
                .is_some_and(|d| d.direct.load(Ordering::Acquire)),
        }
    }

    /// Writes `cur[..n]` at `pos` (then cuts the file to `set_len`). With writer threads,
    /// `cur` is handed over and replaced by a free buffer, unless `keep` asks to keep it: then
    /// every write in flight is waited for and this one is made here.
    fn submit(&mut self, n: usize, set_len: Option<u64>, keep: bool) -> io::Result<()> {
        let cap = self.cap;
        let write_here = |disk: &Disk, cur: &Block, pos: u64| {
            disk.write_at(cur.get(n), pos)?;
            match set_len {
                Some(l) => disk.set_len(l),
                None => Ok(()),
            }
        };
        let pace = self.pace.as_deref();
        // a completed write, waited for (the wait is the pace's measure of the disk)
        let wait = |done: &Receiver<io::Result<Block>>| {
            let t = Instant::now();
            let r = done.recv().map_err(|_| writer_gone());
            if let Some(p) = pace {
                p.waited(t.elapsed());
            }
            r?
        };
        match &mut self.out {
            Out::Inline(disk) => write_here(disk, &self.cur, self.pos),
            Out::Thread {
                jobs,
                done,
                in_flight,
                spare,
                allocated,
                disk,
                ..
            } => {
                let d = disk.as_deref().ok_or_else(writer_gone)?;
                if let Some(p) = pace {
                    if p.buffered() {
                        d.go_buffered()?;
                    }
                    p.submitted(n);
                }
                if keep {
                    // writes complete in any order: all of them before the length is set
                    while *in_flight > 0 {
                        spare.push(wait(done)?);
                        *in_flight -= 1;
                    }
                    return write_here(d, &self.cur, self.pos);
                }
                // Buffered writes to one file take its inode lock: a second one in flight
                // only spins on the lock, burning the CPU the first one copies with.
                if !d.direct.load(Ordering::Acquire) {
                    while *in_flight > 0 {
                        spare.push(wait(done)?);
                        *in_flight -= 1;
                    }
                }
                let next = if let Some(b) = spare.pop() {
                    b
                } else if *allocated < DIRECT_BLOCKS {
                    *allocated += 1;
                    Block::new(cap)
                } else {
                    let b = wait(done)?;
                    *in_flight -= 1;
                    b
                };
                let job = Job {
                    block: std::mem::replace(&mut self.cur, next),
                    len: n,
                    pos: self.pos,
                    set_len,
                };
                let sent = jobs.as_ref().map(|j| j.send(job).is_ok());
                if sent != Some(true) {
                    // every writer is gone: the first error they reported says why
                    while let Ok(r) = done.recv() {
                        r?;
                    }
                    return Err(writer_gone());
                }
                *in_flight += 1;
                Ok(())
            }
        }
    }

    /// Writes the full buffer and empties it.
    fn drain(&mut self) -> io::Result<()> {
        self.submit(self.len, None, false)?;
        self.pos += self.len as u64;
        self.len = 0;
        Ok(())
    }

    /// Flushes and returns the file, whose length is then exact.
    pub(crate) fn finish(mut self) -> io::Result<File> {
        self.flush()?;
        let out = std::mem::replace(
            &mut self.out,
            Out::Thread {
                jobs: None,
                done: sync_channel(0).1,
                disk: None,
                workers: Vec::new(),
                in_flight: 0,
                spare: Vec::new(),
                allocated: 0,
            },
        );
        match out {
            Out::Inline(disk) => Ok(disk.into_file()),
            Out::Thread {
                mut jobs,
                workers,
                disk,
                ..
            } => {
                jobs.take();
                for w in workers {
                    w.join().map_err(|_| writer_gone())?;
                }
                let disk =
                    Arc::try_unwrap(disk.ok_or_else(writer_gone)?).map_err(|_| writer_gone())?;
                Ok(disk.into_file())
            }
        }
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if let Out::Thread { jobs, workers, .. } = &mut self.out {
            jobs.take();
            for w in workers.drain(..) {
                let _ = w.join();
            }
        }
    }
}

impl Write for OutFile {
    fn write(&mut self, d: &[u8]) -> io::Result<usize> {
        if self.len == self.cap {
            self.drain()?;
        }
        let n = d.len().min(self.cap - self.len);
        self.cur
            .get_mut(self.len, self.len + n)
            .copy_from_slice(&d[..n]);
        self.len += n;
        if self.len == self.cap {
            self.drain()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.aligned {
            // written (after every write in flight), so that errors surface here
            self.submit(self.len, None, true)?;
            self.pos += self.len as u64;
            self.len = 0;
            return Ok(());
        }
        let whole = self.len / ALIGN * ALIGN;
        if whole == self.len {
            // whole blocks only: written and waited for, so that errors surface here
            self.submit(self.len, None, true)?;
            self.pos += self.len as u64;
            self.len = 0;
            return Ok(());
        }
        // The partial block goes out padded, then the file is cut to its true length; the
        // buffer keeps the tail so that later writes can complete the block.
        let padded = whole + ALIGN;
        self.cur.get_mut(self.len, padded).fill(0);
        self.submit(padded, Some(self.pos + self.len as u64), true)?;
        if whole > 0 {
            let s = self.cur.start;
            self.cur.buf.copy_within(s + whole..s + self.len, s);
            self.pos += whole as u64;
            self.len -= whole;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outfile-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn lengths_around_block_and_buffer_edges() {
        for (i, n) in [
            0usize,
            1,
            4095,
            4096,
            4097,
            DIRECT_BUF - 1,
            DIRECT_BUF,
            DIRECT_BUF + 1,
            3 * DIRECT_BUF + 12345,
        ]
        .into_iter()
        .enumerate()
        {
            for hint in [None, Some(n as u64), Some(10)] {
                let p = tmp(&format!("len{i}-{hint:?}"));
                let data = pattern(n, i as u8);
                let mut f = OutFile::create(&p, 0o600, hint).unwrap();
                // odd chunk sizes, as the tar stream delivers them
                for c in data.chunks(7919) {
                    f.write_all(c).unwrap();
                }
                f.finish().unwrap();
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    data,
                    "length {n}, hint {hint:?}"
                );
                std::fs::remove_file(&p).unwrap();
            }
        }
    }

    #[test]
    fn the_pace_turns_to_the_page_cache_only_when_the_disk_holds_the_backup_up() {
        let ms = Duration::from_millis;
        // figures seen on a disk that keeps up: 790 MB in 1.1 s, waiting 5-110 ms
        assert!(!disk_too_slow(790 << 20, ms(110), ms(1100)));
        // an early slow write is no judgement
        assert!(!disk_too_slow(16 << 20, ms(200), ms(250)));
        assert!(!disk_too_slow(64 << 20, ms(100), ms(150)));
        assert!(!disk_too_slow(200 << 20, ms(160), ms(400)));
        // a disk at 150 MB/s under a 500 MB/s stream waits most of the time
        assert!(disk_too_slow(45 << 20, ms(160), ms(300)));
        assert!(disk_too_slow(200 << 20, ms(900), ms(1350)));
        // and a pace of a durable backup never turns
        let p = Pace::new(false);
        p.submitted(1 << 30);
        p.waited(Duration::from_secs(10));
        assert!(!p.buffered());
        // not even when asked to start in the page cache
        p.start_buffered();
        assert!(!p.buffered());
        let p = Pace::new(true);
        p.start_buffered();
        assert!(p.buffered());
    }

    #[test]
    fn files_written_after_the_pace_turned_go_through_the_page_cache() {
        let dir = tmp("pacedir");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let safe = SafeDir::open(&dir).unwrap();
        let pace = Pace::new(true);
        let data = pattern(3 * DIRECT_BUF + 4097, 5);
        let write = |name: &str, turn_after: Option<usize>| {
            let path = dir.join(name);
            let mut f = OutFile::create_in(
                &safe,
                std::ffi::OsStr::new(name),
                &path,
                0o600,
                Some(data.len() as u64),
                DIRECT_BUF,
                &pace,
            )
            .unwrap();
            let direct_at_open = f.writes_directly();
            for (i, c) in data.chunks(100_003).enumerate() {
                if turn_after == Some(i) {
                    pace.force_buffered();
                }
                f.write_all(c).unwrap();
            }
            let direct_at_end = f.writes_directly();
            f.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{name}");
            (direct_at_open, direct_at_end)
        };
        // a direct file that turns part-way (only where the file system takes O_DIRECT)
        let (opened_direct, ended_direct) = write("turns", Some(50));
        assert!(!ended_direct, "the open file left O_DIRECT");
        // a file opened after the turn: threads, page cache
        let (later_direct, _) = write("after", None);
        assert!(!later_direct);
        if opened_direct {
            let f = OutFile::create_in(
                &safe,
                std::ffi::OsStr::new("big"),
                &dir.join("big"),
                0o600,
                Some(DIRECT_MIN),
                DIRECT_BUF,
                &pace,
            )
            .unwrap();
            assert!(matches!(f.out, Out::Inline(_)));
            assert!(!f.is_direct());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn buffered_writes_go_in_pieces_that_make_up_the_data() {
        let data = pattern(4 * BUFFERED_PIECE + 5, 3);
        let mut calls: Vec<(u64, Vec<u8>)> = Vec::new();
        in_pieces(&data, 8192, |piece, at| {
            calls.push((at, piece.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(calls.len(), 5);
        let mut next = 8192;
        for (at, piece) in &calls {
            assert!(piece.len() <= BUFFERED_PIECE);
            assert_eq!(*at, next);
            next += piece.len() as u64;
        }
        let joined: Vec<u8> = calls.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        assert_eq!(joined, data);
        // an error stops the writing
        let mut n = 0;
        let e = in_pieces(&data, 0, |_, _| {
            n += 1;
            Err(io::Error::other("full"))
        });
        assert!(e.is_err());
        assert_eq!(n, 1);
    }

    #[test]
    fn small_blocks() {
        let p = tmp("block");
        let data = pattern(3 * 8192 + 5, 3);
        let mut f = OutFile::create_with(&p, 0o600, None, 5000).unwrap();
        for c in data.chunks(1000) {
            f.write_all(c).unwrap();
        }
        f.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn writing_goes_on_after_a_flush() {
        let p = tmp("flush");
        let mut f = OutFile::create(&p, 0o600, None).unwrap();
        let mut all = Vec::new();
        for (k, n) in [5000usize, 1, 8192, DIRECT_BUF + 3, 0, 77]
            .into_iter()
            .enumerate()
        {
            let d = pattern(n, k as u8);
            f.write_all(&d).unwrap();
            all.extend_from_slice(&d);
            f.flush().unwrap();
            assert_eq!(std::fs::read(&p).unwrap(), all, "after chunk {k}");
        }
        f.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), all);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn flushes_right_after_full_buffers() {
        // a full buffer and the padded tail are in flight together and may complete in any
        // order; the tail must come back to the writer as the buffer it continues
        let p = tmp("inflight");
        let mut f = OutFile::create(&p, 0o600, None).unwrap();
        let mut all = Vec::new();
        for k in 0..24 {
            let d = pattern(DIRECT_BUF + 1 + k * 613, k as u8);
            f.write_all(&d).unwrap();
            all.extend_from_slice(&d);
            f.flush().unwrap();
        }
        f.finish().unwrap();
        assert!(std::fs::read(&p).unwrap() == all);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn mode_and_create_new() {
        use std::os::unix::fs::PermissionsExt;
        let p = tmp("mode");
        OutFile::create(&p, 0o600, None).unwrap().finish().unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        assert_eq!(
            OutFile::create(&p, 0o600, None).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn small_files_are_buffered_large_ones_direct_where_supported() {
        let p = tmp("kind");
        let small = OutFile::create(&p, 0o600, Some(100)).unwrap();
        assert!(!small.is_direct());
        drop(small);
        std::fs::remove_file(&p).unwrap();
        // whether the temp filesystem takes O_DIRECT decides; either way the bytes are right
        let mut big = OutFile::create(&p, 0o600, Some(DIRECT_MIN)).unwrap();
        big.write_all(&pattern(DIRECT_MIN as usize, 9)).unwrap();
        big.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), pattern(DIRECT_MIN as usize, 9));
        std::fs::remove_file(&p).unwrap();
    }
}
