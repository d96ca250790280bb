//! WAL page headers, short and long.
//!
//! Layout from `src/include/access/xlog_internal.h` (`XLogPageHeaderData`,
//! `XLogLongPageHeaderData`, `XLP_*` flags, `XLOG_PAGE_MAGIC`). On-disk integers are in host
//! byte order; we read little-endian, the order of every platform PostgreSQL ships on today.

use crate::le::LeReader;
use crate::{Lsn, TimelineId};

/// Size of a short page header (`SizeOfXLogShortPHD`).
pub const SHORT_HEADER_LEN: usize = 24;
/// Size of a long page header (`SizeOfXLogLongPHD`), used on the first page of a segment.
pub const LONG_HEADER_LEN: usize = 40;
/// The default WAL page size (`XLOG_BLCKSZ`).
pub const DEFAULT_WAL_BLOCK_SIZE: u32 = 8192;

/// The first record on the page continues from the previous page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// This page has a long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Full-page images on this page may be removed (not during a backup).
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The continuation record expected here was overwritten.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every flag PostgreSQL 15 to 18 define.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// The WAL format version, from `XLOG_PAGE_MAGIC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalVersion {
    /// PostgreSQL 15 (0xD110).
    V15,
    /// PostgreSQL 16 (0xD113).
    V16,
    /// PostgreSQL 17 (0xD116).
    V17,
    /// PostgreSQL 18 (0xD118).
    V18,
}

impl WalVersion {
    /// The version a page magic stands for, or `None` for a magic we do not know.
    pub fn from_magic(magic: u16) -> Option<WalVersion> {
        Some(match magic {
            0xD110 => WalVersion::V15,
            0xD113 => WalVersion::V16,
            0xD116 => WalVersion::V17,
            0xD118 => WalVersion::V18,
            _ => return None,
        })
    }

    /// The page magic of this version.
    pub fn magic(self) -> u16 {
        match self {
            WalVersion::V15 => 0xD110,
            WalVersion::V16 => 0xD113,
            WalVersion::V17 => 0xD116,
            WalVersion::V18 => 0xD118,
        }
    }

    /// The PostgreSQL major version.
    pub fn major(self) -> u32 {
        match self {
            WalVersion::V15 => 15,
            WalVersion::V16 => 16,
            WalVersion::V17 => 17,
            WalVersion::V18 => 18,
        }
    }
}

/// The extra fields of a long page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongHeader {
    /// The cluster's system identifier.
    pub system_id: u64,
    /// The WAL segment size.
    pub seg_size: u32,
    /// The WAL page size.
    pub block_size: u32,
}

/// A decoded page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// `xlp_info` flags.
    pub info: u16,
    /// Timeline of the first record on the page.
    pub timeline: TimelineId,
    /// The page's own address.
    pub page_addr: Lsn,
    /// Bytes of a continued record that remain (when XLP_FIRST_IS_CONTRECORD).
    pub rem_len: u32,
    /// Present on the first page of a segment.
    pub long: Option<LongHeader>,
}

impl PageHeader {
    /// Bytes the header occupies.
    pub fn len(&self) -> usize {
        if self.long.is_some() {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Always false: a header is never empty (for clippy's `len` convention).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Decodes a header from the start of `page`. Returns `None` if `page` is too short for the
    /// header its flags announce. Nothing is validated here; see [`PageHeader::validate`].
    pub fn parse(page: &[u8]) -> Option<PageHeader> {
        let mut r = LeReader::new(page);
        let magic = r.u16()?;
        let info = r.u16()?;
        let timeline = TimelineId(r.u32()?);
        let page_addr = Lsn(r.u64()?);
        let rem_len = r.u32()?;
        r.skip(SHORT_HEADER_LEN - 20)?;
        let long = if info & XLP_LONG_HEADER != 0 {
            Some(LongHeader {
                system_id: r.u64()?,
                seg_size: r.u32()?,
                block_size: r.u32()?,
            })
        } else {
            None
        };
        Some(PageHeader {
            magic,
            info,
            timeline,
            page_addr,
            rem_len,
            long,
        })
    }

    /// Encodes the header (short or long as `self.long` says).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.timeline.0.to_le_bytes());
        out.extend_from_slice(&self.page_addr.0.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        if let Some(l) = self.long {
            out.extend_from_slice(&l.system_id.to_le_bytes());
            out.extend_from_slice(&l.seg_size.to_le_bytes());
            out.extend_from_slice(&l.block_size.to_le_bytes());
        }
    }

    /// Checks the header of the page at `expected_addr` as `XLogReaderValidatePageHeader` does,
    /// returning a description of the first problem.
    pub fn validate(
        &self,
        expected_addr: Lsn,
        seg_size: crate::WalSegSize,
        block_size: u32,
        expect: &PageExpectations,
    ) -> Result<(), String> {
        let Some(version) = WalVersion::from_magic(self.magic) else {
            return Err(format!(
                "invalid magic number {:04X} in WAL segment, offset {}",
                self.magic,
                expected_addr.segment_offset(seg_size)
            ));
        };
        if let Some(v) = expect.version {
            if v != version {
                return Err(format!(
                    "WAL page magic {:04X} (PostgreSQL {}) where {:04X} (PostgreSQL {}) was expected",
                    self.magic,
                    version.major(),
                    v.magic(),
                    v.major()
                ));
            }
        }
        if self.info & !XLP_ALL_FLAGS != 0 {
            return Err(format!("invalid info bits {:04X}", self.info));
        }
        let at_segment_start = expected_addr.segment_offset(seg_size) == 0;
        match (self.long, at_segment_start) {
            (Some(l), _) => {
                if let Some(sys) = expect.system_id {
                    if l.system_id != sys {
                        return Err(format!(
                            "WAL file is from different database system: WAL file database system identifier is {}, expected {sys}",
                            l.system_id
                        ));
                    }
                }
                if u64::from(l.seg_size) != seg_size.bytes() {
                    return Err(format!(
                        "WAL file is from different database system: incorrect segment size {} in page header, expected {}",
                        l.seg_size,
                        seg_size.bytes()
                    ));
                }
                if l.block_size != block_size {
                    return Err(format!(
                        "WAL file is from different database system: incorrect XLOG_BLCKSZ {} in page header",
                        l.block_size
                    ));
                }
            }
            (None, true) => {
                return Err(format!(
                    "invalid info bits {:04X}: a segment's first page needs a long header",
                    self.info
                ))
            }
            (None, false) => {}
        }
        if self.page_addr != expected_addr {
            return Err(format!(
                "unexpected pageaddr {} (expected {expected_addr})",
                self.page_addr
            ));
        }
        if let Some(tli) = expect.min_timeline {
            if self.timeline < tli {
                return Err(format!(
                    "out-of-sequence timeline ID {} (after {tli})",
                    self.timeline
                ));
            }
        }
        Ok(())
    }
}

/// What a page header must agree with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageExpectations {
    /// The WAL version (page magic), once known.
    pub version: Option<WalVersion>,
    /// The system identifier, once known.
    pub system_id: Option<u64>,
    /// The lowest timeline allowed (timelines never go backwards).
    pub min_timeline: Option<TimelineId>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(magic: u16, info: u16, tli: u32, addr: u64, rem: u32, long: Option<(u64, u32, u32)>) {
            let mut h = PageHeader { magic, info: info & !XLP_LONG_HEADER, timeline: TimelineId(tli), page_addr: Lsn(addr), rem_len: rem, long: None };
            if let Some((s, g, b)) = long {
                h.info |= XLP_LONG_HEADER;
                h.long = Some(LongHeader { system_id: s, seg_size: g, block_size: b });
            }
            let mut out = Vec::new();
            h.encode(&mut out);
            prop_assert_eq!(out.len(), h.len());
            prop_assert_eq!(PageHeader::parse(&out), Some(h));
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let seg = crate::WalSegSize::DEFAULT;
        let mut h = PageHeader {
            magic: 0xD118,
            info: XLP_LONG_HEADER,
            timeline: TimelineId(1),
            page_addr: Lsn(0x100_0000),
            rem_len: 0,
            long: Some(LongHeader {
                system_id: 42,
                seg_size: 16 << 20,
                block_size: 8192,
            }),
        };
        let e = PageExpectations::default();
        assert!(h.validate(Lsn(0x100_0000), seg, 8192, &e).is_ok());
        let wrong = h.validate(Lsn(0x200_0000), seg, 8192, &e).unwrap_err();
        assert!(
            wrong.contains("unexpected pageaddr 0/1000000 (expected 0/2000000)"),
            "{wrong}"
        );
        let other = PageExpectations {
            system_id: Some(7),
            ..e
        };
        assert!(h
            .validate(Lsn(0x100_0000), seg, 8192, &other)
            .unwrap_err()
            .contains("different database system"));
        h.magic = 0xD0FF;
        assert!(h
            .validate(Lsn(0x100_0000), seg, 8192, &e)
            .unwrap_err()
            .contains("invalid magic number D0FF"));
    }
}
