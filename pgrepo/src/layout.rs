//! The repository's layout, version 1. Every key is built here.
//!
//! ```text
//! pgrepl-repository.json            format object: format name, version, encryption (plaintext)
//! system/<SYSTEM-ID>.json           the cluster the repository belongs to (written by the
//!                                   first writer, create-only; the ID is in the name so that
//!                                   a writer without the identity can check it)
//! backups/<ID>/pack-<NNNNN>         a backup's file data: each file in chunks of 1 MiB,
//!                                   each chunk compressed on its own (zstd) so that any
//!                                   block can be read with one ranged GET
//! backups/<ID>/index                where every file, directory and link is (zstd JSON lines)
//! backups/<ID>/manifest             the server's backup_manifest, chunked like a packed file
//! backups/<ID>/commit.json          the commit record, written last and create-only: a backup
//!                                   without one does not exist
//! wal/<TLI><LOG>/<SEGMENT>.zst      a completed WAL segment (zstd)
//! wal/<TLI><LOG>/<SEGMENT>.partial.zst
//!                                   the tail of the segment being streamed, replaced as it grows
//! wal/history/<TLI>.history         timeline history files
//! leases/<TOKEN>.json               a running incremental backup's claim on its parent chain
//!                                   (renewed while it runs, void once expired)
//! expiring/<ID>.json                `expire` is about to remove backup ID (void once expired)
//! ```
//!
//! Backup IDs sort by start time: `YYYYMMDDTHHMMSSZ-F-xxxxxx` (full) or `…-I-xxxxxx`
//! (incremental), the suffix random so that two backups started in the same second differ.

use pgwal::{SegmentNo, TimelineId, WalSegSize};

/// The format object's key.
pub const FORMAT_KEY: &str = "pgrepl-repository.json";
/// The prefix of the system binding.
pub const SYSTEM_PREFIX: &str = "system/";

/// The system binding's key for `system_id`.
pub fn system_key(system_id: u64) -> String {
    format!("{SYSTEM_PREFIX}{system_id}.json")
}
/// The prefix of every backup's objects.
pub const BACKUPS_PREFIX: &str = "backups/";
/// The prefix of the WAL archive.
pub const WAL_PREFIX: &str = "wal/";
/// The prefix of timeline history files.
pub const HISTORY_PREFIX: &str = "wal/history/";
/// The format name in the format object.
pub const FORMAT_NAME: &str = "pgrepl-repository";
/// The layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Raw bytes per chunk of a stored file.
pub const CHUNK: usize = 1 << 20;

/// `backups/<id>/`.
pub fn backup_prefix(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/")
}

/// A backup's commit record.
pub fn commit_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/commit.json")
}

/// A backup's index.
pub fn index_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/index")
}

/// A backup's backup_manifest (chunked like a packed file).
pub fn manifest_key(id: &str) -> String {
    format!("{BACKUPS_PREFIX}{id}/manifest")
}

/// A backup's `n`th pack.
pub fn pack_key(id: &str, n: u32) -> String {
    format!("{BACKUPS_PREFIX}{id}/pack-{n:05}")
}

/// The directory of a segment: timeline and log number, as in its name.
fn wal_dir(tli: TimelineId, seg: SegmentNo, size: WalSegSize) -> String {
    let name = pgwal::segment_file_name(tli, seg, size);
    format!("{WAL_PREFIX}{}/", &name[..16])
}

/// A completed segment.
pub fn segment_key(tli: TimelineId, seg: SegmentNo, size: WalSegSize) -> String {
    format!(
        "{}{}.zst",
        wal_dir(tli, seg, size),
        pgwal::segment_file_name(tli, seg, size)
    )
}

/// The partial tail of a segment.
pub fn partial_key(tli: TimelineId, seg: SegmentNo, size: WalSegSize) -> String {
    format!(
        "{}{}.partial.zst",
        wal_dir(tli, seg, size),
        pgwal::segment_file_name(tli, seg, size)
    )
}

/// A timeline history file.
pub fn history_key(tli: TimelineId) -> String {
    format!("{HISTORY_PREFIX}{:08X}.history", tli.0)
}

/// What a key of the WAL archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalObject {
    /// A completed segment.
    Segment(TimelineId, SegmentNo),
    /// A segment's partial tail.
    Partial(TimelineId, SegmentNo),
    /// A history file.
    History(TimelineId),
}

/// Parses a key of the WAL archive (`None` for anything else).
pub fn parse_wal_key(key: &str, size: WalSegSize) -> Option<WalObject> {
    if let Some(h) = key.strip_prefix(HISTORY_PREFIX) {
        let t = h.strip_suffix(".history")?;
        if t.len() != 8 {
            return None;
        }
        return u32::from_str_radix(t, 16)
            .ok()
            .filter(|&t| t > 0)
            .map(|t| WalObject::History(TimelineId(t)));
    }
    let rest = key.strip_prefix(WAL_PREFIX)?;
    let (dir, file) = rest.split_once('/')?;
    let (name, partial) = match file.strip_suffix(".partial.zst") {
        Some(n) => (n, true),
        None => (file.strip_suffix(".zst")?, false),
    };
    let p = pgwal::parse_wal_file_name(name, size)?;
    let seg = p.segment?;
    if p.kind != pgwal::WalFileKind::SEGMENT || !name.starts_with(dir) || dir.len() != 16 {
        return None;
    }
    Some(if partial {
        WalObject::Partial(p.timeline, seg)
    } else {
        WalObject::Segment(p.timeline, seg)
    })
}

/// The prefix of leases.
pub const LEASES_PREFIX: &str = "leases/";
/// The prefix of expiry markers.
pub const EXPIRING_PREFIX: &str = "expiring/";

/// A lease's key.
pub fn lease_key(token: &str) -> String {
    format!("{LEASES_PREFIX}{token}.json")
}

/// The expiry marker of backup `id`.
pub fn expiring_key(id: &str) -> String {
    format!("{EXPIRING_PREFIX}{id}.json")
}

/// A new backup ID for a backup started at `unix_secs`.
pub fn new_backup_id(unix_secs: i64, incremental: bool) -> String {
    use std::hash::{BuildHasher, Hasher};
    let t = basebackup::manifest::format_gmt(unix_secs);
    // "YYYY-MM-DD HH:MM:SS GMT" -> "YYYYMMDDTHHMMSSZ"
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let stamp = format!(
        "{}T{}Z",
        &digits[..8.min(digits.len())],
        &digits[8.min(digits.len())..]
    );
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(unix_secs);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let kind = if incremental { 'I' } else { 'F' };
    format!("{stamp}-{kind}-{:06x}", h.finish() & 0xff_ffff)
}

/// Whether `id` has the shape of a backup ID (it comes from a listing: it is checked).
pub fn is_backup_id(id: &str) -> bool {
    let b = id.as_bytes();
    id.len() == 25
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[16] == b'-'
        && (b[17] == b'F' || b[17] == b'I')
        && b[18] == b'-'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
        && b[19..].iter().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let s = WalSegSize::DEFAULT;
        let seg = SegmentNo(0x142);
        let k = segment_key(TimelineId(3), seg, s);
        assert_eq!(k, "wal/0000000300000001/000000030000000100000042.zst");
        assert_eq!(
            parse_wal_key(&k, s),
            Some(WalObject::Segment(TimelineId(3), seg))
        );
        let p = partial_key(TimelineId(3), seg, s);
        assert_eq!(
            parse_wal_key(&p, s),
            Some(WalObject::Partial(TimelineId(3), seg))
        );
        let h = history_key(TimelineId(10));
        assert_eq!(h, "wal/history/0000000A.history");
        assert_eq!(
            parse_wal_key(&h, s),
            Some(WalObject::History(TimelineId(10)))
        );
        for bad in [
            "wal/0000000300000001/000000030000000100000042",
            "wal/0000000300000002/000000030000000100000042.zst",
            "wal/history/0.history",
            "backups/x/commit.json",
        ] {
            assert_eq!(parse_wal_key(bad, s), None, "{bad}");
        }
        let id = new_backup_id(1_796_000_000, false);
        assert!(is_backup_id(&id), "{id}");
        assert!(id.starts_with("2026"), "{id}");
        assert!(crate::store::check_key(&commit_key(&id)).is_ok());
        assert!(!is_backup_id("20261130T000000Z-X-000000"));
    }
}
