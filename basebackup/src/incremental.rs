//! INCREMENTAL files, as the server writes them into incremental backups, and the pure part of
//! reconstructing a relation segment from a chain.
//!
//! Layout (`src/include/backup/basebackup_incremental.h`, `basebackup.c` `sendFile`, identical in
//! PostgreSQL 17 and 18; integers in host order, little-endian here): magic `0xD3AE1F0D`, block
//! count N, truncation block length, N ascending block numbers relative to the segment, zero
//! padding to a multiple of BLCKSZ when N > 0, then the N block images.
//!
//! Reconstruction follows `src/bin/pg_combinebackup/reconstruct.c`: the newest file decides the
//! length (its truncation block length, or past its highest block); each block comes from the
//! newest backup that has it, walking back until a full file ends the walk; only the newest
//! file's truncation length limits what older backups may supply; blocks nobody has are zeros.

use pgwal::le::LeReader;

/// `INCREMENTAL_MAGIC`.
pub const INCREMENTAL_MAGIC: u32 = 0xD3AE_1F0D;
/// The block size of the builds we support (PostgreSQL's default, `BLCKSZ`).
pub const BLCKSZ: u64 = 8192;
/// Blocks per relation segment (`RELSEG_SIZE` of the default 1 GB segments).
pub const RELSEG_SIZE: u32 = 131_072;
/// The prefix the server gives incremental files.
pub const PREFIX: &str = "INCREMENTAL.";

/// What is wrong with an incremental file (pg_combinebackup's words).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncrementalError {
    /// Shorter than the fixed header.
    #[error("file is {len} bytes, too short for an incremental file header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Not an incremental file.
    #[error("file has bad incremental magic number 0x{magic:x}, expected 0x{INCREMENTAL_MAGIC:x}")]
    BadMagic {
        /// The magic number found.
        magic: u32,
    },
    /// More blocks than a segment holds.
    #[error("file has block count {count} in excess of segment size {RELSEG_SIZE}")]
    TooManyBlocks {
        /// The count found.
        count: u32,
    },
    /// The header is cut short.
    #[error("file is truncated: its header needs {need} bytes, found {found}")]
    TruncatedHeader {
        /// Bytes the header needs.
        need: usize,
        /// Bytes there are.
        found: usize,
    },
    /// A truncation length past the segment.
    #[error("file has truncation block length {length} in excess of segment size {RELSEG_SIZE}")]
    TruncationTooLong {
        /// The length found.
        length: u32,
    },
    /// A block number past the segment.
    #[error("file lists block {block} (entry {entry}), beyond segment size {RELSEG_SIZE}")]
    BlockBeyondSegment {
        /// The block.
        block: u32,
        /// Its index in the list.
        entry: usize,
    },
    /// Block numbers that do not ascend.
    #[error("file lists block {block} after block {previous} (entry {entry}): not ascending")]
    NotAscending {
        /// The block.
        block: u32,
        /// The one before it.
        previous: u32,
        /// Its index in the list.
        entry: usize,
    },
    /// The file's size does not match its header.
    #[error("file should be {expected} bytes for {blocks} blocks, but is {actual}")]
    WrongSize {
        /// What the header implies.
        expected: u64,
        /// Blocks listed.
        blocks: usize,
        /// The file's size.
        actual: u64,
    },
    /// The chain has no full version of the file to start from.
    #[error("no full version of the file in the {backups} backup(s) given")]
    NoFullVersion {
        /// Backups searched.
        backups: usize,
    },
}

/// The header of an incremental file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalHeader {
    /// Block numbers (relative to the segment) whose images follow, ascending.
    pub blocks: Vec<u32>,
    /// The minimum length, in blocks, of the reconstructed segment.
    pub truncation_block_length: u32,
}

/// Bytes of the fixed part (magic, count, truncation length).
pub const FIXED_LEN: usize = 12;

/// The header's length on disk for `n` blocks: 12 + 4n, rounded up to BLCKSZ when n > 0.
pub fn header_len(n: u32) -> u64 {
    let raw = FIXED_LEN as u64 + 4 * n as u64;
    if n == 0 {
        raw
    } else {
        raw.div_ceil(BLCKSZ) * BLCKSZ
    }
}

/// Reads the block count from the fixed part, checking the magic and limits, and returns how
/// many bytes the whole header (with its block list, before padding) occupies.
pub fn header_bytes_needed(fixed: &[u8]) -> Result<usize, IncrementalError> {
    let mut r = LeReader::new(fixed);
    let (Some(magic), Some(n)) = (r.u32(), r.u32()) else {
        return Err(IncrementalError::TooShort { len: fixed.len() });
    };
    if fixed.len() < FIXED_LEN {
        return Err(IncrementalError::TooShort { len: fixed.len() });
    }
    if magic != INCREMENTAL_MAGIC {
        return Err(IncrementalError::BadMagic { magic });
    }
    if n > RELSEG_SIZE {
        return Err(IncrementalError::TooManyBlocks { count: n });
    }
    Ok(FIXED_LEN + 4 * n as usize)
}

impl IncrementalHeader {
    /// Parses a header from the start of a file whose total size is `file_size`. `bytes` must
    /// hold at least [`header_bytes_needed`] bytes. Checks the magic, the limits, that block
    /// numbers ascend strictly and stay inside the segment, and that the size matches.
    pub fn parse(bytes: &[u8], file_size: u64) -> Result<Self, IncrementalError> {
        let need = header_bytes_needed(bytes)?;
        let truncated = IncrementalError::TruncatedHeader {
            need,
            found: bytes.len(),
        };
        if bytes.len() < need {
            return Err(truncated);
        }
        let n = (need - FIXED_LEN) / 4;
        let mut r = LeReader::at(bytes, 8);
        let trunc = r.u32().ok_or(truncated.clone())?;
        if trunc > RELSEG_SIZE {
            return Err(IncrementalError::TruncationTooLong { length: trunc });
        }
        let mut blocks: Vec<u32> = Vec::with_capacity(n);
        for entry in 0..n {
            let block = r.u32().ok_or(truncated.clone())?;
            if block >= RELSEG_SIZE {
                return Err(IncrementalError::BlockBeyondSegment { block, entry });
            }
            if let Some(&previous) = blocks.last() {
                if block <= previous {
                    return Err(IncrementalError::NotAscending {
                        block,
                        previous,
                        entry,
                    });
                }
            }
            blocks.push(block);
        }
        let h = IncrementalHeader {
            blocks,
            truncation_block_length: trunc,
        };
        let expected = h.file_size();
        if expected != file_size {
            return Err(IncrementalError::WrongSize {
                expected,
                blocks: n,
                actual: file_size,
            });
        }
        Ok(h)
    }

    /// The header's on-disk length.
    pub fn header_len(&self) -> u64 {
        header_len(self.blocks.len() as u32)
    }

    /// The whole file's size.
    pub fn file_size(&self) -> u64 {
        self.header_len() + self.blocks.len() as u64 * BLCKSZ
    }

    /// Offset of the image of the `i`th listed block.
    pub fn block_offset(&self, i: usize) -> u64 {
        self.header_len() + i as u64 * BLCKSZ
    }

    /// Encodes a header (for tests and tools that write incremental files).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len() as usize);
        out.extend_from_slice(&INCREMENTAL_MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.truncation_block_length.to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.resize(self.header_len() as usize, 0);
        out
    }
}

/// What one backup of the chain holds for the file being reconstructed.
#[derive(Debug, Clone, Copy)]
pub enum Version<'a> {
    /// A full file of this many bytes.
    Full {
        /// Its size in bytes.
        size: u64,
    },
    /// An incremental file.
    Incremental(&'a IncrementalHeader),
}

/// Where one block of the output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSource {
    /// Backup `backup` (an index into the versions given, 0 = newest) at byte `offset` of its
    /// file.
    Backup {
        /// Index into the versions, newest first.
        backup: usize,
        /// Byte offset in that backup's file.
        offset: u64,
    },
    /// No backup has it: a zero block.
    Zero,
}

/// A reconstruction plan: one source per output block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sources, block by block.
    pub blocks: Vec<BlockSource>,
    /// When every block comes from one full file that has exactly the output's length, that
    /// backup's index: the file can be copied whole.
    pub whole_copy_of: Option<usize>,
}

/// Plans the reconstruction of one segment from `newest` and the older versions
/// (`older[0]` is the next older backup). `older` ends at the first full file; a chain that
/// runs out with only incremental files is an error naming the oldest backup's index.
pub fn plan(newest: &IncrementalHeader, older: &[Version<'_>]) -> Result<Plan, IncrementalError> {
    let trunc = newest.truncation_block_length;
    let len = newest
        .blocks
        .last()
        .map_or(trunc, |&b| trunc.max(b.saturating_add(1)));
    let mut blocks = vec![BlockSource::Zero; len as usize];
    for (i, &b) in newest.blocks.iter().enumerate() {
        blocks[b as usize] = BlockSource::Backup {
            backup: 0,
            offset: newest.block_offset(i),
        };
    }
    let mut from_incremental = !newest.blocks.is_empty();
    for (k, v) in older.iter().enumerate() {
        let backup = k + 1;
        match v {
            Version::Incremental(h) => {
                for (i, &b) in h.blocks.iter().enumerate() {
                    if b < trunc && blocks[b as usize] == BlockSource::Zero {
                        blocks[b as usize] = BlockSource::Backup {
                            backup,
                            offset: h.block_offset(i),
                        };
                        from_incremental = true;
                    }
                }
            }
            Version::Full { size } => {
                let full_blocks = size / BLCKSZ;
                for b in 0..(trunc as u64).min(full_blocks) {
                    if blocks[b as usize] == BlockSource::Zero {
                        blocks[b as usize] = BlockSource::Backup {
                            backup,
                            offset: b * BLCKSZ,
                        };
                    }
                }
                let whole = !from_incremental && *size == trunc as u64 * BLCKSZ;
                return Ok(Plan {
                    blocks,
                    whole_copy_of: whole.then_some(backup),
                });
            }
        }
    }
    Err(IncrementalError::NoFullVersion {
        backups: older.len() + 1,
    })
}

/// Whether `path` (manifest-relative) names an INCREMENTAL file the way the server makes them:
/// in `global/`, `base/<db>/` or `pg_tblspc/<oid>/<version dir>/<db>/`. Returns the path of the
/// reconstructed file (the prefix dropped).
pub fn reconstructed_path(path: &str) -> Option<String> {
    let (dir, name) = path.rsplit_once('/')?;
    let rest = name.strip_prefix(PREFIX)?;
    if rest.is_empty() {
        return None;
    }
    let parts: Vec<&str> = dir.split('/').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let relation_dir = match parts.as_slice() {
        ["global"] => true,
        ["base", db] => numeric(db),
        ["pg_tblspc", ts, _version, db] => numeric(ts) && numeric(db),
        _ => false,
    };
    relation_dir.then(|| format!("{dir}/{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(blocks: &[u32], trunc: u32) -> IncrementalHeader {
        IncrementalHeader {
            blocks: blocks.to_vec(),
            truncation_block_length: trunc,
        }
    }

    #[test]
    fn round_trip_and_sizes() {
        let h = header(&[0, 3, 7], 10);
        let enc = h.encode();
        assert_eq!(enc.len() as u64, BLCKSZ);
        assert_eq!(&enc[..4], &[0x0d, 0x1f, 0xae, 0xd3]);
        assert_eq!(IncrementalHeader::parse(&enc, h.file_size()).unwrap(), h);
        let empty = header(&[], 4);
        assert_eq!(empty.encode().len(), 12);
        assert_eq!(empty.file_size(), 12);
        // 2046 blocks fill exactly one page of header: 12 + 4*2045 = 8192
        assert_eq!(header_len(2045), BLCKSZ);
        assert_eq!(header_len(2046), 2 * BLCKSZ);
    }

    #[test]
    fn rejects_what_the_server_never_writes() {
        let h = header(&[1, 2], 3);
        let mut enc = h.encode();
        let size = h.file_size();
        assert!(matches!(
            IncrementalHeader::parse(&enc, size - 1),
            Err(IncrementalError::WrongSize { .. })
        ));
        enc[0] ^= 1;
        let e = IncrementalHeader::parse(&enc, size).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        let desc = header(&[5, 2], 3).encode();
        assert!(matches!(
            IncrementalHeader::parse(&desc, size),
            Err(IncrementalError::NotAscending {
                block: 2,
                previous: 5,
                entry: 1
            })
        ));
        let big = header(&[], RELSEG_SIZE + 1).encode();
        assert!(IncrementalHeader::parse(&big, 12)
            .unwrap_err()
            .to_string()
            .contains("truncation block length"));
        assert!(IncrementalHeader::parse(&[0; 5], 5).is_err());
    }

    #[test]
    fn plan_follows_pg_combinebackup() {
        // newest: block 1 changed, length 4; middle: block 2; full file of 6 blocks
        let newest = header(&[1], 4);
        let mid = header(&[2, 5], 6);
        let p = plan(
            &newest,
            &[
                Version::Incremental(&mid),
                Version::Full { size: 6 * BLCKSZ },
            ],
        )
        .unwrap();
        let hl = BLCKSZ;
        assert_eq!(
            p.blocks,
            vec![
                BlockSource::Backup {
                    backup: 2,
                    offset: 0
                },
                BlockSource::Backup {
                    backup: 0,
                    offset: hl
                },
                BlockSource::Backup {
                    backup: 1,
                    offset: hl
                },
                BlockSource::Backup {
                    backup: 2,
                    offset: 3 * BLCKSZ
                },
            ]
        );
        assert_eq!(p.whole_copy_of, None);
        // nothing changed and the full file has the length: copied whole
        let same = header(&[], 6);
        let p = plan(&same, &[Version::Full { size: 6 * BLCKSZ }]).unwrap();
        assert_eq!(p.whole_copy_of, Some(1));
        // grown past the full file: zero blocks
        let grown = header(&[], 3);
        let p = plan(&grown, &[Version::Full { size: BLCKSZ }]).unwrap();
        assert_eq!(p.blocks[1], BlockSource::Zero);
        assert_eq!(p.whole_copy_of, None);
        // a chain with no full file
        assert!(plan(&grown, &[Version::Incremental(&mid)]).is_err());
    }

    #[test]
    fn incremental_paths() {
        assert_eq!(
            reconstructed_path("base/5/INCREMENTAL.16384.1").as_deref(),
            Some("base/5/16384.1")
        );
        assert_eq!(
            reconstructed_path("global/INCREMENTAL.1262").as_deref(),
            Some("global/1262")
        );
        assert_eq!(
            reconstructed_path("pg_tblspc/16390/PG_18_202506291/5/INCREMENTAL.16391_vm").as_deref(),
            Some("pg_tblspc/16390/PG_18_202506291/5/16391_vm")
        );
        assert_eq!(reconstructed_path("pg_xact/INCREMENTAL.0000"), None);
        assert_eq!(reconstructed_path("base/x/INCREMENTAL.1"), None);
        assert_eq!(reconstructed_path("base/5/16384"), None);
    }
}
