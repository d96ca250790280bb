//! Reading a directory of WAL segments (pg_wal, or an archive our receiver writes) as one
//! continuous byte sequence, across timelines, with any gap named by its missing file.
//!
//! Segment selection follows recovery's rule (`XLogFileReadAnyTLI` in
//! `src/backend/access/transam/xlogrecovery.c`): for each segment, try the newest timeline of the
//! history whose start is at or before the segment, then older ones. A segment may be stored as
//! `NAME`, `NAME.zst`, `NAME.gz`, `NAME.lz4`, `NAME.partial`, `NAME.partial.zst`,
//! `NAME.gz.partial` or `NAME.lz4.partial`, in that order of preference (the `.gz` and `.lz4`
//! names are pg_receivewal's).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use pgwal::timeline::TimelineHistory;
use pgwal::{
    segment_file_name, Lsn, SegmentNo, TimelineId, WalCompression, WalSegSize, SEGMENT_FORMS,
};

/// Why a WAL range could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A segment the range needs is not in the directory under any candidate name.
    MissingSegment {
        /// The file name expected (on the newest candidate timeline).
        file: String,
        /// The directory searched.
        dir: PathBuf,
        /// The first position it would hold.
        lsn: Lsn,
    },
    /// A segment file is not a whole segment.
    ShortSegment {
        /// The file.
        path: PathBuf,
        /// Its size after decompression.
        len: u64,
    },
    /// Reading or decompressing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArchiveError::MissingSegment { file, dir, lsn } => write!(
                f,
                "WAL segment {file} (from {lsn}) is missing from {}",
                dir.display()
            ),
            ArchiveError::ShortSegment { path, len } => write!(
                f,
                "WAL segment {} holds {len} bytes, not a whole segment",
                path.display()
            ),
            ArchiveError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ArchiveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ArchiveError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads a stored WAL file decompressed, at most `limit` bytes. A partial gzip or lz4 file may lack
/// its end (it is being written, flushed as it goes): what decompresses is returned.
pub fn read_stored(
    path: &Path,
    stored: WalCompression,
    partial: bool,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut out = Vec::new();
    match stored {
        WalCompression::None => {
            file.take(limit).read_to_end(&mut out)?;
        }
        WalCompression::Zstd => {
            zstd::stream::read::Decoder::new(file)?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        WalCompression::Gzip => {
            match flate2::read::GzDecoder::new(file)
                .take(limit)
                .read_to_end(&mut out)
            {
                Err(e) if partial && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                r => {
                    r?;
                }
            }
        }
        WalCompression::Lz4 => {
            let mut d = crate::lz4::Lz4Decoder::new(Capped {
                out: Vec::new(),
                limit: limit as usize,
            });
            let r = std::io::copy(&mut std::io::BufReader::new(file), &mut d)
                .and_then(|_| std::io::Write::flush(&mut d));
            let full = d.get_ref().out.len() >= limit as usize;
            match r {
                Ok(()) => {}
                // `limit` bytes read, or a partial's last frame still open (the blocks written
                // so far are what it holds)
                Err(_) if full => {}
                Err(e) if partial && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(e) => return Err(e),
            }
            out = d.into_inner().out;
        }
        other => {
            return Err(std::io::Error::other(format!(
                "{other:?} compression is not supported"
            )))
        }
    }
    Ok(out)
}

/// Collects at most `limit` bytes, then refuses more (which ends the decoding early).
struct Capped {
    out: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.out.len();
        if room == 0 {
            return Err(std::io::Error::other("enough read"));
        }
        let n = room.min(b.len());
        self.out.extend_from_slice(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A directory of WAL segments.
#[derive(Debug, Clone)]
pub struct WalDir {
    dir: PathBuf,
    seg_size: WalSegSize,
}

/// A segment found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSegment {
    /// The file.
    pub path: PathBuf,
    /// Its timeline.
    pub timeline: TimelineId,
    /// How it is compressed.
    pub stored: WalCompression,
    /// A `.partial` (possibly incomplete) segment.
    pub partial: bool,
}

impl WalDir {
    /// A WAL directory with segments of `seg_size`.
    pub fn new(dir: impl Into<PathBuf>, seg_size: WalSegSize) -> Self {
        WalDir {
            dir: dir.into(),
            seg_size,
        }
    }

    /// The segment size the directory is read with.
    pub fn seg_size(&self) -> WalSegSize {
        self.seg_size
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Finds segment `seg` on `tli` under any of its stored names.
    pub fn find(&self, tli: TimelineId, seg: SegmentNo) -> Option<FoundSegment> {
        let name = segment_file_name(tli, seg, self.seg_size);
        for (partial, stored, suffix) in SEGMENT_FORMS {
            let path = self.dir.join(format!("{name}{suffix}"));
            if path.is_file() {
                return Some(FoundSegment {
                    path,
                    timeline: tli,
                    stored,
                    partial,
                });
            }
        }
        None
    }

    /// Reads a found segment's bytes (decompressed). A complete segment must be whole; a partial
    /// one may be shorter (it is padded by nothing: callers see only the bytes that exist).
    pub fn read(&self, found: &FoundSegment) -> Result<Vec<u8>, ArchiveError> {
        let io = |source| ArchiveError::Io {
            path: found.path.clone(),
            source,
        };
        let out = read_stored(
            &found.path,
            found.stored,
            found.partial,
            self.seg_size.bytes() + 1,
        )
        .map_err(io)?;
        let len = out.len() as u64;
        if len > self.seg_size.bytes() || (!found.partial && len != self.seg_size.bytes()) {
            return Err(ArchiveError::ShortSegment {
                path: found.path.clone(),
                len,
            });
        }
        Ok(out)
    }

    /// The candidate timelines for `seg`, newest first, given the history of `current`.
    fn candidates(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        seg: SegmentNo,
    ) -> Vec<TimelineId> {
        // (timeline, first LSN on it)
        let mut begins = vec![(current, history.entries.last().map(|e| e.switch_point))];
        for (i, e) in history.entries.iter().enumerate().rev() {
            let begin = if i == 0 {
                None
            } else {
                Some(history.entries[i - 1].switch_point)
            };
            begins.push((e.timeline, begin));
        }
        begins
            .into_iter()
            .filter(|(_, begin)| begin.is_none_or(|b| b.segment(self.seg_size) <= seg))
            .map(|(t, _)| t)
            .collect()
    }

    /// The start of the last segment that follows `start`'s segment without a gap, as
    /// [`WalDir::read_range`] would follow it, judged by file names alone (nothing is read); a
    /// partial segment ends the run. `None` when `start`'s segment is missing.
    pub fn last_contiguous(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
    ) -> Option<Lsn> {
        let mut seg = start.segment(self.seg_size);
        let mut last = None;
        loop {
            let cands = self.candidates(current, history, seg);
            let Some(found) = cands.iter().find_map(|&t| self.find(t, seg)) else {
                return last;
            };
            last = seg.start_lsn(self.seg_size);
            if found.partial || last.is_none() {
                return last;
            }
            seg = seg.next();
        }
    }

    /// Feeds the WAL from `start`'s segment start to `end` (exclusive; `None`: as far as the
    /// directory goes without a gap) to `sink`, segment by segment, on the timeline of
    /// `current` and its `history`. Returns the position after the last byte fed. A segment
    /// missing before `end` is [`ArchiveError::MissingSegment`].
    pub fn read_range(
        &self,
        current: TimelineId,
        history: &TimelineHistory,
        start: Lsn,
        end: Option<Lsn>,
        mut sink: impl FnMut(Lsn, &[u8], &FoundSegment),
    ) -> Result<Lsn, ArchiveError> {
        let mut seg = start.segment(self.seg_size);
        loop {
            let seg_start = seg.start_lsn(self.seg_size).unwrap_or(Lsn(u64::MAX));
            if end.is_some_and(|e| seg_start >= e) {
                return Ok(seg_start);
            }
            let cands = self.candidates(current, history, seg);
            let found = cands.iter().find_map(|&t| self.find(t, seg));
            let Some(found) = found else {
                if end.is_none() {
                    return Ok(seg_start);
                }
                return Err(ArchiveError::MissingSegment {
                    file: segment_file_name(
                        cands.first().copied().unwrap_or(current),
                        seg,
                        self.seg_size,
                    ),
                    dir: self.dir.clone(),
                    lsn: seg_start,
                });
            };
            let bytes = self.read(&found)?;
            sink(seg_start, &bytes, &found);
            if (bytes.len() as u64) < self.seg_size.bytes() {
                // a partial segment ends the sequence
                let reached = Lsn(seg_start.0 + bytes.len() as u64);
                if let Some(e) = end {
                    if reached < e {
                        return Err(ArchiveError::MissingSegment {
                            file: segment_file_name(found.timeline, seg, self.seg_size),
                            dir: self.dir.clone(),
                            lsn: reached,
                        });
                    }
                }
                return Ok(reached);
            }
            seg = seg.next();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwal::writer::{RecordSpec, WalWriter};
    use pgwal::{DecoderOptions, WalDecoder, WalVersion};

    #[test]
    fn lz4_files_whole_partial_and_capped() {
        use lz4_flex::frame::{BlockMode, FrameEncoder, FrameInfo};
        use std::io::Write;
        let d = temp("lz4");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i / 700) as u8).collect();
        let mut e = FrameEncoder::with_frame_info(
            FrameInfo::new()
                .block_mode(BlockMode::Linked)
                .content_checksum(true),
            Vec::new(),
        );
        e.write_all(&data[..200_000]).unwrap();
        e.flush().unwrap();
        // what a .lz4.partial holds while its segment fills: blocks, no end mark
        let open = e.get_ref().clone();
        e.write_all(&data[200_000..]).unwrap();
        let whole = e.finish().unwrap();
        let (w, p) = (d.join("whole.lz4"), d.join("open.lz4.partial"));
        std::fs::write(&w, &whole).unwrap();
        std::fs::write(&p, &open).unwrap();
        assert_eq!(
            read_stored(&w, WalCompression::Lz4, false, 1 << 30).unwrap(),
            data
        );
        assert_eq!(
            read_stored(&w, WalCompression::Lz4, false, 40).unwrap(),
            data[..40]
        );
        assert_eq!(
            read_stored(&p, WalCompression::Lz4, true, 1 << 30).unwrap(),
            data[..200_000]
        );
        // an open frame is damage in a file that claims to be complete
        assert!(read_stored(&p, WalCompression::Lz4, false, 1 << 30).is_err());
        std::fs::write(&w, b"garbage").unwrap();
        assert!(read_stored(&w, WalCompression::Lz4, false, 1 << 30).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pgwal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_plain_and_compressed_and_names_gaps() {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let mut w = WalWriter::new(Lsn(1 << 20), seg, TimelineId(1), 9, WalVersion::V17);
        let mut lsns = Vec::new();
        while lsns.len() < 60 {
            lsns.push(w.append(&RecordSpec {
                rmid: 10,
                main_data: vec![7; 60_000],
                ..Default::default()
            }));
        }
        let (start, mut bytes) = w.finish();
        let whole = (bytes.len() as u64).div_ceil(1 << 20) << 20;
        bytes.resize(whole as usize, 0);
        let dir = temp("archive");
        for (i, chunk) in bytes.chunks(1 << 20).enumerate() {
            let name = segment_file_name(TimelineId(1), SegmentNo(1 + i as u64), seg);
            if i % 2 == 1 {
                let z = zstd::encode_all(chunk, 3).unwrap();
                std::fs::write(dir.join(format!("{name}.zst")), z).unwrap();
            } else {
                std::fs::write(dir.join(name), chunk).unwrap();
            }
        }
        let wd = WalDir::new(&dir, seg);
        let mut d = WalDecoder::new(start, DecoderOptions::new(seg)).unwrap();
        let mut seen = Vec::new();
        let end = wd
            .read_range(
                TimelineId(1),
                &TimelineHistory::default(),
                start,
                None,
                |_, b, _| {
                    d.feed(b);
                    while let Ok(Some(r)) = d.next_record() {
                        seen.push(r.lsn);
                    }
                },
            )
            .unwrap();
        assert_eq!(seen, lsns);
        assert_eq!(end, Lsn(start.0 + whole));

        // remove a middle segment: the gap is named
        let gone = segment_file_name(TimelineId(1), SegmentNo(3), seg);
        std::fs::remove_file(dir.join(&gone)).unwrap();
        let e = wd
            .read_range(
                TimelineId(1),
                &TimelineHistory::default(),
                start,
                Some(Lsn(start.0 + whole)),
                |_, _, _| {},
            )
            .unwrap_err();
        assert!(e.to_string().contains(&gone), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn picks_the_newest_timeline_that_covers_a_segment() {
        let seg = WalSegSize::new(1 << 20).unwrap();
        let dir = temp("tli");
        for (tli, s) in [(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)] {
            let name = segment_file_name(TimelineId(tli), SegmentNo(s), seg);
            std::fs::write(dir.join(name), vec![tli as u8; 1 << 20]).unwrap();
        }
        let history = TimelineHistory::parse("1\t0/380000\tpromoted\n").unwrap();
        let wd = WalDir::new(&dir, seg);
        let mut got = Vec::new();
        wd.read_range(TimelineId(2), &history, Lsn(1 << 20), None, |lsn, b, f| {
            got.push((lsn.segment(seg).0, f.timeline.0, b[0]));
        })
        .unwrap();
        assert_eq!(got, vec![(1, 1, 1), (2, 1, 1), (3, 2, 2), (4, 2, 2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
