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

use pgwal::{Lsn, TimelineId};
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

/// What is wrong with a manifest, in the words of PostgreSQL's `parse_manifest.c` and
/// pg_verifybackup.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The document is not a manifest (syntax or structure); `problem` is the parser's.
    #[error("could not parse backup manifest: {problem}")]
    Parse {
        /// What the parser met.
        problem: String,
    },
    /// A path listed twice.
    #[error("duplicate path name in backup manifest: \"{path}\"")]
    DuplicatePath {
        /// The path.
        path: String,
    },
    /// A checksum algorithm we do not know.
    #[error("unrecognized checksum algorithm: \"{algorithm}\"")]
    UnknownAlgorithm {
        /// As written.
        algorithm: String,
    },
    /// A file's checksum that is not hex of the algorithm's length.
    #[error("invalid checksum for file \"{path}\": \"{value}\"")]
    BadChecksum {
        /// The file.
        path: String,
        /// The value as written.
        value: String,
    },
    /// No `Manifest-Checksum`.
    #[error("manifest has no checksum")]
    NoChecksum,
    /// A `Manifest-Checksum` that is not 64 hex digits.
    #[error("invalid manifest checksum: \"{value}\"")]
    BadManifestChecksum {
        /// The value as written.
        value: String,
    },
    /// The content does not hash to the `Manifest-Checksum`.
    #[error(
        "manifest checksum mismatch: the manifest says {expected}, its content hashes to {actual}"
    )]
    ChecksumMismatch {
        /// What the manifest says.
        expected: String,
        /// What its content hashes to.
        actual: String,
    },
    /// The manifest could not be read.
    #[error("could not read backup manifest \"{}\": {source}", path.display())]
    Read {
        /// The file (empty for a stream).
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A consumer of a streamed manifest refused an item (see [`ManifestParser::feed`]).
    #[error("{0}")]
    Refused(String),
}

fn perr(problem: impl std::fmt::Display) -> ManifestError {
    ManifestError::Parse {
        problem: problem.to_string(),
    }
}

/// The bytes the manifest checksum covers, and the checksum line: everything up to and including
/// the penultimate newline (`verify_manifest_checksum` in parse_manifest.c).
pub fn checksummed_part(bytes: &[u8]) -> Result<&[u8], ManifestError> {
    if bytes.last() != Some(&b'\n') {
        return Err(perr("last line not newline-terminated"));
    }
    let body = &bytes[..bytes.len() - 1];
    let penultimate = body
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or_else(|| perr("expected at least 2 lines"))?;
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

/// What the parser meets, in manifest order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestItem {
    /// `PostgreSQL-Backup-Manifest-Version` (always first).
    Version(u32),
    /// `System-Identifier` (version 2).
    SystemIdentifier(u64),
    /// One file of `Files`, checked.
    File(ManifestFile),
    /// One range of `WAL-Ranges`, checked.
    WalRange(WalRange),
}

/// What the whole manifest said besides its files and ranges (after [`ManifestParser::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestTrailer {
    /// 1 or 2.
    pub version: u32,
    /// The system identifier (version 2).
    pub system_identifier: Option<u64>,
    /// The manifest checksum, verified.
    pub manifest_checksum: String,
}

/// The semantic states of `parse_manifest.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    TopStart,
    TopField,
    VersionValue,
    SystemIdValue,
    FilesStart,
    FilesNext,
    FileField,
    FileValue,
    RangesStart,
    RangesNext,
    RangeField,
    RangeValue,
    ChecksumValue,
    TopEnd,
    Eof,
}

const FILE_FIELDS: [&str; 6] = [
    "Path",
    "Encoded-Path",
    "Size",
    "Last-Modified",
    "Checksum-Algorithm",
    "Checksum",
];
const RANGE_FIELDS: [&str; 3] = ["Timeline", "Start-LSN", "End-LSN"];
const TOP_FIELDS: [&str; 5] = [
    "PostgreSQL-Backup-Manifest-Version",
    "System-Identifier",
    "Files",
    "WAL-Ranges",
    "Manifest-Checksum",
];

/// The meaning of the JSON events (kept apart from the reader so both can be borrowed at once).
#[derive(Debug)]
struct Semantics {
    state: State,
    /// The field whose value comes next (index into FILE_FIELDS or RANGE_FIELDS).
    field: usize,
    /// Values of the current file's or range's fields (`None`: absent; `Some(None)`: null).
    values: [Option<Option<String>>; 6],
    /// Top-level fields seen (bits, by TOP_FIELDS index).
    top_seen: u8,
    version: Option<u32>,
    system_identifier: Option<u64>,
    manifest_checksum: Option<Option<String>>,
    paths: HashSet<String>,
}

/// A manifest parser fed bytes as they come (a server's stream, a file read in pieces): it
/// keeps the set of paths seen (to refuse duplicates), the object in progress and a running
/// SHA-256, never the text. Errors are `parse_manifest.c`'s, prefixed "could not parse backup
/// manifest: " for structural ones.
#[derive(Debug)]
pub struct ManifestParser {
    json: crate::json::JsonStream,
    sem: Semantics,
    /// SHA-256 of everything so far, and as of the last two newlines: the manifest checksum
    /// covers everything up to and including the second-last newline.
    hash: sha2::Sha256,
    at_last_newline: Option<sha2::Sha256>,
    at_second_last_newline: Option<sha2::Sha256>,
    newlines: u64,
    last_byte: Option<u8>,
}

impl Default for ManifestParser {
    fn default() -> Self {
        Self::new()
    }
}

fn scalar_text(s: crate::json::Scalar<'_>) -> Option<String> {
    s.text().map(str::to_owned)
}

impl Semantics {
    fn event(
        &mut self,
        ev: crate::json::JsonEvent<'_>,
        on: &mut dyn FnMut(ManifestItem) -> Result<(), ManifestError>,
    ) -> Result<(), ManifestError> {
        use crate::json::JsonEvent as J;
        match ev {
            J::ObjectStart => match self.state {
                State::TopStart => self.state = State::TopField,
                State::FilesNext => {
                    self.values = Default::default();
                    self.state = State::FileField;
                }
                State::RangesNext => {
                    self.values = Default::default();
                    self.state = State::RangeField;
                }
                _ => return Err(perr("unexpected object start")),
            },
            J::ObjectEnd => match self.state {
                State::TopEnd => self.state = State::Eof,
                State::FileField => {
                    let f = self.finish_file()?;
                    self.state = State::FilesNext;
                    on(ManifestItem::File(f))?;
                }
                State::RangeField => {
                    let r = self.finish_range()?;
                    self.state = State::RangesNext;
                    on(ManifestItem::WalRange(r))?;
                }
                _ => return Err(perr("unexpected object end")),
            },
            J::ArrayStart => match self.state {
                State::FilesStart => self.state = State::FilesNext,
                State::RangesStart => self.state = State::RangesNext,
                _ => return Err(perr("unexpected array start")),
            },
            J::ArrayEnd => match self.state {
                State::FilesNext | State::RangesNext => self.state = State::TopField,
                _ => return Err(perr("unexpected array end")),
            },
            J::Key(k) => match self.state {
                State::TopField => {
                    if self.top_seen == 0 && k != TOP_FIELDS[0] {
                        return Err(perr("expected version indicator"));
                    }
                    let i = TOP_FIELDS
                        .iter()
                        .position(|f| *f == k)
                        .ok_or_else(|| perr("unrecognized top-level field"))?;
                    if self.top_seen & (1 << i) != 0 {
                        return Err(perr(format!("duplicate key \"{k}\"")));
                    }
                    self.top_seen |= 1 << i;
                    self.state = match i {
                        0 => State::VersionValue,
                        1 => State::SystemIdValue,
                        2 => State::FilesStart,
                        3 => State::RangesStart,
                        _ => State::ChecksumValue,
                    };
                }
                State::FileField | State::RangeField => {
                    let (names, what, next) = if self.state == State::FileField {
                        (&FILE_FIELDS[..], "file", State::FileValue)
                    } else {
                        (&RANGE_FIELDS[..], "WAL range", State::RangeValue)
                    };
                    let i = names
                        .iter()
                        .position(|f| *f == k)
                        .ok_or_else(|| perr(format!("unexpected {what} field")))?;
                    if self.values[i].is_some() {
                        return Err(perr(format!("duplicate key \"{k}\"")));
                    }
                    self.field = i;
                    self.state = next;
                }
                _ => return Err(perr("unexpected object field")),
            },
            J::Scalar(v) => match self.state {
                State::VersionValue => {
                    let t = v.text().unwrap_or_default();
                    let n: i64 = t
                        .parse()
                        .map_err(|_| perr("manifest version not an integer"))?;
                    if n != 1 && n != 2 {
                        return Err(perr("unexpected manifest version"));
                    }
                    self.version = Some(n as u32);
                    self.state = State::TopField;
                    on(ManifestItem::Version(n as u32))?;
                }
                State::SystemIdValue => {
                    let id: u64 = match v {
                        crate::json::Scalar::Number(t) => t.parse().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| perr("system identifier in manifest not an integer"))?;
                    self.system_identifier = Some(id);
                    self.state = State::TopField;
                    on(ManifestItem::SystemIdentifier(id))?;
                }
                State::FileValue => {
                    self.values[self.field] = Some(scalar_text(v));
                    self.state = State::FileField;
                }
                State::RangeValue => {
                    self.values[self.field] = Some(scalar_text(v));
                    self.state = State::RangeField;
                }
                State::ChecksumValue => {
                    self.manifest_checksum = Some(scalar_text(v));
                    self.state = State::TopEnd;
                }
                _ => return Err(perr("unexpected scalar")),
            },
        }
        Ok(())
    }

    fn take(&mut self, i: usize) -> Option<String> {
        self.values[i].take().flatten()
    }

    fn finish_file(&mut self) -> Result<ManifestFile, ManifestError> {
        let present = |s: &Self, i: usize| s.values[i].is_some();
        match (present(self, 0), present(self, 1)) {
            (false, false) => return Err(perr("missing path name")),
            (true, true) => return Err(perr("both path name and encoded path name")),
            _ => {}
        }
        if !present(self, 2) {
            return Err(perr("missing size"));
        }
        let (alg, sum) = (present(self, 4), present(self, 5));
        if !alg && sum {
            return Err(perr("checksum without algorithm"));
        }
        if alg && !sum {
            return Err(perr("algorithm without checksum"));
        }
        let path = match self.take(0) {
            Some(p) => p,
            None => {
                let e = self.take(1).unwrap_or_default();
                let raw = from_hex(&e).ok_or_else(|| perr("could not decode file name"))?;
                crate::pathbytes::decode(&raw)
            }
        };
        let size = self
            .take(2)
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| perr("file size is not an integer"))?;
        let last_modified = self.take(3);
        let (checksum_kind, checksum) = match (self.take(4), self.take(5)) {
            (Some(a), Some(c)) => {
                let kind =
                    ChecksumKind::parse(&a).ok_or_else(|| ManifestError::UnknownAlgorithm {
                        algorithm: a.clone(),
                    })?;
                let bytes = from_hex(&c)
                    .filter(|b| b.len() == kind.digest_len())
                    .ok_or_else(|| ManifestError::BadChecksum {
                        path: path.clone(),
                        value: c.clone(),
                    })?;
                (kind, bytes)
            }
            (Some(a), None) => {
                return Err(ManifestError::BadChecksum {
                    path,
                    value: format!("(none, with algorithm {a})"),
                })
            }
            _ => (ChecksumKind::None, Vec::new()),
        };
        if !self.paths.insert(path.clone()) {
            return Err(ManifestError::DuplicatePath { path });
        }
        Ok(ManifestFile {
            path,
            size,
            last_modified,
            checksum_kind,
            checksum,
        })
    }

    fn finish_range(&mut self) -> Result<WalRange, ManifestError> {
        for (i, what) in ["missing timeline", "missing start LSN", "missing end LSN"]
            .iter()
            .enumerate()
        {
            if self.values[i].is_none() {
                return Err(perr(what));
            }
        }
        let tli = self
            .take(0)
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| perr("timeline is not an integer"))?;
        let lsn = |t: Option<String>, what: &str| -> Result<Lsn, ManifestError> {
            t.and_then(|t| t.parse::<Lsn>().ok())
                .ok_or_else(|| perr(format!("could not parse {what} LSN")))
        };
        let start = lsn(self.take(1), "start")?;
        let end = lsn(self.take(2), "end")?;
        if end < start {
            return Err(perr(format!(
                "WAL range end {end} before its start {start}"
            )));
        }
        Ok(WalRange {
            timeline: TimelineId(tli),
            start,
            end,
        })
    }
}

impl From<crate::json::JsonError> for ManifestError {
    fn from(e: crate::json::JsonError) -> Self {
        perr(format!("parsing failed: {e}"))
    }
}

impl ManifestParser {
    /// A parser at the start of a manifest.
    pub fn new() -> Self {
        ManifestParser {
            json: crate::json::JsonStream::new(),
            sem: Semantics {
                state: State::TopStart,
                field: 0,
                values: Default::default(),
                top_seen: 0,
                version: None,
                system_identifier: None,
                manifest_checksum: None,
                paths: HashSet::new(),
            },
            hash: sha2::Sha256::new(),
            at_last_newline: None,
            at_second_last_newline: None,
            newlines: 0,
            last_byte: None,
        }
    }

    /// Feeds the next bytes; `on` gets each item as soon as it is complete and checked.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        on: &mut dyn FnMut(ManifestItem) -> Result<(), ManifestError>,
    ) -> Result<(), ManifestError> {
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.hash.update(&rest[..=i]);
            self.newlines += 1;
            self.at_second_last_newline = self.at_last_newline.replace(self.hash.clone());
            rest = &rest[i + 1..];
        }
        self.hash.update(rest);
        if let Some(&b) = chunk.last() {
            self.last_byte = Some(b);
        }
        let sem = &mut self.sem;
        self.json.feed(chunk, &mut |ev| sem.event(ev, on))
    }

    /// The manifest ended: checks that it is complete, has what its version requires, and
    /// that its checksum is right.
    pub fn finish(
        mut self,
        on: &mut dyn FnMut(ManifestItem) -> Result<(), ManifestError>,
    ) -> Result<ManifestTrailer, ManifestError> {
        let sem = &mut self.sem;
        self.json.finish(&mut |ev| sem.event(ev, on))?;
        if self.sem.state != State::Eof {
            return Err(perr("manifest ended unexpectedly"));
        }
        let version = self.sem.version.unwrap_or(1);
        if version >= 2 && self.sem.system_identifier.is_none() {
            return Err(perr("manifest system identifier not found"));
        }
        if self.newlines < 2 {
            return Err(perr("expected at least 2 lines"));
        }
        if self.last_byte != Some(b'\n') {
            return Err(perr("last line not newline-terminated"));
        }
        let manifest_checksum = self
            .sem
            .manifest_checksum
            .flatten()
            .ok_or(ManifestError::NoChecksum)?;
        if manifest_checksum.len() != 64 || from_hex(&manifest_checksum).is_none() {
            return Err(ManifestError::BadManifestChecksum {
                value: manifest_checksum,
            });
        }
        let covered = self
            .at_second_last_newline
            .ok_or_else(|| perr("expected at least 2 lines"))?;
        let actual = to_hex(&covered.finalize());
        if !actual.eq_ignore_ascii_case(&manifest_checksum) {
            return Err(ManifestError::ChecksumMismatch {
                expected: manifest_checksum,
                actual,
            });
        }
        Ok(ManifestTrailer {
            version,
            system_identifier: self.sem.system_identifier,
            manifest_checksum,
        })
    }

    /// Parses a whole manifest read from `r` in pieces (a file of any size: memory grows with
    /// the number of files, not with the text).
    pub fn parse_reader(mut r: impl std::io::Read) -> Result<Manifest, ManifestError> {
        let mut p = ManifestParser::new();
        let mut m = Collect::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ManifestError::Read {
                        path: Default::default(),
                        source,
                    })
                }
            };
            p.feed(&buf[..n], &mut |i| m.push(i))?;
        }
        let t = p.finish(&mut |i| m.push(i))?;
        Ok(m.into_manifest(t))
    }
}

/// Gathers the items of a whole manifest.
#[derive(Default)]
struct Collect {
    files: Vec<ManifestFile>,
    wal_ranges: Vec<WalRange>,
}

impl Collect {
    fn push(&mut self, i: ManifestItem) -> Result<(), ManifestError> {
        match i {
            ManifestItem::File(f) => self.files.push(f),
            ManifestItem::WalRange(r) => self.wal_ranges.push(r),
            _ => {}
        }
        Ok(())
    }

    fn into_manifest(self, t: ManifestTrailer) -> Manifest {
        Manifest {
            version: t.version,
            system_identifier: t.system_identifier,
            files: self.files,
            wal_ranges: self.wal_ranges,
            manifest_checksum: t.manifest_checksum,
        }
    }
}

/// Parses and checks a whole manifest held in memory (see [`ManifestParser`] for one read in
/// pieces): syntax, structure, and the manifest checksum. Errors are those of PostgreSQL's
/// `parse_manifest.c` and pg_verifybackup's (duplicate paths, checksums), so they read alike.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, ManifestError> {
    ManifestParser::parse_reader(bytes)
}

/// Reads and parses the manifest file at `path` in pieces.
pub fn read_manifest_file(path: &std::path::Path) -> Result<Manifest, ManifestError> {
    let f = std::fs::File::open(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ManifestParser::parse_reader(f).map_err(|e| match e {
        ManifestError::Read { source, .. } => ManifestError::Read {
            path: path.to_path_buf(),
            source,
        },
        e => e,
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
            assert!(
                e.to_string().contains(expect),
                "expected {expect:?}, got {e}"
            );
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
            let e = parse_manifest(text.as_bytes()).unwrap_err().to_string();
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
            let e = parse_manifest(text.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with(want),
                "{text:?}: expected {want:?}, got {e:?}"
            );
        }
    }
}
