//! The push-fed decompressors (gzip, zstd, lz4) on arbitrary input in arbitrary chunks: output
//! comes in bounded pieces however much the input claims to expand to (a "bomb" costs time,
//! never memory), and errors are errors.
#![no_main]
use basebackup::decompress::{ArchiveCompression, DecompressError, Decompressor, OUTPUT_PIECE};

/// LZ4 hands over whole blocks (at most 4 MiB) plus what a small input piece expands to.
const LZ4_PIECE: usize = (4 << 20) + 4096 * 256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [sel, chunk, rest @ ..] = data else { return };
    let (kind, max_piece) = match sel % 3 {
        0 => (ArchiveCompression::Gzip, OUTPUT_PIECE),
        1 => (ArchiveCompression::Zstd, OUTPUT_PIECE),
        _ => (ArchiveCompression::Lz4, LZ4_PIECE),
    };
    let Ok(Some(mut d)) = Decompressor::new(kind) else { return };
    let mut total = 0usize;
    let mut check = |b: &[u8]| -> Result<(), DecompressError> {
        assert!(b.len() <= max_piece, "{kind:?} handed over {} bytes at once", b.len());
        total += b.len();
        // stop a bomb once it has shown it is one
        if total > 256 << 20 {
            return Err(DecompressError { offset: 0, detail: "enough".into() });
        }
        Ok(())
    };
    for piece in rest.chunks(usize::from(*chunk).max(1) * 16) {
        if d.push(piece, &mut check).is_err() {
            return;
        }
    }
    let _ = d.finish(&mut check);
});
