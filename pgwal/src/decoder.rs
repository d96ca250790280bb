//! The WAL decoder: fed raw WAL bytes (page headers included), polled for records.
//!
//! It follows `XLogDecodeNextRecord` / `XLogFindNextRecord` in
//! `src/backend/access/transam/xlogreader.c`: records start MAXALIGNed, cross pages and segments
//! behind continuation headers, and are checked for length, resource manager, previous-record
//! link and CRC32C. The first invalid record is the end of valid WAL, reported with its LSN and
//! the reason in pg_waldump's words.

use std::fmt;

use crate::page::{PageExpectations, PageHeader, WalVersion, XLP_FIRST_IS_CONTRECORD};
use crate::record::{self, BlockRef, Record, MAX_RECORD_LEN, RECORD_HEADER_LEN};
use crate::{rmgr, Lsn, WalSegSize};

/// How the WAL being decoded was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderOptions {
    /// The segment size (`wal_segment_size`).
    pub seg_size: WalSegSize,
    /// The WAL page size (`XLOG_BLCKSZ`, normally 8192).
    pub block_size: u32,
    /// The system identifier every long page header must carry, if known.
    pub system_id: Option<u64>,
    /// The WAL version every page must carry, if known (otherwise the first page decides).
    pub version: Option<WalVersion>,
}

impl DecoderOptions {
    /// Options for `seg_size` and 8 kB pages, nothing else required.
    pub fn new(seg_size: WalSegSize) -> Self {
        DecoderOptions {
            seg_size,
            block_size: crate::page::DEFAULT_WAL_BLOCK_SIZE,
            system_id: None,
            version: None,
        }
    }
}

/// Why decoding stopped: the first invalid thing in the WAL, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalErrorKind {
    /// `xl_tot_len` below the header size (zeros: the usual end of WAL).
    InvalidRecordLength {
        /// The length found.
        got: u32,
    },
    /// `xl_tot_len` above PostgreSQL's maximum.
    RecordTooLong {
        /// The length found.
        len: u32,
    },
    /// A record starts inside a page header.
    InvalidRecordOffset,
    /// An unknown resource manager id.
    InvalidRmgr(u8),
    /// `xl_prev` does not point at the previous record.
    IncorrectPrevLink {
        /// The link found.
        got: Lsn,
    },
    /// The CRC does not match.
    BadCrc,
    /// A page header is invalid (magic, flags, address, system, sizes, timeline).
    BadPage(String),
    /// A new record was expected, but the page says it continues one.
    ContrecordRequested,
    /// A continuation page lacks XLP_FIRST_IS_CONTRECORD.
    MissingContrecord,
    /// A continuation page's remaining length disagrees with the record.
    InvalidContrecordLength {
        /// What the page says.
        got: u32,
        /// What the record needs.
        expected: u64,
    },
    /// The block references and data after the header are inconsistent.
    BadBlockRefs(String),
    /// The stream must start at a page boundary.
    UnalignedStart,
}

/// The end of valid WAL: what was wrong, at which LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalError {
    /// Where.
    pub lsn: Lsn,
    /// What.
    pub kind: WalErrorKind,
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.lsn;
        match &self.kind {
            WalErrorKind::InvalidRecordLength { got } => write!(
                f,
                "invalid record length at {at}: expected at least {RECORD_HEADER_LEN}, got {got}"
            ),
            WalErrorKind::RecordTooLong { len } => {
                write!(f, "record length {len} at {at} too long")
            }
            WalErrorKind::InvalidRecordOffset => write!(f, "invalid record offset at {at}"),
            WalErrorKind::InvalidRmgr(id) => {
                write!(f, "invalid resource manager ID {id} at {at}")
            }
            WalErrorKind::IncorrectPrevLink { got } => {
                write!(f, "record with incorrect prev-link {got} at {at}")
            }
            WalErrorKind::BadCrc => write!(
                f,
                "incorrect resource manager data checksum in record at {at}"
            ),
            WalErrorKind::BadPage(d) => write!(f, "invalid WAL page at {at}: {d}"),
            WalErrorKind::ContrecordRequested => write!(f, "contrecord is requested by {at}"),
            WalErrorKind::MissingContrecord => write!(f, "there is no contrecord flag at {at}"),
            WalErrorKind::InvalidContrecordLength { got, expected } => write!(
                f,
                "invalid contrecord length {got} (expected {expected}) at {at}"
            ),
            WalErrorKind::BadBlockRefs(d) => write!(f, "{d} at {at}"),
            WalErrorKind::UnalignedStart => {
                write!(f, "WAL stream must start at a page boundary, not {at}")
            }
        }
    }
}

impl std::error::Error for WalError {}

/// Decodes records from WAL bytes fed in order.
///
/// Memory: the decoder holds the bytes of the record in progress plus what was fed beyond it;
/// a record's length is checked against PostgreSQL's maximum before its bytes are gathered, and
/// space grows only as bytes arrive.
#[derive(Debug)]
pub struct WalDecoder {
    opts: DecoderOptions,
    expect: PageExpectations,
    buf: Vec<u8>,
    buf_lsn: Lsn,
    pos: Lsn,
    finding_first: bool,
    check_prev: bool,
    prev_lsn: Lsn,
    need_until: Lsn,
    failed: Option<WalError>,
    /// Multi-page records are gathered here; single-page ones are read in place.
    assembled: Vec<u8>,
    blocks: Vec<BlockRef>,
    /// The record whose bytes are still arriving, and how far it has been checked.
    span: Option<Span>,
}

/// A record being waited for: checked as its bytes arrive (header first, then each
/// continuation page), so that a bogus length is caught before its bytes are gathered.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Where the record starts.
    at: u64,
    /// Where it ends in the stream, page headers included.
    end: u64,
    /// Its header (resource manager, previous-record link) was found valid.
    header_ok: bool,
    /// The next continuation page to check, and the record's bytes left at its start.
    next_page: u64,
    remaining: u64,
}

fn maxalign(v: u64) -> u64 {
    (v + 7) & !7
}

impl WalDecoder {
    /// A decoder for bytes that start at `stream_start` (a page boundary). Decoding begins at the
    /// first record that starts on that page, skipping the tail of a record continued from
    /// before, as pg_waldump does.
    pub fn new(stream_start: Lsn, opts: DecoderOptions) -> Result<Self, WalError> {
        if !stream_start.0.is_multiple_of(u64::from(opts.block_size)) {
            return Err(WalError {
                lsn: stream_start,
                kind: WalErrorKind::UnalignedStart,
            });
        }
        Ok(WalDecoder {
            expect: PageExpectations {
                version: opts.version,
                system_id: opts.system_id,
                min_timeline: None,
            },
            opts,
            buf: Vec::new(),
            buf_lsn: stream_start,
            pos: stream_start,
            finding_first: true,
            check_prev: false,
            prev_lsn: Lsn::INVALID,
            need_until: stream_start,
            failed: None,
            assembled: Vec::new(),
            blocks: Vec::new(),
            span: None,
        })
    }

    /// As [`WalDecoder::new`], but decoding begins at the record at `first_record` (which must be
    /// in the stream; its previous-record link is not checked).
    pub fn starting_at(
        stream_start: Lsn,
        first_record: Lsn,
        opts: DecoderOptions,
    ) -> Result<Self, WalError> {
        let mut d = Self::new(stream_start, opts)?;
        if first_record < stream_start {
            return Err(WalError {
                lsn: first_record,
                kind: WalErrorKind::UnalignedStart,
            });
        }
        d.pos = first_record;
        d.finding_first = false;
        Ok(d)
    }

    /// Drops what has been consumed once it is most of the buffer (keeping the capacity).
    fn compact(&mut self) {
        let consumed = (self.pos.0.saturating_sub(self.buf_lsn.0) as usize).min(self.buf.len());
        if consumed > 0 && consumed >= self.buf.len() / 2 && !self.finding_first {
            self.buf.drain(..consumed);
            self.buf_lsn = Lsn(self.buf_lsn.0 + consumed as u64);
        }
    }

    /// Appends WAL bytes (the continuation of what was fed before).
    pub fn feed(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Reads up to `max` bytes from `reader` straight into the decoder's buffer (one copy fewer
    /// than reading into a buffer of your own and calling [`WalDecoder::feed`]). Returns the
    /// bytes read; 0 at the end of the reader. With a bounded `max` (say 1 MiB) the buffer is
    /// reused from call to call and stays in cache.
    pub fn feed_from(
        &mut self,
        reader: &mut impl std::io::Read,
        max: usize,
    ) -> std::io::Result<usize> {
        use std::io::Read;
        self.compact();
        let before = self.buf.len();
        self.buf.reserve(max);
        let r = reader.take(max as u64).read_to_end(&mut self.buf);
        let n = self.buf.len() - before;
        r.map(|_| n)
    }

    /// The position just past the last byte fed.
    pub fn buffered_end(&self) -> Lsn {
        Lsn(self.buf_lsn.0 + self.buf.len() as u64)
    }

    /// Where the next record starts (or where the search for the first one is).
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// The WAL version, once a page has been read.
    pub fn version(&self) -> Option<WalVersion> {
        self.expect.version
    }

    /// The system identifier, once a long page header has been read.
    pub fn system_id(&self) -> Option<u64> {
        self.expect.system_id
    }

    fn bytes(&self, lsn: Lsn, n: usize) -> Option<&[u8]> {
        let off = lsn.0.checked_sub(self.buf_lsn.0)? as usize;
        self.buf.get(off..off.checked_add(n)?)
    }

    fn page_header(&mut self, page: Lsn) -> Result<Option<PageHeader>, WalError> {
        let Some(short) = self.bytes(page, crate::page::SHORT_HEADER_LEN) else {
            return Ok(None);
        };
        let info = crate::le::u16_at(short, 2).unwrap_or(0);
        let len = if info & crate::page::XLP_LONG_HEADER != 0 {
            crate::page::LONG_HEADER_LEN
        } else {
            crate::page::SHORT_HEADER_LEN
        };
        let Some(h) = self.bytes(page, len).and_then(PageHeader::parse) else {
            return Ok(None);
        };
        let bad = |d: String| WalError {
            lsn: page,
            kind: WalErrorKind::BadPage(d),
        };
        if h.long.is_some() && page.segment_offset(self.opts.seg_size) != 0 {
            return Err(bad("long page header in the middle of a segment".into()));
        }
        h.validate(page, self.opts.seg_size, self.opts.block_size, &self.expect)
            .map_err(bad)?;
        self.expect.version = WalVersion::from_magic(h.magic);
        if let Some(l) = h.long {
            self.expect.system_id = Some(l.system_id);
        }
        self.expect.min_timeline = Some(
            h.timeline
                .max(self.expect.min_timeline.unwrap_or(h.timeline)),
        );
        Ok(Some(h))
    }

    fn header_len_at(&self, page: u64) -> u64 {
        if page.is_multiple_of(self.opts.seg_size.bytes()) {
            crate::page::LONG_HEADER_LEN as u64
        } else {
            crate::page::SHORT_HEADER_LEN as u64
        }
    }

    fn need(&mut self, until: u64) -> Result<Option<Record<'_>>, WalError> {
        self.need_until = Lsn(until);
        Ok(None)
    }

    fn fail(&mut self, lsn: Lsn, kind: WalErrorKind) -> WalError {
        let e = WalError { lsn, kind };
        self.failed = Some(e.clone());
        e
    }

    /// Where a record of `tot_len` bytes starting at `cur` ends, page headers included; `None`
    /// past the end of the WAL address space.
    fn record_end(&self, cur: u64, tot_len: u32) -> Option<u64> {
        let blk = u64::from(self.opts.block_size);
        let mut p = cur;
        let mut remaining = u64::from(tot_len);
        loop {
            let page_end = (p / blk).checked_add(1)?.checked_mul(blk)?;
            let take = (page_end - p).min(remaining);
            remaining -= take;
            p = p.checked_add(take)?;
            if remaining == 0 {
                return Some(p);
            }
            p = p.checked_add(self.header_len_at(p))?;
        }
    }

    /// The record header at `cur` (which may continue on the next page), if buffered.
    fn record_header_bytes(&self, cur: u64) -> Option<[u8; RECORD_HEADER_LEN]> {
        let blk = u64::from(self.opts.block_size);
        let page_end = (cur / blk).checked_add(1)?.checked_mul(blk)?;
        let first = ((page_end - cur) as usize).min(RECORD_HEADER_LEN);
        let mut h = [0u8; RECORD_HEADER_LEN];
        h[..first].copy_from_slice(self.bytes(Lsn(cur), first)?);
        if first < RECORD_HEADER_LEN {
            let p = page_end.checked_add(self.header_len_at(page_end))?;
            h[first..].copy_from_slice(self.bytes(Lsn(p), RECORD_HEADER_LEN - first)?);
        }
        Some(h)
    }

    /// Checks what has arrived of the record at `span.at` (its header, then each continuation
    /// page header), as xlogreader.c does before it reads the rest: `Ok(Some(lsn))` asks for
    /// the stream up to `lsn` before going on.
    fn check_arriving(&mut self, mut span: Span) -> Result<Option<u64>, WalError> {
        let blk = u64::from(self.opts.block_size);
        if !span.header_ok {
            let Some(raw) = self.record_header_bytes(span.at) else {
                self.span = Some(span);
                return Ok(Some(span.at + RECORD_HEADER_LEN as u64));
            };
            let h = record::read_header(&raw);
            let at = Lsn(span.at);
            if !rmgr::rmgr_id_is_valid(h.rmid) {
                return Err(WalError {
                    lsn: at,
                    kind: WalErrorKind::InvalidRmgr(h.rmid),
                });
            }
            if self.check_prev && h.prev_lsn != self.prev_lsn {
                return Err(WalError {
                    lsn: at,
                    kind: WalErrorKind::IncorrectPrevLink { got: h.prev_lsn },
                });
            }
            span.header_ok = true;
        }
        while span.next_page < span.end {
            let p = span.next_page;
            let Some(h) = self.page_header(Lsn(p))? else {
                self.span = Some(span);
                return Ok(Some(p + crate::page::LONG_HEADER_LEN as u64));
            };
            if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Err(WalError {
                    lsn: Lsn(p),
                    kind: WalErrorKind::MissingContrecord,
                });
            }
            if u64::from(h.rem_len) != span.remaining {
                return Err(WalError {
                    lsn: Lsn(p),
                    kind: WalErrorKind::InvalidContrecordLength {
                        got: h.rem_len,
                        expected: span.remaining,
                    },
                });
            }
            span.remaining -= (blk - h.len() as u64).min(span.remaining);
            span.next_page = p.saturating_add(blk);
        }
        self.span = Some(span);
        Ok(None)
    }

    /// The next record; `Ok(None)` when more bytes are needed; `Err` at the end of valid WAL
    /// (and on every call after it).
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, WalError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buffered_end() < self.need_until {
            return Ok(None);
        }
        let blk = u64::from(self.opts.block_size);
        while self.finding_first {
            let page = self.pos;
            let h = match self.page_header(page) {
                Ok(Some(h)) => h,
                Ok(None) => return self.need(page.0 + crate::page::LONG_HEADER_LEN as u64),
                Err(e) => return Err(self.fail(e.lsn, e.kind)),
            };
            let hl = h.len() as u64;
            if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
                let rem = maxalign(u64::from(h.rem_len));
                if rem >= blk - hl {
                    self.pos = Lsn(page.0 + blk);
                    continue;
                }
                self.pos = Lsn(page.0 + hl + rem);
            } else {
                self.pos = Lsn(page.0 + hl);
            }
            self.finding_first = false;
        }

        let mut cur = self.pos.0;
        let off = cur % blk;
        if off == 0 {
            let h = match self.page_header(Lsn(cur)) {
                Ok(Some(h)) => h,
                Ok(None) => return self.need(cur + crate::page::LONG_HEADER_LEN as u64),
                Err(e) => return Err(self.fail(e.lsn, e.kind)),
            };
            if h.info & XLP_FIRST_IS_CONTRECORD != 0 {
                return Err(self.fail(Lsn(cur + h.len() as u64), WalErrorKind::ContrecordRequested));
            }
            cur += h.len() as u64;
        } else if off < self.header_len_at(cur - off) {
            return Err(self.fail(Lsn(cur), WalErrorKind::InvalidRecordOffset));
        }
        let Some(len_bytes) = self.bytes(Lsn(cur), 4) else {
            return self.need(cur + 4);
        };
        let tot_len = crate::le::u32_at(len_bytes, 0).unwrap_or(0);
        if (tot_len as usize) < RECORD_HEADER_LEN {
            return Err(self.fail(Lsn(cur), WalErrorKind::InvalidRecordLength { got: tot_len }));
        }
        if tot_len > MAX_RECORD_LEN {
            return Err(self.fail(Lsn(cur), WalErrorKind::RecordTooLong { len: tot_len }));
        }
        // Where the record ends in the stream, page headers included (computed once per
        // record), and what has arrived of it checked before waiting for the rest.
        let span = match self.span {
            Some(s) if s.at == cur => s,
            _ => {
                let Some(end) = self.record_end(cur, tot_len) else {
                    return Err(self.fail(
                        Lsn(cur),
                        WalErrorKind::BadPage(format!(
                            "a record of {tot_len} bytes would run past the end of the WAL address space"
                        )),
                    ));
                };
                let next_page = (cur / blk + 1) * blk;
                Span {
                    at: cur,
                    end,
                    header_ok: false,
                    next_page,
                    remaining: u64::from(tot_len).saturating_sub(next_page - cur),
                }
            }
        };
        let end = span.end;
        match self.check_arriving(span) {
            Err(e) => {
                self.span = None;
                return Err(self.fail(e.lsn, e.kind));
            }
            Ok(Some(until)) => return self.need(until.min(end)),
            Ok(None) => {}
        }
        if self.buffered_end().0 < end {
            return self.need(end);
        }
        self.span = None;

        // Gather a record that crosses pages, checking each continuation page; a record
        // inside one page is read where it lies.
        let single_page = cur / blk == (cur + u64::from(tot_len) - 1) / blk;
        if !single_page {
            let mut raw = std::mem::take(&mut self.assembled);
            raw.clear();
            raw.reserve(tot_len as usize);
            let gathered = self.gather(cur, tot_len, &mut raw);
            self.assembled = raw;
            if let Err(e) = gathered {
                return Err(self.fail(e.lsn, e.kind));
            }
        }
        let at = Lsn(cur);
        let raw: &[u8] = if single_page {
            let off = (cur - self.buf_lsn.0) as usize;
            &self.buf[off..off + tot_len as usize]
        } else {
            &self.assembled
        };
        let Ok(head) = <&[u8; RECORD_HEADER_LEN]>::try_from(&raw[..RECORD_HEADER_LEN]) else {
            return Err(self.fail(at, WalErrorKind::InvalidRecordLength { got: tot_len }));
        };
        let h = record::read_header(head);
        let checked = if !rmgr::rmgr_id_is_valid(h.rmid) {
            Err(WalErrorKind::InvalidRmgr(h.rmid))
        } else if self.check_prev && h.prev_lsn != self.prev_lsn {
            Err(WalErrorKind::IncorrectPrevLink { got: h.prev_lsn })
        } else if record::record_crc(raw) != h.crc {
            Err(WalErrorKind::BadCrc)
        } else {
            record::decode_body(raw, &mut self.blocks).map_err(WalErrorKind::BadBlockRefs)
        };
        let body = match checked {
            Ok(b) => b,
            Err(kind) => return Err(self.fail(at, kind)),
        };
        let mut next = maxalign(end);
        if record::is_switch(h.rmid, h.info) {
            let seg = self.opts.seg_size.bytes();
            next = next.div_ceil(seg) * seg;
        }
        self.prev_lsn = at;
        self.check_prev = true;
        self.pos = Lsn(next);
        self.need_until = Lsn(next);
        let raw: &[u8] = if single_page {
            let off = (cur - self.buf_lsn.0) as usize;
            &self.buf[off..off + tot_len as usize]
        } else {
            &self.assembled
        };
        Ok(Some(Record {
            lsn: at,
            end_lsn: Lsn(next),
            prev_lsn: h.prev_lsn,
            xid: h.xid,
            rmid: h.rmid,
            info: h.info,
            total_len: h.total_len,
            crc: h.crc,
            raw,
            blocks: &self.blocks,
            main_data: body.main_data,
            toplevel_xid: body.toplevel_xid,
            origin: body.origin,
            wal_version: self.expect.version,
        }))
    }

    /// Copies a multi-page record starting at `cur` into `raw`, checking each continuation
    /// page header. The bytes are known to be buffered.
    fn gather(&mut self, cur: u64, tot_len: u32, raw: &mut Vec<u8>) -> Result<(), WalError> {
        let blk = u64::from(self.opts.block_size);
        let mut p = cur;
        let mut remaining = u64::from(tot_len);
        loop {
            let page_end = (p / blk + 1) * blk;
            let take = (page_end - p).min(remaining);
            raw.extend_from_slice(self.bytes(Lsn(p), take as usize).unwrap_or(&[]));
            remaining -= take;
            p += take;
            if remaining == 0 {
                return Ok(());
            }
            let Some(h) = self.page_header(Lsn(p))? else {
                // cannot happen: the whole span was buffered before gathering
                return Err(WalError {
                    lsn: Lsn(p),
                    kind: WalErrorKind::MissingContrecord,
                });
            };
            if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Err(WalError {
                    lsn: Lsn(p),
                    kind: WalErrorKind::MissingContrecord,
                });
            }
            if u64::from(h.rem_len) != remaining {
                return Err(WalError {
                    lsn: Lsn(p),
                    kind: WalErrorKind::InvalidContrecordLength {
                        got: h.rem_len,
                        expected: remaining,
                    },
                });
            }
            p += h.len() as u64;
        }
    }
}
