//! Decompressing server-compressed archives as they stream, to parse and verify them: pushed
//! chunks in, decompressed chunks out through a buffer that is drained after every chunk.

use std::io::Write;

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

/// A push-fed decompressor.
pub struct Decompressor {
    inner: Box<dyn Write + Send>,
    out: SharedBuf,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decompressor")
    }
}

/// The decoders write into this; the caller drains it after each push.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Decompressor {
    /// A decompressor for `c`; `None` for uncompressed archives.
    pub fn new(c: ArchiveCompression) -> std::io::Result<Option<Self>> {
        let out = SharedBuf::default();
        let inner: Box<dyn Write + Send> = match c {
            ArchiveCompression::None => return Ok(None),
            ArchiveCompression::Gzip => Box::new(flate2::write::GzDecoder::new(out.clone())),
            ArchiveCompression::Zstd => Box::new(zstd::stream::write::Decoder::new(out.clone())?),
            ArchiveCompression::Lz4 => Box::new(crate::lz4::Lz4Decoder::new(out.clone())),
        };
        Ok(Some(Decompressor { inner, out }))
    }

    /// Decompresses `input` and hands the output to `f` (possibly in several pieces).
    pub fn push(
        &mut self,
        input: &[u8],
        mut f: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        // Feed in slices so one chunk never expands into more than a few MB at once.
        for piece in input.chunks(16 * 1024) {
            self.inner
                .write_all(piece)
                .map_err(|e| format!("decompression failed: {e}"))?;
            let data = std::mem::take(&mut *self.out.0.lock().map_err(|_| "poisoned".to_string())?);
            if !data.is_empty() {
                f(&data)?;
            }
        }
        Ok(())
    }

    /// Ends the stream (checks it is complete) and hands over what remains.
    pub fn finish(mut self, mut f: impl FnMut(&[u8]) -> Result<(), String>) -> Result<(), String> {
        self.inner
            .flush()
            .map_err(|e| format!("decompression failed at the end of the archive: {e}"))?;
        drop(self.inner);
        let data = std::mem::take(&mut *self.out.0.lock().map_err(|_| "poisoned".to_string())?);
        if !data.is_empty() {
            f(&data)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_and_zstd_round_trip_in_small_pushes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(5));
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (c, bytes) in [
            (ArchiveCompression::Gzip, gz),
            (ArchiveCompression::Zstd, zs),
        ] {
            let mut d = Decompressor::new(c).unwrap().unwrap();
            let mut out = Vec::new();
            for chunk in bytes.chunks(777) {
                d.push(chunk, |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            d.finish(|b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            assert_eq!(out, data, "{c:?}");
        }
        let mut d = Decompressor::new(ArchiveCompression::Gzip)
            .unwrap()
            .unwrap();
        assert!(d.push(b"not gzip at all", |_| Ok(())).is_err());
    }
}
