//! The repository's records, as JSON: the format object, the system binding, a backup's
//! commit record and its index entries. LSNs are written as PostgreSQL writes them
//! (`16/B374D848`) and system identifiers as decimal strings (JSON numbers lose precision past
//! 2^53).

use serde::{Deserialize, Serialize};

use pgwal::{Lsn, TimelineId};

mod lsn_text {
    use pgwal::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(l)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod u64_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The format object at the repository's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatRecord {
    /// Always [`crate::layout::FORMAT_NAME`].
    pub format: String,
    /// The layout version.
    pub version: u32,
    /// When `init` ran (UTC, `YYYY-MM-DD HH:MM:SS GMT`).
    pub created: String,
    /// The recipients every object is encrypted to; absent: the repository is not encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionRecord>,
}

/// How a repository is encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionRecord {
    /// The format of every object: `age`.
    pub format: String,
    /// The age recipients (`age1…`).
    pub recipients: Vec<String>,
}

/// The cluster a repository belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRecord {
    /// Its system identifier.
    #[serde(with = "u64_text")]
    pub system_identifier: u64,
    /// When it was bound.
    pub bound: String,
    /// Its WAL segment size (names of WAL files depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_segment_size: Option<u64>,
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// A full backup.
    Full,
    /// Incremental on its parent.
    Incremental,
}

/// An object of a backup, with its stored size (what `check` compares with a listing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// Its key.
    pub key: String,
    /// Its size in the store.
    pub size: u64,
    /// Its content's size (the stored size less encryption's overhead).
    #[serde(default)]
    pub content_size: u64,
}

/// A tablespace of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TablespaceRecord {
    /// Its OID.
    pub oid: u32,
    /// Its location on the server.
    pub location: String,
}

/// A backup's commit record: written last; the backup exists once it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// The layout version it was written with.
    pub format: u32,
    /// Its ID.
    pub id: String,
    /// Full or incremental.
    pub kind: BackupKind,
    /// The backup it is incremental on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Why it is full when an incremental was possible in principle (`--type auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
    /// The cluster's system identifier.
    #[serde(with = "u64_text")]
    pub system_identifier: u64,
    /// The server's `server_version_num`.
    pub server_version: u32,
    /// The timeline it was taken on.
    pub timeline: u32,
    /// Where replay starts.
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    /// Where the backup is consistent.
    #[serde(with = "lsn_text")]
    pub end_lsn: Lsn,
    /// When it started (Unix seconds, the client's clock).
    pub start_time: i64,
    /// When it ended.
    pub end_time: i64,
    /// The WAL segment size.
    pub wal_segment_size: u64,
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Bytes stored (packs and index).
    pub stored_bytes: u64,
    /// How chunks are compressed: `none` or `zstd`.
    pub compression: String,
    /// Its tablespaces.
    #[serde(default)]
    pub tablespaces: Vec<TablespaceRecord>,
    /// Its objects other than this record.
    pub objects: Vec<StoredObject>,
}

impl BackupRecord {
    /// The timeline, typed.
    pub fn timeline_id(&self) -> TimelineId {
        TimelineId(self.timeline)
    }
}

/// What an index entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryType {
    /// A regular file.
    #[serde(rename = "f")]
    File,
    /// A directory.
    #[serde(rename = "d")]
    Dir,
    /// A symbolic link.
    #[serde(rename = "l")]
    Link,
}

/// One line of a backup's index: an entry of one of its archives, and where its data is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The archive: `base`, a tablespace OID, `pg_wal` (WAL streamed beside the backup), or
    /// `meta` (the backup_manifest).
    #[serde(rename = "a")]
    pub archive: String,
    /// The path inside the archive.
    #[serde(rename = "p")]
    pub path: String,
    /// File, directory or link.
    #[serde(rename = "t")]
    pub kind: EntryType,
    /// Permission bits.
    #[serde(rename = "m")]
    pub mode: u32,
    /// Modification time (Unix seconds).
    #[serde(rename = "mt")]
    pub mtime: i64,
    /// Size (files).
    #[serde(rename = "s", default)]
    pub size: u64,
    /// A link's target.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The pack holding the data.
    #[serde(rename = "k", default)]
    pub pack: u32,
    /// Where the data starts in the pack.
    #[serde(rename = "o", default)]
    pub offset: u64,
    /// The stored size of each chunk (1 MiB of the file each, the last shorter).
    #[serde(rename = "c", default)]
    pub chunks: Vec<u32>,
}

impl IndexEntry {
    /// The manifest-relative path (`pg_tblspc/<oid>/…` for tablespaces, `pg_wal/…` for WAL).
    pub fn manifest_path(&self) -> String {
        match self.archive.as_str() {
            "base" | "meta" => self.path.clone(),
            "pg_wal" => format!("pg_wal/{}", self.path),
            oid => format!("pg_tblspc/{oid}/{}", self.path),
        }
    }
}
