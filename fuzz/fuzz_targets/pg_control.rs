//! pg_control as read from a backup on disk: an error or the fields, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = basebackup::control::ControlFile::parse(data);
});
