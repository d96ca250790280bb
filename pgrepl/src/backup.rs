//! BASE_BACKUP: the command's options and the CopyOut sub-messages, without I/O.
//!
//! Option syntax from `parse_basebackup_options` in `src/backend/backup/basebackup.c` (PG 15+);
//! the CopyData sub-messages ('n' new archive, 'd' data, 'p' progress, 'm' manifest) from
//! `src/backend/backup/basebackup_copy.c`.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{DecodeError, Reader};
use crate::quote::quote_literal;

/// How the server should run the starting checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Spread over checkpoint_completion_target (the server default).
    #[default]
    Spread,
    /// Immediate.
    Fast,
}

/// Server-side compression of the archives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCompression {
    /// gzip, optional level.
    Gzip(Option<i32>),
    /// lz4, optional level.
    Lz4(Option<i32>),
    /// zstd, optional level, and worker threads.
    Zstd {
        /// Level.
        level: Option<i32>,
        /// Worker threads.
        workers: Option<u32>,
    },
    /// An algorithm and detail passed to the server as given, for the server to validate (as
    /// pg_basebackup does with `--compress server-...`).
    Raw {
        /// `COMPRESSION`.
        algorithm: String,
        /// `COMPRESSION_DETAIL`.
        detail: Option<String>,
    },
}

/// The checksum algorithm of the backup manifest (`MANIFEST_CHECKSUMS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ManifestChecksums {
    /// No per-file checksums.
    None,
    /// CRC32C (the server default).
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

impl ManifestChecksums {
    /// The spelling the server and the manifest use.
    pub fn as_str(self) -> &'static str {
        match self {
            ManifestChecksums::None => "NONE",
            ManifestChecksums::Crc32c => "CRC32C",
            ManifestChecksums::Sha224 => "SHA224",
            ManifestChecksums::Sha256 => "SHA256",
            ManifestChecksums::Sha384 => "SHA384",
            ManifestChecksums::Sha512 => "SHA512",
        }
    }

    /// Length of the digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ManifestChecksums::None => 0,
            ManifestChecksums::Crc32c => 4,
            ManifestChecksums::Sha224 => 28,
            ManifestChecksums::Sha256 => 32,
            ManifestChecksums::Sha384 => 48,
            ManifestChecksums::Sha512 => 64,
        }
    }

    /// Parses a spelling, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "NONE" => ManifestChecksums::None,
            "CRC32C" => ManifestChecksums::Crc32c,
            "SHA224" => ManifestChecksums::Sha224,
            "SHA256" => ManifestChecksums::Sha256,
            "SHA384" => ManifestChecksums::Sha384,
            "SHA512" => ManifestChecksums::Sha512,
            _ => return None,
        })
    }
}

/// The options of one BASE_BACKUP command. `Default` gives what pg_basebackup asks for when it
/// streams WAL itself: a manifest with CRC32C, progress estimates, and no waiting for archiving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupOptions {
    /// `LABEL`.
    pub label: String,
    /// `PROGRESS`: have the server estimate sizes first.
    pub progress: bool,
    /// `CHECKPOINT`.
    pub checkpoint: CheckpointMode,
    /// `WAL`: append the needed WAL to base.tar.
    pub wal: bool,
    /// `WAIT`: wait for the WAL to be archived.
    pub wait: bool,
    /// `COMPRESSION` / `COMPRESSION_DETAIL`.
    pub compression: Option<ServerCompression>,
    /// `MAX_RATE` in kB/s (32 to 1048576).
    pub max_rate_kb: Option<u32>,
    /// `TABLESPACE_MAP`.
    pub tablespace_map: bool,
    /// `VERIFY_CHECKSUMS`.
    pub verify_checksums: bool,
    /// `MANIFEST 'yes'`.
    pub manifest: bool,
    /// `MANIFEST 'force-encode'` (hex-encode every path).
    pub manifest_force_encode: bool,
    /// `MANIFEST_CHECKSUMS`.
    pub manifest_checksums: ManifestChecksums,
    /// `INCREMENTAL` (needs a prior UPLOAD_MANIFEST on the same connection; PG 17+).
    pub incremental: bool,
    /// `TARGET` and `TARGET_DETAIL` (`blackhole`, `server` with a directory on the server):
    /// the server keeps the archives and sends none.
    pub target: Option<(String, Option<String>)>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            label: "pgrepl base backup".into(),
            progress: true,
            checkpoint: CheckpointMode::Spread,
            wal: false,
            wait: false,
            compression: None,
            max_rate_kb: None,
            tablespace_map: false,
            verify_checksums: true,
            manifest: true,
            manifest_force_encode: false,
            manifest_checksums: ManifestChecksums::Crc32c,
            incremental: false,
            target: None,
        }
    }
}

impl BaseBackupOptions {
    /// The command text. Every value is quoted, so a label cannot inject options.
    pub fn to_command(&self) -> String {
        let mut opts: Vec<String> = vec![format!("LABEL {}", quote_literal(&self.label))];
        let b = |v: bool| if v { "true" } else { "false" };
        if self.progress {
            opts.push("PROGRESS".into());
        }
        opts.push(format!(
            "CHECKPOINT {}",
            match self.checkpoint {
                CheckpointMode::Fast => "'fast'",
                CheckpointMode::Spread => "'spread'",
            }
        ));
        opts.push(format!("WAL {}", b(self.wal)));
        opts.push(format!("WAIT {}", b(self.wait)));
        if let Some(c) = &self.compression {
            let (method, detail) = match c {
                ServerCompression::Raw { algorithm, detail } => {
                    (algorithm.as_str(), detail.clone())
                }
                ServerCompression::Gzip(l) => ("gzip", l.map(|l| l.to_string())),
                ServerCompression::Lz4(l) => ("lz4", l.map(|l| l.to_string())),
                &ServerCompression::Zstd { level, workers } => {
                    let mut d = String::new();
                    if let Some(l) = level {
                        let _ = write!(d, "level={l}");
                    }
                    if let Some(w) = workers {
                        if !d.is_empty() {
                            d.push(',');
                        }
                        let _ = write!(d, "workers={w}");
                    }
                    ("zstd", (!d.is_empty()).then_some(d))
                }
            };
            opts.push(format!("COMPRESSION {}", quote_literal(method)));
            if let Some(d) = detail {
                opts.push(format!("COMPRESSION_DETAIL {}", quote_literal(&d)));
            }
        }
        if let Some(r) = self.max_rate_kb {
            opts.push(format!("MAX_RATE {r}"));
        }
        if self.tablespace_map {
            opts.push("TABLESPACE_MAP".into());
        }
        opts.push(format!("VERIFY_CHECKSUMS {}", b(self.verify_checksums)));
        if self.manifest {
            let m = if self.manifest_force_encode {
                "'force-encode'"
            } else {
                "'yes'"
            };
            opts.push(format!("MANIFEST {m}"));
            opts.push(format!(
                "MANIFEST_CHECKSUMS {}",
                quote_literal(self.manifest_checksums.as_str())
            ));
        }
        if self.incremental {
            opts.push("INCREMENTAL".into());
        }
        if let Some((t, detail)) = &self.target {
            opts.push(format!("TARGET {}", quote_literal(t)));
            if let Some(d) = detail {
                opts.push(format!("TARGET_DETAIL {}", quote_literal(d)));
            }
        }
        format!("BASE_BACKUP ( {} )", opts.join(", "))
    }
}

/// A CopyData payload inside the BASE_BACKUP CopyOut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupCopyMessage {
    /// 'n': a new archive begins.
    NewArchive {
        /// `base.tar`, `<oid>.tar`, with a compression suffix if compressed by the server.
        name: String,
        /// The tablespace's location; empty for the main data directory.
        tablespace_location: String,
    },
    /// 'd': archive bytes, or manifest bytes after 'm'.
    Data(Bytes),
    /// 'p': cumulative bytes read from the data directory so far.
    Progress(u64),
    /// 'm': the manifest follows.
    ManifestStart,
}

impl BackupCopyMessage {
    /// Decodes a CopyData payload.
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b'd', body);
        let msg = match r.u8()? {
            b'n' => {
                let name = r.cstr()?;
                let tablespace_location = r.cstr()?;
                if name.is_empty()
                    || name.starts_with('.')
                    || name.contains('/')
                    || name.contains('\\')
                {
                    return Err(r.err(format!("unsafe archive name {name:?}")));
                }
                BackupCopyMessage::NewArchive {
                    name,
                    tablespace_location,
                }
            }
            b'd' => {
                r.rest();
                BackupCopyMessage::Data(body.slice(1..))
            }
            b'p' => BackupCopyMessage::Progress(r.u64()?),
            b'm' => BackupCopyMessage::ManifestStart,
            other => return Err(r.err(format!("unknown BASE_BACKUP CopyData type 0x{other:02x}"))),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Encodes the payload (for tests and replays).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            BackupCopyMessage::NewArchive {
                name,
                tablespace_location,
            } => {
                out.put_u8(b'n');
                out.put_slice(name.as_bytes());
                out.put_u8(0);
                out.put_slice(tablespace_location.as_bytes());
                out.put_u8(0);
            }
            BackupCopyMessage::Data(d) => {
                out.put_u8(b'd');
                out.put_slice(d);
            }
            BackupCopyMessage::Progress(p) => {
                out.put_u8(b'p');
                out.put_u64(*p);
            }
            BackupCopyMessage::ManifestStart => out.put_u8(b'm'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn command_quotes_the_label() {
        let o = BaseBackupOptions {
            label: "x', WAL true, LABEL 'y".into(),
            ..Default::default()
        };
        let c = o.to_command();
        assert!(c.starts_with("BASE_BACKUP ( LABEL 'x'', WAL true, LABEL ''y', PROGRESS"));
        assert!(c.contains("MANIFEST 'yes'"));
    }

    #[test]
    fn zstd_detail() {
        let o = BaseBackupOptions {
            compression: Some(ServerCompression::Zstd {
                level: Some(3),
                workers: Some(2),
            }),
            ..Default::default()
        };
        assert!(o
            .to_command()
            .contains("COMPRESSION 'zstd', COMPRESSION_DETAIL 'level=3,workers=2'"));
    }

    #[test]
    fn unsafe_archive_names_are_rejected() {
        for name in ["", ".hidden", "../x.tar", "a\\b"] {
            let mut b = BytesMut::new();
            BackupCopyMessage::NewArchive {
                name: name.into(),
                tablespace_location: String::new(),
            }
            .encode(&mut b);
            assert!(BackupCopyMessage::decode(&b.freeze()).is_err(), "{name}");
        }
    }

    fn arb_msg() -> impl Strategy<Value = BackupCopyMessage> {
        prop_oneof![
            ("[a-z0-9]{1,12}\\.tar", "[a-z/]{0,20}").prop_map(|(n, l)| {
                BackupCopyMessage::NewArchive {
                    name: n,
                    tablespace_location: l,
                }
            }),
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|d| BackupCopyMessage::Data(Bytes::from(d))),
            any::<u64>().prop_map(BackupCopyMessage::Progress),
            Just(BackupCopyMessage::ManifestStart),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(m in arb_msg()) {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            prop_assert_eq!(BackupCopyMessage::decode(&b.freeze()).unwrap(), m);
        }

        #[test]
        fn garbage_never_panics(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BackupCopyMessage::decode(&Bytes::from(d));
        }
    }
}
