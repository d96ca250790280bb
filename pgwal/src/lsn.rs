//! Log sequence numbers and timeline ids.
//!
//! Format from `src/include/access/xlogdefs.h` (`XLogRecPtr`, `TimeLineID`) and the `%X/%X`
//! printing convention used throughout the server.

use std::fmt;
use std::str::FromStr;

/// A position in the write-ahead log: a 64-bit byte offset into the WAL stream.
///
/// Prints as PostgreSQL does (`0/16B3748`); parses `X/Y` with 1–8 hex digits on each side.
#[doc(alias = "XLogRecPtr")]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `InvalidXLogRecPtr`: zero, which PostgreSQL uses for "no position".
    pub const INVALID: Lsn = Lsn(0);

    /// True unless this is [`Lsn::INVALID`].
    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// `self + bytes`, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, or `None` if `earlier` is later.
    pub fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// The segment that holds this byte.
    #[doc(alias = "XLByteToSeg")]
    pub fn segment(self, seg_size: crate::WalSegSize) -> crate::SegmentNo {
        crate::SegmentNo(self.0 / seg_size.bytes())
    }

    /// Offset of this position inside its segment.
    #[doc(alias = "XLogSegmentOffset")]
    pub fn segment_offset(self, seg_size: crate::WalSegSize) -> u64 {
        self.0 & (seg_size.bytes() - 1)
    }

    /// Offset inside the page of `block_size` bytes (a power of two).
    pub fn page_offset(self, block_size: u32) -> u32 {
        (self.0 & (u64::from(block_size) - 1)) as u32
    }

    /// Rounds down to the start of its segment.
    pub fn segment_start(self, seg_size: crate::WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg_size))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN \"{input}\": expected X/Y with 1 to 8 hex digits on each side")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.chars().take(64).collect(),
        };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |h: &str| -> Option<u32> {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(h, 16).ok()
        };
        let hi = half(hi).ok_or_else(err)?;
        let lo = half(lo).ok_or_else(err)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

/// A timeline id (`TimeLineID`); the first timeline of a cluster is 1.
#[doc(alias = "TimeLineID")]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prints_like_postgres() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parses_leniently_but_strictly() {
        assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("0/016b3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
        assert_eq!("A/0".parse::<Lsn>().unwrap(), Lsn(0xA_0000_0000));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0/123456789",
            "x/0",
            "0/0/0",
            "0 /1",
            "+1/1",
            "0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }
    }
}
