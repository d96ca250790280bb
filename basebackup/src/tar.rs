//! A streaming ustar parser, without I/O: fed archive bytes in any chunking, it reports entry
//! headers and data slices (borrowed from the input, never buffered whole).
//!
//! Format as PostgreSQL writes it (`src/port/tar.c` `tarCreateHeader`, `src/include/pgtar.h`):
//! 512-byte headers, octal numeric fields (base-256 for sizes of 8 GiB and more), type flags
//! '0' file, '5' directory, '2' symlink, names ending in '/' for directories and symlinks, data
//! padded to 512 bytes, two zero blocks at the end. Anything else is an error naming the byte
//! offset in the archive.

use std::fmt;

use crate::archive_rules::{check_syntax, EntryRules};

const BLOCK: u64 = 512;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
}

/// An entry's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    /// Relative path, without a trailing '/'.
    pub path: String,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Permission bits.
    pub mode: u32,
    /// Data size (0 for directories and links).
    pub size: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// The target of a symlink.
    pub link_target: Option<String>,
}

/// One step of the archive.
#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    /// An entry begins.
    Entry(EntryHeader),
    /// Data of the current entry.
    Data(&'a [u8]),
    /// The current entry's data is complete.
    EntryEnd,
    /// The end-of-archive marker (two zero blocks).
    End,
}

/// A malformed or unsupported archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarError {
    /// Byte offset in the archive where the problem is.
    pub offset: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte offset {}", self.message, self.offset)
    }
}

impl std::error::Error for TarError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Data { remaining: u64, padding: u64 },
    Padding { remaining: u64 },
    Ended,
}

/// The parser. Feed bytes with [`TarParser::feed`]; call [`TarParser::finish`] at the end of the
/// stream to check that the archive was complete.
#[derive(Debug)]
pub struct TarParser {
    state: State,
    header: [u8; 512],
    filled: usize,
    offset: u64,
    zero_blocks: u8,
    rules: Option<EntryRules>,
}

impl Default for TarParser {
    fn default() -> Self {
        Self::new()
    }
}

fn err(offset: u64, message: impl Into<String>) -> TarError {
    TarError {
        offset,
        message: message.into(),
    }
}

/// Parses a numeric field: octal ASCII (spaces and NULs around it), or base-256 when the high bit
/// of the first byte is set.
fn number(field: &[u8], what: &str, at: u64) -> Result<u64, TarError> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return Err(err(at, format!("negative or oversized base-256 {what}")));
        }
        let mut v: u64 = 0;
        for &b in &field[1..] {
            if v >> 56 != 0 {
                return Err(err(at, format!("base-256 {what} overflows")));
            }
            v = (v << 8) | u64::from(b);
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let mut v: u64 = 0;
    for &b in &text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(err(at, format!("invalid octal digit in {what}")));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| err(at, format!("{what} overflows")))?;
    }
    Ok(v)
}

/// A NUL-terminated name field; bytes that are not UTF-8 are kept (see [`crate::pathbytes`]).
fn text(field: &[u8], _what: &str, _at: u64) -> Result<String, TarError> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    Ok(crate::pathbytes::decode(&field[..end]))
}

impl TarParser {
    /// A parser at the start of an archive. Entry names are checked for syntax only (plain
    /// relative paths); [`TarParser::with_rules`] checks what a backup archive may hold.
    pub fn new() -> Self {
        TarParser {
            state: State::Header,
            header: [0; 512],
            filled: 0,
            offset: 0,
            zero_blocks: 0,
            rules: None,
        }
    }

    /// A parser that also refuses every entry `rules` refuse (links, duplicates, names that do
    /// not fit the archive), with the entry's header offset.
    pub fn with_rules(rules: EntryRules) -> Self {
        TarParser {
            rules: Some(rules),
            ..Self::new()
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// True once the end-of-archive marker was read.
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    fn parse_header(&mut self) -> Result<Option<EntryHeader>, TarError> {
        let h = &self.header;
        let at = self.offset - BLOCK;
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let stored = number(&h[148..156], "header checksum", at)?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != stored {
            return Err(err(
                at,
                format!("tar header checksum mismatch (stored {stored}, computed {sum})"),
            ));
        }
        if &h[257..262] != b"ustar" {
            return Err(err(at, "not a ustar header"));
        }
        let name = text(&h[0..100], "entry name", at)?;
        let prefix = text(&h[345..500], "name prefix", at)?;
        let mut path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = match h[156] {
            b'0' | 0 => EntryKind::File,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink,
            other => {
                return Err(err(
                    at,
                    format!(
                        "unsupported tar entry type '{}' for \"{path}\"",
                        char::from(other).escape_default()
                    ),
                ))
            }
        };
        while path.len() > 1 && path.ends_with('/') {
            path.pop();
        }
        if let Some(p) = path.strip_prefix("./") {
            path = p.to_owned();
        }
        check_syntax(&path).map_err(|m| err(at, m.to_string()))?;
        let size = number(&h[124..136], "size", at)?;
        if kind != EntryKind::File && size != 0 {
            return Err(err(
                at,
                format!("{kind:?} entry \"{path}\" has size {size}"),
            ));
        }
        let link_target = if kind == EntryKind::Symlink {
            Some(text(&h[157..257], "link target", at)?)
        } else {
            None
        };
        if let Some(r) = &mut self.rules {
            r.check(&path, kind, link_target.as_deref())
                .map_err(|m| err(at, m.to_string()))?;
        }
        Ok(Some(EntryHeader {
            path,
            kind,
            mode: number(&h[100..108], "mode", at)? as u32 & 0o7777,
            size,
            mtime: number(&h[136..148], "mtime", at)? as i64,
            link_target,
        }))
    }

    /// Feeds the next bytes of the archive, calling `on` for each event. Data events borrow from
    /// `data`. Stops at the first error (from the archive or from `on`).
    pub fn feed<'a, E: From<TarError>>(
        &mut self,
        mut data: &'a [u8],
        mut on: impl FnMut(TarEvent<'a>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let take = (512 - self.filled).min(data.len());
                    self.header[self.filled..self.filled + take].copy_from_slice(&data[..take]);
                    self.filled += take;
                    self.offset += take as u64;
                    data = &data[take..];
                    if self.filled < 512 {
                        continue;
                    }
                    self.filled = 0;
                    match self.parse_header()? {
                        None => {
                            self.zero_blocks += 1;
                            if self.zero_blocks == 2 {
                                self.state = State::Ended;
                                on(TarEvent::End)?;
                            }
                        }
                        Some(h) => {
                            if self.zero_blocks != 0 {
                                return Err(err(
                                    self.offset - 1024,
                                    "a lone zero block inside the archive",
                                )
                                .into());
                            }
                            let size = h.size;
                            let padding = (BLOCK - size % BLOCK) % BLOCK;
                            on(TarEvent::Entry(h))?;
                            if size == 0 {
                                on(TarEvent::EntryEnd)?;
                            } else {
                                self.state = State::Data {
                                    remaining: size,
                                    padding,
                                };
                            }
                        }
                    }
                }
                State::Data { remaining, padding } => {
                    let take = remaining.min(data.len() as u64) as usize;
                    let (chunk, rest) = data.split_at(take);
                    data = rest;
                    self.offset += take as u64;
                    let remaining = remaining - take as u64;
                    on(TarEvent::Data(chunk))?;
                    if remaining == 0 {
                        on(TarEvent::EntryEnd)?;
                        self.state = if padding == 0 {
                            State::Header
                        } else {
                            State::Padding { remaining: padding }
                        };
                    } else {
                        self.state = State::Data { remaining, padding };
                    }
                }
                State::Padding { remaining } => {
                    let take = remaining.min(data.len() as u64) as usize;
                    if data[..take].iter().any(|&b| b != 0) {
                        return Err(err(self.offset, "non-zero padding after entry data").into());
                    }
                    data = &data[take..];
                    self.offset += take as u64;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        State::Header
                    } else {
                        State::Padding { remaining }
                    };
                }
                State::Ended => {
                    if let Some(p) = data.iter().position(|&b| b != 0) {
                        return Err(err(
                            self.offset + p as u64,
                            "data after the end of the archive",
                        )
                        .into());
                    }
                    self.offset += data.len() as u64;
                    data = &[];
                }
            }
        }
        Ok(())
    }

    /// Checks that the archive ended properly (its end marker was read).
    pub fn finish(&self) -> Result<(), TarError> {
        match self.state {
            State::Ended => Ok(()),
            State::Data { remaining, .. } => Err(err(
                self.offset,
                format!("archive truncated in the middle of an entry ({remaining} bytes missing)"),
            )),
            _ => Err(err(
                self.offset,
                "archive truncated: no end-of-archive marker",
            )),
        }
    }
}

/// An entry that does not fit a ustar header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The name is longer than 99 bytes.
    #[error("file name too long for tar format: \"{0}\"")]
    NameTooLong(String),
    /// The link target is longer than 99 bytes.
    #[error("link target too long for tar format: \"{0}\"")]
    LinkTooLong(String),
}

/// Builds a ustar header as PostgreSQL does (for tests, and for writers of tar archives).
pub fn encode_header(h: &EntryHeader) -> Result<[u8; 512], EncodeError> {
    let mut b = [0u8; 512];
    let mut name = crate::pathbytes::encode(&h.path).into_owned();
    if h.kind != EntryKind::File {
        name.push(b'/');
    }
    if name.len() > 99 {
        return Err(EncodeError::NameTooLong(h.path.clone()));
    }
    b[..name.len()].copy_from_slice(&name);
    let octal = |b: &mut [u8], v: u64| {
        let w = b.len() - 1;
        let s = format!("{v:0w$o} ");
        let s = &s.as_bytes()[s.len() - b.len()..];
        b.copy_from_slice(s);
    };
    octal(&mut b[100..108], u64::from(h.mode));
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    if h.size >= 8 << 30 {
        b[124] = 0x80;
        b[128..136].copy_from_slice(&h.size.to_be_bytes());
    } else {
        octal(&mut b[124..136], h.size);
    }
    octal(&mut b[136..148], h.mtime.max(0) as u64);
    b[156] = match h.kind {
        EntryKind::File => b'0',
        EntryKind::Directory => b'5',
        EntryKind::Symlink => b'2',
    };
    if let Some(t_text) = &h.link_target {
        let t = crate::pathbytes::encode(t_text);
        if t.len() > 99 {
            return Err(EncodeError::LinkTooLong(t_text.clone()));
        }
        b[157..157 + t.len()].copy_from_slice(&t);
    }
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[265..273].copy_from_slice(b"postgres");
    b[297..305].copy_from_slice(b"postgres");
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn archive(entries: &[(EntryHeader, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(&encode_header(h).unwrap());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    fn collect(bytes: &[u8], chunk: usize) -> Result<Vec<(EntryHeader, Vec<u8>)>, TarError> {
        let mut p = TarParser::new();
        let mut out: Vec<(EntryHeader, Vec<u8>)> = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            p.feed(piece, |ev| -> Result<(), TarError> {
                match ev {
                    TarEvent::Entry(h) => out.push((h, Vec::new())),
                    TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                    _ => {}
                }
                Ok(())
            })?;
        }
        p.finish()?;
        Ok(out)
    }

    fn file(path: &str, data: &[u8]) -> (EntryHeader, Vec<u8>) {
        (
            EntryHeader {
                path: path.into(),
                kind: EntryKind::File,
                mode: 0o600,
                size: data.len() as u64,
                mtime: 1_700_000_000,
                link_target: None,
            },
            data.to_vec(),
        )
    }

    proptest! {
        #[test]
        fn round_trip(files in proptest::collection::vec(("[a-z]{1,8}(/[a-z0-9_]{1,8}){0,3}", proptest::collection::vec(any::<u8>(), 0..2000)), 0..12), chunk in 1usize..3000) {
            let mut entries: Vec<(EntryHeader, Vec<u8>)> = files.iter().map(|(p, d)| file(p, d)).collect();
            entries.push((EntryHeader { path: "pg_wal".into(), kind: EntryKind::Directory, mode: 0o700, size: 0, mtime: 5, link_target: None }, vec![]));
            entries.push((EntryHeader { path: "pg_tblspc/16384".into(), kind: EntryKind::Symlink, mode: 0o777, size: 0, mtime: 5, link_target: Some("/srv/ts".into()) }, vec![]));
            let bytes = archive(&entries);
            prop_assert_eq!(collect(&bytes, chunk).unwrap(), entries);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..3000), chunk in 1usize..600) {
            let _ = collect(&data, chunk);
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let good = archive(&[file("a", b"hello"), file("b", b"x")]);
        // truncated
        let e = collect(&good[..600], 100).unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        // corrupted second header
        let mut bad = good.clone();
        bad[1024 + 3] ^= 1;
        let e = collect(&bad, 4096).unwrap_err();
        assert_eq!(e.offset, 1024);
        assert!(e.message.contains("checksum"), "{e}");
        // path traversal
        let evil = archive(&[file("../etc/passwd", b"x")]);
        let e = collect(&evil, 512).unwrap_err();
        assert!(e.message.contains("\"..\" component"), "{e}");
        assert_eq!(e.offset, 0);
        // trailing garbage
        let mut tail = good.clone();
        tail.extend_from_slice(b"junk");
        assert!(collect(&tail, 512)
            .unwrap_err()
            .message
            .contains("after the end"));
    }

    #[test]
    fn base256_sizes() {
        let mut h = file("big", b"").0;
        h.size = 9 << 30;
        let b = encode_header(&h).unwrap();
        assert_eq!(b[124], 0x80);
        let mut p = TarParser::new();
        let mut got = None;
        p.feed(&b, |ev| -> Result<(), TarError> {
            if let TarEvent::Entry(h) = ev {
                got = Some(h.size);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, Some(9 << 30));
    }
}
