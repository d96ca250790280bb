//! Timeline history files.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(h) = pgwal::timeline::TimelineHistory::parse(text) {
            // what we write must parse back the same
            let again = pgwal::timeline::TimelineHistory::parse(&h.to_text());
            assert_eq!(again.as_ref().ok(), Some(&h));
        }
    }
});
