//! The ustar stream parser, fed in chunks chosen by the first byte.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    let mut p = basebackup::tar::TarParser::new();
    for piece in rest.chunks(usize::from(chunk).max(1) * 8) {
        if p.feed(piece, |_| Ok::<(), basebackup::tar::TarError>(())).is_err() {
            return;
        }
    }
    let _ = p.finish();
});
