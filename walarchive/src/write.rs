//! Writing a WAL archive directory: segments as `.partial` while they fill, made durable and
//! renamed when complete (the bytes come checked from [`pgwal::receiver::Receiver`]), timeline
//! history files, and where a restart resumes.
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

use pgwal::page::{PageHeader, LONG_HEADER_LEN};
use pgwal::{
    parse_wal_file_name, segment_file_name, segment_suffix, Lsn, SegmentNo, TimelineId,
    WalCompression, WalFileKind, WalSegSize,
};

use crate::read::read_stored;

/// Writing the archive failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A file operation failed.
    #[error("could not {what} \"{}\": {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("create", "fsync", "rename", ...).
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes were handed over that do not continue what was written (a caller's mistake: the
    /// receiver checks the stream before anything gets here).
    #[error("WAL handed to the archive out of order: expected data at {expected}, got {got}")]
    OutOfOrder {
        /// Where the next byte was expected.
        expected: Lsn,
        /// Where the data started.
        got: Lsn,
    },
    /// A compressed partial segment cannot be made a full-size segment.
    #[error("a compressed partial segment cannot be padded: \"{}\"", path.display())]
    CannotPad {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(path: &Path, what: &'static str, e: std::io::Error) -> WriteError {
    WriteError::Io {
        path: path.to_path_buf(),
        what,
        source: e,
    }
}

/// Opens `path` for writing, creating it 0600; `truncate` empties an existing file.
fn create_private(path: &Path, truncate: bool) -> Result<File, WriteError> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, "create", e))
}

/// fsync a directory, so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), WriteError> {
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
pub fn scan_archive(dir: &Path, seg_size: WalSegSize) -> Result<ArchiveState, WriteError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create archive directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(dir, "chmod", e))?;
    }
    let mut best: Option<(SegmentNo, TimelineId, bool, PathBuf, WalCompression)> = None;
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
        let WalFileKind::Segment {
            partial,
            compression: stored,
        } = p.kind
        else {
            continue;
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

fn read_system_id(path: &Path, stored: WalCompression, partial: bool) -> Option<u64> {
    let head = read_stored(path, stored, partial, LONG_HEADER_LEN as u64).ok()?;
    PageHeader::parse(&head)?.long.map(|l| l.system_id)
}

/// How the archive stores segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

impl SegmentCompression {
    /// The stored form of complete segments (their names: [`pgwal::SEGMENT_FORMS`]).
    pub fn compression(self) -> WalCompression {
        match self {
            SegmentCompression::Zstd(_) => WalCompression::Zstd,
            SegmentCompression::Gzip(_) => WalCompression::Gzip,
            SegmentCompression::Lz4 => WalCompression::Lz4,
        }
    }

    /// The stored form of the segment being filled: zstd compresses a segment once it is
    /// complete (the partial stays plain, rewritten in place after a restart); gzip and lz4
    /// stream into a compressed partial, as pg_receivewal does.
    fn partial_compression(self) -> WalCompression {
        match self {
            SegmentCompression::Zstd(_) => WalCompression::None,
            other => other.compression(),
        }
    }
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

    /// The file a segment is stored under, complete or partial.
    fn stored_path(&self, tli: TimelineId, seg: SegmentNo, partial: bool) -> PathBuf {
        let compression = match (self.compression, partial) {
            (None, _) => WalCompression::None,
            (Some(c), true) => c.partial_compression(),
            (Some(c), false) => c.compression(),
        };
        self.dir.join(format!(
            "{}{}",
            segment_file_name(tli, seg, self.seg_size),
            segment_suffix(partial, compression)
        ))
    }

    fn open(&mut self, tli: TimelineId, seg: SegmentNo) -> Result<(), WriteError> {
        let path = self.stored_path(tli, seg, true);
        let file = match self.compression {
            Some(SegmentCompression::Gzip(level)) => {
                // A gzip stream cannot be rewritten in place: the segment, streamed again from
                // its start, goes into a new one (the server still has it: the slot's
                // restart_lsn is at or after its start).
                let f = create_private(&path, true)?;
                SegFile::Gzip(flate2::write::GzEncoder::new(
                    f,
                    flate2::Compression::new(level),
                ))
            }
            Some(SegmentCompression::Lz4) => {
                // as gzip: a new stream from the segment's start
                use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
                let f = create_private(&path, true)?;
                let info = FrameInfo::new()
                    .block_size(BlockSize::Max64KB)
                    .block_mode(BlockMode::Linked)
                    .content_checksum(true);
                SegFile::Lz4(FrameEncoder::with_frame_info(info, f))
            }
            _ => {
                // Never truncate: a partial left by an earlier run holds bytes the server was
                // told are flushed. Streaming restarts at the segment start and overwrites them
                // with the same bytes, so they stay on disk throughout.
                SegFile::Plain(create_private(&path, false)?)
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
    ) -> Result<Vec<CompletedSegment>, WriteError> {
        if start != self.written {
            return Err(WriteError::OutOfOrder {
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
                    return Err(WriteError::OutOfOrder {
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
    pub fn flush(&mut self) -> Result<Lsn, WriteError> {
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

    fn complete(&mut self) -> Result<CompletedSegment, WriteError> {
        let cur = self.current.take().expect("a segment is open");
        let file = cur
            .file
            .finish()
            .map_err(|e| io_err(&cur.path, "write", e))?;
        if self.sync {
            file.sync_all().map_err(|e| io_err(&cur.path, "fsync", e))?;
        }
        drop(file);
        let fin = self.stored_path(cur.tli, cur.seg, false);
        match self.compression {
            Some(SegmentCompression::Zstd(level)) => {
                // compressed once complete, through a temporary file
                let tmp = fin.with_extension("zst.tmp");
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
            }
            _ => {
                std::fs::rename(&cur.path, &fin).map_err(|e| io_err(&fin, "rename", e))?;
                if self.compression.is_some() {
                    // an uncompressed partial of this segment from an earlier run is now stale
                    let plain = format!(
                        "{}{}",
                        segment_file_name(cur.tli, cur.seg, self.seg_size),
                        segment_suffix(true, WalCompression::None)
                    );
                    let _ = std::fs::remove_file(self.dir.join(plain));
                }
            }
        }
        let file_name = fin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
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
    pub fn close(&mut self) -> Result<Lsn, WriteError> {
        let flushed = self.flush()?;
        self.current = None;
        Ok(flushed)
    }

    /// Closes the partial segment and makes it a complete, full-size segment file (zero-padded),
    /// as a data directory's pg_wal needs. Returns the file's path.
    pub fn close_padded(&mut self) -> Result<Option<PathBuf>, WriteError> {
        let Some(cur) = self.current.take() else {
            return Ok(None);
        };
        let SegFile::Plain(file) = cur.file else {
            return Err(WriteError::CannotPad { path: cur.path });
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

    /// Writes a timeline history file (as TIMELINE_HISTORY returned it) into the directory,
    /// under a temporary name renamed when complete; durably when syncing.
    pub fn write_history(&self, file_name: &str, content: &[u8]) -> Result<(), WriteError> {
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
