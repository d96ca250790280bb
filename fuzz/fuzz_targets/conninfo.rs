//! Connection strings: libpq URIs and key=value.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = pgrepl::ConnParams::parse(s) {
            let _ = p.resolve_with(&|_| None);
        }
    }
});
