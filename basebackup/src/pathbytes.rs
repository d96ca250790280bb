//! File names that are not UTF-8. PostgreSQL copies whatever is in the data directory, and its
//! manifest hex-encodes names that are not UTF-8 (`Encoded-Path`). We keep paths as `String`s and
//! carry such bytes losslessly: each byte that is not part of valid UTF-8 becomes the character
//! U+10FF00 + byte (in Supplementary Private Use Area-B, which no file name of a data directory
//! uses), and turns back into that byte wherever the path meets the file system, a tar header or
//! a manifest.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const BASE: u32 = 0x10_FF00;

/// Bytes to a path string, escaping the bytes that are not valid UTF-8.
pub fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + 8);
            let mut rest = bytes;
            while !rest.is_empty() {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        out.push_str(s);
                        break;
                    }
                    Err(e) => {
                        let (good, bad) = rest.split_at(e.valid_up_to());
                        out.push_str(std::str::from_utf8(good).unwrap_or_default());
                        let n = e.error_len().unwrap_or(bad.len()).max(1);
                        for &b in &bad[..n] {
                            out.push(char::from_u32(BASE + u32::from(b)).unwrap_or('\u{FFFD}'));
                        }
                        rest = &bad[n..];
                    }
                }
            }
            out
        }
    }
}

/// Whether `s` carries escaped bytes (and so is not a UTF-8 name on disk).
pub fn is_escaped(s: &str) -> bool {
    s.chars()
        .any(|c| (BASE..=BASE + 0xFF).contains(&(c as u32)))
}

/// The raw bytes of a path string.
pub fn encode(s: &str) -> Cow<'_, [u8]> {
    if !is_escaped(s) {
        return Cow::Borrowed(s.as_bytes());
    }
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let u = c as u32;
        if (BASE..=BASE + 0xFF).contains(&u) {
            out.push((u - BASE) as u8);
        } else {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
    Cow::Owned(out)
}

/// The path on disk for a path string.
pub fn to_path(s: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&encode(s)))
}

/// A file name on disk as a path string.
pub fn from_os(name: &OsStr) -> String {
    decode(name.as_bytes())
}

/// `base.join(rel)` with `rel` turned back into bytes.
pub fn join(base: &Path, rel: &str) -> PathBuf {
    base.join(to_path(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for bytes in [
            &b"base/1/1234"[..],
            b"FOO\xe0\xe0\xe0BAR",
            b"\xff",
            b"caf\xc3\xa9 \xc3",
            b"",
        ] {
            let s = decode(bytes);
            assert_eq!(&*encode(&s), bytes);
            assert_eq!(is_escaped(&s), std::str::from_utf8(bytes).is_err());
        }
        assert_eq!(decode(b"plain"), "plain");
    }
}
