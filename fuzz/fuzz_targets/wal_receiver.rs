//! The WAL receiver (the one state machine of receivewal, `-X stream` and the repository's
//! archiver) fed what a server may send: XLogData at any position (near 2^64 included, decoded
//! from the wire format first), keepalives, ends of timelines, and what storage reports back. An
//! error or progress, never a panic; the flush position never passes what was received.
#![no_main]
use bytes::{BufMut, Bytes, BytesMut};
use pgrepl::replication::WalMessage;
use pgwal::receiver::Receiver;
use pgwal::{Lsn, TimelineId, WalSegSize};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let seg = WalSegSize::new(1 << (20 + u32::from(sel % 11))).unwrap_or(WalSegSize::DEFAULT);
    let mut r = Receiver::new(Lsn(1 << 30), TimelineId(1), seg, 77);
    if sel & 0x80 != 0 {
        r.set_stop(Some(Lsn(u64::from(sel) << 20)));
    }
    // each event: kind, then its fields
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let take8 = |b: &mut &[u8]| -> Option<u64> {
            let v = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
            *b = &b[8..];
            Some(v)
        };
        match kind % 5 {
            0 => {
                // XLogData: start, data length (2 bytes), data; at the expected position half
                // the time, so that page headers are reached
                let Some(mut start) = take8(&mut rest) else { return };
                let Some(len) = rest.get(..2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
                    return;
                };
                rest = &rest[2..];
                let len = len.min(rest.len());
                if start & 1 == 0 {
                    start = r.received().0;
                }
                let mut m = BytesMut::new();
                m.put_u8(b'w');
                m.put_u64(start);
                m.put_u64(start);
                m.put_i64(0);
                m.put_slice(&rest[..len]);
                rest = &rest[len..];
                let Ok(WalMessage::XLogData(x)) = WalMessage::decode(&Bytes::from(m)) else {
                    continue;
                };
                if let Ok(inc) = r.xlogdata(x.wal_start, x.wal_end, &x.data) {
                    assert!(inc.data.len() <= x.data.len());
                }
            }
            1 => {
                let Some(end) = take8(&mut rest) else { return };
                r.keepalive(Lsn(end), end & 1 == 1);
            }
            2 => {
                let Some(at) = take8(&mut rest) else { return };
                let next = TimelineId((at & 0xF) as u32);
                let _ = r.end_of_timeline(next, Lsn(at));
            }
            3 => {
                let Some(l) = take8(&mut rest) else { return };
                r.durable(Lsn(l));
            }
            _ => {
                let Some(l) = take8(&mut rest) else { return };
                r.written(Lsn(l));
            }
        }
        let s = r.status();
        assert!(s.flush <= r.received() && s.write <= r.received(), "{s:?}");
    }
});
