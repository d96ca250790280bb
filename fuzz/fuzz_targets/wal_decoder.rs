//! WAL pages and records: the decoder fed arbitrary bytes in arbitrary chunks, and the record
//! decoders run on whatever it accepts.
#![no_main]
use pgwal::{DecoderOptions, Lsn, WalDecoder, WalSegSize};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    // The seeds are real 16 MB-segment WAL starting at 0/1000000.
    let seg = WalSegSize::DEFAULT;
    let Ok(mut d) = WalDecoder::new(Lsn(0x100_0000), DecoderOptions::new(seg)) else { return };
    for piece in rest.chunks(usize::from(chunk).max(1) * 64) {
        d.feed(piece);
        while let Ok(Some(r)) = d.next_record() {
            let _ = pgwal::xlog::decode_xlog(&r);
            let _ = pgwal::xact::decode_xact_end(&r);
        }
    }
    let _ = pgwal::page::PageHeader::parse(rest);
});
