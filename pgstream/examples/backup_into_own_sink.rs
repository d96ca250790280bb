//! A sink written by a user: instead of storing the backup, it computes the SHA-256 of every
//! archive as the server sends it and counts the files inside, e.g. to check an upload on the
//! other side. It is composed with the verifying layer, so the run still fails if any file does
//! not match the server's manifest.
//!
//!   cargo run -p pgstream --example backup_into_own_sink -- "host=db user=backup"

use basebackup::checksum::{to_hex, ChecksumKind};
use basebackup::sink::{ArchiveInfo, BackupEnd, BackupSink, SinkError, Tee, VerifySink};
use basebackup::tar::EntryHeader;
use pgstream::{take_backup, WalMethod};
use sha2::Digest;

/// Hashes each archive; keeps nothing on disk.
#[derive(Default)]
struct HashSink {
    current: Option<(String, sha2::Sha256, u64)>,
    files: u64,
}

impl BackupSink for HashSink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.current = Some((a.name.clone(), sha2::Sha256::new(), 0));
        Ok(())
    }

    fn archive_raw(&mut self, raw: &[u8]) -> Result<(), SinkError> {
        if let Some((_, h, n)) = &mut self.current {
            h.update(raw);
            *n += raw.len() as u64;
        }
        Ok(())
    }

    fn entry_begin(&mut self, _entry: &EntryHeader) -> Result<(), SinkError> {
        self.files += 1;
        Ok(())
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        if let Some((name, h, n)) = self.current.take() {
            println!("{name}: {n} bytes, sha256 {}", to_hex(&h.finalize()));
        }
        Ok(())
    }

    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        println!(
            "{} entries; WAL from {} to {} on timeline {} is needed to restore",
            self.files, end.start_lsn, end.end_lsn, end.timeline
        );
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conninfo = std::env::args().nth(1).unwrap_or_default();
    let config = pgrepl::Config::from_conninfo(&conninfo)?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    let sink = Tee(
        VerifySink::new(ChecksumKind::Crc32c, Some(id.system_id)),
        HashSink::default(),
    );
    let options = pgrepl::BaseBackupOptions {
        checkpoint: pgrepl::CheckpointMode::Fast,
        ..Default::default()
    };
    let (summary, _sink) = take_backup(&mut conn, &options, &WalMethod::None, sink, |_| {}).await?;
    println!(
        "{} files verified against the manifest in {:?}",
        summary.files, summary.duration
    );
    Ok(())
}
