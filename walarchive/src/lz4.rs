//! LZ4 frames (`.tar.lz4` archives, `lz4` files), decoded as bytes are pushed in.
//!
//! A server compressing with lz4 sends its archive a chunk at a time, and the chunks must be
//! parsed and verified as they pass; a reader-driven decoder cannot be fed that way. The frame
//! (magic, descriptor and its checksum, block sizes, linked blocks, block and content checksums,
//! skippable frames, several frames in a row) is decoded here, each block by lz4_flex. Memory is
//! one block (at most 4 MiB) plus the 64 kB window linked blocks may refer to.

use std::hash::Hasher;
use std::io::{self, Write};

use twox_hash::XxHash32;

const MAGIC: u32 = 0x184D_2204;
/// Skippable frames: 0x184D2A50 to 0x184D2A5F.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE: u32 = 0x184D_2A50;
/// How far back a linked block may refer.
const WINDOW: usize = 64 * 1024;

#[derive(Debug)]
enum State {
    /// Expecting a frame's magic number (or the end of the stream).
    Magic,
    /// Expecting the frame descriptor.
    Descriptor,
    /// Expecting a block's size word (or the end mark).
    BlockSize,
    /// Expecting a block of this many bytes, stored uncompressed if `raw`.
    Block { size: usize, raw: bool },
    /// Expecting the content checksum after the end mark.
    ContentChecksum,
    /// Skipping the rest of a skippable frame.
    Skip { left: u64 },
}

#[derive(Debug)]
struct Frame {
    block_max: usize,
    linked: bool,
    block_checksum: bool,
    content_checksum: bool,
    content_size: Option<u64>,
    produced: u64,
    hash: XxHash32,
    /// The last [`WINDOW`] bytes produced (linked blocks only).
    window: Vec<u8>,
    /// Decompression buffer, `block_max` long.
    buf: Vec<u8>,
}

/// A push-fed LZ4 frame decoder writing the decompressed bytes to `W`.
///
/// `flush` checks that the input ended at the end of a frame (it is how a push-fed decompressor
/// ends a stream); call it only when no more input will come.
#[derive(Debug)]
pub struct Lz4Decoder<W: Write> {
    out: W,
    input: Vec<u8>,
    state: State,
    frame: Option<Frame>,
    frames: u64,
    /// Offset in the compressed stream of `input[0]`, for messages.
    offset: u64,
}

fn bad(offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid lz4 stream at byte {offset}: {what}"),
    )
}

/// The little-endian word at the start of `b` (callers check that four bytes are there).
fn le32(b: &[u8]) -> u32 {
    pgwal::le::u32_at(b, 0).unwrap_or(0)
}

impl<W: Write> Lz4Decoder<W> {
    /// A decoder writing to `out`.
    pub fn new(out: W) -> Self {
        Lz4Decoder {
            out,
            input: Vec::new(),
            state: State::Magic,
            frame: None,
            frames: 0,
            offset: 0,
        }
    }

    /// The writer under the decoder.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The writer under the decoder, mutably (to drain what was decoded).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The writer, whether or not the stream was complete.
    pub fn into_inner(self) -> W {
        self.out
    }

    /// The writer, once the stream is complete.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.out)
    }

    /// Decodes everything complete in `self.input`; returns how many bytes it used.
    fn run(&mut self) -> io::Result<usize> {
        let mut pos = 0usize;
        loop {
            let avail = &self.input[pos..];
            let at = self.offset + pos as u64;
            match self.state {
                State::Magic => {
                    if avail.len() < 4 {
                        return Ok(pos);
                    }
                    let m = le32(avail);
                    if m == MAGIC {
                        self.state = State::Descriptor;
                        pos += 4;
                    } else if m & SKIPPABLE_MASK == SKIPPABLE {
                        if avail.len() < 8 {
                            return Ok(pos);
                        }
                        self.state = State::Skip {
                            left: u64::from(le32(&avail[4..])),
                        };
                        pos += 8;
                    } else {
                        return Err(bad(
                            at,
                            format_args!("not an lz4 frame (magic number {m:#010x})"),
                        ));
                    }
                }
                State::Skip { left } => {
                    let n = (avail.len() as u64).min(left);
                    pos += n as usize;
                    if n == left {
                        self.state = State::Magic;
                    } else {
                        self.state = State::Skip { left: left - n };
                        return Ok(pos);
                    }
                }
                State::Descriptor => {
                    if avail.len() < 2 {
                        return Ok(pos);
                    }
                    let (flg, bd) = (avail[0], avail[1]);
                    if flg >> 6 != 1 {
                        return Err(bad(
                            at,
                            format_args!("unsupported frame version {}", flg >> 6),
                        ));
                    }
                    if flg & 0x02 != 0 || bd & 0x8F != 0 {
                        return Err(bad(at, "reserved bits set in the frame descriptor"));
                    }
                    if flg & 0x01 != 0 {
                        return Err(bad(at, "the frame needs a dictionary"));
                    }
                    let has_size = flg & 0x08 != 0;
                    let len = 2 + if has_size { 8 } else { 0 } + 1;
                    if avail.len() < len {
                        return Ok(pos);
                    }
                    let hc = ((XxHash32::oneshot(0, &avail[..len - 1]) >> 8) & 0xFF) as u8;
                    if hc != avail[len - 1] {
                        return Err(bad(at, "frame descriptor checksum mismatch"));
                    }
                    let block_max = match (bd >> 4) & 0x07 {
                        4 => 64 * 1024,
                        5 => 256 * 1024,
                        6 => 1024 * 1024,
                        7 => 4 * 1024 * 1024,
                        id => return Err(bad(at, format_args!("invalid block size id {id}"))),
                    };
                    let content_size = has_size.then(|| pgwal::le::u64_at(avail, 2).unwrap_or(0));
                    let linked = flg & 0x20 == 0;
                    self.frame = Some(Frame {
                        block_max,
                        linked,
                        block_checksum: flg & 0x10 != 0,
                        content_checksum: flg & 0x04 != 0,
                        content_size,
                        produced: 0,
                        hash: XxHash32::with_seed(0),
                        window: Vec::new(),
                        buf: vec![0; block_max],
                    });
                    self.state = State::BlockSize;
                    pos += len;
                }
                State::BlockSize => {
                    if avail.len() < 4 {
                        return Ok(pos);
                    }
                    let v = le32(avail);
                    pos += 4;
                    let Some(f) = self.frame.as_ref() else {
                        return Err(bad(at, "block outside a frame"));
                    };
                    if v == 0 {
                        if f.content_checksum {
                            self.state = State::ContentChecksum;
                        } else {
                            self.end_frame(at)?;
                        }
                    } else {
                        let size = (v & 0x7FFF_FFFF) as usize;
                        if size > f.block_max {
                            return Err(bad(
                                at,
                                format_args!(
                                    "block of {size} bytes in a frame of {}-byte blocks",
                                    f.block_max
                                ),
                            ));
                        }
                        self.state = State::Block {
                            size,
                            raw: v & 0x8000_0000 != 0,
                        };
                    }
                }
                State::Block { size, raw } => {
                    let Some(f) = self.frame.as_mut() else {
                        return Err(bad(at, "block outside a frame"));
                    };
                    let need = size + if f.block_checksum { 4 } else { 0 };
                    if avail.len() < need {
                        return Ok(pos);
                    }
                    let data = &avail[..size];
                    if f.block_checksum && XxHash32::oneshot(0, data) != le32(&avail[size..]) {
                        return Err(bad(at, "block checksum mismatch"));
                    }
                    let n = if raw {
                        f.buf[..size].copy_from_slice(data);
                        size
                    } else {
                        let dict: &[u8] = if f.linked { &f.window } else { &[] };
                        lz4_flex::block::decompress_into_with_dict(data, &mut f.buf, dict)
                            .map_err(|e| bad(at, format_args!("corrupt block: {e}")))?
                    };
                    let produced = &f.buf[..n];
                    self.out.write_all(produced)?;
                    if f.content_checksum {
                        f.hash.write(produced);
                    }
                    f.produced += n as u64;
                    if f.linked {
                        if n >= WINDOW {
                            f.window.clear();
                            f.window.extend_from_slice(&produced[n - WINDOW..]);
                        } else {
                            f.window.extend_from_slice(produced);
                            let excess = f.window.len().saturating_sub(WINDOW);
                            f.window.drain(..excess);
                        }
                    }
                    self.state = State::BlockSize;
                    pos += need;
                }
                State::ContentChecksum => {
                    if avail.len() < 4 {
                        return Ok(pos);
                    }
                    let want = le32(avail);
                    let got = self.frame.as_ref().map(|f| f.hash.finish_32());
                    if got != Some(want) {
                        return Err(bad(at, "content checksum mismatch"));
                    }
                    pos += 4;
                    self.end_frame(at)?;
                }
            }
        }
    }

    fn end_frame(&mut self, at: u64) -> io::Result<()> {
        if let Some(f) = self.frame.take() {
            if let Some(size) = f.content_size {
                if size != f.produced {
                    return Err(bad(
                        at,
                        format_args!(
                            "frame holds {} bytes but its header says {size}",
                            f.produced
                        ),
                    ));
                }
            }
        }
        self.frames += 1;
        self.state = State::Magic;
        Ok(())
    }
}

impl<W: Write> Write for Lz4Decoder<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.input.extend_from_slice(b);
        let used = self.run()?;
        self.input.drain(..used);
        self.offset += used as u64;
        Ok(b.len())
    }

    /// Checks that the stream is complete: at least one frame, and nothing after the last.
    fn flush(&mut self) -> io::Result<()> {
        if !matches!(self.state, State::Magic) || !self.input.is_empty() {
            // UnexpectedEof, as a truncated gzip stream: a file still being written ends so
            let e = bad(
                self.offset + self.input.len() as u64,
                "the stream ends inside a frame",
            );
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e.to_string()));
        }
        if self.frames == 0 {
            return Err(bad(0, "no lz4 frame"));
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};

    fn sample(n: usize) -> Vec<u8> {
        // compressible, with long-range repeats (linked blocks refer back) and some noise
        let mut x = 0x9E37_79B9u32;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 7 == 0 {
                    x as u8
                } else {
                    (i / 1000 % 251) as u8
                }
            })
            .collect()
    }

    fn encode(info: FrameInfo, data: &[u8]) -> Vec<u8> {
        let mut e = FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn decode_in(bytes: &[u8], piece: usize) -> io::Result<Vec<u8>> {
        let mut d = Lz4Decoder::new(Vec::new());
        for c in bytes.chunks(piece.max(1)) {
            d.write_all(c)?;
        }
        d.finish()
    }

    #[test]
    fn frames_of_every_kind_decode_in_any_pieces() {
        let data = sample(700_000);
        for (size, mode, bsum, csum, csize) in [
            (BlockSize::Max64KB, BlockMode::Linked, false, true, false),
            (BlockSize::Max256KB, BlockMode::Linked, true, true, true),
            (
                BlockSize::Max1MB,
                BlockMode::Independent,
                false,
                false,
                false,
            ),
            (BlockSize::Max4MB, BlockMode::Independent, true, false, true),
        ] {
            let info = FrameInfo::new()
                .block_size(size)
                .block_mode(mode)
                .block_checksums(bsum)
                .content_checksum(csum)
                .content_size(csize.then_some(data.len() as u64));
            let bytes = encode(info, &data);
            for piece in [1, 3, 4096, 65_537, bytes.len()] {
                let out = decode_in(&bytes, piece).unwrap();
                assert!(out == data, "{size:?} {mode:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn several_frames_and_skippable_frames() {
        let a = sample(100_000);
        let b = sample(3);
        let mut bytes = encode(FrameInfo::new(), &a);
        bytes.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        bytes.extend_from_slice(&5u32.to_le_bytes());
        bytes.extend_from_slice(b"12345");
        bytes.extend(encode(FrameInfo::new().content_checksum(true), &b));
        let out = decode_in(&bytes, 1000).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let data = sample(120_000);
        let good = encode(
            FrameInfo::new()
                .block_mode(BlockMode::Linked)
                .content_checksum(true),
            &data,
        );
        assert!(decode_in(&[], 10).is_err(), "empty");
        assert!(decode_in(b"not lz4 at all", 10).is_err());
        for cut in [3, 5, 7, 100, good.len() - 1] {
            let e = decode_in(&good[..cut], 64).unwrap_err();
            assert!(e.to_string().contains("invalid lz4 stream"), "{e}");
        }
        // a flipped bit anywhere (a sample of positions) is an error, never a panic, and never
        // different data passed off as good (the content checksum). A flip may also change
        // nothing: a match offset moved within a run of equal bytes copies the same bytes.
        for i in (0..good.len()).step_by(61) {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            if let Ok(out) = decode_in(&bad, 4096) {
                assert!(out == data, "flip at {i} gave other data without an error");
            }
        }
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"xx");
        assert!(decode_in(&trailing, 4096).is_err());
    }
}
