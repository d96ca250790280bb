//! Receiving streamed WAL, without I/O: the one state machine behind `receivewal`, the WAL
//! stream of a base backup (`-X stream`) and the repository's WAL archiver.
//!
//! The caller drives the replication connection and the storage; the receiver is fed what the
//! server sends (XLogData, keepalives, the end of a timeline) and what the storage did (bytes
//! written, bytes durable), and answers: what to write and where, whether a stop position was
//! reached, what position to report to the server, and where streaming resumes after a
//! timeline switch. It checks everything the server sends before anything is written: that the
//! data continues exactly where the last ended, every page header (magic, address, timeline,
//! system identifier; zeroed tails after `XLOG_SWITCH`), positions that would pass 2^64, and the
//! switch point of a new timeline (pg_receivewal's checks, `receivelog.c`).
//!
//! The flush position it reports never passes what the caller said is durable, so a
//! replication slot never releases WAL the storage could still lose.

use std::fmt;

use crate::page::{PageExpectations, PageHeader, WalVersion, LONG_HEADER_LEN, SHORT_HEADER_LEN};
use crate::{Lsn, SegmentNo, TimelineId, WalSegSize};

/// What the server sent was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The data does not continue where the last ended.
    Gap {
        /// Where the next byte was expected.
        expected: Lsn,
        /// Where the data started.
        got: Lsn,
    },
    /// A page header in the data is invalid.
    BadPage {
        /// The page.
        lsn: Lsn,
        /// What is wrong.
        detail: String,
    },
    /// The data would run past the end of the WAL address space.
    Overflow {
        /// Where it starts.
        start: Lsn,
        /// Its length.
        len: u64,
    },
    /// The next timeline is not after the current one.
    TimelineNotAfter {
        /// The timeline that ended.
        current: TimelineId,
        /// The one the server named next.
        next: TimelineId,
    },
    /// The next timeline begins past what was streamed of the current one: a hole.
    TimelineHole {
        /// The timeline that ended.
        current: TimelineId,
        /// How far it was streamed.
        streamed: Lsn,
        /// The next timeline.
        next: TimelineId,
        /// Where the server says it begins.
        at: Lsn,
    },
    /// The next timeline begins before the segment being streamed.
    TimelineBehind {
        /// The timeline that ended.
        current: TimelineId,
        /// How far it was streamed.
        streamed: Lsn,
        /// The next timeline.
        next: TimelineId,
        /// Where the server says it begins.
        at: Lsn,
    },
}

impl fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReceiveError::Gap { expected, got } => {
                write!(f, "WAL stream gap: expected data at {expected}, got {got}")
            }
            ReceiveError::BadPage { lsn, detail } => {
                write!(f, "invalid WAL page at {lsn}: {detail}")
            }
            ReceiveError::Overflow { start, len } => write!(
                f,
                "WAL data at {start} with {len} bytes runs past the end of the WAL address space"
            ),
            ReceiveError::TimelineNotAfter { current, next } => write!(
                f,
                "server reported next timeline {next}, not after the streamed timeline {current}"
            ),
            // pg_receivewal's words
            ReceiveError::TimelineHole {
                current,
                streamed,
                next,
                at,
            } => write!(
                f,
                "server stopped streaming timeline {current} at {streamed}, but reported next timeline {next} to begin at {at}"
            ),
            ReceiveError::TimelineBehind {
                current,
                streamed,
                next,
                at,
            } => write!(
                f,
                "server reported next timeline {next} starting at {at}, before what was already streamed of timeline {current} ({streamed})"
            ),
        }
    }
}

impl std::error::Error for ReceiveError {}

/// Checks every page header as the bytes arrive, across message boundaries.
#[derive(Debug, Clone)]
pub struct PageChecker {
    seg_size: WalSegSize,
    expect: PageExpectations,
    max_timeline: TimelineId,
    /// Header bytes of a page whose header arrived in pieces, and that page's address.
    pending: Vec<u8>,
    pending_page: Lsn,
    /// The segment whose remainder is unused (zero pages after an XLOG_SWITCH).
    zero_tail: Option<SegmentNo>,
}

const PAGE: u64 = crate::page::DEFAULT_WAL_BLOCK_SIZE as u64;

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
        h.validate(page, self.seg_size, PAGE as u32, &self.expect)
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

    fn header_len(&self, page: Lsn) -> usize {
        if page.segment_offset(self.seg_size) == 0 {
            LONG_HEADER_LEN
        } else {
            SHORT_HEADER_LEN
        }
    }

    /// Checks the page headers inside `data`, which starts at `start`. A range that would run
    /// past the end of the WAL address space is refused.
    pub fn feed(&mut self, start: Lsn, data: &[u8]) -> Result<(), ReceiveError> {
        let end = start
            .checked_add(data.len() as u64)
            .ok_or(ReceiveError::Overflow {
                start,
                len: data.len() as u64,
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
}

/// What the server sent, checked: the bytes to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// The timeline they belong to.
    pub timeline: TimelineId,
    /// Where they start (exactly where the previous ones ended).
    pub start: Lsn,
    /// The bytes (cut at the stop position, if one is set).
    pub data: &'a [u8],
    /// The stop position is reached with these bytes: write them and stop.
    pub stop: bool,
}

/// What to tell the server (a standby status update): positions are "last byte + 1".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Received and written.
    pub write: Lsn,
    /// Durable: the server may release WAL before this.
    pub flush: Lsn,
}

/// A timeline switch, checked: where streaming goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    /// The timeline that ended.
    pub from: TimelineId,
    /// The next one.
    pub to: TimelineId,
    /// Where the next one branches off.
    pub at: Lsn,
    /// Where streaming resumes: the start of the segment holding the switch point (the new
    /// timeline has its own copy of that segment).
    pub resume: Lsn,
}

/// The receiver state machine. See the module documentation.
#[derive(Debug, Clone)]
pub struct Receiver {
    seg_size: WalSegSize,
    system_id: u64,
    timeline: TimelineId,
    checker: PageChecker,
    /// Everything before this was handed out to be written.
    received: Lsn,
    /// Everything before this was written (the storage said so).
    written: Lsn,
    /// Everything before this is durable (the storage said so).
    flushed: Lsn,
    /// The server's WAL end as of its last message.
    server_end: Lsn,
    stop_at: Option<Lsn>,
}

impl Receiver {
    /// A receiver streaming `timeline` of system `system_id` from `start` (a segment start: the
    /// storage writes whole segments), with no stop position.
    pub fn new(start: Lsn, timeline: TimelineId, seg_size: WalSegSize, system_id: u64) -> Self {
        let start = start.segment_start(seg_size);
        Receiver {
            seg_size,
            system_id,
            timeline,
            checker: PageChecker::new(seg_size, system_id, timeline),
            received: start,
            written: start,
            flushed: start,
            server_end: start,
            stop_at: None,
        }
    }

    /// Stops once WAL up to `lsn` (exclusive) has arrived (`--endpos`, a backup's end).
    pub fn set_stop(&mut self, lsn: Option<Lsn>) {
        self.stop_at = lsn;
    }

    /// Where the next byte is expected.
    pub fn received(&self) -> Lsn {
        self.received
    }

    /// What the storage has made durable.
    pub fn flushed(&self) -> Lsn {
        self.flushed
    }

    /// The timeline being streamed.
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// The server's WAL end as of its last message.
    pub fn server_end(&self) -> Lsn {
        self.server_end
    }

    /// Whether the stop position has been reached.
    pub fn stopped(&self) -> bool {
        self.stop_at.is_some_and(|s| self.received >= s)
    }

    /// XLogData: `data` from `start`, the server's end at `server_end`. Returns the bytes to
    /// write, checked.
    pub fn xlogdata<'a>(
        &mut self,
        start: Lsn,
        server_end: Lsn,
        data: &'a [u8],
    ) -> Result<Incoming<'a>, ReceiveError> {
        self.server_end = self.server_end.max(server_end);
        if start != self.received {
            return Err(ReceiveError::Gap {
                expected: self.received,
                got: start,
            });
        }
        let mut data = data;
        let mut stop = false;
        if let Some(s) = self.stop_at {
            let room = s.checked_sub(start).unwrap_or(0);
            if room <= data.len() as u64 {
                data = &data[..room as usize];
                stop = true;
            }
        }
        self.checker.feed(start, data)?;
        // checked by feed: start + len fits
        self.received = Lsn(start.0 + data.len() as u64);
        Ok(Incoming {
            timeline: self.timeline,
            start,
            data,
            stop,
        })
    }

    /// A keepalive: returns whether to answer with a status update now (the server asked),
    /// and records the server's position.
    pub fn keepalive(&mut self, server_end: Lsn, reply_requested: bool) -> bool {
        self.server_end = self.server_end.max(server_end);
        reply_requested
    }

    /// The storage wrote everything before `lsn`.
    pub fn written(&mut self, lsn: Lsn) {
        self.written = self.written.max(lsn.min(self.received));
    }

    /// The storage made everything before `lsn` durable.
    pub fn durable(&mut self, lsn: Lsn) {
        let lsn = lsn.min(self.received);
        self.flushed = self.flushed.max(lsn);
        self.written = self.written.max(lsn);
    }

    /// The status update to send: never a flush position past what is durable.
    pub fn status(&self) -> Status {
        Status {
            write: self.written,
            flush: self.flushed,
        }
    }

    /// The server ended the timeline and named the next: checks the switch point against what
    /// was streamed and moves to the next timeline, resuming at the start of the segment that
    /// holds the switch point.
    pub fn end_of_timeline(
        &mut self,
        next: TimelineId,
        at: Lsn,
    ) -> Result<TimelineSwitch, ReceiveError> {
        let (current, streamed) = (self.timeline, self.received);
        if next <= current {
            return Err(ReceiveError::TimelineNotAfter { current, next });
        }
        if at > streamed {
            return Err(ReceiveError::TimelineHole {
                current,
                streamed,
                next,
                at,
            });
        }
        if at < streamed.segment_start(self.seg_size) {
            return Err(ReceiveError::TimelineBehind {
                current,
                streamed,
                next,
                at,
            });
        }
        let resume = at.segment_start(self.seg_size);
        self.timeline = next;
        self.checker = PageChecker::new(self.seg_size, self.system_id, next);
        self.received = resume;
        self.written = self.written.min(resume);
        self.flushed = self.flushed.min(resume);
        Ok(TimelineSwitch {
            from: current,
            to: next,
            at,
            resume,
        })
    }

    /// Starts again at `start` (a segment start) on `timeline`, as after a reconnect.
    pub fn restart(&mut self, start: Lsn, timeline: TimelineId) {
        let start = start.segment_start(self.seg_size);
        self.timeline = timeline;
        self.checker = PageChecker::new(self.seg_size, self.system_id, timeline);
        self.received = start;
        self.written = start;
        self.flushed = start;
    }
}

#[cfg(all(test, feature = "writer"))]
mod tests {
    use super::*;
    use crate::writer::{RecordSpec, WalWriter};

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    fn stream() -> (Lsn, Vec<u8>) {
        let mut w = WalWriter::new(Lsn(1 << 20), seg(), TimelineId(1), 77, WalVersion::V18);
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
        let mut c = PageChecker::new(seg(), 77, TimelineId(1));
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
    fn foreign_system_is_refused() {
        let (start, bytes) = stream();
        let mut c = PageChecker::new(seg(), 78, TimelineId(1));
        let e = c.feed(start, &bytes).unwrap_err();
        assert!(e.to_string().contains("different database system"), "{e}");
    }

    #[test]
    fn a_zeroed_tail_ends_the_segment() {
        let (start, mut bytes) = stream();
        for b in &mut bytes[3 * 8192..1 << 20] {
            *b = 0;
        }
        check_all(&bytes, start, 5000).unwrap();
        let (_, good) = stream();
        bytes[5 * 8192..5 * 8192 + 24].copy_from_slice(&good[5 * 8192..5 * 8192 + 24]);
        assert!(check_all(&bytes, start, 5000).is_err());
    }

    #[test]
    fn positions_near_the_end_of_the_address_space_are_refused_not_wrapped() {
        let mut c = PageChecker::new(seg(), 77, TimelineId(1));
        let e = c.feed(Lsn(u64::MAX - 100), &[0u8; 8192]).unwrap_err();
        assert!(
            e.to_string()
                .contains("past the end of the WAL address space"),
            "{e}"
        );
        c.feed(Lsn(u64::MAX - 8191), &[0u8; 8191]).unwrap();
        c.feed(Lsn(u64::MAX - 10), &[1u8; 10]).unwrap();
        c.feed(Lsn(u64::MAX), &[]).unwrap();
    }

    #[test]
    fn a_stream_is_received_in_order_and_reported_only_when_durable() {
        let (start, bytes) = stream();
        let mut r = Receiver::new(start, TimelineId(1), seg(), 77);
        let mut written = Vec::new();
        for piece in bytes.chunks(3000) {
            let at = r.received();
            let inc = r
                .xlogdata(at, Lsn(start.0 + bytes.len() as u64), piece)
                .unwrap();
            assert_eq!(
                (inc.start, inc.timeline, inc.stop),
                (at, TimelineId(1), false)
            );
            written.extend_from_slice(inc.data);
            r.written(r.received());
            // nothing durable yet: the flush position stays
            assert_eq!(r.status().flush, start);
        }
        assert_eq!(written, bytes);
        r.durable(Lsn(start.0 + 10_000));
        assert_eq!(r.status().flush, Lsn(start.0 + 10_000));
        // a report of more than was received is clamped
        r.durable(Lsn(u64::MAX));
        assert_eq!(r.status().flush, r.received());
        // a gap, and data from before
        let e = r
            .xlogdata(Lsn(r.received().0 + 8), Lsn(0), &[0; 8])
            .unwrap_err();
        assert!(matches!(e, ReceiveError::Gap { .. }), "{e}");
        assert!(r.keepalive(Lsn(5), true));
    }

    #[test]
    fn the_stop_position_cuts_the_data() {
        let (start, bytes) = stream();
        let mut r = Receiver::new(start, TimelineId(1), seg(), 77);
        let stop = Lsn(start.0 + 20_000);
        r.set_stop(Some(stop));
        let a = r.xlogdata(start, Lsn(0), &bytes[..15_000]).unwrap();
        assert!(!a.stop);
        let b = r
            .xlogdata(Lsn(start.0 + 15_000), Lsn(0), &bytes[15_000..30_000])
            .unwrap();
        assert!(b.stop);
        assert_eq!(b.data.len(), 5_000);
        assert!(r.stopped());
    }

    #[test]
    fn timeline_switches_are_checked() {
        let (start, bytes) = stream();
        let mut r = Receiver::new(start, TimelineId(1), seg(), 77);
        r.xlogdata(start, Lsn(0), &bytes[..50_000]).unwrap();
        let streamed = r.received();
        // not after the current timeline
        assert!(matches!(
            r.clone().end_of_timeline(TimelineId(1), streamed),
            Err(ReceiveError::TimelineNotAfter { .. })
        ));
        // a hole
        let e = r
            .clone()
            .end_of_timeline(TimelineId(2), Lsn(streamed.0 + 1))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("but reported next timeline 2 to begin at"),
            "{e}"
        );
        // before the segment being streamed
        let mut far = Receiver::new(Lsn(8 << 20), TimelineId(1), seg(), 77);
        assert!(matches!(
            far.end_of_timeline(TimelineId(2), Lsn(1 << 20)),
            Err(ReceiveError::TimelineBehind { .. })
        ));
        // a good switch inside the segment: resume at its start on the new timeline
        let at = Lsn(start.0 + 40_000);
        let sw = r.end_of_timeline(TimelineId(2), at).unwrap();
        assert_eq!(
            sw,
            TimelineSwitch {
                from: TimelineId(1),
                to: TimelineId(2),
                at,
                resume: start
            }
        );
        assert_eq!((r.timeline(), r.received()), (TimelineId(2), start));
    }
}
