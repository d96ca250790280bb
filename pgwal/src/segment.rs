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

/// What a file in `pg_wal` or a WAL archive is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum WalFileKind {
    /// A complete segment, `000000010000000000000002`.
    Segment,
    /// A segment still being filled, `….partial`.
    Partial,
    /// A complete segment stored zstd-compressed by our archive, `….zst`.
    SegmentZst,
    /// A partial segment stored compressed, `….partial.zst`.
    PartialZst,
    /// A complete segment stored gzip-compressed (pg_receivewal's `….gz`).
    SegmentGz,
    /// A partial segment being written gzip-compressed (pg_receivewal's `….gz.partial`).
    PartialGz,
    /// A complete segment stored as LZ4 frames (pg_receivewal's `….lz4`).
    SegmentLz4,
    /// A partial segment being written as LZ4 frames (pg_receivewal's `….lz4.partial`).
    PartialLz4,
    /// A timeline history file, `00000002.history`.
    History,
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
    let (base, kind) = if let Some(b) = name.strip_suffix(".partial.zst") {
        (b, WalFileKind::PartialZst)
    } else if let Some(b) = name.strip_suffix(".gz.partial") {
        (b, WalFileKind::PartialGz)
    } else if let Some(b) = name.strip_suffix(".gz") {
        (b, WalFileKind::SegmentGz)
    } else if let Some(b) = name.strip_suffix(".lz4.partial") {
        (b, WalFileKind::PartialLz4)
    } else if let Some(b) = name.strip_suffix(".lz4") {
        (b, WalFileKind::SegmentLz4)
    } else if let Some(b) = name.strip_suffix(".partial") {
        (b, WalFileKind::Partial)
    } else if let Some(b) = name.strip_suffix(".zst") {
        (b, WalFileKind::SegmentZst)
    } else {
        (name, WalFileKind::Segment)
    };
    if base.len() != 24 || !base.is_ascii() {
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
        assert_eq!(p.kind, WalFileKind::Partial);
        assert_eq!(p.segment, Some(SegmentNo(2)));
        let h = parse_wal_file_name("0000000A.history", s).unwrap();
        assert_eq!((h.kind, h.timeline), (WalFileKind::History, TimelineId(10)));
        assert_eq!(
            parse_wal_file_name("000000010000000000000002.zst", s)
                .unwrap()
                .kind,
            WalFileKind::SegmentZst
        );
        for (name, kind) in [
            ("000000010000000000000002.gz", WalFileKind::SegmentGz),
            (
                "000000010000000000000002.gz.partial",
                WalFileKind::PartialGz,
            ),
            ("000000010000000000000002.lz4", WalFileKind::SegmentLz4),
            (
                "000000010000000000000002.lz4.partial",
                WalFileKind::PartialLz4,
            ),
        ] {
            let p = parse_wal_file_name(name, s).unwrap();
            assert_eq!((p.kind, p.segment), (kind, Some(SegmentNo(2))), "{name}");
        }
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
