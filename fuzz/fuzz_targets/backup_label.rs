//! backup_label as read from a backup on disk (bytes that need not be UTF-8).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(l) = basebackup::backup_label::BackupLabel::parse(&text) {
        let _ = basebackup::backup_label::strip_incremental(&text);
        let _ = format!("{l:?}");
    }
});
