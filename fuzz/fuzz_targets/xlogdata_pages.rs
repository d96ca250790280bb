//! Streamed WAL as a server sends it: a sequence of XLogData messages at positions the server
//! chooses (near 2^64 included), decoded and handed to the page checker that receivewal and
//! `-X stream` run on every byte. An error or nothing, never a panic.
#![no_main]
use bytes::{BufMut, Bytes, BytesMut};
use pgrepl::receivewal::archive::PageChecker;
use pgrepl::replication::WalMessage;
use pgwal::{TimelineId, WalSegSize};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else { return };
    let seg = WalSegSize::new(1 << (20 + u32::from(sel % 11))).unwrap_or(WalSegSize::DEFAULT);
    let mut c = PageChecker::new(seg, 77, TimelineId(1));
    // each message: start (8 bytes, big-endian), data length (2 bytes), data
    while rest.len() >= 10 {
        let start = u64::from_be_bytes(rest[..8].try_into().unwrap_or([0; 8]));
        let len = usize::from(u16::from_be_bytes([rest[8], rest[9]])).min(rest.len() - 10);
        let mut m = BytesMut::new();
        m.put_u8(b'w');
        m.put_u64(start);
        m.put_u64(start);
        m.put_i64(0);
        m.put_slice(&rest[10..10 + len]);
        rest = &rest[10 + len..];
        let Ok(WalMessage::XLogData(x)) = WalMessage::decode(&Bytes::from(m)) else {
            continue;
        };
        if c.feed(x.wal_start, &x.data).is_err() {
            return;
        }
    }
});
