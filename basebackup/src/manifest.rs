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
        if crate::pathbytes::is_escaped(path) {
            // a name that is not UTF-8 is written hex-encoded, as the server writes it
            self.buf.extend_from_slice(b"{ \"Encoded-Path\": \"");
            self.buf
                .extend_from_slice(to_hex(&crate::pathbytes::encode(path)).as_bytes());
            self.buf.push(b'"');
        } else {
            self.buf.extend_from_slice(b"{ \"Path\": ");
            push_json_string(&mut self.buf, path);
        }
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

/// A structural error, worded as pg_verifybackup's manifest parser words it.
fn perr(message: impl std::fmt::Display) -> ManifestError {
    bad(format!("could not parse backup manifest: {message}"))
}

/// What kind of JSON value `v` is, as "unexpected ..." errors name it.
fn unexpected(v: &Value) -> ManifestError {
    perr(match v {
        Value::Object(_) => "unexpected object start",
        Value::Array(_) => "unexpected array start",
        _ => "unexpected scalar",
    })
}

/// Parses and checks a manifest: syntax, structure, and the manifest checksum. Errors are those
/// of PostgreSQL's `parse_manifest.c` (prefixed "could not parse backup manifest: " for
/// structural ones) and pg_verifybackup's (duplicate paths, checksums), so they read alike.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| perr(format!("parsing failed: {e}")))?;
    let obj = match &root {
        Value::Object(o) => o,
        other => return Err(unexpected(other)),
    };
    if obj.is_empty() {
        return Err(perr("unexpected object end"));
    }
    // the first key must be the version (serde's map is sorted, so look at the text)
    let trimmed = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &bytes[i + 1..])
        .unwrap_or(&[]);
    let first_key = trimmed
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &trimmed[i..])
        .unwrap_or(&[]);
    if !first_key.starts_with(b"\"PostgreSQL-Backup-Manifest-Version\"") {
        return Err(perr("expected version indicator"));
    }
    serde_json::from_slice::<NoDuplicateKeys>(bytes)
        .map_err(|e| perr(format!("parsing failed: {e}")))?;
    let version = match &obj["PostgreSQL-Backup-Manifest-Version"] {
        Value::Number(n) => match n.as_u64() {
            Some(v @ (1 | 2)) => v as u32,
            _ => return Err(perr("unexpected manifest version")),
        },
        Value::String(t) if t.parse::<i64>().is_ok() => match t.parse::<i64>() {
            Ok(v @ (1 | 2)) => v as u32,
            _ => return Err(perr("unexpected manifest version")),
        },
        Value::String(_) => return Err(perr("manifest version not an integer")),
        other => return Err(unexpected(other)),
    };
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
            return Err(perr("unrecognized top-level field"));
        }
    }
    let system_identifier = match obj.get("System-Identifier") {
        None if version >= 2 => return Err(perr("manifest system identifier not found")),
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| perr("system identifier in manifest not an integer"))?,
        ),
        Some(Value::String(_)) => return Err(perr("system identifier in manifest not an integer")),
        Some(other) => return Err(unexpected(other)),
    };
    let empty = Vec::new();
    let files_v = match obj.get("Files") {
        None => &empty,
        Some(Value::Array(a)) => a,
        Some(other) => return Err(unexpected(other)),
    };
    let mut files = Vec::with_capacity(files_v.len());
    let mut seen = HashSet::new();
    for f in files_v {
        let fo = match f {
            Value::Object(o) => o,
            other => return Err(unexpected(other)),
        };
        for (k, v) in fo {
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
                return Err(perr("unexpected file field"));
            }
            if !matches!(v, Value::String(_) | Value::Number(_)) {
                return Err(unexpected(v));
            }
        }
        let text = |v: &Value| -> String {
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        };
        let (path_v, encoded_v) = (fo.get("Path"), fo.get("Encoded-Path"));
        match (path_v, encoded_v) {
            (None, None) => return Err(perr("missing path name")),
            (Some(_), Some(_)) => return Err(perr("both path name and encoded path name")),
            _ => {}
        }
        let size_v = fo.get("Size").ok_or_else(|| perr("missing size"))?;
        let (alg_v, sum_v) = (fo.get("Checksum-Algorithm"), fo.get("Checksum"));
        if alg_v.is_some() != sum_v.is_some() {
            return Err(perr(if alg_v.is_none() {
                "checksum without algorithm"
            } else {
                "algorithm without checksum"
            }));
        }
        let size = text(size_v)
            .parse::<u64>()
            .map_err(|_| perr("file size is not an integer"))?;
        let path = match (path_v, encoded_v) {
            (Some(p), _) => text(p),
            (_, Some(e)) => {
                let raw = from_hex(&text(e)).ok_or_else(|| perr("could not decode file name"))?;
                crate::pathbytes::decode(&raw)
            }
            (None, None) => unreachable!("checked above"),
        };
        if !seen.insert(path.clone()) {
            return Err(bad(format!(
                "duplicate path name in backup manifest: \"{path}\""
            )));
        }
        let last_modified = fo.get("Last-Modified").map(text);
        let (checksum_kind, checksum) = match (alg_v, sum_v) {
            (Some(a), Some(c)) => {
                let a = text(a);
                let kind = ChecksumKind::parse(&a)
                    .ok_or_else(|| bad(format!("unrecognized checksum algorithm: \"{a}\"")))?;
                let c = text(c);
                let bytes = from_hex(&c)
                    .filter(|b| b.len() == kind.digest_len())
                    .ok_or_else(|| bad(format!("invalid checksum for file \"{path}\": \"{c}\"")))?;
                (kind, bytes)
            }
            _ => (ChecksumKind::None, Vec::new()),
        };
        files.push(ManifestFile {
            path,
            size,
            last_modified,
            checksum_kind,
            checksum,
        });
    }
    let ranges_v = match obj.get("WAL-Ranges") {
        None => &empty,
        Some(Value::Array(a)) => a,
        Some(other) => return Err(unexpected(other)),
    };
    let mut wal_ranges = Vec::with_capacity(ranges_v.len());
    for r in ranges_v {
        let ro = match r {
            Value::Object(o) => o,
            other => return Err(unexpected(other)),
        };
        for (k, v) in ro {
            if !["Timeline", "Start-LSN", "End-LSN"].contains(&k.as_str()) {
                return Err(perr("unexpected WAL range field"));
            }
            if !matches!(v, Value::String(_) | Value::Number(_)) && k != "Timeline" {
                return Err(unexpected(v));
            }
        }
        let tli_v = ro.get("Timeline").ok_or_else(|| perr("missing timeline"))?;
        let start_v = ro
            .get("Start-LSN")
            .ok_or_else(|| perr("missing start LSN"))?;
        let end_v = ro.get("End-LSN").ok_or_else(|| perr("missing end LSN"))?;
        let tli = match tli_v {
            Value::Number(n) => n.as_u64(),
            Value::String(t) => t.parse::<u64>().ok(),
            _ => None,
        }
        .filter(|t| *t <= u64::from(u32::MAX))
        .ok_or_else(|| perr("timeline is not an integer"))?;
        let parse_lsn = |v: &Value, what: &str| -> Result<Lsn, ManifestError> {
            v.as_str()
                .and_then(|t| t.parse::<Lsn>().ok())
                .ok_or_else(|| perr(format!("could not parse {what} LSN")))
        };
        let range = WalRange {
            timeline: TimelineId(tli as u32),
            start: parse_lsn(start_v, "start")?,
            end: parse_lsn(end_v, "end")?,
        };
        if range.end < range.start {
            return Err(perr(format!(
                "WAL range end {} before its start {}",
                range.end, range.start
            )));
        }
        wal_ranges.push(range);
    }
    let Some(checksum_v) = obj.get("Manifest-Checksum") else {
        return Err(perr("unexpected object end"));
    };
    // the checksum covers everything up to the line holding it (verify_manifest_checksum)
    let newlines: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    if newlines.len() < 2 {
        return Err(perr("expected at least 2 lines"));
    }
    if newlines.last() != Some(&(bytes.len() - 1)) {
        return Err(perr("last line not newline-terminated"));
    }
    let manifest_checksum = match checksum_v {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
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
        let cases: Vec<(Vec<u8>, &str)> =
            vec![
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
                "unexpected file field",
            ),
            (make(&GOOD.replace("839206e3", "839206")), "invalid checksum for file"),
            (
                make(&GOOD.replace("839206e3", "zz9206e3")),
                "invalid checksum",
            ),
            (
                make(&GOOD.replace("\"System-Identifier\": 7311,\n", "")),
                "manifest system identifier not found",
            ),
            (
                make(&GOOD.replace(
                    "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7311,",
                    "{ \"System-Identifier\": 7311, \"PostgreSQL-Backup-Manifest-Version\": 2,",
                )),
                "version indicator",
            ),
            (make(&GOOD.replace("0/2000100", "0/20001000000")), "could not parse end LSN"),
        ];
        for (bytes, expect) in cases {
            let e = parse_manifest(&bytes).unwrap_err();
            assert!(e.message.contains(expect), "expected {expect:?}, got {e}");
        }
    }

    /// The cases of PostgreSQL's pg_verifybackup/t/005_bad_manifest.pl, with its messages.
    #[test]
    fn postgresql_bad_manifest_cases() {
        let v1 = "{\"PostgreSQL-Backup-Manifest-Version\": 1";
        let parse = [
            ("{\n", "parsing failed"),
            ("{}\n", "unexpected object end"),
            ("[]\n", "unexpected array start"),
            ("{\"not-expected\": 1}\n", "expected version indicator"),
            ("{\"PostgreSQL-Backup-Manifest-Version\": \"phooey\"}\n", "manifest version not an integer"),
            ("{\"PostgreSQL-Backup-Manifest-Version\": 9876599}\n", "unexpected manifest version"),
            (&format!("{v1}, \"Files\": true}}\n"), "unexpected scalar"),
            (&format!("{v1}, \"Oops\": 1}}\n"), "unrecognized top-level field"),
            (&format!("{v1}, \"Files\": {{}}}}\n"), "unexpected object start"),
            (&format!("{v1}, \"Files\": [{{}}]}}\n"), "missing path name"),
            (&format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Encoded-Path\": \"1234\"}}\n]}}\n"), "both path name and encoded path name"),
            (&format!("{v1}, \"Files\": [\n {{\"Oops\": 1}}\n]}}\n"), "unexpected file field"),
            (&format!("{v1}, \"Files\": [\n {{\"Path\": \"x\"}}\n]}}\n"), "missing size"),
            (&format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Size\": \"Oops\"}}\n]}}\n"), "file size is not an integer"),
            (&format!("{v1}, \"Files\": [\n {{\"Encoded-Path\": \"123\", \"Size\": 0}}\n]}}\n"), "could not decode file name"),
            (&format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Size\": 100, \"Checksum\": \"Oops\"}}\n]}}\n"), "checksum without algorithm"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": 1}}\n]}}\n"), "missing start LSN"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": 1, \"Start-LSN\": \"0/0\"}}\n]}}\n"), "missing end LSN"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Oops\": 1}}\n]}}\n"), "unexpected WAL range field"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{}}\n]}}\n"), "missing timeline"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": 1, \"Start-LSN\": \"0/0\", \"End-LSN\": \"0/0\"}}\n]}}\n"), "unexpected object end"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": true, \"Start-LSN\": \"0/0\", \"End-LSN\": \"0/0\"}}\n]}}\n"), "timeline is not an integer"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": 1, \"Start-LSN\": \"oops\", \"End-LSN\": \"0/0\"}}\n]}}\n"), "could not parse start LSN"),
            (&format!("{v1}, \"WAL-Ranges\": [\n {{\"Timeline\": 1, \"Start-LSN\": \"0/0\", \"End-LSN\": \"oops\"}}\n]}}\n"), "could not parse end LSN"),
            (&format!("{v1}, \"Files\": [], \"Manifest-Checksum\": null}}\n"), "expected at least 2 lines"),
            (&format!("{v1},\n \"Files\": [],\n \"Manifest-Checksum\": null}}"), "last line not newline-terminated"),
        ];
        for (text, want) in parse {
            let e = parse_manifest(text.as_bytes()).unwrap_err().message;
            assert!(
                e.starts_with(&format!("could not parse backup manifest: {want}")),
                "{text:?}: expected {want:?}, got {e:?}"
            );
        }
        let fatal = [
            (format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Size\": 0}},\n {{\"Path\": \"x\", \"Size\": 0}}\n]}}\n"), "duplicate path name in backup manifest"),
            (format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Size\": 100, \"Checksum-Algorithm\": \"Oops\", \"Checksum\": \"00\"}}\n]}}\n"), "unrecognized checksum algorithm"),
            (format!("{v1}, \"Files\": [\n {{\"Path\": \"x\", \"Size\": 100, \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"0\"}}\n]}}\n"), "invalid checksum for file"),
            (format!("{v1}, \"Files\": [],\n \"Manifest-Checksum\": \"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01234567890-\"}}\n"), "invalid manifest checksum"),
        ];
        for (text, want) in fatal {
            let e = parse_manifest(text.as_bytes()).unwrap_err().message;
            assert!(
                e.starts_with(want),
                "{text:?}: expected {want:?}, got {e:?}"
            );
        }
    }
}
