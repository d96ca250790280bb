//! The on-disk side of the WAL receiver: segments as `.partial` while they fill, made durable
//! and renamed when complete, page headers checked as bytes land.
//!
//! Layout of the archive directory (0700, files 0600):
//! - `<segment>` — a complete segment, or `<segment>.zst` when stored zstd-compressed, or
//!   `<segment>.gz` / `<segment>.lz4` with gzip / lz4 (pg_receivewal's `--compress` names);
//! - `<segment>.partial` — the segment being filled, uncompressed (also with zstd), so that a
//!   restart can simply stream that segment again from its start (the server keeps it: it holds
//!   the slot's restart_lsn, which never passes what we reported flushed); with gzip (lz4) it
//!   is `<segment>.gz.partial` (`.lz4.partial`), a stream flushed at every fsync, and a restart
//!   writes it anew from the segment's start, as pg_receivewal does;
//! - `<tli>.history` — timeline history files.
//!
//! Completing a segment: fsync the `.partial`; without compression rename it to its final name;
//! with zstd write `<segment>.zst.tmp`, fsync it, rename it to `<segment>.zst`, then remove the
//! `.partial`; with gzip or lz4 end the stream, fsync, rename `.gz.partial` to `.gz` (`.lz4.partial`
//! to `.lz4`); finally fsync the
//! directory. A crash at any point leaves either the partial (streamed again) or the final file
//! (a stale partial or `.tmp` beside it is removed at start-up).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgwal::page::{PageExpectations, PageHeader, WalVersion, LONG_HEADER_LEN, SHORT_HEADER_LEN};
use pgwal::{
    parse_wal_file_name, read_stored, segment_file_name, Lsn, SegmentNo, StoredAs, TimelineId,
    WalFileKind, WalSegSize,
};

use super::ReceiveError;

fn io_err(path: &Path, what: &str, e: std::io::Error) -> ReceiveError {
    ReceiveError::Io {
        path: path.to_path_buf(),
        what: what.to_owned(),
        source: e,
    }
}

/// Opens `path` for writing, creating it 0600; `truncate` empties an existing file.
fn create_private(path: &Path, truncate: bool) -> Result<File, ReceiveError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, "create", e))
}

/// fsync a directory, so renames and creations in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), ReceiveError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "fsync directory", e))
}

/// What an archive directory already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveState {
    /// Where to resume: the start of the newest partial segment, or the end of the newest
    /// complete one.
    pub resume: Option<(Lsn, TimelineId)>,
    /// The system identifier in the newest segment's long page header.
    pub system_id: Option<u64>,
}

/// Creates the directory (0700) if needed, removes leftovers of an interrupted completion, and
/// finds where to resume, as pg_receivewal's FindStreamingStart does: the highest segment number
/// (then timeline; a complete file beats a partial one of the same segment).
pub fn scan_archive(dir: &Path, seg_size: WalSegSize) -> Result<ArchiveState, ReceiveError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create archive directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, "chmod", e))?;
    }
    let mut best: Option<(SegmentNo, TimelineId, bool, PathBuf, StoredAs)> = None;
    let mut finals = std::collections::HashSet::new();
    let mut partials = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, "read archive directory", e))? {
        let entry = entry.map_err(|e| io_err(dir, "read archive directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let Some(p) = parse_wal_file_name(&name, seg_size) else {
            continue;
        };
        let Some(seg) = p.segment else { continue };
        let (partial, stored) = match p.kind {
            WalFileKind::Segment => (false, StoredAs::Plain),
            WalFileKind::SegmentZst => (false, StoredAs::Zstd),
            WalFileKind::SegmentGz => (false, StoredAs::Gzip),
            WalFileKind::Partial => (true, StoredAs::Plain),
            WalFileKind::PartialZst => (true, StoredAs::Zstd),
            WalFileKind::PartialGz => (true, StoredAs::Gzip),
            WalFileKind::SegmentLz4 => (false, StoredAs::Lz4),
            WalFileKind::PartialLz4 => (true, StoredAs::Lz4),
            _ => continue,
        };
        if partial {
            partials.push((seg, p.timeline, entry.path()));
        } else {
            finals.insert((seg, p.timeline));
        }
        let better = match &best {
            None => true,
            Some((bs, bt, bp, _, _)) => {
                seg > *bs
                    || (seg == *bs && p.timeline > *bt)
                    || (seg == *bs && p.timeline == *bt && *bp && !partial)
            }
        };
        if better {
            best = Some((seg, p.timeline, partial, entry.path(), stored));
        }
    }
    // A partial whose complete file exists is what an interrupted completion leaves behind.
    for (seg, tli, path) in partials {
        if finals.contains(&(seg, tli)) {
            let _ = std::fs::remove_file(path);
        }
    }
    let Some((seg, tli, partial, path, stored)) = best else {
        return Ok(ArchiveState {
            resume: None,
            system_id: None,
        });
    };
    let start = seg.start_lsn(seg_size).unwrap_or(Lsn(0));
    let resume = if partial {
        start
    } else {
        Lsn(start.0 + seg_size.bytes())
    };
    Ok(ArchiveState {
        resume: Some((resume, tli)),
        system_id: read_system_id(&path, stored, partial),
    })
}

fn read_system_id(path: &Path, stored: StoredAs, partial: bool) -> Option<u64> {
    let head = read_stored(path, stored, partial, LONG_HEADER_LEN as u64).ok()?;
    PageHeader::parse(&head)?.long.map(|l| l.system_id)
}

/// Checks every page header as the bytes arrive, across message boundaries.
#[derive(Debug)]
pub struct PageChecker {
    seg_size: WalSegSize,
    expect: PageExpectations,
    max_timeline: TimelineId,
    /// Header bytes of a page whose header arrived in pieces, and that page's address.
    pending: Vec<u8>,
    pending_page: Lsn,
    /// The segment whose remainder is unused (zero pages after an XLOG_SWITCH).
    zero_tail: Option<pgwal::SegmentNo>,
}

impl PageChecker {
    /// A checker for WAL of `system_id` streamed on `timeline`.
    pub fn new(seg_size: WalSegSize, system_id: u64, timeline: TimelineId) -> Self {
        PageChecker {
            seg_size,
            expect: PageExpectations {
                version: None,
                system_id: Some(system_id),
                min_timeline: None,
            },
            max_timeline: timeline,
            pending: Vec::new(),
            pending_page: Lsn(0),
            zero_tail: None,
        }
    }

    fn check(&mut self, page: Lsn, header: &[u8]) -> Result<(), ReceiveError> {
        let bad = |detail: String| ReceiveError::BadPage { lsn: page, detail };
        // After XLOG_SWITCH the rest of the segment is left zeroed, without page headers. A zero
        // page is accepted only mid-segment, and then the whole rest of that segment must be.
        let seg = page.segment(self.seg_size);
        let zero = header.iter().all(|&b| b == 0);
        if zero && page.segment_offset(self.seg_size) != 0 {
            self.zero_tail = Some(seg);
            return Ok(());
        }
        if self.zero_tail == Some(seg) {
            return Err(bad(
                "a page with a header follows an unused (zeroed) page in the same segment".into(),
            ));
        }
        let h = PageHeader::parse(header).ok_or_else(|| bad("truncated page header".into()))?;
        h.validate(page, self.seg_size, 8192, &self.expect)
            .map_err(bad)?;
        if h.timeline > self.max_timeline {
            return Err(bad(format!(
                "page timeline {} is ahead of the streamed timeline {}",
                h.timeline, self.max_timeline
            )));
        }
        self.expect.version = WalVersion::from_magic(h.magic);
        self.expect.min_timeline = Some(h.timeline);
        Ok(())
    }

    /// Checks the page headers inside `data`, which starts at `start`. Positions come from the
    /// server: a range that would run past the end of the WAL address space is refused.
    pub fn feed(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiveError> {
        const PAGE: u64 = 8192;
        let end = start
            .checked_add(data.len() as u64)
            .ok_or_else(|| ReceiveError::BadPage {
                lsn: start,
                detail: format!(
                    "{} bytes from here run past the end of the WAL address space",
                    data.len()
                ),
            })?;
        if !self.pending.is_empty() {
            let want = self.header_len(self.pending_page) - self.pending.len();
            let at = self
                .pending_page
                .0
                .saturating_add(self.pending.len() as u64);
            if at == start.0 {
                let take = want.min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                if self.pending.len() == self.header_len(self.pending_page) {
                    let h = std::mem::take(&mut self.pending);
                    self.check(self.pending_page, &h)?;
                }
            }
        }
        // the first page boundary at or after `start` (none left if it would be 2^64)
        let Some(mut page) = start.0.checked_next_multiple_of(PAGE) else {
            return Ok(());
        };
        while page < end.0 {
            // page - start < data.len(), which is a usize
            let off = (page - start.0) as usize;
            let len = self.header_len(Lsn(page));
            match data.get(off..off + len) {
                Some(h) => self.check(Lsn(page), h)?,
                None => {
                    self.pending = data[off..].to_vec();
                    self.pending_page = Lsn(page);
                }
            }
            match page.checked_add(PAGE) {
                Some(p) => page = p,
                None => break,
            }
        }
        Ok(())
    }

    fn header_len(&self, page: Lsn) -> usize {
        if page.segment_offset(self.seg_size) == 0 {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }
}

/// How the archive stores segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCompression {
    /// Complete segments zstd-compressed at this level (`NAME.zst`); the one being filled is an
    /// uncompressed `.partial`.
    Zstd(i32),
    /// gzip at this level (1 to 9), as pg_receivewal writes it: `NAME.gz.partial` while the
    /// segment fills, `NAME.gz` once complete.
    Gzip(u32),
    /// LZ4 frames, as pg_receivewal writes them: `NAME.lz4.partial` while the segment fills,
    /// `NAME.lz4` once complete (lz4_flex has one mode; pg_receivewal's level is not kept).
    Lz4,
}

/// The file of the segment being filled.
enum SegFile {
    Plain(File),
    Gzip(flate2::write::GzEncoder<File>),
    Lz4(lz4_flex::frame::FrameEncoder<File>),
}

impl std::fmt::Debug for SegFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SegFile::Plain(_) => "Plain",
            SegFile::Gzip(_) => "Gzip",
            SegFile::Lz4(_) => "Lz4",
        })
    }
}

impl SegFile {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            SegFile::Plain(f) => f.write_all(b),
            SegFile::Gzip(e) => e.write_all(b),
            SegFile::Lz4(e) => e.write_all(b),
        }
    }

    /// Hands what was written to the file (a gzip stream is sync-flushed: readable up to here).
    fn flush(&mut self) -> std::io::Result<&File> {
        match self {
            SegFile::Plain(f) => Ok(f),
            SegFile::Gzip(e) => {
                e.flush()?;
                Ok(e.get_ref())
            }
            // the buffered data goes out as a block: readable up to here
            SegFile::Lz4(e) => {
                e.flush()?;
                Ok(e.get_ref())
            }
        }
    }

    /// Ends the file (a gzip stream gets its trailer).
    fn finish(self) -> std::io::Result<File> {
        match self {
            SegFile::Plain(f) => Ok(f),
            SegFile::Gzip(e) => e.finish(),
            SegFile::Lz4(e) => e.finish().map_err(std::io::Error::other),
        }
    }
}

/// Writes streamed WAL into the archive, one segment at a time.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    seg_size: WalSegSize,
    compression: Option<SegmentCompression>,
    sync: bool,
    current: Option<OpenSegment>,
    /// Position just past the last byte written.
    pub written: Lsn,
    /// Position just past the last byte known durable.
    pub flushed: Lsn,
}

#[derive(Debug)]
struct OpenSegment {
    tli: TimelineId,
    seg: SegmentNo,
    file: SegFile,
    path: PathBuf,
}

/// A segment that was completed by a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedSegment {
    /// Its final file name.
    pub file_name: String,
    /// Its timeline.
    pub timeline: TimelineId,
    /// The position just past it.
    pub end: Lsn,
}

impl SegmentWriter {
    /// A writer into `dir`, starting at `start` (a segment start).
    pub fn new(
        dir: &Path,
        seg_size: WalSegSize,
        compression: Option<SegmentCompression>,
        sync: bool,
        start: Lsn,
    ) -> Self {
        SegmentWriter {
            dir: dir.to_path_buf(),
            seg_size,
            compression,
            sync,
            current: None,
            written: start,
            flushed: start,
        }
    }

    fn open(&mut self, tli: TimelineId, seg: SegmentNo) -> Result<(), ReceiveError> {
        let name = segment_file_name(tli, seg, self.seg_size);
        let (path, file) = match self.compression {
            Some(SegmentCompression::Gzip(level)) => {
                // A gzip stream cannot be rewritten in place: the segment, streamed again from
                // its start, goes into a new one (the server still has it: the slot's
                // restart_lsn is at or after its start).
                let path = self.dir.join(format!("{name}.gz.partial"));
                let f = create_private(&path, true)?;
                let enc = flate2::write::GzEncoder::new(f, flate2::Compression::new(level));
                (path, SegFile::Gzip(enc))
            }
            Some(SegmentCompression::Lz4) => {
                // as gzip: a new stream from the segment's start
                use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
                let path = self.dir.join(format!("{name}.lz4.partial"));
                let f = create_private(&path, true)?;
                let info = FrameInfo::new()
                    .block_size(BlockSize::Max64KB)
                    .block_mode(BlockMode::Linked)
                    .content_checksum(true);
                (path, SegFile::Lz4(FrameEncoder::with_frame_info(info, f)))
            }
            _ => {
                // Never truncate: a partial left by an earlier run holds bytes the server was
                // told are flushed. Streaming restarts at the segment start and overwrites them
                // with the same bytes, so they stay on disk throughout.
                let path = self.dir.join(format!("{name}.partial"));
                let f = create_private(&path, false)?;
                (path, SegFile::Plain(f))
            }
        };
        if self.sync {
            fsync_dir(&self.dir)?;
        }
        self.current = Some(OpenSegment {
            tli,
            seg,
            file,
            path,
        });
        Ok(())
    }

    /// Appends `data` at `start` (which must equal the write position) on timeline `tli`.
    /// Returns the segments this completed.
    pub fn write(
        &mut self,
        tli: TimelineId,
        start: Lsn,
        mut data: &[u8],
    ) -> Result<Vec<CompletedSegment>, ReceiveError> {
        if start != self.written {
            return Err(ReceiveError::Gap {
                expected: self.written,
                got: start,
            });
        }
        let mut done = Vec::new();
        let mut pos = start;
        while !data.is_empty() {
            let seg = pos.segment(self.seg_size);
            if self
                .current
                .as_ref()
                .is_none_or(|c| c.seg != seg || c.tli != tli)
            {
                if pos.segment_offset(self.seg_size) != 0 {
                    return Err(ReceiveError::Gap {
                        expected: pos.segment_start(self.seg_size),
                        got: pos,
                    });
                }
                self.open(tli, seg)?;
            }
            let room = (self.seg_size.bytes() - pos.segment_offset(self.seg_size)) as usize;
            let take = room.min(data.len());
            let cur = self.current.as_mut().expect("opened above");
            cur.file
                .write_all(&data[..take])
                .map_err(|e| io_err(&cur.path, "write", e))?;
            data = &data[take..];
            pos = Lsn(pos.0 + take as u64);
            self.written = pos;
            if pos.segment_offset(self.seg_size) == 0 {
                done.push(self.complete()?);
            }
        }
        Ok(done)
    }

    /// Makes everything written durable (fsync of the partial segment).
    pub fn flush(&mut self) -> Result<Lsn, ReceiveError> {
        if let Some(cur) = &mut self.current {
            let f = cur
                .file
                .flush()
                .map_err(|e| io_err(&cur.path, "write", e))?;
            if self.sync {
                f.sync_data().map_err(|e| io_err(&cur.path, "fsync", e))?;
            }
        }
        self.flushed = self.written;
        Ok(self.flushed)
    }

    fn complete(&mut self) -> Result<CompletedSegment, ReceiveError> {
        let cur = self.current.take().expect("a segment is open");
        let file = cur
            .file
            .finish()
            .map_err(|e| io_err(&cur.path, "write", e))?;
        if self.sync {
            file.sync_all().map_err(|e| io_err(&cur.path, "fsync", e))?;
        }
        drop(file);
        let name = segment_file_name(cur.tli, cur.seg, self.seg_size);
        let file_name = match self.compression {
            Some(SegmentCompression::Lz4) => {
                let lname = format!("{name}.lz4");
                let fin = self.dir.join(&lname);
                std::fs::rename(&cur.path, &fin).map_err(|e| io_err(&fin, "rename", e))?;
                // an uncompressed partial of this segment from an earlier run is now stale
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.partial")));
                lname
            }
            Some(SegmentCompression::Gzip(_)) => {
                let gname = format!("{name}.gz");
                let fin = self.dir.join(&gname);
                std::fs::rename(&cur.path, &fin).map_err(|e| io_err(&fin, "rename", e))?;
                // an uncompressed partial of this segment from an earlier run is now stale
                let _ = std::fs::remove_file(self.dir.join(format!("{name}.partial")));
                gname
            }
            None => {
                let fin = self.dir.join(&name);
                std::fs::rename(&cur.path, &fin).map_err(|e| io_err(&fin, "rename", e))?;
                name
            }
            Some(SegmentCompression::Zstd(level)) => {
                let zname = format!("{name}.zst");
                let tmp = self.dir.join(format!("{zname}.tmp"));
                let fin = self.dir.join(&zname);
                let src = File::open(&cur.path).map_err(|e| io_err(&cur.path, "open", e))?;
                let out = create_private(&tmp, true)?;
                let mut enc = zstd::stream::write::Encoder::new(out, level)
                    .map_err(|e| io_err(&tmp, "compress", e))?;
                std::io::copy(&mut std::io::BufReader::new(src), &mut enc)
                    .map_err(|e| io_err(&tmp, "compress", e))?;
                let out = enc.finish().map_err(|e| io_err(&tmp, "compress", e))?;
                if self.sync {
                    out.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
                }
                std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, "rename", e))?;
                if self.sync {
                    fsync_dir(&self.dir)?;
                }
                std::fs::remove_file(&cur.path).map_err(|e| io_err(&cur.path, "remove", e))?;
                zname
            }
        };
        if self.sync {
            fsync_dir(&self.dir)?;
        }
        let end = cur
            .seg
            .next()
            .start_lsn(self.seg_size)
            .unwrap_or(Lsn(u64::MAX));
        self.flushed = end;
        Ok(CompletedSegment {
            file_name,
            timeline: cur.tli,
            end,
        })
    }

    /// Closes the partial segment (after fsync), leaving it as `.partial`.
    pub fn close(&mut self) -> Result<Lsn, ReceiveError> {
        let flushed = self.flush()?;
        self.current = None;
        Ok(flushed)
    }

    /// Closes the partial segment and makes it a complete, full-size segment file (zero-padded),
    /// as a data directory's pg_wal needs. Returns the file's path.
    pub fn close_padded(&mut self) -> Result<Option<PathBuf>, ReceiveError> {
        let Some(cur) = self.current.take() else {
            return Ok(None);
        };
        let SegFile::Plain(file) = cur.file else {
            return Err(io_err(
                &cur.path,
                "pad",
                std::io::Error::other("a compressed partial segment cannot be padded"),
            ));
        };
        file.set_len(self.seg_size.bytes())
            .map_err(|e| io_err(&cur.path, "extend", e))?;
        if self.sync {
            file.sync_all().map_err(|e| io_err(&cur.path, "fsync", e))?;
        }
        drop(file);
        let fin = self
            .dir
            .join(segment_file_name(cur.tli, cur.seg, self.seg_size));
        std::fs::rename(&cur.path, &fin).map_err(|e| io_err(&fin, "rename", e))?;
        if self.sync {
            fsync_dir(&self.dir)?;
        }
        self.flushed = self.written;
        Ok(Some(fin))
    }

    /// Restarts at `start` (a segment start, on a new timeline or after a reconnect).
    pub fn reset(&mut self, start: Lsn) {
        self.current = None;
        self.written = start;
        self.flushed = start;
    }

    /// Writes a timeline history file (as [`Connection::timeline_history`] returned it) into
    /// the directory, under a temporary name renamed when complete; durably when syncing.
    ///
    /// [`Connection::timeline_history`]: crate::Connection::timeline_history
    pub fn write_history(&self, file_name: &str, content: &[u8]) -> Result<(), ReceiveError> {
        let tmp = self.dir.join(format!("{file_name}.tmp"));
        let fin = self.dir.join(file_name);
        let mut f = create_private(&tmp, true)?;
        f.write_all(content).map_err(|e| io_err(&tmp, "write", e))?;
        if self.sync {
            f.sync_all().map_err(|e| io_err(&tmp, "fsync", e))?;
        }
        std::fs::rename(&tmp, &fin).map_err(|e| io_err(&fin, "rename", e))?;
        if self.sync {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::writer::{RecordSpec, WalWriter};

    fn stream() -> (Lsn, Vec<u8>) {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let mut w = WalWriter::new(Lsn(1 << 20), seg, TimelineId(1), 77, WalVersion::V18);
        for _ in 0..40 {
            w.append(&RecordSpec {
                rmid: 10,
                main_data: vec![3; 30_000],
                ..Default::default()
            });
        }
        w.finish()
    }

    fn check_all(bytes: &[u8], start: Lsn, chunk: usize) -> Result<(), ReceiveError> {
        let mut c = PageChecker::new(WalSegSize::new(1 << 20).unwrap(), 77, TimelineId(1));
        let mut pos = start;
        for piece in bytes.chunks(chunk) {
            c.feed(pos, piece)?;
            pos = Lsn(pos.0 + piece.len() as u64);
        }
        Ok(())
    }

    #[test]
    fn headers_split_across_messages_are_checked() {
        let (start, bytes) = stream();
        for chunk in [1, 7, 13, 24, 39, 8192, 10_000] {
            check_all(&bytes, start, chunk).unwrap();
        }
        let mut bad = bytes.clone();
        bad[8192 + 9] ^= 0x40; // page address of the second page
        for chunk in [5, 8192, 100_000] {
            let e = check_all(&bad, start, chunk).unwrap_err();
            assert!(
                matches!(e, ReceiveError::BadPage { lsn, .. } if lsn == Lsn(start.0 + 8192)),
                "{e}"
            );
        }
    }

    #[test]
    fn positions_near_the_end_of_the_address_space_are_refused_not_wrapped() {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let mut c = PageChecker::new(seg, 77, TimelineId(1));
        // a range that would wrap
        let e = c.feed(Lsn(u64::MAX - 100), &[0u8; 8192]).unwrap_err();
        assert!(
            e.to_string()
                .contains("past the end of the WAL address space"),
            "{e}"
        );
        // the last page: its header is checked (a zero page mid-segment is a zeroed tail)
        c.feed(Lsn(u64::MAX - 8191), &[0u8; 8191]).unwrap();
        // past the last page boundary: no header to check, nothing overflows
        c.feed(Lsn(u64::MAX - 10), &[1u8; 10]).unwrap();
        c.feed(Lsn(u64::MAX), &[]).unwrap();
    }

    #[test]
    fn foreign_system_is_refused() {
        let (start, bytes) = stream();
        let mut c = PageChecker::new(WalSegSize::new(1 << 20).unwrap(), 78, TimelineId(1));
        let e = c.feed(start, &bytes).unwrap_err();
        assert!(e.to_string().contains("different database system"), "{e}");
    }

    #[test]
    fn a_zeroed_tail_ends_the_segment() {
        let (start, mut bytes) = stream();
        // zero everything after the third page of the first segment
        for b in &mut bytes[3 * 8192..1 << 20] {
            *b = 0;
        }
        check_all(&bytes, start, 5000).unwrap();
        // a page with a header after a zeroed one is garbage
        let (_, good) = stream();
        bytes[5 * 8192..5 * 8192 + 24].copy_from_slice(&good[5 * 8192..5 * 8192 + 24]);
        assert!(check_all(&bytes, start, 5000).is_err());
    }
}
