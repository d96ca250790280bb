//! WAL records: the fixed header, the block references and data fragments after it, and the
//! CRC.
//!
//! Layout from `src/include/access/xlogrecord.h` (`XLogRecord`, `XLogRecordBlockHeader`,
//! `XLogRecordBlockImageHeader`, `XLR_BLOCK_ID_*`, `BKPBLOCK_*`, `BKPIMAGE_*`); decoding rules from
//! `DecodeXLogRecord` and `ValidXLogRecord` in `src/backend/access/transam/xlogreader.c`.

use crate::le::{u32_at, LeReader};
use std::ops::Range;

use crate::{rmgr, Lsn};

/// Size of the fixed record header (`SizeOfXLogRecord`).
pub const RECORD_HEADER_LEN: usize = 24;
/// The largest record PostgreSQL writes (`XLogRecordMaxSize`, 1020 MB).
pub const MAX_RECORD_LEN: u32 = 1020 * 1024 * 1024;
/// Data page size used for full-page-image holes (`BLCKSZ`).
pub const BLCKSZ: u32 = 8192;
/// The highest block reference id (`XLR_MAX_BLOCK_ID`).
pub const XLR_MAX_BLOCK_ID: u8 = 32;

const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;

/// The image has a hole (a run of zeros that was left out).
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// The image is to be applied during redo.
pub const BKPIMAGE_APPLY: u8 = 0x02;
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// A relation's physical identity (`RelFileLocator`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileLocator {
    /// Tablespace OID.
    pub spc_oid: u32,
    /// Database OID.
    pub db_oid: u32,
    /// Relation file number.
    pub rel_number: u32,
}

/// One block reference of a record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockRef {
    /// Block reference id (0..=32), strictly increasing within a record.
    pub id: u8,
    /// The relation.
    pub rlocator: RelFileLocator,
    /// Fork number: 0 main, 1 fsm, 2 vm, 3 init.
    pub fork: u8,
    /// Block number in the fork.
    pub block: u32,
    /// The page will be reinitialised by redo (`BKPBLOCK_WILL_INIT`).
    pub will_init: bool,
    /// A full-page image is attached.
    pub has_image: bool,
    /// `bimg_info` flags of the image.
    pub image_info: u8,
    /// Offset of the hole in the page.
    pub hole_offset: u16,
    /// Length of the hole.
    pub hole_length: u16,
    /// Where the image bytes are inside the record (`Record::raw`).
    pub image: Range<usize>,
    /// Where the block's data is inside the record (`Record::raw`).
    pub data: Range<usize>,
}

impl BlockRef {
    /// The image will be applied during redo (BKPIMAGE_APPLY).
    pub fn apply_image(&self) -> bool {
        self.has_image && self.image_info & BKPIMAGE_APPLY != 0
    }

    /// The image is compressed (pglz, lz4 or zstd).
    pub fn image_compressed(&self) -> bool {
        self.image_info & BKPIMAGE_COMPRESSED != 0
    }

    /// The fork's name as pg_waldump prints it.
    pub fn fork_name(&self) -> &'static str {
        match self.fork {
            0 => "main",
            1 => "fsm",
            2 => "vm",
            3 => "init",
            _ => "?",
        }
    }
}

/// A decoded record: a view into the decoder's buffers, valid until the decoder is used again.
/// Records that fit in one page are not copied at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Where the record starts.
    pub lsn: Lsn,
    /// Where the next record starts (MAXALIGNed; for XLOG_SWITCH the next segment's start), as
    /// PostgreSQL's `EndRecPtr`.
    pub end_lsn: Lsn,
    /// The previous record (`xl_prev`).
    pub prev_lsn: Lsn,
    /// Transaction id (`xl_xid`), 0 if none.
    pub xid: u32,
    /// Resource manager id (`xl_rmid`).
    pub rmid: u8,
    /// `xl_info`: the high four bits belong to the resource manager.
    pub info: u8,
    /// `xl_tot_len`: the record's length without page headers.
    pub total_len: u32,
    /// `xl_crc`.
    pub crc: u32,
    /// The whole record, header included, with page headers removed.
    pub raw: &'a [u8],
    /// Block references in id order.
    pub blocks: &'a [BlockRef],
    /// Where the main data is inside `raw`.
    pub main_data: Range<usize>,
    /// The top-level transaction id, for subtransaction records (`XLR_BLOCK_ID_TOPLEVEL_XID`).
    pub toplevel_xid: Option<u32>,
    /// Replication origin (`XLR_BLOCK_ID_ORIGIN`).
    pub origin: Option<u16>,
    /// The WAL format the record was read from (from its page's magic).
    pub wal_version: Option<crate::WalVersion>,
}

impl Record<'_> {
    /// The main data.
    pub fn main_data(&self) -> &[u8] {
        &self.raw[self.main_data.clone()]
    }

    /// The resource manager's name as pg_waldump prints it.
    pub fn rmgr_name(&self) -> &'static str {
        rmgr::rmgr_name(self.rmid).unwrap_or("?")
    }

    /// The resource manager's info bits (`XLogRecGetInfo & ~XLR_INFO_MASK`).
    pub fn rmgr_info(&self) -> u8 {
        self.info & 0xF0
    }

    /// Bytes of full-page images (pg_waldump's "tot" minus "rec").
    pub fn fpi_len(&self) -> u32 {
        self.blocks.iter().map(|b| b.image.len() as u32).sum()
    }

    /// A block's image bytes (possibly compressed, hole left out).
    pub fn block_image(&self, b: &BlockRef) -> &[u8] {
        &self.raw[b.image.clone()]
    }

    /// A block's data bytes.
    pub fn block_data(&self, b: &BlockRef) -> &[u8] {
        &self.raw[b.data.clone()]
    }

    /// True for XLOG_SWITCH.
    pub fn is_switch(&self) -> bool {
        is_switch(self.rmid, self.info)
    }
}

pub(crate) fn is_switch(rmid: u8, info: u8) -> bool {
    rmid == rmgr::RM_XLOG_ID && info & 0xF0 == crate::xlog::XLOG_SWITCH
}

/// The fixed header's fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Header {
    pub total_len: u32,
    pub xid: u32,
    pub prev_lsn: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

/// What the fragment headers say besides the block references.
#[derive(Clone, Debug, Default)]
pub(crate) struct Body {
    pub main_data: Range<usize>,
    pub toplevel_xid: Option<u32>,
    pub origin: Option<u16>,
}

/// The CRC PostgreSQL stores in `xl_crc`: CRC-32C over the record after its header, then the
/// header's first 20 bytes.
pub fn record_crc(raw: &[u8]) -> u32 {
    let body = raw.get(RECORD_HEADER_LEN..).unwrap_or(&[]);
    let head = &raw[..raw.len().min(20)];
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(body);
    d.update(head);
    d.finalize() as u32
}

/// Reads the fixed header from `r` (which must hold at least 24 bytes).
pub(crate) fn read_header(r: &[u8; RECORD_HEADER_LEN]) -> Header {
    let f32 = |o| u32_at(r, o).unwrap_or(0);
    Header {
        total_len: f32(0),
        xid: f32(4),
        prev_lsn: Lsn(u64::from(f32(8)) | (u64::from(f32(12)) << 32)),
        info: r[16],
        rmid: r[17],
        crc: f32(20),
    }
}

/// The body's reader: a record too short for what its headers announce is an error.
/// A record's payload is not what its resource manager and kind say it holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The payload is shorter than its kind needs.
    #[error("{what} record at {lsn} has {len} bytes of data, expected {need}")]
    TooShort {
        /// The kind of record.
        what: &'static str,
        /// Where it is.
        lsn: Lsn,
        /// Its length.
        len: usize,
        /// What its kind needs (at least).
        need: usize,
    },
    /// A field says what the payload cannot hold.
    #[error("{what} record at {lsn}: {problem}")]
    Malformed {
        /// The kind of record.
        what: &'static str,
        /// Where it is.
        lsn: Lsn,
        /// What is wrong.
        problem: &'static str,
    },
}

struct Cursor<'a> {
    r: LeReader<'a>,
}

const SHORT: &str = "record too short for its block headers";

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<usize, String> {
        let start = self.r.position();
        self.r.skip(n).ok_or(SHORT)?;
        Ok(start)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.r.u8().ok_or(SHORT)?)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(self.r.u16().ok_or(SHORT)?)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(self.r.u32().ok_or(SHORT)?)
    }
}

/// Decodes the fragment headers and payload layout of `raw` (`DecodeXLogRecord`), filling
/// `blocks` (cleared first).
pub(crate) fn decode_body(raw: &[u8], blocks: &mut Vec<BlockRef>) -> Result<Body, String> {
    blocks.clear();
    let mut out = Body::default();
    let mut c = Cursor {
        r: LeReader::at(raw, RECORD_HEADER_LEN),
    };
    let remaining = raw.len() - RECORD_HEADER_LEN;
    let mut datatotal: usize = 0;
    let mut main_len: usize = 0;
    let mut last_id: Option<u8> = None;
    let mut last_rel: Option<RelFileLocator> = None;
    while remaining - (c.r.position() - RECORD_HEADER_LEN) > datatotal {
        let id = c.u8()?;
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = usize::from(c.u8()?);
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = c.u32()? as usize;
                datatotal = datatotal
                    .checked_add(main_len)
                    .ok_or("main data length overflows")?;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => out.origin = Some(c.u16()?),
            XLR_BLOCK_ID_TOPLEVEL_XID => out.toplevel_xid = Some(c.u32()?),
            id if id <= XLR_MAX_BLOCK_ID => {
                if last_id.is_some_and(|l| id <= l) {
                    return Err(format!("out-of-order block_id {id}"));
                }
                last_id = Some(id);
                let flags = c.u8()?;
                let data_len = usize::from(c.u16()?);
                let has_image = flags & BKPBLOCK_HAS_IMAGE != 0;
                let has_data = flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err("BKPBLOCK_HAS_DATA set, but no data included".into());
                }
                if !has_data && data_len != 0 {
                    return Err(format!(
                        "BKPBLOCK_HAS_DATA not set, but data length is {data_len}"
                    ));
                }
                datatotal += data_len;
                let mut b = BlockRef {
                    id,
                    fork: flags & BKPBLOCK_FORK_MASK,
                    will_init: flags & BKPBLOCK_WILL_INIT != 0,
                    has_image,
                    ..Default::default()
                };
                let mut image_len = 0usize;
                if has_image {
                    image_len = usize::from(c.u16()?);
                    b.hole_offset = c.u16()?;
                    b.image_info = c.u8()?;
                    let has_hole = b.image_info & BKPIMAGE_HAS_HOLE != 0;
                    if has_hole && b.image_info & BKPIMAGE_COMPRESSED != 0 {
                        b.hole_length = c.u16()?;
                    } else if has_hole {
                        b.hole_length = (BLCKSZ as usize).saturating_sub(image_len) as u16;
                    }
                    datatotal += image_len;
                    if has_hole
                        && (b.hole_offset == 0
                            || b.hole_length == 0
                            || image_len == BLCKSZ as usize)
                    {
                        return Err(format!(
                            "BKPIMAGE_HAS_HOLE set, but hole offset {} length {} block image length {image_len}",
                            b.hole_offset, b.hole_length
                        ));
                    }
                    if !has_hole && (b.hole_offset != 0 || b.hole_length != 0) {
                        return Err(format!(
                            "BKPIMAGE_HAS_HOLE not set, but hole offset {} length {}",
                            b.hole_offset, b.hole_length
                        ));
                    }
                    if b.image_info & BKPIMAGE_COMPRESSED == 0
                        && !has_hole
                        && image_len != BLCKSZ as usize
                    {
                        return Err(format!(
                            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block image length is {image_len}"
                        ));
                    }
                }
                if flags & BKPBLOCK_SAME_REL == 0 {
                    let p = c.take(12)?;
                    let rl = RelFileLocator {
                        spc_oid: u32_at(raw, p).ok_or(SHORT)?,
                        db_oid: u32_at(raw, p + 4).ok_or(SHORT)?,
                        rel_number: u32_at(raw, p + 8).ok_or(SHORT)?,
                    };
                    last_rel = Some(rl);
                    b.rlocator = rl;
                } else {
                    b.rlocator = last_rel.ok_or("BKPBLOCK_SAME_REL set but no previous rel")?;
                }
                b.block = c.u32()?;
                // Lengths for now; the payload pass turns them into positions.
                b.image = 0..image_len;
                b.data = 0..data_len;
                blocks.push(b);
            }
            other => return Err(format!("invalid block_id {other}")),
        }
    }
    let header_bytes = c.r.position() - RECORD_HEADER_LEN;
    if remaining - header_bytes != datatotal {
        return Err(format!(
            "record has {} bytes of payload, its headers describe {datatotal}",
            remaining - header_bytes
        ));
    }
    let mut p = c.r.position();
    for b in blocks.iter_mut() {
        let (image_len, data_len) = (b.image.len(), b.data.len());
        b.image = p..p + image_len;
        p += image_len;
        b.data = p..p + data_len;
        p += data_len;
    }
    out.main_data = p..p + main_len;
    Ok(out)
}
