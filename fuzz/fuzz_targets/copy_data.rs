//! CopyData payloads: XLogData / keepalive, standby replies, BASE_BACKUP sub-messages.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let body = bytes::Bytes::copy_from_slice(data);
    let _ = pgrepl::replication::WalMessage::decode(&body);
    let _ = pgrepl::replication::StandbyMessage::decode(data);
    let _ = pgrepl::backup::BackupCopyMessage::decode(&body);
});
