//! The few fields of `global/pg_control` a backup tool needs: the system identifier, the
//! control-file version, the block and WAL segment sizes, and whether its CRC holds.
//!
//! Offsets are those of `ControlFileData` (`src/include/catalog/pg_control.h`) on 64-bit
//! builds: `system_identifier` at 0, `pg_control_version` at 8, `blcksz` at 216, `relseg_size`
//! at 220, `xlog_blcksz` at 224, `xlog_seg_size` at 228; the CRC-32C of everything before it at
//! 288 in version 1700 (PostgreSQL 17) and 292 in 1800 (18 adds `default_char_signedness`).
//! They were confirmed on the test bed's 17 and 18 clusters (see the tests in tests/).

use pgwal::le::{u32_at, u64_at};

/// What a control file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFile {
    /// `system_identifier`.
    pub system_identifier: u64,
    /// `pg_control_version` (1700, 1800, ...).
    pub version: u32,
    /// `blcksz`.
    pub blcksz: u32,
    /// `relseg_size` in blocks.
    pub relseg_size: u32,
    /// `xlog_seg_size` in bytes.
    pub wal_segment_size: u32,
}

/// A control file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Shorter than any control file.
    #[error("control file is {len} bytes, too short")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// A version we do not read.
    #[error(
        "unexpected control file version {version} (PostgreSQL 17 writes 1700, 18 writes 1800)"
    )]
    UnknownVersion {
        /// `pg_control_version`.
        version: u32,
    },
    /// The CRC does not match: damage.
    #[error("control file CRC is incorrect (stored 0x{stored:08x}, computed 0x{computed:08x})")]
    BadCrc {
        /// The CRC in the file.
        stored: u32,
        /// The CRC of its content.
        computed: u32,
    },
}

/// Where the CRC lies for a control-file version we know.
pub fn crc_offset(version: u32) -> Option<usize> {
    match version {
        1700 => Some(288),
        1800 => Some(292),
        _ => None,
    }
}

impl ControlFile {
    /// Parses a control file of PostgreSQL 17 or 18, checking its CRC.
    pub fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        let short = ControlError::TooShort { len: bytes.len() };
        if bytes.len() < 296 {
            return Err(short);
        }
        let version = u32_at(bytes, 8).ok_or(short.clone())?;
        let Some(crc_at) = crc_offset(version) else {
            return Err(ControlError::UnknownVersion { version });
        };
        let stored = u32_at(bytes, crc_at).ok_or(short.clone())?;
        let computed =
            crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &bytes[..crc_at]) as u32;
        if stored != computed {
            return Err(ControlError::BadCrc { stored, computed });
        }
        let field = |o| u32_at(bytes, o).ok_or(short.clone());
        Ok(ControlFile {
            system_identifier: u64_at(bytes, 0).ok_or(short.clone())?,
            version,
            blcksz: field(216)?,
            relseg_size: field(220)?,
            wal_segment_size: field(228)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[..8].copy_from_slice(&7u64.to_le_bytes());
        b[8..12].copy_from_slice(&version.to_le_bytes());
        b[216..220].copy_from_slice(&8192u32.to_le_bytes());
        b[228..232].copy_from_slice(&(16u32 << 20).to_le_bytes());
        let at = crc_offset(version).unwrap();
        let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &b[..at]) as u32;
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn parses_and_checks_crc() {
        let c = ControlFile::parse(&fake(1800)).unwrap();
        assert_eq!(c.system_identifier, 7);
        assert_eq!(c.wal_segment_size, 16 << 20);
        let mut b = fake(1700);
        b[20] ^= 1;
        assert!(ControlFile::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("CRC"));
        assert!(ControlFile::parse(&fake(1700)[..100]).is_err());
        let mut b = fake(1800);
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        assert!(ControlFile::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("1300"));
    }
}
