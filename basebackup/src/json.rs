//! An incremental JSON reader, without I/O: fed bytes in any chunking, it reports structural
//! events and scalars as it meets them and keeps nothing but the token in progress and the
//! nesting stack. Memory is bounded by [`MAX_TOKEN`] and [`MAX_DEPTH`], never by the size of
//! the document — the reason PostgreSQL 17 moved `backup_manifest` parsing to an incremental
//! parser (`src/common/jsonapi.c`, `pg_parse_json_incremental`): manifests can exceed 1 GB.
//!
//! Syntax is RFC 8259's: strings must be valid UTF-8 with JSON escapes, numbers JSON numbers,
//! one value per document, only whitespace after it.

use std::fmt;

/// The longest string or number accepted (a backup manifest's longest is a hex-encoded path).
pub const MAX_TOKEN: usize = 1 << 20;
/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// A scalar value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    /// A string, unescaped.
    String(&'a str),
    /// A number, as written.
    Number(&'a str),
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
}

impl<'a> Scalar<'a> {
    /// The value as text, as PostgreSQL's JSON parser hands scalars on (`None` for null).
    pub fn text(&self) -> Option<&'a str> {
        match *self {
            Scalar::String(s) | Scalar::Number(s) => Some(s),
            Scalar::True => Some("true"),
            Scalar::False => Some("false"),
            Scalar::Null => None,
        }
    }
}

/// What the reader met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonEvent<'a> {
    /// `{`
    ObjectStart,
    /// `}`
    ObjectEnd,
    /// `[`
    ArrayStart,
    /// `]`
    ArrayEnd,
    /// A key of the current object.
    Key(&'a str),
    /// A scalar value.
    Scalar(Scalar<'a>),
}

/// A syntax error, at a byte offset of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Where.
    pub offset: u64,
    /// What.
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

impl std::error::Error for JsonError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (document start, after ':' or after ',' in an array).
    Value,
    /// A value or `]` (after '[').
    ValueOrEnd,
    /// A key or `}` (after '{').
    KeyOrEnd,
    /// A key (after ',' in an object).
    Key,
    /// `:`
    Colon,
    /// `,` or the end of the container.
    CommaOrEnd,
    /// Only whitespace: the document is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    /// A string: a key or a value; `escape` tracks a backslash sequence in progress.
    Str {
        key: bool,
        escape: Escape,
    },
    Number,
    /// A literal with `matched` of its bytes seen.
    Literal {
        word: &'static [u8],
        matched: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    No,
    Backslash,
    /// `\u` with `digits` hex digits read so far into `value`.
    Unicode {
        digits: u8,
        value: u32,
    },
}

/// The incremental reader.
#[derive(Debug)]
pub struct JsonStream {
    offset: u64,
    expect: Expect,
    stack: Vec<Ctx>,
    token: Token,
    buf: Vec<u8>,
    /// A high surrogate waiting for its low half.
    high_surrogate: Option<u32>,
}

impl Default for JsonStream {
    fn default() -> Self {
        Self::new()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn push_char(buf: &mut Vec<u8>, c: u32) -> Result<(), String> {
    let ch = char::from_u32(c).ok_or_else(|| format!("invalid Unicode escape \\u{c:04x}"))?;
    let mut b = [0u8; 4];
    buf.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
    Ok(())
}

/// A JSON number as RFC 8259 writes it.
fn valid_number(t: &[u8]) -> bool {
    let mut i = 0;
    let n = t.len();
    if i < n && t[i] == b'-' {
        i += 1;
    }
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while i < n && t[i].is_ascii_digit() {
                i += 1;
            }
        }
        _ => return false,
    }
    if i < n && t[i] == b'.' {
        i += 1;
        let s = i;
        while i < n && t[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if i < n && (t[i] == b'e' || t[i] == b'E') {
        i += 1;
        if i < n && (t[i] == b'+' || t[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < n && t[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == n
}

impl JsonStream {
    /// A reader at the start of a document.
    pub fn new() -> Self {
        JsonStream {
            offset: 0,
            expect: Expect::Value,
            stack: Vec::new(),
            token: Token::None,
            buf: Vec::new(),
            high_surrogate: None,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn err(&self, message: impl Into<String>) -> JsonError {
        JsonError {
            offset: self.offset,
            message: message.into(),
        }
    }

    /// Feeds the next bytes, calling `on` for each event; stops at the first error (the
    /// document's or `on`'s).
    pub fn feed<E: From<JsonError>>(
        &mut self,
        data: &[u8],
        on: &mut impl FnMut(JsonEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut i = 0;
        while i < data.len() {
            match self.token {
                Token::Str { key, escape } => {
                    if escape == Escape::No {
                        // copy the run up to the next quote, backslash or control character
                        let run = data[i..]
                            .iter()
                            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                            .unwrap_or(data.len() - i);
                        if self.buf.len() + run > MAX_TOKEN {
                            return Err(self
                                .err(format!("a string longer than {MAX_TOKEN} bytes"))
                                .into());
                        }
                        self.buf.extend_from_slice(&data[i..i + run]);
                        i += run;
                        self.offset += run as u64;
                        if i == data.len() {
                            break;
                        }
                    }
                    let b = data[i];
                    self.string_byte(b, key, escape, on)?;
                    i += 1;
                    self.offset += 1;
                }
                Token::Number => {
                    let b = data[i];
                    if b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E') {
                        if self.buf.len() >= MAX_TOKEN {
                            return Err(self.err("a number that is too long").into());
                        }
                        self.buf.push(b);
                        i += 1;
                        self.offset += 1;
                    } else {
                        self.end_number(on)?;
                        // `b` is processed as the byte after the value
                    }
                }
                Token::Literal { word, matched } => {
                    let b = data[i];
                    if b != word[matched] {
                        return Err(self.err("invalid literal").into());
                    }
                    i += 1;
                    self.offset += 1;
                    if matched + 1 == word.len() {
                        self.token = Token::None;
                        let s = match word {
                            b"true" => Scalar::True,
                            b"false" => Scalar::False,
                            _ => Scalar::Null,
                        };
                        on(JsonEvent::Scalar(s))?;
                        self.after_value();
                    } else {
                        self.token = Token::Literal {
                            word,
                            matched: matched + 1,
                        };
                    }
                }
                Token::None => {
                    let b = data[i];
                    i += 1;
                    self.offset += 1;
                    if is_ws(b) {
                        continue;
                    }
                    self.structural(b, on)?;
                }
            }
        }
        Ok(())
    }

    fn string_byte<E: From<JsonError>>(
        &mut self,
        b: u8,
        key: bool,
        escape: Escape,
        on: &mut impl FnMut(JsonEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let set = |s: &mut Self, e: Escape| s.token = Token::Str { key, escape: e };
        match escape {
            Escape::No => match b {
                b'"' => {
                    if self.high_surrogate.is_some() {
                        return Err(self.err("a high surrogate without its low half").into());
                    }
                    self.token = Token::None;
                    let s = std::str::from_utf8(&self.buf)
                        .map_err(|_| self.err("a string that is not valid UTF-8"))?;
                    if key {
                        on(JsonEvent::Key(s))?;
                        self.expect = Expect::Colon;
                    } else {
                        on(JsonEvent::Scalar(Scalar::String(s)))?;
                        self.after_value();
                    }
                    self.buf.clear();
                }
                b'\\' => set(self, Escape::Backslash),
                _ => return Err(self.err("a control character inside a string").into()),
            },
            Escape::Backslash => {
                if b == b'u' {
                    set(
                        self,
                        Escape::Unicode {
                            digits: 0,
                            value: 0,
                        },
                    );
                    return Ok(());
                }
                if self.high_surrogate.is_some() {
                    return Err(self.err("a high surrogate without its low half").into());
                }
                let c = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 8,
                    b'f' => 12,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    _ => return Err(self.err("an invalid escape in a string").into()),
                };
                self.buf.push(c);
                set(self, Escape::No);
            }
            Escape::Unicode { digits, value } => {
                let d = (b as char)
                    .to_digit(16)
                    .ok_or_else(|| self.err("an invalid \\u escape"))?;
                let value = value * 16 + d;
                if digits < 3 {
                    set(
                        self,
                        Escape::Unicode {
                            digits: digits + 1,
                            value,
                        },
                    );
                    return Ok(());
                }
                set(self, Escape::No);
                match (self.high_surrogate.take(), value) {
                    (None, 0xD800..=0xDBFF) => self.high_surrogate = Some(value),
                    (None, 0xDC00..=0xDFFF) => {
                        return Err(self.err("a low surrogate without its high half").into())
                    }
                    (None, c) => push_char(&mut self.buf, c).map_err(|m| self.err(m))?,
                    (Some(h), 0xDC00..=0xDFFF) => {
                        let c = 0x10000 + ((h - 0xD800) << 10) + (value - 0xDC00);
                        push_char(&mut self.buf, c).map_err(|m| self.err(m))?;
                    }
                    (Some(_), _) => {
                        return Err(self.err("a high surrogate without its low half").into())
                    }
                }
            }
        }
        Ok(())
    }

    fn end_number<E: From<JsonError>>(
        &mut self,
        on: &mut impl FnMut(JsonEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if !valid_number(&self.buf) {
            return Err(self.err("an invalid number").into());
        }
        self.token = Token::None;
        // digits and signs only: ASCII
        let s = std::str::from_utf8(&self.buf).map_err(|_| self.err("an invalid number"))?;
        on(JsonEvent::Scalar(Scalar::Number(s)))?;
        self.buf.clear();
        self.after_value();
        Ok(())
    }

    fn after_value(&mut self) {
        self.expect = if self.stack.is_empty() {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        };
    }

    fn push(&mut self, c: Ctx) -> Result<(), JsonError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(c);
        Ok(())
    }

    fn structural<E: From<JsonError>>(
        &mut self,
        b: u8,
        on: &mut impl FnMut(JsonEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let unexpected = |s: &Self| s.err(format!("unexpected character '{}'", b.escape_ascii()));
        match self.expect {
            Expect::Value | Expect::ValueOrEnd => match b {
                b']' if self.expect == Expect::ValueOrEnd => {
                    self.stack.pop();
                    on(JsonEvent::ArrayEnd)?;
                    self.after_value();
                }
                b'{' => {
                    self.push(Ctx::Object)?;
                    on(JsonEvent::ObjectStart)?;
                    self.expect = Expect::KeyOrEnd;
                }
                b'[' => {
                    self.push(Ctx::Array)?;
                    on(JsonEvent::ArrayStart)?;
                    self.expect = Expect::ValueOrEnd;
                }
                b'"' => {
                    self.buf.clear();
                    self.token = Token::Str {
                        key: false,
                        escape: Escape::No,
                    }
                }
                b'-' | b'0'..=b'9' => {
                    self.buf.clear();
                    self.buf.push(b);
                    self.token = Token::Number;
                }
                b't' | b'f' | b'n' => {
                    let word: &'static [u8] = match b {
                        b't' => b"true",
                        b'f' => b"false",
                        _ => b"null",
                    };
                    self.token = Token::Literal { word, matched: 1 };
                }
                _ => return Err(unexpected(self).into()),
            },
            Expect::KeyOrEnd | Expect::Key => match b {
                b'}' if self.expect == Expect::KeyOrEnd => {
                    self.stack.pop();
                    on(JsonEvent::ObjectEnd)?;
                    self.after_value();
                }
                b'"' => {
                    self.buf.clear();
                    self.token = Token::Str {
                        key: true,
                        escape: Escape::No,
                    }
                }
                _ => return Err(unexpected(self).into()),
            },
            Expect::Colon => match b {
                b':' => self.expect = Expect::Value,
                _ => return Err(unexpected(self).into()),
            },
            Expect::CommaOrEnd => match (b, self.stack.last()) {
                (b',', Some(Ctx::Object)) => self.expect = Expect::Key,
                (b',', Some(Ctx::Array)) => self.expect = Expect::Value,
                (b'}', Some(Ctx::Object)) => {
                    self.stack.pop();
                    on(JsonEvent::ObjectEnd)?;
                    self.after_value();
                }
                (b']', Some(Ctx::Array)) => {
                    self.stack.pop();
                    on(JsonEvent::ArrayEnd)?;
                    self.after_value();
                }
                _ => return Err(unexpected(self).into()),
            },
            Expect::Done => {
                return Err(self
                    .err("trailing content after the end of the document")
                    .into())
            }
        }
        Ok(())
    }

    /// The input ended: the document must be complete.
    pub fn finish<E: From<JsonError>>(
        &mut self,
        on: &mut impl FnMut(JsonEvent<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.token == Token::Number {
            self.end_number(on)?;
        }
        if self.expect != Expect::Done || self.token != Token::None {
            return Err(self.err("the input ended unexpectedly").into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(doc: &[u8], chunk: usize) -> Result<Vec<String>, JsonError> {
        let mut out = Vec::new();
        let mut j = JsonStream::new();
        let mut on = |e: JsonEvent<'_>| -> Result<(), JsonError> {
            out.push(format!("{e:?}"));
            Ok(())
        };
        for c in doc.chunks(chunk.max(1)) {
            j.feed(c, &mut on)?;
        }
        j.finish(&mut on)?;
        Ok(out)
    }

    #[test]
    fn reads_documents_in_any_chunking() {
        let doc = br#"{ "a": [1, -2.5e3, true, false, null, "x\"\u00e9\ud83d\ude00\n"], "b": {} }"#;
        let whole = events(doc, doc.len()).unwrap();
        assert_eq!(whole.len(), 14, "{whole:?}");
        assert!(
            whole.contains(&"Scalar(String(\"x\\\"é😀\\n\"))".to_owned()),
            "{whole:?}"
        );
        assert!(whole.contains(&"Scalar(Number(\"-2.5e3\"))".to_owned()));
        for c in 1..doc.len() {
            assert_eq!(events(doc, c).unwrap(), whole, "chunk {c}");
        }
        assert_eq!(events(b" 42 ", 1).unwrap(), vec!["Scalar(Number(\"42\"))"]);
    }

    #[test]
    fn syntax_errors_name_the_offset() {
        for (doc, want) in [
            (&b"{"[..], "ended unexpectedly"),
            (b"{\"a\" 1}", "unexpected character '1'"),
            (b"[1,]", "unexpected character ']'"),
            (b"{} x", "trailing content"),
            (b"[01]", "invalid number"),
            (b"[1.]", "invalid number"),
            (b"[tru]", "invalid literal"),
            (b"[\"a\nb\"]", "control character"),
            (b"[\"\\x\"]", "invalid escape"),
            (b"[\"\\ud800\"]", "high surrogate"),
            (b"[\"\\udc00\"]", "low surrogate"),
            (b"[\"\xff\"]", "not valid UTF-8"),
            (b"{\"a\":1,}", "unexpected character '}'"),
        ] {
            let e = events(doc, 3).unwrap_err();
            assert!(e.message.contains(want), "{doc:?}: {e}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(events(deep.as_bytes(), 7)
            .unwrap_err()
            .message
            .contains("nesting"));
        let long = format!("[\"{}\"]", "a".repeat(MAX_TOKEN + 1));
        assert!(events(long.as_bytes(), 4096)
            .unwrap_err()
            .message
            .contains("longer than"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), chunk in 1usize..50) {
            let _ = events(&data, chunk);
        }

        #[test]
        fn serde_json_documents_read_alike(v in proptest::collection::vec((any::<u32>(), "[a-z\"\\\\é]{0,12}", any::<bool>()), 0..8), chunk in 1usize..40) {
            let doc = serde_json::json!(v.iter().map(|(n, s, b)| serde_json::json!({"n": n, "s": s, "b": b})).collect::<Vec<_>>()).to_string();
            let got = events(doc.as_bytes(), chunk).unwrap();
            let strings: Vec<String> = got.iter().filter(|e| e.starts_with("Scalar(String")).cloned().collect();
            let want: Vec<String> = v.iter().map(|(_, s, _)| format!("Scalar(String({s:?}))")).collect();
            prop_assert_eq!(strings, want);
        }
    }
}
