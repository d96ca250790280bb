//! WAL segment sizes, segment numbers and segment file names.
//!
//! Naming from `src/include/access/xlog_internal.h` (`XLogFileName`, `XLogFromFileName`,
//! `IsXLogFileName`, `IsPartialXLogFileName`, `TLHistoryFileName`).

use crate::{Lsn, TimelineId};

/// A WAL segment size: a power of two from 1 MiB to 1 GiB (`wal_segment_size`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WalSegSize(u32);

/// The value is not a valid WAL segment size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
pub struct InvalidSegSize(pub u64);

impl WalSegSize {
    /// The default of `initdb`: 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);

    /// Validates `bytes` (`IsValidWalSegSize`).
    pub fn new(bytes: u64) -> Result<Self, InvalidSegSize> {
        if bytes.is_power_of_two() && (1 << 20..=1 << 30).contains(&bytes) {
            Ok(WalSegSize(bytes as u32))
        } else {
            Err(InvalidSegSize(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// Segments per 4 GiB "xlogid" (`XLogSegmentsPerXLogId`), the split used in file names.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

/// A segment number: the WAL position divided by the segment size (`XLogSegNo`).
#[doc(alias = "XLogSegNo")]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The LSN of the segment's first byte, or `None` on overflow.
    #[doc(alias = "XLogSegNoOffsetToRecPtr")]
    pub fn start_lsn(self, seg_size: WalSegSize) -> Option<Lsn> {
        self.0.checked_mul(seg_size.bytes()).map(Lsn)
    }

    /// The next segment.
    pub fn next(self) -> SegmentNo {
        SegmentNo(self.0 + 1)
    }
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY`: the 24-hex-digit name of a segment.
#[doc(alias = "XLogFileName")]
pub fn segment_file_name(tli: TimelineId, seg: SegmentNo, seg_size: WalSegSize) -> String {
    let per = seg_size.segments_per_xlogid();
    format!("{:08X}{:08X}{:08X}", tli.0, seg.0 / per, seg.0 % per)
}

/// How a stored WAL file is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[non_exhaustive]
pub enum WalCompression {
    /// As PostgreSQL writes it.
    None,
    /// zstd (`.zst`, our archive's).
    Zstd,
    /// gzip (`.gz`, pg_receivewal's).
    Gzip,
    /// LZ4 frames (`.lz4`, pg_receivewal's).
    Lz4,
}

/// What a file in `pg_wal` or a WAL archive is.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[non_exhaustive]
pub enum WalFileKind {
    /// A segment: complete, or `.partial` (still being filled, possibly short), stored with
    /// `compression`.
    Segment {
        /// A `.partial` segment.
        partial: bool,
        /// How it is stored.
        compression: WalCompression,
    },
    /// A timeline history file, `00000002.history`.
    History,
}

impl WalFileKind {
    /// A complete, uncompressed segment (`000000010000000000000002`).
    pub const SEGMENT: WalFileKind = WalFileKind::Segment {
        partial: false,
        compression: WalCompression::None,
    };
    /// An uncompressed partial segment (`….partial`).
    pub const PARTIAL: WalFileKind = WalFileKind::Segment {
        partial: true,
        compression: WalCompression::None,
    };
}

/// Every form a segment may be stored in, in the order a reader prefers them (complete before
/// partial, uncompressed first), with the suffix after the segment's name. This table is the
/// one place that knows the names: pg_wal's, our archive's (`.zst`, `.partial.zst`) and
/// pg_receivewal's (`.gz`, `.gz.partial`, `.lz4`, `.lz4.partial`).
pub const SEGMENT_FORMS: [(bool, WalCompression, &str); 8] = [
    (false, WalCompression::None, ""),
    (false, WalCompression::Zstd, ".zst"),
    (false, WalCompression::Gzip, ".gz"),
    (false, WalCompression::Lz4, ".lz4"),
    (true, WalCompression::None, ".partial"),
    (true, WalCompression::Zstd, ".partial.zst"),
    (true, WalCompression::Gzip, ".gz.partial"),
    (true, WalCompression::Lz4, ".lz4.partial"),
];

/// The suffix of a segment stored as `partial` with `compression` (see [`SEGMENT_FORMS`]).
pub fn segment_suffix(partial: bool, compression: WalCompression) -> &'static str {
    SEGMENT_FORMS
        .iter()
        .find(|(p, c, _)| *p == partial && *c == compression)
        .map(|(_, _, s)| *s)
        .unwrap_or("")
}

/// A parsed WAL file name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WalFileName {
    /// The timeline in the name.
    pub timeline: TimelineId,
    /// The segment, absent for history files.
    pub segment: Option<SegmentNo>,
    /// What the file holds.
    pub kind: WalFileKind,
}

impl WalFileName {
    /// The name back (what [`parse_wal_file_name`] read).
    pub fn file_name(&self, seg_size: WalSegSize) -> String {
        match (self.kind, self.segment) {
            (
                WalFileKind::Segment {
                    partial,
                    compression,
                },
                Some(seg),
            ) => format!(
                "{}{}",
                segment_file_name(self.timeline, seg, seg_size),
                segment_suffix(partial, compression)
            ),
            _ => crate::timeline::history_file_name(self.timeline),
        }
    }

    /// A segment's name (`None` for a history file), without the storage suffix.
    pub fn segment_name(&self, seg_size: WalSegSize) -> Option<String> {
        self.segment
            .map(|s| segment_file_name(self.timeline, s, seg_size))
    }
}

/// Parses a WAL file name; `None` for anything else. Segment names need the segment size to turn
/// the xlogid/segment pair into a [`SegmentNo`], and names whose low part is out of range for that
/// size are rejected.
#[doc(alias = "XLogFromFileName")]
pub fn parse_wal_file_name(name: &str, seg_size: WalSegSize) -> Option<WalFileName> {
    let hex = |s: &str| -> Option<u32> {
        if s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            u32::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    if let Some(tli) = name.strip_suffix(".history") {
        if tli.len() == 8 {
            return Some(WalFileName {
                timeline: TimelineId(hex(tli)?),
                segment: None,
                kind: WalFileKind::History,
            });
        }
        return None;
    }
    // the base must be exactly 24 characters: that decides between suffixes that end alike
    let (base, kind) = SEGMENT_FORMS
        .iter()
        .find_map(|&(partial, compression, suffix)| {
            let base = name.strip_suffix(suffix)?;
            (base.len() == 24).then_some((
                base,
                WalFileKind::Segment {
                    partial,
                    compression,
                },
            ))
        })?;
    if !base.is_ascii() {
        return None;
    }
    let tli = hex(&base[0..8])?;
    let log = u64::from(hex(&base[8..16])?);
    let seg = u64::from(hex(&base[16..24])?);
    let per = seg_size.segments_per_xlogid();
    if seg >= per {
        return None;
    }
    Some(WalFileName {
        timeline: TimelineId(tli),
        segment: Some(SegmentNo(log * per + seg)),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_match_postgres() {
        let s = WalSegSize::DEFAULT;
        assert_eq!(
            segment_file_name(TimelineId(1), SegmentNo(2), s),
            "000000010000000000000002"
        );
        // 16 MiB segments: 256 per xlogid.
        assert_eq!(
            segment_file_name(TimelineId(3), SegmentNo(0x1FF), s),
            "0000000300000001000000FF"
        );
        let one_gib = WalSegSize::new(1 << 30).unwrap();
        assert_eq!(
            segment_file_name(TimelineId(1), SegmentNo(5), one_gib),
            "000000010000000100000001"
        );
    }

    #[test]
    fn seg_size_bounds() {
        assert!(WalSegSize::new(1 << 20).is_ok());
        assert!(WalSegSize::new(1 << 30).is_ok());
        assert!(WalSegSize::new(1 << 19).is_err());
        assert!(WalSegSize::new(1 << 31).is_err());
        assert!(WalSegSize::new(3 << 20).is_err());
    }

    #[test]
    fn parses_kinds() {
        let s = WalSegSize::DEFAULT;
        let p = parse_wal_file_name("000000010000000000000002.partial", s).unwrap();
        assert_eq!(p.kind, WalFileKind::PARTIAL);
        assert_eq!(p.segment, Some(SegmentNo(2)));
        let h = parse_wal_file_name("0000000A.history", s).unwrap();
        assert_eq!((h.kind, h.timeline), (WalFileKind::History, TimelineId(10)));
        // every stored form parses back to its own kind, and names itself the same way
        for (partial, compression, suffix) in SEGMENT_FORMS {
            let name = format!("000000010000000000000002{suffix}");
            let p = parse_wal_file_name(&name, s).unwrap();
            let kind = WalFileKind::Segment {
                partial,
                compression,
            };
            assert_eq!((p.kind, p.segment), (kind, Some(SegmentNo(2))), "{name}");
            assert_eq!(p.file_name(s), name);
        }
        assert_eq!(h.file_name(s), "0000000A.history");
        for bad in [
            "00000001000000000000000",
            "000000010000000000000100", // segment 0x100 is out of range for 16 MiB
            "00000001000000000000000g",
            "000000010000000000000002.tmp",
            "0000001.history",
        ] {
            assert_eq!(parse_wal_file_name(bad, s), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn name_round_trip(tli in 1u32.., seg_seed: u64, shift in 20u32..=30) {
            let size = WalSegSize::new(1u64 << shift).unwrap();
            // Every segment of the 64-bit WAL space.
            let seg = seg_seed >> shift;
            let name = segment_file_name(TimelineId(tli), SegmentNo(seg), size);
            let parsed = parse_wal_file_name(&name, size).unwrap();
            prop_assert_eq!(parsed.segment, Some(SegmentNo(seg)));
            prop_assert_eq!(parsed.timeline, TimelineId(tli));
        }
    }
}
