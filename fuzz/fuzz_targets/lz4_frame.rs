//! The push-fed LZ4 frame decoder (server-lz4 archives as they stream, .tar.lz4 files), fed in
//! chunks chosen by the first byte: an error or the bytes, never a panic or unbounded memory.
#![no_main]
use std::io::Write;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let mut d = basebackup::lz4::Lz4Decoder::new(std::io::sink());
    for piece in rest.chunks(usize::from(chunk).max(1)) {
        if d.write_all(piece).is_err() {
            return;
        }
    }
    let _ = d.finish();
});
