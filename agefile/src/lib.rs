#![warn(missing_docs, unreachable_pub)]
//! The age file format (age-encryption.org/v1), sans-io: X25519 recipients and identities, the
//! header with its MAC, and the STREAM payload of ChaCha20-Poly1305 chunks of 64 KiB, the last
//! one flagged. Any object written here decrypts with the `age` tool (`age -d -i key.txt`).
//!
//! One addition the format allows: a stanza `-> pgrepl-object <key>` naming the object the file
//! was written as. Stanzas are covered by the header's MAC, which only the file key opens, so an
//! object moved to another key (segment A stored under B's name, one backup's pack placed in
//! another backup) is detected when it is read; `age` itself skips stanzas it does not know.
//!
//! Chunks can be decrypted on their own (their nonce is their index), which is how ranges of a
//! stored object are read without decrypting all of it. Everything here is checked as it is
//! parsed: a header that is not canonical, a MAC that does not match, a chunk that does not
//! authenticate, a stream cut at a chunk boundary or extended by a chunk — each is an error.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 << 10;
/// Ciphertext bytes per full chunk (the plaintext and its tag).
pub const SEALED_CHUNK: usize = CHUNK + TAG;
const TAG: usize = 16;
const VERSION_LINE: &str = "age-encryption.org/v1";
const X25519_INFO: &[u8] = b"age-encryption.org/v1/X25519";
/// The stanza type binding a file to its object key.
pub const BINDING: &str = "pgrepl-object";
/// Largest header read (recipients are about 100 bytes each).
pub const MAX_HEADER: usize = 64 << 10;

/// What is wrong with an age file, a key, or a recipient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgeError {
    /// The header is malformed (the detail says where).
    #[error("invalid age header: {0}")]
    Header(String),
    /// More header bytes are needed (at least this many in all).
    #[error("the age header is incomplete")]
    Incomplete(usize),
    /// No identity given opens the file.
    #[error("no identity matches: the object was encrypted to other recipients")]
    NoIdentity,
    /// The header's MAC does not match: the header was altered.
    #[error("the age header's MAC does not match: the header was altered")]
    BadMac,
    /// The file names another object than the one read.
    #[error(
        "the object was written as \"{found}\", not as \"{expected}\": it was moved or swapped"
    )]
    WrongObject {
        /// The key it was read as.
        expected: String,
        /// The key it names.
        found: String,
    },
    /// The file names no object.
    #[error("the object carries no pgrepl-object binding")]
    Unbound,
    /// A chunk does not authenticate (altered, or cut at the wrong place).
    #[error("chunk {index} of the payload does not authenticate{}", if *last { " as the last chunk (truncated or extended)" } else { "" })]
    BadChunk {
        /// Its index.
        index: u64,
        /// Whether it was read as the last one.
        last: bool,
    },
    /// The payload's length is impossible (cut inside a chunk's tag, or empty).
    #[error("the payload is truncated: {0}")]
    Truncated(String),
    /// A key or recipient string that does not parse.
    #[error("invalid {what}: {detail}")]
    Key {
        /// `identity` or `recipient`.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The system's random number generator failed.
    #[error("no randomness available")]
    Random,
}

// ---------------------------------------------------------------------------------------------
// base64 (standard alphabet, no padding, canonical) and Bech32

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Unpadded standard base64.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        let chars = c.len() + 1;
        for i in 0..chars {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded canonical base64 (unused trailing bits must be zero).
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let val = |c: u8| B64.iter().position(|&b| b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
        // canonical: the bits past the last whole byte are zero
        let used = 8 * bytes;
        let have = 6 * chunk.len();
        if have > used && (n >> (24 - have)) & ((1 << (have - used)) - 1) != 0 {
            return None;
        }
    }
    Some(out)
}

const BECH32: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";

fn polymod(values: &[u8]) -> u32 {
    const GEN: [u32; 5] = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3];
    let mut chk: u32 = 1;
    for &v in values {
        let b = chk >> 25;
        chk = ((chk & 0x1ffffff) << 5) ^ u32::from(v);
        for (i, g) in GEN.iter().enumerate() {
            if (b >> i) & 1 == 1 {
                chk ^= g;
            }
        }
    }
    chk
}

fn hrp_expand(hrp: &str) -> Vec<u8> {
    let mut v: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    v.push(0);
    v.extend(hrp.bytes().map(|b| b & 31));
    v
}

fn convert_bits(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut out = Vec::new();
    let maxv = (1u32 << to) - 1;
    for &v in data {
        if u32::from(v) >> from != 0 {
            return None;
        }
        acc = (acc << from) | u32::from(v);
        bits += from;
        while bits >= to {
            bits -= to;
            out.push(((acc >> bits) & maxv) as u8);
        }
    }
    if pad {
        if bits > 0 {
            out.push(((acc << (to - bits)) & maxv) as u8);
        }
    } else if bits >= from || ((acc << (to - bits)) & maxv) != 0 {
        return None;
    }
    Some(out)
}

/// Bech32 (BIP 173, no length limit) of `data` with lowercase `hrp`.
pub fn bech32_encode(hrp: &str, data: &[u8]) -> String {
    let five = convert_bits(data, 8, 5, true).unwrap_or_default();
    let mut values = hrp_expand(hrp);
    values.extend(&five);
    values.extend([0u8; 6]);
    let m = polymod(&values) ^ 1;
    let mut s = String::from(hrp);
    s.push('1');
    for v in five {
        s.push(BECH32[v as usize] as char);
    }
    for i in 0..6 {
        s.push(BECH32[((m >> (5 * (5 - i))) & 31) as usize] as char);
    }
    s
}

/// Decodes Bech32 (all lowercase or all uppercase): the lowercase HRP and the data.
pub fn bech32_decode(s: &str) -> Option<(String, Vec<u8>)> {
    let lower = s.to_ascii_lowercase();
    if s != lower && s != s.to_ascii_uppercase() {
        return None;
    }
    let pos = lower.rfind('1')?;
    let (hrp, rest) = (&lower[..pos], &lower[pos + 1..]);
    if hrp.is_empty() || rest.len() < 6 || !hrp.bytes().all(|b| (33..=126).contains(&b)) {
        return None;
    }
    let values: Vec<u8> = rest
        .bytes()
        .map(|c| BECH32.iter().position(|&b| b == c).map(|p| p as u8))
        .collect::<Option<_>>()?;
    let mut check = hrp_expand(hrp);
    check.extend(&values);
    if polymod(&check) != 1 {
        return None;
    }
    let data = convert_bits(&values[..values.len() - 6], 5, 8, false)?;
    Some((hrp.to_owned(), data))
}

// ---------------------------------------------------------------------------------------------
// keys

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail
    if let Ok(okm) = prk.expand(&[info], Len(32)) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn random<const N: usize>() -> Result<[u8; N], AgeError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AgeError::Random)?;
    Ok(b)
}

/// An age X25519 recipient (`age1…`): whom an object is encrypted to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Recipient([u8; 32]);

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({self})")
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&bech32_encode("age", &self.0))
    }
}

impl std::str::FromStr for Recipient {
    type Err = AgeError;
    fn from_str(s: &str) -> Result<Self, AgeError> {
        let bad = |d: &str| AgeError::Key {
            what: "recipient",
            detail: d.to_owned(),
        };
        let (hrp, data) = bech32_decode(s.trim()).ok_or_else(|| bad("not Bech32"))?;
        if hrp != "age" || s.trim() != s.trim().to_ascii_lowercase() {
            return Err(bad("not an age1… X25519 recipient"));
        }
        let key: [u8; 32] = data.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(Recipient(key))
    }
}

/// An age X25519 identity (`AGE-SECRET-KEY-1…`): what decrypts. Never printed.
#[derive(Clone)]
pub struct Identity(x25519_dalek::StaticSecret);

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(for {})", self.recipient())
    }
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Identity, AgeError> {
        Ok(Identity(x25519_dalek::StaticSecret::from(random::<32>()?)))
    }

    /// Its recipient.
    pub fn recipient(&self) -> Recipient {
        Recipient(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The `AGE-SECRET-KEY-1…` line (secret: write it only to a 0600 file).
    pub fn to_secret_string(&self) -> String {
        bech32_encode("age-secret-key-", self.0.as_bytes()).to_ascii_uppercase()
    }

    /// Parses one `AGE-SECRET-KEY-1…` line.
    pub fn parse(s: &str) -> Result<Identity, AgeError> {
        let bad = |d: &str| AgeError::Key {
            what: "identity",
            detail: d.to_owned(),
        };
        let (hrp, data) = bech32_decode(s.trim()).ok_or_else(|| bad("not Bech32"))?;
        if hrp != "age-secret-key-" {
            return Err(bad("not an AGE-SECRET-KEY-1… X25519 identity"));
        }
        let key: [u8; 32] = data.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(Identity(x25519_dalek::StaticSecret::from(key)))
    }

    /// Every identity in an identity file's text (comments and blank lines skipped).
    pub fn parse_file(text: &str) -> Result<Vec<Identity>, AgeError> {
        let ids: Vec<Identity> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Identity::parse)
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Err(AgeError::Key {
                what: "identity",
                detail: "the file holds no AGE-SECRET-KEY-1… line".into(),
            });
        }
        Ok(ids)
    }
}

// ---------------------------------------------------------------------------------------------
// header

/// A parsed header: its stanzas and where the payload begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// (type, args, body) of each stanza.
    pub stanzas: Vec<(String, Vec<String>, Vec<u8>)>,
    /// The header's bytes covered by the MAC (through `---`).
    mac_input_len: usize,
    /// The MAC.
    mac: Vec<u8>,
    /// The header's length, the payload nonce's start.
    pub len: usize,
}

fn stanza_bytes(out: &mut Vec<u8>, kind: &str, args: &[&str], body: &[u8]) {
    out.extend_from_slice(b"-> ");
    out.extend_from_slice(kind.as_bytes());
    for a in args {
        out.push(b' ');
        out.extend_from_slice(a.as_bytes());
    }
    out.push(b'\n');
    let enc = b64_encode(body);
    let mut rest = enc.as_str();
    loop {
        let n = rest.len().min(64);
        out.extend_from_slice(&rest.as_bytes()[..n]);
        out.push(b'\n');
        rest = &rest[n..];
        if n < 64 {
            break;
        }
    }
}

fn mac_of(file_key: &[u8; 16], input: &[u8]) -> ring::hmac::Tag {
    let k = hkdf32(&[], file_key, b"header");
    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k), input)
}

fn valid_arg(a: &str) -> bool {
    !a.is_empty() && a.bytes().all(|b| (33..=126).contains(&b))
}

/// Writes a header for `file_key` to `recipients`, bound to object `binding`.
fn write_header(
    file_key: &[u8; 16],
    recipients: &[Recipient],
    binding: &str,
) -> Result<Vec<u8>, AgeError> {
    if !valid_arg(binding) {
        return Err(AgeError::Header(format!(
            "invalid object key \"{binding}\""
        )));
    }
    let mut out = Vec::with_capacity(64 + 100 * recipients.len());
    out.extend_from_slice(VERSION_LINE.as_bytes());
    out.push(b'\n');
    for r in recipients {
        let eph = x25519_dalek::StaticSecret::from(random::<32>()?);
        let share = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(r.0));
        if !shared.was_contributory() {
            return Err(AgeError::Key {
                what: "recipient",
                detail: "a low-order point".into(),
            });
        }
        let mut salt = share.to_vec();
        salt.extend_from_slice(&r.0);
        let wrap = hkdf32(&salt, shared.as_bytes(), X25519_INFO);
        let mut body = file_key.to_vec();
        seal(&wrap, [0u8; 12], &mut body);
        stanza_bytes(&mut out, "X25519", &[&b64_encode(&share)], &body);
    }
    stanza_bytes(&mut out, BINDING, &[binding], &[]);
    out.extend_from_slice(b"---");
    let tag = mac_of(file_key, &out);
    out.push(b' ');
    out.extend_from_slice(b64_encode(tag.as_ref()).as_bytes());
    out.push(b'\n');
    Ok(out)
}

/// Parses a header from the start of `data` (which may hold more: the payload).
pub fn parse_header(data: &[u8]) -> Result<Header, AgeError> {
    let bad = |m: &str| AgeError::Header(m.to_owned());
    let mut pos = 0;
    let line = |pos: &mut usize| -> Result<String, AgeError> {
        let rest = &data[*pos..];
        let nl = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => n,
            None if data.len() >= MAX_HEADER => return Err(bad("longer than 64 KiB")),
            None => return Err(AgeError::Incomplete(data.len() + 1024)),
        };
        let l = std::str::from_utf8(&rest[..nl]).map_err(|_| bad("not ASCII"))?;
        if !l.is_ascii() {
            return Err(bad("not ASCII"));
        }
        *pos += nl + 1;
        Ok(l.to_owned())
    };
    if line(&mut pos)? != VERSION_LINE {
        return Err(bad("not an age v1 file"));
    }
    let mut stanzas = Vec::new();
    loop {
        let start = pos;
        let l = line(&mut pos)?;
        if let Some(mac) = l.strip_prefix("--- ") {
            let mac = b64_decode(mac)
                .filter(|m| m.len() == 32)
                .ok_or_else(|| bad("bad MAC"))?;
            return Ok(Header {
                stanzas,
                mac_input_len: start + 3,
                mac,
                len: pos,
            });
        }
        let Some(rest) = l.strip_prefix("-> ") else {
            return Err(bad("expected a stanza or the MAC line"));
        };
        let mut parts = rest.split(' ');
        let kind = parts.next().unwrap_or_default().to_owned();
        let args: Vec<String> = parts.map(str::to_owned).collect();
        if !valid_arg(&kind) || !args.iter().all(|a| valid_arg(a)) {
            return Err(bad("invalid stanza arguments"));
        }
        let mut body = String::new();
        loop {
            let b = line(&mut pos)?;
            if b.len() > 64 {
                return Err(bad("a body line longer than 64 columns"));
            }
            let last = b.len() < 64;
            body.push_str(&b);
            if last {
                break;
            }
        }
        let body =
            b64_decode(&body).ok_or_else(|| bad("a stanza body that is not canonical base64"))?;
        stanzas.push((kind, args, body));
        if stanzas.len() > 1000 {
            return Err(bad("more than 1000 stanzas"));
        }
    }
}

/// Opens a header with `identities`: the file key, once the MAC and the binding to `expected`
/// (the key the object was read as) check.
pub fn open_header(
    data: &[u8],
    h: &Header,
    identities: &[Identity],
    expected: &str,
) -> Result<[u8; 16], AgeError> {
    let mut file_key = None;
    'ids: for id in identities {
        let ours = x25519_dalek::PublicKey::from(&id.0).to_bytes();
        for (kind, args, body) in &h.stanzas {
            if kind != "X25519" || args.len() != 1 || body.len() != 32 {
                continue;
            }
            let Some(share) = b64_decode(&args[0]).and_then(|s| <[u8; 32]>::try_from(s).ok())
            else {
                continue;
            };
            let shared = id.0.diffie_hellman(&x25519_dalek::PublicKey::from(share));
            if !shared.was_contributory() {
                continue;
            }
            let mut salt = share.to_vec();
            salt.extend_from_slice(&ours);
            let wrap = hkdf32(&salt, shared.as_bytes(), X25519_INFO);
            let mut b = body.clone();
            if let Some(k) = open(&wrap, [0u8; 12], &mut b) {
                if let Ok(k) = <[u8; 16]>::try_from(k) {
                    file_key = Some(k);
                    break 'ids;
                }
            }
        }
    }
    let file_key = file_key.ok_or(AgeError::NoIdentity)?;
    let tag = mac_of(&file_key, &data[..h.mac_input_len]);
    if !ring_eq(tag.as_ref(), &h.mac) {
        return Err(AgeError::BadMac);
    }
    let bound: Vec<&str> = h
        .stanzas
        .iter()
        .filter(|(k, _, _)| k == BINDING)
        .filter_map(|(_, a, _)| a.first().map(String::as_str))
        .collect();
    match bound.as_slice() {
        [k] if *k == expected => Ok(file_key),
        [k] => Err(AgeError::WrongObject {
            expected: expected.to_owned(),
            found: (*k).to_owned(),
        }),
        _ => Err(AgeError::Unbound),
    }
}

fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn seal(key: &[u8; 32], nonce: [u8; 12], in_out: &mut Vec<u8>) {
    // a 32-byte key is what ChaCha20-Poly1305 takes: construction cannot fail
    if let Ok(k) = UnboundKey::new(&CHACHA20_POLY1305, key) {
        let _ = LessSafeKey::new(k).seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            in_out,
        );
    }
}

fn open(key: &[u8; 32], nonce: [u8; 12], in_out: &mut [u8]) -> Option<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    k.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), in_out)
        .ok()
        .map(|p| p.to_vec())
}

// ---------------------------------------------------------------------------------------------
// payload

fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// The payload key of a file (from its key and the nonce after the header).
pub fn payload_key(file_key: &[u8; 16], nonce: &[u8; 16]) -> [u8; 32] {
    hkdf32(nonce, file_key, b"payload")
}

/// Encrypts a stream: the header and nonce first ([`Encryptor::start`]), then chunks as
/// plaintext is pushed, the last one flagged at [`Encryptor::finish`].
pub struct Encryptor {
    key: [u8; 32],
    index: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// A new file to `recipients` bound to `binding`: returns the encryptor and the bytes that
    /// begin the file (header and payload nonce).
    pub fn start(
        recipients: &[Recipient],
        binding: &str,
    ) -> Result<(Encryptor, Vec<u8>), AgeError> {
        if recipients.is_empty() {
            return Err(AgeError::Key {
                what: "recipient",
                detail: "none given".into(),
            });
        }
        let file_key = random::<16>()?;
        let nonce = random::<16>()?;
        let mut head = write_header(&file_key, recipients, binding)?;
        head.extend_from_slice(&nonce);
        Ok((
            Encryptor {
                key: payload_key(&file_key, &nonce),
                index: 0,
                buf: Vec::with_capacity(CHUNK),
            },
            head,
        ))
    }

    /// Takes plaintext; returns the ciphertext of every chunk it completed (a chunk is held
    /// back until more follows or the stream ends: only the last may be flagged).
    pub fn push(&mut self, mut data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if self.buf.len() == CHUNK {
                out.extend(self.seal_buf(false));
            }
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        out
    }

    fn seal_buf(&mut self, last: bool) -> Vec<u8> {
        let mut c = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        seal(&self.key, chunk_nonce(self.index, last), &mut c);
        self.index += 1;
        c
    }

    /// The last chunk.
    pub fn finish(mut self) -> Vec<u8> {
        self.seal_buf(true)
    }
}

/// Encrypts `plaintext` whole.
pub fn encrypt(
    recipients: &[Recipient],
    binding: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, AgeError> {
    let (mut e, mut out) = Encryptor::start(recipients, binding)?;
    out.extend(e.push(plaintext));
    out.extend(e.finish());
    Ok(out)
}

/// How an opened file's payload lies: where it starts, its key and its plaintext length.
#[derive(Clone, PartialEq, Eq)]
pub struct Layout {
    /// Where the first chunk starts (after the header and nonce).
    pub payload_start: u64,
    /// The payload key.
    key: [u8; 32],
    /// Chunks in the file.
    pub chunks: u64,
    /// Plaintext bytes in all.
    pub plain_len: u64,
}

impl std::fmt::Debug for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layout")
            .field("payload_start", &self.payload_start)
            .field("chunks", &self.chunks)
            .field("plain_len", &self.plain_len)
            .finish_non_exhaustive()
    }
}

impl Layout {
    /// Opens a file of `total` stored bytes whose beginning is `head` (at least the header and
    /// the nonce: see [`AgeError::Incomplete`]).
    pub fn open(
        head: &[u8],
        total: u64,
        identities: &[Identity],
        expected: &str,
    ) -> Result<Layout, AgeError> {
        let h = parse_header(head)?;
        if head.len() < h.len + 16 {
            return Err(AgeError::Incomplete(h.len + 16));
        }
        let file_key = open_header(head, &h, identities, expected)?;
        let nonce: [u8; 16] = head[h.len..h.len + 16]
            .try_into()
            .map_err(|_| AgeError::Incomplete(h.len + 16))?;
        let payload_start = (h.len + 16) as u64;
        let payload = total
            .checked_sub(payload_start)
            .ok_or_else(|| AgeError::Truncated("no payload after the header".into()))?;
        let full = payload / SEALED_CHUNK as u64;
        let rest = payload % SEALED_CHUNK as u64;
        let (chunks, plain_len) = match rest {
            0 if full == 0 => return Err(AgeError::Truncated("no chunk".into())),
            0 => (full, full * CHUNK as u64),
            r if r < TAG as u64 => {
                return Err(AgeError::Truncated(format!(
                    "{r} bytes after the last whole chunk, less than a tag"
                )))
            }
            r => (full + 1, full * CHUNK as u64 + r - TAG as u64),
        };
        Ok(Layout {
            payload_start,
            key: payload_key(&file_key, &nonce),
            chunks,
            plain_len,
        })
    }

    /// The stored byte range of chunk `i`.
    pub fn chunk_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = self.payload_start + i * SEALED_CHUNK as u64;
        let len = if i + 1 == self.chunks {
            self.plain_len - i * CHUNK as u64 + TAG as u64
        } else {
            SEALED_CHUNK as u64
        };
        start..start + len
    }

    /// Decrypts chunk `i` from its stored bytes.
    pub fn open_chunk(&self, i: u64, sealed: &[u8]) -> Result<Vec<u8>, AgeError> {
        let last = i + 1 == self.chunks;
        let mut b = sealed.to_vec();
        let plain = open(&self.key, chunk_nonce(i, last), &mut b)
            .ok_or(AgeError::BadChunk { index: i, last })?;
        // only the last chunk may be short, and it is empty only when the file is
        if (!last && plain.len() != CHUNK) || (last && plain.is_empty() && i > 0) {
            return Err(AgeError::BadChunk { index: i, last });
        }
        Ok(plain)
    }
}

/// Decrypts a whole file read as `expected`.
pub fn decrypt(data: &[u8], identities: &[Identity], expected: &str) -> Result<Vec<u8>, AgeError> {
    let l = Layout::open(data, data.len() as u64, identities, expected)?;
    let mut out = Vec::with_capacity(l.plain_len as usize);
    for i in 0..l.chunks {
        let r = l.chunk_range(i);
        out.extend(l.open_chunk(i, &data[r.start as usize..r.end as usize])?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_bech32() {
        for n in 0..70 {
            let v: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(b64_decode(&b64_encode(&v)).unwrap(), v);
        }
        assert_eq!(b64_encode(b"hello"), "aGVsbG8");
        // non-canonical trailing bits, padding, bad lengths
        assert!(b64_decode("aGVsbG9").is_none());
        assert!(b64_decode("aGVsbG8=").is_none());
        assert!(b64_decode("a").is_none());
        let id = Identity::generate().unwrap();
        let s = id.to_secret_string();
        assert!(s.starts_with("AGE-SECRET-KEY-1"), "{s}");
        let back = Identity::parse(&s).unwrap();
        assert_eq!(back.recipient(), id.recipient());
        let r = id.recipient().to_string();
        assert!(r.starts_with("age1"), "{r}");
        assert_eq!(r.parse::<Recipient>().unwrap(), id.recipient());
        let mut broken = r.clone().into_bytes();
        let last = broken.len() - 1;
        broken[last] = if broken[last] == b'q' { b'p' } else { b'q' };
        assert!(String::from_utf8(broken)
            .unwrap()
            .parse::<Recipient>()
            .is_err());
    }

    #[test]
    fn round_trips_and_refuses_tampering() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let recipients = [a.recipient(), b.recipient()];
        for n in [
            0usize,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK,
            3 * CHUNK + 5,
        ] {
            let plain: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let ct = encrypt(&recipients, "wal/x", &plain).unwrap();
            assert_eq!(
                decrypt(&ct, std::slice::from_ref(&b), "wal/x").unwrap(),
                plain,
                "{n}"
            );
            assert_eq!(
                decrypt(&ct, std::slice::from_ref(&a), "wal/x").unwrap(),
                plain,
                "{n}"
            );
            // another object's name
            assert!(matches!(
                decrypt(&ct, std::slice::from_ref(&a), "wal/y"),
                Err(AgeError::WrongObject { .. })
            ));
            // a wrong identity
            let c = Identity::generate().unwrap();
            assert_eq!(decrypt(&ct, &[c], "wal/x"), Err(AgeError::NoIdentity));
            // a flipped byte anywhere in the payload
            if n > 0 {
                let mut t = ct.clone();
                let i = t.len() - 1 - (n % 7);
                t[i] ^= 0x40;
                assert!(
                    decrypt(&t, std::slice::from_ref(&a), "wal/x").is_err(),
                    "{n}"
                );
            }
            // cut at every chunk boundary, and inside the last chunk
            let l = Layout::open(&ct, ct.len() as u64, std::slice::from_ref(&a), "wal/x").unwrap();
            for k in 1..l.chunks {
                let cut = l.chunk_range(k).start as usize;
                assert!(
                    decrypt(&ct[..cut], std::slice::from_ref(&a), "wal/x").is_err(),
                    "{n} cut {k}"
                );
            }
            assert!(decrypt(&ct[..ct.len() - 1], std::slice::from_ref(&a), "wal/x").is_err());
        }
        // a chunk appended (a copy of a full one) is refused
        let plain = vec![7u8; 2 * CHUNK + 10];
        let ct = encrypt(&recipients, "k", &plain).unwrap();
        let l = Layout::open(&ct, ct.len() as u64, std::slice::from_ref(&a), "k").unwrap();
        let mut longer = ct.clone();
        let r = l.chunk_range(0);
        longer.extend_from_slice(&ct[r.start as usize..r.end as usize]);
        assert!(decrypt(&longer, std::slice::from_ref(&a), "k").is_err());
        // the header altered (a stanza's argument) fails the MAC
        let mut h = ct.clone();
        let text = String::from_utf8_lossy(&h[..600]).into_owned();
        let at = text.find("-> pgrepl-object k").unwrap() + "-> pgrepl-object ".len();
        h[at] = b'm';
        assert!(decrypt(&h, &[a], "m").is_err());
    }
}
