//! A small WAL writer: lays records out in pages the way the server does, so parsers can be
//! tested (and fuzzed) without a server. Real servers remain the conformance oracle.

use crate::page::{LongHeader, PageHeader, WalVersion, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};
use crate::record::{record_crc, RelFileLocator, RECORD_HEADER_LEN};
use crate::{Lsn, TimelineId, WalSegSize};

/// A block reference to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockSpec {
    /// The relation.
    pub rlocator: RelFileLocator,
    /// Fork number.
    pub fork: u8,
    /// Block number.
    pub block: u32,
    /// An uncompressed full-page image without a hole (8192 bytes), if any.
    pub image: Option<Vec<u8>>,
    /// Block data.
    pub data: Vec<u8>,
}

/// A record to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordSpec {
    /// Resource manager id.
    pub rmid: u8,
    /// `xl_info`.
    pub info: u8,
    /// Transaction id.
    pub xid: u32,
    /// Block references (ids 0, 1, ...).
    pub blocks: Vec<BlockSpec>,
    /// Main data.
    pub main_data: Vec<u8>,
}

impl RecordSpec {
    /// The record's bytes: header (with prev link and CRC) and body.
    pub fn encode(&self, prev: Lsn) -> Vec<u8> {
        let mut body = Vec::new();
        let mut last_rel: Option<RelFileLocator> = None;
        for (i, b) in self.blocks.iter().enumerate() {
            let mut flags = b.fork & 0x0F;
            if b.image.is_some() {
                flags |= 0x10;
            }
            if !b.data.is_empty() {
                flags |= 0x20;
            }
            let same = last_rel == Some(b.rlocator);
            if same {
                flags |= 0x80;
            }
            body.push(i as u8);
            body.push(flags);
            body.extend_from_slice(&(b.data.len() as u16).to_le_bytes());
            if let Some(img) = &b.image {
                body.extend_from_slice(&(img.len() as u16).to_le_bytes());
                body.extend_from_slice(&0u16.to_le_bytes());
                body.push(0x02); // BKPIMAGE_APPLY
            }
            if !same {
                body.extend_from_slice(&b.rlocator.spc_oid.to_le_bytes());
                body.extend_from_slice(&b.rlocator.db_oid.to_le_bytes());
                body.extend_from_slice(&b.rlocator.rel_number.to_le_bytes());
            }
            body.extend_from_slice(&b.block.to_le_bytes());
            last_rel = Some(b.rlocator);
        }
        if !self.main_data.is_empty() {
            if self.main_data.len() < 256 {
                body.push(255);
                body.push(self.main_data.len() as u8);
            } else {
                body.push(254);
                body.extend_from_slice(&(self.main_data.len() as u32).to_le_bytes());
            }
        }
        for b in &self.blocks {
            if let Some(img) = &b.image {
                body.extend_from_slice(img);
            }
            body.extend_from_slice(&b.data);
        }
        body.extend_from_slice(&self.main_data);
        raw_record(self.xid, prev, self.info, self.rmid, &body)
    }
}

/// A record with an arbitrary body: header (length, xid, prev link, info, rmgr, CRC) + `body`.
fn raw_record(xid: u32, prev: Lsn, info: u8, rmid: u8, body: &[u8]) -> Vec<u8> {
    let tot = (RECORD_HEADER_LEN + body.len()) as u32;
    let mut rec = Vec::with_capacity(tot as usize);
    rec.extend_from_slice(&tot.to_le_bytes());
    rec.extend_from_slice(&xid.to_le_bytes());
    rec.extend_from_slice(&prev.0.to_le_bytes());
    rec.push(info);
    rec.push(rmid);
    rec.extend_from_slice(&[0, 0]);
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(body);
    let crc = record_crc(&rec);
    rec[20..24].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// Writes records into a WAL byte stream starting at a segment boundary.
#[derive(Debug)]
pub struct WalWriter {
    seg_size: WalSegSize,
    block_size: u64,
    timeline: TimelineId,
    system_id: u64,
    version: WalVersion,
    start: Lsn,
    out: Vec<u8>,
    prev: Lsn,
}

impl WalWriter {
    /// A writer whose stream starts at `start` (a segment boundary).
    pub fn new(
        start: Lsn,
        seg_size: WalSegSize,
        timeline: TimelineId,
        system_id: u64,
        version: WalVersion,
    ) -> Self {
        WalWriter {
            seg_size,
            block_size: 8192,
            timeline,
            system_id,
            version,
            start,
            out: Vec::new(),
            prev: Lsn::INVALID,
        }
    }

    fn pos(&self) -> u64 {
        self.start.0 + self.out.len() as u64
    }

    fn page_header(&mut self, rem_len: u32) {
        let addr = self.pos();
        let long = addr.is_multiple_of(self.seg_size.bytes());
        let mut info = if rem_len > 0 {
            XLP_FIRST_IS_CONTRECORD
        } else {
            0
        };
        if long {
            info |= XLP_LONG_HEADER;
        }
        PageHeader {
            magic: self.version.magic(),
            info,
            timeline: self.timeline,
            page_addr: Lsn(addr),
            rem_len,
            long: long.then_some(LongHeader {
                system_id: self.system_id,
                seg_size: self.seg_size.bytes() as u32,
                block_size: self.block_size as u32,
            }),
        }
        .encode(&mut self.out);
    }

    /// Appends a record; returns its LSN.
    pub fn append(&mut self, spec: &RecordSpec) -> Lsn {
        let rec = spec.encode(self.prev);
        self.place(&rec)
    }

    /// Appends a record whose body (everything after the 24-byte header) is `body` as given,
    /// well-formed or not, with a correct length, previous-record link and CRC: so that a fuzzer
    /// reaches the body decoders past the checks that guard them.
    pub fn append_raw(&mut self, xid: u32, info: u8, rmid: u8, body: &[u8]) -> Lsn {
        let rec = raw_record(xid, self.prev, info, rmid, body);
        self.place(&rec)
    }

    fn place(&mut self, rec: &[u8]) -> Lsn {
        if self.pos().is_multiple_of(self.block_size) {
            self.page_header(0);
        }
        let lsn = Lsn(self.pos());
        let mut written = 0usize;
        while written < rec.len() {
            if self.pos().is_multiple_of(self.block_size) {
                self.page_header((rec.len() - written) as u32);
            }
            let room = (self.block_size - self.pos() % self.block_size) as usize;
            let take = room.min(rec.len() - written);
            self.out.extend_from_slice(&rec[written..written + take]);
            written += take;
        }
        let pad = (8 - self.out.len() % 8) % 8;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self.prev = lsn;
        lsn
    }

    /// The stream so far, padded with zeros to the end of the current page, and its start.
    pub fn finish(mut self) -> (Lsn, Vec<u8>) {
        let rem = (self.block_size - self.pos() % self.block_size) % self.block_size;
        self.out.extend(std::iter::repeat_n(0u8, rem as usize));
        (self.start, self.out)
    }
}
