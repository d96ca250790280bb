//! backup_manifest: the strict parser on arbitrary bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = basebackup::manifest::parse_manifest(data);
});
