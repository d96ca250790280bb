//! Records with arbitrary bodies behind valid page headers, record headers and CRCs, laid out by
//! the harness: arbitrary bytes alone never get past the CRC check, so this is what reaches the
//! body decoders (block references, XLOG and transaction records).
#![no_main]
use pgwal::writer::WalWriter;
use pgwal::{DecoderOptions, Lsn, TimelineId, WalDecoder, WalSegSize, WalVersion};

/// XLOG, XACT, heap, heap2, btree: the first two have decoders of their own.
const RMIDS: [u8; 5] = [0, 1, 10, 9, 11];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(seg) = WalSegSize::new(1 << 20) else { return };
    let mut w = WalWriter::new(Lsn(1 << 20), seg, TimelineId(1), 7, WalVersion::V18);
    // each record: rmgr selector, info, body length (2 bytes, little-endian), body
    let mut rest = data;
    let mut n = 0u32;
    while rest.len() >= 4 && n < 64 {
        let rmid = RMIDS[usize::from(rest[0]) % RMIDS.len()];
        let info = rest[1];
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        w.append_raw(n, info, rmid, &rest[4..4 + len]);
        rest = &rest[4 + len..];
        n += 1;
    }
    let (start, bytes) = w.finish();
    let Ok(mut d) = WalDecoder::new(start, DecoderOptions::new(seg)) else { return };
    d.feed(&bytes);
    while let Ok(Some(r)) = d.next_record() {
        let _ = pgwal::xlog::decode_xlog(&r);
        let _ = pgwal::xact::decode_xact_end(&r);
    }
});
