//! Decompressing archives as they stream, to parse and verify them: compressed chunks are pushed
//! in, decompressed bytes come out through a callback in pieces of at most [`OUTPUT_PIECE`]
//! bytes (an LZ4 block, at most 4 MiB, for lz4), however much one chunk expands to. Nothing
//! accumulates: a zstd "bomb" — kilobytes that claim gigabytes — costs time to read through,
//! never memory. The decoders' own memory is bounded too: gzip's 32 kB window, zstd's window
//! up to zstd's default limit (2^27 bytes; a frame asking for more is an error), one LZ4 block.

/// The compression of an archive, from its name's suffix (`basebackup_gzip.c`, `_zstd.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveCompression {
    /// `.tar`
    None,
    /// `.tar.gz`
    Gzip,
    /// `.tar.zst`
    Zstd,
    /// `.tar.lz4`
    Lz4,
}

impl ArchiveCompression {
    /// The archive file name's ending: `.tar`, `.tar.gz`, `.tar.zst` or `.tar.lz4`.
    pub fn file_suffix(self) -> &'static str {
        match self {
            ArchiveCompression::None => ".tar",
            ArchiveCompression::Gzip => ".tar.gz",
            ArchiveCompression::Zstd => ".tar.zst",
            ArchiveCompression::Lz4 => ".tar.lz4",
        }
    }

    /// From an archive name.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.ends_with(".tar") {
            Some(ArchiveCompression::None)
        } else if name.ends_with(".tar.gz") {
            Some(ArchiveCompression::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(ArchiveCompression::Zstd)
        } else if name.ends_with(".tar.lz4") {
            Some(ArchiveCompression::Lz4)
        } else {
            None
        }
    }
}

/// A compressed stream that does not decompress: damaged, truncated, or not of its format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail} (near compressed byte {offset})")]
pub struct DecompressError {
    /// How far into the compressed stream.
    pub offset: u64,
    /// What the decoder said.
    pub detail: String,
}

fn derr<E: From<DecompressError>>(offset: u64, detail: impl Into<String>) -> E {
    DecompressError {
        offset,
        detail: detail.into(),
    }
    .into()
}

/// The most decompressed bytes handed over at once (gzip and zstd).
pub const OUTPUT_PIECE: usize = 128 * 1024;
/// LZ4 input is fed in pieces this large, so that one push produces at most one block plus what
/// this many bytes can expand to.
const LZ4_INPUT_PIECE: usize = 4 * 1024;

/// A push-fed decompressor.
pub struct Decompressor {
    kind: Kind,
    out: Vec<u8>,
    /// Compressed bytes consumed so far (for messages).
    consumed: u64,
}

enum Kind {
    Gzip(Box<Gzip>),
    Zstd {
        dec: zstd::stream::raw::Decoder<'static>,
        /// The last call ended a frame (zstd returned 0) and nothing came after it.
        at_frame_end: bool,
        started: bool,
    },
    Lz4(Box<crate::lz4::Lz4Decoder<Vec<u8>>>),
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Gzip(_) => "Decompressor(gzip)",
            Kind::Zstd { .. } => "Decompressor(zstd)",
            Kind::Lz4(_) => "Decompressor(lz4)",
        })
    }
}

impl Decompressor {
    /// A decompressor for `c`; `None` for uncompressed archives.
    pub fn new(c: ArchiveCompression) -> std::io::Result<Option<Self>> {
        let kind = match c {
            ArchiveCompression::None => return Ok(None),
            ArchiveCompression::Gzip => Kind::Gzip(Box::new(Gzip::new())),
            ArchiveCompression::Zstd => Kind::Zstd {
                dec: zstd::stream::raw::Decoder::new()?,
                at_frame_end: false,
                started: false,
            },
            ArchiveCompression::Lz4 => Kind::Lz4(Box::new(crate::lz4::Lz4Decoder::new(Vec::new()))),
        };
        Ok(Some(Decompressor {
            kind,
            out: vec![0u8; OUTPUT_PIECE],
            consumed: 0,
        }))
    }

    /// Decompresses `input` and hands the output to `f` in pieces of bounded size; stops at the
    /// first error, the stream's or `f`'s.
    pub fn push<E: From<DecompressError>>(
        &mut self,
        input: &[u8],
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.consumed;
        self.consumed += input.len() as u64;
        match &mut self.kind {
            Kind::Gzip(g) => g.push(input, &mut self.out, &mut f, at),
            Kind::Zstd {
                dec,
                at_frame_end,
                started,
            } => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut inb = InBuffer::around(input);
                loop {
                    let mut outb = OutBuffer::around(&mut self.out[..]);
                    let hint = dec.run(&mut inb, &mut outb).map_err(|e| {
                        derr::<E>(
                            at + inb.pos() as u64,
                            format!("zstd decompression failed: {e}"),
                        )
                    })?;
                    let n = outb.pos();
                    if inb.pos() > 0 || n > 0 {
                        *started = true;
                        *at_frame_end = hint == 0;
                    }
                    if n > 0 {
                        f(&self.out[..n])?;
                    }
                    // done when all input is used and the output did not fill (nothing held)
                    if inb.pos() == input.len() && n < self.out.len() {
                        return Ok(());
                    }
                }
            }
            Kind::Lz4(d) => {
                use std::io::Write;
                for (i, piece) in input.chunks(LZ4_INPUT_PIECE).enumerate() {
                    let here = at + (i * LZ4_INPUT_PIECE) as u64;
                    d.write_all(piece)
                        .map_err(|e| derr::<E>(here, e.to_string()))?;
                    let out = d.get_mut();
                    if !out.is_empty() {
                        f(out)?;
                        out.clear();
                    }
                }
                Ok(())
            }
        }
    }

    /// Ends the stream (checks it is complete) and hands over what remains.
    pub fn finish<E: From<DecompressError>>(
        mut self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let consumed = self.consumed;
        match &mut self.kind {
            Kind::Gzip(g) => g.finish(consumed),
            Kind::Zstd {
                at_frame_end,
                started,
                ..
            } => {
                if !*started || !*at_frame_end {
                    return Err(derr(
                        consumed,
                        "zstd stream truncated: it ends inside a frame",
                    ));
                }
                let _ = &mut f;
                Ok(())
            }
            Kind::Lz4(d) => {
                use std::io::Write;
                d.flush()
                    .map_err(|e| derr::<E>(consumed, format!("lz4 stream incomplete: {e}")))?;
                let out = d.get_mut();
                if !out.is_empty() {
                    f(out)?;
                }
                Ok(())
            }
        }
    }
}

/// gzip (RFC 1952) around raw deflate: member header, deflate stream, CRC-32 and size trailer,
/// several members in a row allowed.
struct Gzip {
    state: GzState,
    /// Header or trailer bytes gathered so far.
    pending: Vec<u8>,
    inflate: flate2::Decompress,
    crc: flate2::Crc,
    members: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GzState {
    Header,
    Body,
    Trailer,
}

/// Longest member header accepted (a header may carry a file name and a comment).
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// The length of a complete gzip member header at the start of `b`, `None` if more bytes are
/// needed.
fn gzip_header_len(b: &[u8]) -> Result<Option<usize>, String> {
    if b.len() < 10 {
        if b.first().is_some_and(|&x| x != 0x1f) || b.get(1).is_some_and(|&x| x != 0x8b) {
            return Err("not a gzip stream (bad magic number)".into());
        }
        return Ok(None);
    }
    if b[0] != 0x1f || b[1] != 0x8b {
        return Err("not a gzip stream (bad magic number)".into());
    }
    if b[2] != 8 {
        return Err(format!("unsupported gzip compression method {}", b[2]));
    }
    let flags = b[3];
    if flags & 0xE0 != 0 {
        return Err("reserved gzip header flags are set".into());
    }
    let mut p = 10usize;
    if flags & 0x04 != 0 {
        let Some(x) = b.get(p..p + 2) else {
            return Ok(None);
        };
        p += 2 + usize::from(u16::from_le_bytes([x[0], x[1]]));
    }
    for flag in [0x08u8, 0x10] {
        if flags & flag != 0 {
            match b.get(p..).and_then(|r| r.iter().position(|&c| c == 0)) {
                Some(z) => p += z + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        p += 2;
    }
    Ok((b.len() >= p).then_some(p))
}

impl Gzip {
    fn new() -> Self {
        Gzip {
            state: GzState::Header,
            pending: Vec::new(),
            inflate: flate2::Decompress::new(false),
            crc: flate2::Crc::new(),
            members: 0,
        }
    }

    fn push<E: From<DecompressError>>(
        &mut self,
        mut input: &[u8],
        out: &mut [u8],
        f: &mut impl FnMut(&[u8]) -> Result<(), E>,
        at: u64,
    ) -> Result<(), E> {
        let start_len = input.len();
        let here = |rest: &[u8]| at + (start_len - rest.len()) as u64;
        while !input.is_empty() {
            match self.state {
                GzState::Header => {
                    // gather only what the header may need, one byte beyond each known part
                    let before = self.pending.len();
                    let take = input.len().min(MAX_GZIP_HEADER + 1 - before);
                    self.pending.extend_from_slice(&input[..take]);
                    match gzip_header_len(&self.pending).map_err(|m| derr::<E>(here(input), m))? {
                        Some(len) => {
                            let used = len - before;
                            input = &input[used..];
                            self.pending.clear();
                            self.inflate.reset(false);
                            self.crc.reset();
                            self.state = GzState::Body;
                        }
                        None if self.pending.len() > MAX_GZIP_HEADER => {
                            return Err(derr(
                                here(input),
                                format!("gzip member header longer than {MAX_GZIP_HEADER} bytes"),
                            ))
                        }
                        None => input = &input[take..],
                    }
                }
                GzState::Body => {
                    let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
                    let status = self
                        .inflate
                        .decompress(input, out, flate2::FlushDecompress::None)
                        .map_err(|e| {
                            derr::<E>(here(input), format!("gzip decompression failed: {e}"))
                        })?;
                    let used = (self.inflate.total_in() - in0) as usize;
                    let made = (self.inflate.total_out() - out0) as usize;
                    input = &input[used..];
                    if made > 0 {
                        self.crc.update(&out[..made]);
                        f(&out[..made])?;
                    }
                    if status == flate2::Status::StreamEnd {
                        self.state = GzState::Trailer;
                    } else if used == 0 && made == 0 {
                        return Err(derr(here(input), "gzip decompression made no progress"));
                    }
                }
                GzState::Trailer => {
                    let take = input.len().min(8 - self.pending.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.pending.len() == 8 {
                        let p = &self.pending;
                        let crc = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                        let size = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
                        if crc != self.crc.sum() {
                            return Err(derr(
                                here(input),
                                "gzip member's CRC-32 does not match its content",
                            ));
                        }
                        if u64::from(size) != self.inflate.total_out() & 0xFFFF_FFFF {
                            return Err(derr(
                                here(input),
                                "gzip member's length does not match its content",
                            ));
                        }
                        self.pending.clear();
                        self.members += 1;
                        self.state = GzState::Header;
                    }
                }
            }
        }
        // the deflate stream may hold decompressed bytes beyond one output buffer
        while self.state == GzState::Body {
            let out0 = self.inflate.total_out();
            let status = self
                .inflate
                .decompress(&[], out, flate2::FlushDecompress::None)
                .map_err(|e| {
                    derr::<E>(
                        at + start_len as u64,
                        format!("gzip decompression failed: {e}"),
                    )
                })?;
            let made = (self.inflate.total_out() - out0) as usize;
            if made > 0 {
                self.crc.update(&out[..made]);
                f(&out[..made])?;
            }
            if status == flate2::Status::StreamEnd {
                self.state = GzState::Trailer;
            }
            if made == 0 {
                break;
            }
        }
        Ok(())
    }

    fn finish<E: From<DecompressError>>(&self, consumed: u64) -> Result<(), E> {
        if self.state != GzState::Header || !self.pending.is_empty() || self.members == 0 {
            return Err(derr(
                consumed,
                "gzip stream truncated: it ends inside a member",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn decompress(
        c: ArchiveCompression,
        bytes: &[u8],
        chunk: usize,
    ) -> Result<Vec<u8>, DecompressError> {
        let mut d = Decompressor::new(c).unwrap().unwrap();
        let mut out = Vec::new();
        let mut largest = 0;
        for piece in bytes.chunks(chunk) {
            d.push(piece, |b| -> Result<(), DecompressError> {
                largest = largest.max(b.len());
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        d.finish(|b| -> Result<(), DecompressError> {
            largest = largest.max(b.len());
            out.extend_from_slice(b);
            Ok(())
        })?;
        assert!(largest <= 4 << 20, "a piece of {largest} bytes");
        Ok(out)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(5));
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn round_trips_in_small_pushes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for (c, bytes) in [
            (ArchiveCompression::Gzip, gzip(&data)),
            (
                ArchiveCompression::Zstd,
                zstd::encode_all(&data[..], 3).unwrap(),
            ),
            (ArchiveCompression::Lz4, lz4(&data)),
        ] {
            for chunk in [1, 7, 777, 1 << 20] {
                assert_eq!(decompress(c, &bytes, chunk).unwrap(), data, "{c:?} {chunk}");
            }
        }
        // two gzip members, two zstd frames
        let mut two = gzip(b"hello ");
        two.extend(gzip(b"world"));
        assert_eq!(
            decompress(ArchiveCompression::Gzip, &two, 3).unwrap(),
            b"hello world"
        );
        let mut two = zstd::encode_all(&b"hello "[..], 1).unwrap();
        two.extend(zstd::encode_all(&b"world"[..], 1).unwrap());
        assert_eq!(
            decompress(ArchiveCompression::Zstd, &two, 3).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn damage_and_truncation_are_errors() {
        let data = vec![7u8; 100_000];
        let gz = gzip(&data);
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (c, bytes) in [
            (ArchiveCompression::Gzip, &gz),
            (ArchiveCompression::Zstd, &zs),
        ] {
            let e = decompress(c, &bytes[..bytes.len() - 3], 100).unwrap_err();
            assert!(e.detail.contains("truncated"), "{c:?}: {e}");
        }
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 6] ^= 1; // the CRC
        assert!(decompress(ArchiveCompression::Gzip, &bad, 100)
            .unwrap_err()
            .detail
            .contains("CRC"));
        assert!(decompress(ArchiveCompression::Gzip, b"not gzip at all", 4)
            .unwrap_err()
            .detail
            .contains("magic"));
        let mut trailing = gz.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decompress(ArchiveCompression::Gzip, &trailing, 100).is_err());
        assert!(decompress(ArchiveCompression::Zstd, b"", 1)
            .unwrap_err()
            .detail
            .contains("truncated"));
    }

    /// A few kilobytes that expand to a gigabyte come out in bounded pieces, and stop as soon
    /// as the consumer refuses more.
    #[test]
    fn bombs_cost_no_memory() {
        // 1 GiB of zeros: a few tens of kilobytes
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            enc.write_all(&zeros).unwrap();
        }
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let mut d = Decompressor::new(ArchiveCompression::Zstd)
            .unwrap()
            .unwrap();
        let (mut total, mut largest) = (0usize, 0usize);
        let r = d.push(&bomb, |b| {
            largest = largest.max(b.len());
            total += b.len();
            if total > 64 << 20 {
                return Err(DecompressError {
                    offset: 0,
                    detail: "enough".into(),
                });
            }
            Ok(())
        });
        assert_eq!(r.unwrap_err().detail, "enough");
        assert!(largest <= OUTPUT_PIECE);
        // gzip likewise (deflate's ratio is ~1000:1)
        let gz = gzip(&vec![0u8; 64 << 20]);
        let mut d = Decompressor::new(ArchiveCompression::Gzip)
            .unwrap()
            .unwrap();
        let mut largest = 0;
        d.push(&gz, |b| -> Result<(), DecompressError> {
            largest = largest.max(b.len());
            Ok(())
        })
        .unwrap();
        assert!(largest <= OUTPUT_PIECE);
    }
}
