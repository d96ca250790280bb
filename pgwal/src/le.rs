//! The one little-endian reader for on-disk structures (PostgreSQL writes them in host order,
//! little-endian on every platform it ships on today): WAL records and their payloads, LZ4
//! frames, pg_control. Every read is bounds-checked and says `None` past the end, so that a
//! short or hostile input is an error at the caller, never a panic.

/// A cursor over bytes, reading little-endian fields.
#[derive(Debug, Clone, Copy)]
pub struct LeReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> LeReader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        LeReader { buf, pos: 0 }
    }

    /// A reader at offset `pos` of `buf`.
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        LeReader { buf, pos }
    }

    /// The offset of the next read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }

    /// Skips `n` bytes (which must exist).
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(drop)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// A byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
}

/// The little-endian `u16` at offset `o` of `b`.
pub fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    LeReader::at(b, o).u16()
}

/// The little-endian `u32` at offset `o` of `b`.
pub fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    LeReader::at(b, o).u32()
}

/// The little-endian `u64` at offset `o` of `b`.
pub fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    LeReader::at(b, o).u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_bounds_only() {
        let b = [1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        let mut r = LeReader::new(&b);
        assert_eq!((r.u16(), r.u32(), r.u64()), (Some(1), Some(2), Some(3)));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.u8(), None);
        assert_eq!(u32_at(&b, 11), None);
        assert_eq!(u32_at(&b, usize::MAX), None);
        assert_eq!(u16_at(&b, 2), Some(2));
        assert_eq!(LeReader::at(&b, 20).u8(), None);
        let mut r = LeReader::new(&b);
        assert_eq!(r.bytes(usize::MAX), None);
        assert_eq!(r.position(), 0);
    }
}
