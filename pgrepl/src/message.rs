//! Backend message framing and decoding, without I/O.
//!
//! [`parse_frame`] finds one whole message at the front of a buffer (checking the length against
//! [`MAX_MESSAGE_LEN`] before anything is allocated), and [`BackendMessage::decode`] turns its body
//! into a typed value through a length-checked reader that rejects trailing bytes. Formats from
//! `protocol-message-formats` in the PostgreSQL documentation and `src/include/libpq/protocol.h`.
//! The replication sub-protocols carried inside CopyData live in [`crate::replication`] and
//! [`crate::backup`].

use bytes::{Buf, Bytes, BytesMut};

use crate::error::DbError;

/// The largest message we accept. The biggest legitimate backend messages in a replication
/// session are CopyData chunks of at most 128 kB of WAL or a few hundred kB of archive; a
/// TIMELINE_HISTORY row is a small text file. Anything above this is treated as garbage.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// A message's type byte and its body (without the type byte and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The body.
    pub body: Bytes,
}

/// A frame header that cannot be valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message '{}' (0x{tag:02x}) declares length {len}, outside 4..={max}", char::from(*tag).escape_default())]
pub struct BadLength {
    /// The type byte.
    pub tag: u8,
    /// The declared length (including itself).
    pub len: u32,
    /// The bound.
    pub max: usize,
}

/// Takes one whole message off the front of `buf`, if it is all there.
///
/// Returns `Ok(None)` when more bytes are needed (nothing is consumed), and an error when the
/// header declares an impossible length.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, BadLength> {
    parse_frame_bounded(buf, MAX_MESSAGE_LEN)
}

/// The largest message accepted before authentication completes: authentication requests,
/// parameter reports and errors are all small (libpq uses a similar limit).
pub const MAX_STARTUP_MESSAGE_LEN: usize = 64 * 1024;

/// As [`parse_frame`], with a caller-chosen bound on the declared length.
pub fn parse_frame_bounded(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, BadLength> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > max {
        return Err(BadLength { tag, len, max });
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    frame.advance(5);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// A column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name.
    pub name: String,
    /// The type OID.
    pub type_oid: u32,
}

/// The authentication requests we understand (`AUTH_REQ_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRequest {
    /// AuthenticationOk.
    Ok,
    /// Cleartext password.
    Cleartext,
    /// MD5 with a 4-byte salt.
    Md5([u8; 4]),
    /// SASL with the offered mechanisms.
    Sasl(Vec<String>),
    /// SASLContinue data.
    SaslContinue(Bytes),
    /// SASLFinal data.
    SaslFinal(Bytes),
    /// A method we do not implement (Kerberos, GSS, SSPI, ...), by code.
    Other(u32),
}

/// A decoded backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendMessage {
    /// 'R'
    Authentication(AuthRequest),
    /// 'S'
    ParameterStatus {
        /// Parameter name.
        name: String,
        /// Its value.
        value: String,
    },
    /// 'K': the key is 4 bytes in protocol 3.0 and up to 256 in 3.2.
    BackendKeyData {
        /// Backend process id.
        pid: u32,
        /// Cancel key.
        key: Bytes,
    },
    /// 'Z'
    ReadyForQuery(u8),
    /// 'E'
    ErrorResponse(DbError),
    /// 'N'
    NoticeResponse(DbError),
    /// 'C'
    CommandComplete(String),
    /// 'T'
    RowDescription(Vec<Column>),
    /// 'D': NULL columns are `None`.
    DataRow(Vec<Option<Bytes>>),
    /// 'G'
    CopyInResponse,
    /// 'H'
    CopyOutResponse,
    /// 'W'
    CopyBothResponse,
    /// 'd'
    CopyData(Bytes),
    /// 'c'
    CopyDone,
    /// 'I'
    EmptyQueryResponse,
    /// 'v': newest supported version and the unrecognised options.
    NegotiateProtocolVersion {
        /// Version code (major << 16 | minor).
        version: u32,
        /// Options the server did not recognise.
        unrecognized: Vec<String>,
    },
    /// 'A'
    NotificationResponse,
}

/// A body that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed '{}' message: {what}", char::from(*tag).escape_default())]
pub struct DecodeError {
    /// The type byte.
    pub tag: u8,
    /// What was wrong.
    pub what: String,
}

/// A length-checked reader over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Reader { buf, tag }
    }

    pub(crate) fn err(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: self.tag,
            what: what.into(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(self.err(format!("needs {n} more bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    /// A NUL-terminated string, which must be UTF-8.
    pub(crate) fn cstr(&mut self) -> Result<String, DecodeError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err("string without NUL terminator"))?;
        let s = std::str::from_utf8(&self.buf[..nul])
            .map_err(|_| self.err("string is not UTF-8"))?
            .to_owned();
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(format!("{} trailing bytes", self.buf.len())))
        }
    }
}

fn decode_fields(r: &mut Reader<'_>) -> Result<DbError, DecodeError> {
    let mut e = DbError::default();
    let mut localized_severity = String::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            break;
        }
        let value = r.cstr()?;
        match code {
            b'S' => localized_severity = value,
            b'V' => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            b'W' => e.context = Some(value),
            _ => {} // unknown fields are to be ignored
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    Ok(e)
}

impl BackendMessage {
    /// Decodes a frame's body by its type byte.
    pub fn decode(frame: &Frame) -> Result<BackendMessage, DecodeError> {
        let tag = frame.tag;
        let mut r = Reader::new(tag, &frame.body);
        let msg = match tag {
            b'R' => {
                let code = r.u32()?;
                let req = match code {
                    0 => AuthRequest::Ok,
                    3 => AuthRequest::Cleartext,
                    5 => {
                        let s = r.bytes(4)?;
                        AuthRequest::Md5([s[0], s[1], s[2], s[3]])
                    }
                    10 => {
                        let mut mechs = Vec::new();
                        loop {
                            let m = r.cstr()?;
                            if m.is_empty() {
                                break;
                            }
                            mechs.push(m);
                        }
                        AuthRequest::Sasl(mechs)
                    }
                    11 => AuthRequest::SaslContinue(frame.body.slice(4..)),
                    12 => AuthRequest::SaslFinal(frame.body.slice(4..)),
                    other => {
                        r.rest();
                        AuthRequest::Other(other)
                    }
                };
                if matches!(
                    req,
                    AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_)
                ) {
                    r.rest();
                }
                BackendMessage::Authentication(req)
            }
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            b'K' => {
                let pid = r.u32()?;
                let n = r.remaining();
                if !(4..=256).contains(&n) {
                    return Err(r.err(format!("cancel key of {n} bytes, expected 4 to 256")));
                }
                r.rest();
                BackendMessage::BackendKeyData {
                    pid,
                    key: frame.body.slice(4..),
                }
            }
            b'Z' => BackendMessage::ReadyForQuery(r.u8()?),
            b'E' => BackendMessage::ErrorResponse(decode_fields(&mut r)?),
            b'N' => BackendMessage::NoticeResponse(decode_fields(&mut r)?),
            b'C' => BackendMessage::CommandComplete(r.cstr()?),
            b'T' => {
                let n = r.u16()?;
                let mut cols = Vec::with_capacity(usize::from(n).min(r.remaining() / 19 + 1));
                for _ in 0..n {
                    let name = r.cstr()?;
                    let _table = r.u32()?;
                    let _attnum = r.u16()?;
                    let type_oid = r.u32()?;
                    let _typlen = r.u16()?;
                    let _typmod = r.u32()?;
                    let _format = r.u16()?;
                    cols.push(Column { name, type_oid });
                }
                BackendMessage::RowDescription(cols)
            }
            b'D' => {
                let n = r.u16()?;
                let mut vals = Vec::with_capacity(usize::from(n).min(r.remaining() / 4 + 1));
                let mut pos = 2usize;
                for _ in 0..n {
                    let len = r.i32()?;
                    pos += 4;
                    if len == -1 {
                        vals.push(None);
                    } else if len < 0 {
                        return Err(r.err(format!("column length {len}")));
                    } else {
                        let len = len as usize;
                        r.bytes(len)?;
                        vals.push(Some(frame.body.slice(pos..pos + len)));
                        pos += len;
                    }
                }
                BackendMessage::DataRow(vals)
            }
            b'G' | b'H' | b'W' => {
                let _format = r.u8()?;
                let n = r.u16()?;
                for _ in 0..n {
                    r.u16()?;
                }
                match tag {
                    b'G' => BackendMessage::CopyInResponse,
                    b'H' => BackendMessage::CopyOutResponse,
                    _ => BackendMessage::CopyBothResponse,
                }
            }
            b'd' => {
                r.rest();
                BackendMessage::CopyData(frame.body.clone())
            }
            b'c' => BackendMessage::CopyDone,
            b'I' => BackendMessage::EmptyQueryResponse,
            b'v' => {
                let version = r.u32()?;
                let n = r.u32()?;
                let mut unrecognized = Vec::new();
                for _ in 0..n {
                    unrecognized.push(r.cstr()?);
                }
                BackendMessage::NegotiateProtocolVersion {
                    version,
                    unrecognized,
                }
            }
            b'A' => {
                let _pid = r.u32()?;
                let _channel = r.cstr()?;
                let _payload = r.cstr()?;
                BackendMessage::NotificationResponse
            }
            other => {
                return Err(DecodeError {
                    tag: other,
                    what: "unknown message type".into(),
                })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_u32(body.len() as u32 + 4);
        b.put_slice(body);
        b
    }

    #[test]
    fn partial_frames_wait_and_consume_nothing() {
        let mut full = frame(b'Z', b"I");
        let mut part = full.split_to(4);
        assert_eq!(parse_frame(&mut part).unwrap(), None);
        assert_eq!(part.len(), 4);
        part.unsplit(full);
        let f = parse_frame(&mut part).unwrap().unwrap();
        assert_eq!(
            BackendMessage::decode(&f).unwrap(),
            BackendMessage::ReadyForQuery(b'I')
        );
        assert!(part.is_empty());
    }

    #[test]
    fn insane_lengths_are_rejected_before_allocating() {
        let mut b = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(parse_frame(&mut b).is_err());
        let mut b = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(parse_frame(&mut b).is_err());
    }

    #[test]
    fn error_fields() {
        let body = b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0Fslot.c\0\0";
        let f = Frame {
            tag: b'E',
            body: Bytes::from_static(body),
        };
        let BackendMessage::ErrorResponse(e) = BackendMessage::decode(&f).unwrap() else {
            panic!()
        };
        assert_eq!(e.code, "42704");
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.message, "replication slot \"x\" does not exist");
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let f = Frame {
            tag: b'Z',
            body: Bytes::from_static(b"II"),
        };
        assert!(BackendMessage::decode(&f).is_err());
    }

    #[test]
    fn protocol_32_cancel_key_is_tolerated() {
        let mut body = vec![0, 0, 0, 42];
        body.extend_from_slice(&[7u8; 32]);
        let f = Frame {
            tag: b'K',
            body: Bytes::from(body),
        };
        let BackendMessage::BackendKeyData { pid, key } = BackendMessage::decode(&f).unwrap()
        else {
            panic!()
        };
        assert_eq!((pid, key.len()), (42, 32));
    }

    #[test]
    fn data_row_with_null() {
        let mut body = BytesMut::new();
        body.put_u16(3);
        body.put_i32(2);
        body.put_slice(b"ab");
        body.put_i32(-1);
        body.put_i32(0);
        let f = Frame {
            tag: b'D',
            body: body.freeze(),
        };
        assert_eq!(
            BackendMessage::decode(&f).unwrap(),
            BackendMessage::DataRow(vec![
                Some(Bytes::from_static(b"ab")),
                None,
                Some(Bytes::new())
            ])
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = parse_frame(&mut buf) {
                let _ = BackendMessage::decode(&f);
            }
        }

        #[test]
        fn data_row_round_trip(cols in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..8)) {
            let mut body = BytesMut::new();
            body.put_u16(cols.len() as u16);
            for c in &cols {
                match c {
                    None => body.put_i32(-1),
                    Some(v) => { body.put_i32(v.len() as i32); body.put_slice(v); }
                }
            }
            let mut wire = frame(b'D', &body);
            let f = parse_frame(&mut wire).unwrap().unwrap();
            let BackendMessage::DataRow(got) = BackendMessage::decode(&f).unwrap() else { panic!() };
            let got: Vec<Option<Vec<u8>>> = got.into_iter().map(|c| c.map(|b| b.to_vec())).collect();
            prop_assert_eq!(got, cols);
        }
    }
}
