//! `backup_manifest`: a strict parser, and the manifest checksum.
//!
//! Format from `src/common/parse_manifest.c` (the parser pg_verifybackup uses) and
//! `src/backend/backup/backup_manifest.c` (the writer): a JSON object whose first key is
//! `PostgreSQL-Backup-Manifest-Version` (1, or 2 with `System-Identifier` from PostgreSQL 17),
//! `Files` (with `Path` or hex `Encoded-Path`, `Size`, `Last-Modified`, optional
//! `Checksum-Algorithm` + `Checksum`), `WAL-Ranges`, and `Manifest-Checksum`: SHA-256 over every
//! byte up to and including the newline before the last line. Anything unexpected — unknown or
//! duplicate keys, duplicate paths, bad hex, a wrong manifest checksum — is an error saying what.

use std::collections::HashSet;
use std::fmt;

use pgwal::{Lsn, TimelineId};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::Digest;

use crate::checksum::{from_hex, to_hex, ChecksumKind};

/// One file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory (`pg_tblspc/<oid>/...` for tablespaces).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// `Last-Modified` as written (informational).
    pub last_modified: Option<String>,
    /// The checksum algorithm (`None` when the manifest has no checksum for the file).
    pub checksum_kind: ChecksumKind,
    /// The checksum bytes.
    pub checksum: Vec<u8>,
}

/// A WAL range the backup needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalRange {
    /// Timeline.
    pub timeline: TimelineId,
    /// First position needed.
    pub start: Lsn,
    /// End of what is needed.
    pub end: Lsn,
}

/// A parsed, checksum-verified manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// 1 (PostgreSQL 13–16) or 2 (17+).
    pub version: u32,
    /// The system identifier (version 2).
    pub system_identifier: Option<u64>,
    /// Files, in manifest order.
    pub files: Vec<ManifestFile>,
    /// WAL ranges, newest timeline first.
    pub wal_ranges: Vec<WalRange>,
    /// The manifest checksum (SHA-256, hex).
    pub manifest_checksum: String,
}

/// What is wrong with a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The problem.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

fn bad(message: impl Into<String>) -> ManifestError {
    ManifestError {
        message: message.into(),
    }
}

/// Walks a JSON document and rejects objects with a repeated key (serde_json keeps the last).
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = a.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("duplicate key \"{k}\"")));
            }
            a.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}

/// The bytes the manifest checksum covers, and the checksum line: everything up to and including
/// the penultimate newline (`verify_manifest_checksum` in parse_manifest.c).
pub fn checksummed_part(bytes: &[u8]) -> Result<&[u8], ManifestError> {
    if bytes.last() != Some(&b'\n') {
        return Err(bad("manifest does not end with a newline"));
    }
    let body = &bytes[..bytes.len() - 1];
    let penultimate = body
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or_else(|| bad("manifest has fewer than two lines"))?;
    Ok(&bytes[..=penultimate])
}

/// SHA-256 hex of the checksummed part, as the `Manifest-Checksum` line must say.
pub fn compute_manifest_checksum(bytes: &[u8]) -> Result<String, ManifestError> {
    Ok(to_hex(&sha2::Sha256::digest(checksummed_part(bytes)?)))
}

/// Writes a manifest in the server's exact layout (`backup_manifest.c`), as pg_combinebackup's
/// `write_manifest.c` does: one line per file, then the WAL ranges and the checksum line.
#[derive(Debug)]
pub struct ManifestWriter {
    buf: Vec<u8>,
    files: usize,
}

/// Appends `s` as a JSON string the way PostgreSQL's `escape_json` does.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `YYYY-MM-DD HH:MM:SS GMT` for seconds since the epoch, as `Last-Modified` is written.
pub fn format_gmt(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil-from-days (proleptic Gregorian), days counted from 1970-01-01
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl ManifestWriter {
    /// Starts a version-2 manifest (a version-1 one when there is no system identifier).
    pub fn new(system_identifier: Option<u64>) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        match system_identifier {
            Some(id) => buf.extend_from_slice(
                format!(
                    "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": {id},\n\"Files\": ["
                )
                .as_bytes(),
            ),
            None => buf
                .extend_from_slice(b"{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": ["),
        }
        ManifestWriter { buf, files: 0 }
    }

    /// Adds a file. `mtime` is in seconds since the epoch.
    pub fn add_file(&mut self, path: &str, size: u64, mtime: i64, kind: ChecksumKind, sum: &[u8]) {
        self.buf.extend_from_slice(if self.files == 0 {
            &b"\n"[..]
        } else {
            &b",\n"[..]
        });
        self.files += 1;
        self.buf.extend_from_slice(b"{ \"Path\": ");
        push_json_string(&mut self.buf, path);
        self.buf.extend_from_slice(
            format!(
                ", \"Size\": {size}, \"Last-Modified\": \"{}\"",
                format_gmt(mtime)
            )
            .as_bytes(),
        );
        if kind != ChecksumKind::None {
            self.buf.extend_from_slice(
                format!(
                    ", \"Checksum-Algorithm\": \"{}\", \"Checksum\": \"{}\"",
                    kind.as_str(),
                    to_hex(sum)
                )
                .as_bytes(),
            );
        }
        self.buf.extend_from_slice(b" }");
    }

    /// Ends the manifest with its WAL ranges (newest timeline first) and checksum line.
    pub fn finish(mut self, wal_ranges: &[WalRange]) -> Vec<u8> {
        self.buf.extend_from_slice(b"\n],\n\"WAL-Ranges\": [\n");
        for (i, r) in wal_ranges.iter().enumerate() {
            if i > 0 {
                self.buf.extend_from_slice(b",\n");
            }
            self.buf.extend_from_slice(
                format!(
                    "{{ \"Timeline\": {}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}",
                    r.timeline.0, r.start, r.end
                )
                .as_bytes(),
            );
        }
        self.buf.extend_from_slice(b"\n],\n");
        let sum = to_hex(&sha2::Sha256::digest(&self.buf));
        self.buf
            .extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
        self.buf
    }
}

fn field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<&'a Value, ManifestError> {
    obj.get(key)
        .ok_or_else(|| bad(format!("{what}: missing \"{key}\"")))
}

fn lsn(v: &Value, what: &str) -> Result<Lsn, ManifestError> {
    v.as_str()
        .ok_or_else(|| bad(format!("{what} is not a string")))?
        .parse()
        .map_err(|e| bad(format!("{what}: {e}")))
}

/// Parses and checks a manifest: syntax, structure, and the manifest checksum.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let trimmed = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &bytes[i..])
        .unwrap_or(&[]);
    let after_brace = trimmed
        .strip_prefix(b"{")
        .ok_or_else(|| bad("manifest is not a JSON object"))?;
    let first_key = after_brace
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &after_brace[i..])
        .unwrap_or(&[]);
    if !first_key.starts_with(b"\"PostgreSQL-Backup-Manifest-Version\"") {
        return Err(bad("expected version indicator as the first key"));
    }
    serde_json::from_slice::<NoDuplicateKeys>(bytes)
        .map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = root
        .as_object()
        .ok_or_else(|| bad("manifest is not a JSON object"))?;
    for k in obj.keys() {
        if ![
            "PostgreSQL-Backup-Manifest-Version",
            "System-Identifier",
            "Files",
            "WAL-Ranges",
            "Manifest-Checksum",
        ]
        .contains(&k.as_str())
        {
            return Err(bad(format!("unexpected top-level field \"{k}\"")));
        }
    }
    let version = obj["PostgreSQL-Backup-Manifest-Version"]
        .as_u64()
        .filter(|v| *v == 1 || *v == 2)
        .ok_or_else(|| bad("unexpected manifest version (expected 1 or 2)"))?
        as u32;
    let system_identifier = match obj.get("System-Identifier") {
        None if version >= 2 => return Err(bad("version 2 manifest has no System-Identifier")),
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad("System-Identifier is not an unsigned integer"))?,
        ),
    };
    let files_v = field(obj, "Files", "manifest")?
        .as_array()
        .ok_or_else(|| bad("\"Files\" is not an array"))?;
    let mut files = Vec::with_capacity(files_v.len());
    let mut seen = HashSet::new();
    for (i, f) in files_v.iter().enumerate() {
        let what = format!("file entry {}", i + 1);
        let fo = f
            .as_object()
            .ok_or_else(|| bad(format!("{what} is not an object")))?;
        for k in fo.keys() {
            if ![
                "Path",
                "Encoded-Path",
                "Size",
                "Last-Modified",
                "Checksum-Algorithm",
                "Checksum",
            ]
            .contains(&k.as_str())
            {
                return Err(bad(format!("{what}: unexpected field \"{k}\"")));
            }
        }
        let path = match (fo.get("Path"), fo.get("Encoded-Path")) {
            (Some(p), None) => p
                .as_str()
                .ok_or_else(|| bad(format!("{what}: \"Path\" is not a string")))?
                .to_owned(),
            (None, Some(e)) => {
                let raw = e
                    .as_str()
                    .and_then(from_hex)
                    .ok_or_else(|| bad(format!("{what}: \"Encoded-Path\" is not hex")))?;
                String::from_utf8(raw)
                    .map_err(|_| bad(format!("{what}: path is not UTF-8 (unsupported)")))?
            }
            (Some(_), Some(_)) => {
                return Err(bad(format!("{what}: both \"Path\" and \"Encoded-Path\"")))
            }
            (None, None) => return Err(bad(format!("{what}: missing path name"))),
        };
        let what = format!("file \"{path}\"");
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "duplicate path name in backup manifest: \"{path}\""
            )));
        }
        let size = field(fo, "Size", &what)?
            .as_u64()
            .ok_or_else(|| bad(format!("{what}: \"Size\" is not an unsigned integer")))?;
        let last_modified = match fo.get("Last-Modified") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| bad(format!("{what}: \"Last-Modified\" is not a string")))?
                    .to_owned(),
            ),
        };
        let (checksum_kind, checksum) = match (fo.get("Checksum-Algorithm"), fo.get("Checksum")) {
            (None, None) => (ChecksumKind::None, Vec::new()),
            (Some(a), Some(c)) => {
                let kind = a
                    .as_str()
                    .and_then(ChecksumKind::parse)
                    .ok_or_else(|| bad(format!("{what}: unrecognized checksum algorithm {a}")))?;
                let bytes = c
                    .as_str()
                    .and_then(from_hex)
                    .ok_or_else(|| bad(format!("{what}: invalid checksum {c}")))?;
                if bytes.len() != kind.digest_len() {
                    return Err(bad(format!(
                        "{what}: {} checksum has {} bytes, expected {}",
                        kind.as_str(),
                        bytes.len(),
                        kind.digest_len()
                    )));
                }
                (kind, bytes)
            }
            (Some(_), None) => return Err(bad(format!("{what}: algorithm without checksum"))),
            (None, Some(_)) => return Err(bad(format!("{what}: checksum without algorithm"))),
        };
        files.push(ManifestFile {
            path,
            size,
            last_modified,
            checksum_kind,
            checksum,
        });
    }
    let ranges_v = field(obj, "WAL-Ranges", "manifest")?
        .as_array()
        .ok_or_else(|| bad("\"WAL-Ranges\" is not an array"))?;
    let mut wal_ranges = Vec::with_capacity(ranges_v.len());
    for (i, r) in ranges_v.iter().enumerate() {
        let what = format!("WAL range {}", i + 1);
        let ro = r
            .as_object()
            .ok_or_else(|| bad(format!("{what} is not an object")))?;
        for k in ro.keys() {
            if !["Timeline", "Start-LSN", "End-LSN"].contains(&k.as_str()) {
                return Err(bad(format!("{what}: unexpected field \"{k}\"")));
            }
        }
        let tli = field(ro, "Timeline", &what)?
            .as_u64()
            .filter(|t| *t > 0 && *t <= u64::from(u32::MAX))
            .ok_or_else(|| bad(format!("{what}: invalid timeline")))?;
        let range = WalRange {
            timeline: TimelineId(tli as u32),
            start: lsn(field(ro, "Start-LSN", &what)?, &format!("{what} Start-LSN"))?,
            end: lsn(field(ro, "End-LSN", &what)?, &format!("{what} End-LSN"))?,
        };
        if range.end < range.start {
            return Err(bad(format!(
                "{what}: End-LSN {} before Start-LSN {}",
                range.end, range.start
            )));
        }
        wal_ranges.push(range);
    }
    let manifest_checksum = field(obj, "Manifest-Checksum", "manifest")?
        .as_str()
        .ok_or_else(|| bad("\"Manifest-Checksum\" is not a string"))?
        .to_owned();
    if manifest_checksum.len() != 64 || from_hex(&manifest_checksum).is_none() {
        return Err(bad(format!(
            "invalid manifest checksum: \"{manifest_checksum}\""
        )));
    }
    let actual = compute_manifest_checksum(bytes)?;
    if !actual.eq_ignore_ascii_case(&manifest_checksum) {
        return Err(bad(format!(
            "manifest checksum mismatch: the manifest says {manifest_checksum}, its content hashes to {actual}"
        )));
    }
    Ok(Manifest {
        version,
        system_identifier,
        files,
        wal_ranges,
        manifest_checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(body: &str) -> Vec<u8> {
        let mut m = body.as_bytes().to_vec();
        let sum = to_hex(&sha2::Sha256::digest(&m));
        m.extend_from_slice(format!("\"Manifest-Checksum\": \"{sum}\"}}\n").as_bytes());
        m
    }

    const GOOD: &str = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7311,\n\"Files\": [\n{ \"Path\": \"backup_label\", \"Size\": 226, \"Last-Modified\": \"2025-01-01 12:00:00 GMT\", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"839206e3\" },\n{ \"Encoded-Path\": \"626173652f312f31323334\", \"Size\": 0, \"Last-Modified\": \"2025-01-01 12:00:00 GMT\" }\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n";

    #[test]
    fn writer_output_parses_back() {
        let mut w = ManifestWriter::new(Some(42));
        w.add_file(
            "backup_label",
            3,
            1_735_732_800,
            ChecksumKind::Crc32c,
            &[1, 2, 3, 4],
        );
        w.add_file("base/1/a\"b\n", 0, 0, ChecksumKind::None, &[]);
        let ranges = [WalRange {
            timeline: TimelineId(1),
            start: Lsn(0x200_0028),
            end: Lsn(0x200_0100),
        }];
        let bytes = w.finish(&ranges);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"Last-Modified\": \"2025-01-01 12:00:00 GMT\""));
        assert!(text.contains("{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n\"Manifest-Checksum\""));
        let m = parse_manifest(&bytes).unwrap();
        assert_eq!(m.system_identifier, Some(42));
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[1].path, "base/1/a\"b\n");
        assert_eq!(m.files[0].checksum, vec![1, 2, 3, 4]);
        assert_eq!(m.wal_ranges, ranges);
        assert_eq!(format_gmt(0), "1970-01-01 00:00:00 GMT");
        assert_eq!(format_gmt(951_782_400), "2000-02-29 00:00:00 GMT");
    }

    #[test]
    fn parses_the_server_layout() {
        let m = parse_manifest(&make(GOOD)).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.system_identifier, Some(7311));
        assert_eq!(m.files[1].path, "base/1/1234");
        assert_eq!(m.files[0].checksum, vec![0x83, 0x92, 0x06, 0xe3]);
        assert_eq!(m.wal_ranges[0].end, Lsn(0x200_0100));
    }

    #[test]
    fn every_defect_is_named() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut m = make(GOOD);
                    m.push(b' ');
                    m
                },
                "newline",
            ),
            (
                {
                    let mut m = make(GOOD);
                    let n = m.len();
                    m[n - 5] ^= 1;
                    m
                },
                "checksum",
            ),
            (
                make(&GOOD.replace(
                    "backup_label\", \"Size\": 226",
                    "backup_label\", \"Size\": 226, \"Size\": 227",
                )),
                "duplicate key",
            ),
            (
                make(&GOOD.replace("\"Path\": \"backup_label\"", "\"Path\": \"base/1/1234\"")),
                "duplicate path",
            ),
            (
                make(&GOOD.replace(
                    "\"Last-Modified\": \"2025-01-01 12:00:00 GMT\" }",
                    "\"Last-Modified\": \"x\", \"Extra\": 1 }",
                )),
                "unexpected field",
            ),
            (make(&GOOD.replace("839206e3", "839206")), "expected 4"),
            (
                make(&GOOD.replace("839206e3", "zz9206e3")),
                "invalid checksum",
            ),
            (
                make(&GOOD.replace("\"System-Identifier\": 7311,\n", "")),
                "System-Identifier",
            ),
            (
                make(&GOOD.replace(
                    "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7311,",
                    "{ \"System-Identifier\": 7311, \"PostgreSQL-Backup-Manifest-Version\": 2,",
                )),
                "version indicator",
            ),
            (make(&GOOD.replace("0/2000100", "0/20001000000")), "End-LSN"),
        ];
        for (bytes, expect) in cases {
            let e = parse_manifest(&bytes).unwrap_err();
            assert!(e.message.contains(expect), "expected {expect:?}, got {e}");
        }
    }
}
