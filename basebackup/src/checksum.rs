//! Per-file checksums of backup manifests, computed as bytes stream past.
//!
//! Algorithms and output format from `src/common/checksum_helper.c`: CRC-32C is hex-encoded in
//! host byte order (so `0xE3069283` is written `839206e3` on little-endian machines); the SHA-2
//! digests in their natural order.

use sha2::Digest;

/// A manifest checksum algorithm (`pg_checksum_type`), as manifests name them. The protocol
/// crate has its own enum for the BASE_BACKUP option (this crate must not depend on it);
/// the two convert by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ChecksumKind {
    /// No per-file checksums.
    None,
    /// CRC-32C (the server default).
    #[default]
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ChecksumKind {
    /// The spelling the server and the manifest use.
    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumKind::None => "NONE",
            ChecksumKind::Crc32c => "CRC32C",
            ChecksumKind::Sha224 => "SHA224",
            ChecksumKind::Sha256 => "SHA256",
            ChecksumKind::Sha384 => "SHA384",
            ChecksumKind::Sha512 => "SHA512",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumKind::None => 0,
            ChecksumKind::Crc32c => 4,
            ChecksumKind::Sha224 => 28,
            ChecksumKind::Sha256 => 32,
            ChecksumKind::Sha384 => 48,
            ChecksumKind::Sha512 => 64,
        }
    }

    /// Parses a spelling, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "NONE" => ChecksumKind::None,
            "CRC32C" => ChecksumKind::Crc32c,
            "SHA224" => ChecksumKind::Sha224,
            "SHA256" => ChecksumKind::Sha256,
            "SHA384" => ChecksumKind::Sha384,
            "SHA512" => ChecksumKind::Sha512,
            _ => return None,
        })
    }
}

/// A running checksum.
#[derive(Clone)]
#[non_exhaustive]
pub enum FileHasher {
    /// Nothing computed.
    None,
    /// CRC-32C.
    Crc32c(crc_fast::Digest),
    /// SHA-224.
    Sha224(sha2::Sha224),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-384.
    Sha384(sha2::Sha384),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileHasher")
    }
}

impl FileHasher {
    /// A hasher for `kind`.
    pub fn new(kind: ChecksumKind) -> Self {
        match kind {
            ChecksumKind::None => FileHasher::None,
            ChecksumKind::Crc32c => {
                FileHasher::Crc32c(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
            }
            ChecksumKind::Sha224 => FileHasher::Sha224(sha2::Sha224::new()),
            ChecksumKind::Sha256 => FileHasher::Sha256(sha2::Sha256::new()),
            ChecksumKind::Sha384 => FileHasher::Sha384(sha2::Sha384::new()),
            ChecksumKind::Sha512 => FileHasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            FileHasher::None => {}
            FileHasher::Crc32c(d) => d.update(data),
            FileHasher::Sha224(d) => d.update(data),
            FileHasher::Sha256(d) => d.update(data),
            FileHasher::Sha384(d) => d.update(data),
            FileHasher::Sha512(d) => d.update(data),
        }
    }

    /// The digest bytes as the manifest encodes them.
    pub fn finish(self) -> Vec<u8> {
        match self {
            FileHasher::None => Vec::new(),
            FileHasher::Crc32c(d) => (d.finalize() as u32).to_le_bytes().to_vec(),
            FileHasher::Sha224(d) => d.finalize().to_vec(),
            FileHasher::Sha256(d) => d.finalize().to_vec(),
            FileHasher::Sha384(d) => d.finalize().to_vec(),
            FileHasher::Sha512(d) => d.finalize().to_vec(),
        }
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex (either case); `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_written_in_host_order() {
        let mut h = FileHasher::new(ChecksumKind::Crc32c);
        h.update(b"123456789");
        assert_eq!(to_hex(&h.finish()), "839206e3");
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(from_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(from_hex("0g").is_none());
        assert!(from_hex("abc").is_none());
    }
}
