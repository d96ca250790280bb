//! A base backup's plan, checked before anything connects: where it goes, how it gets its WAL,
//! compression, slots, tablespaces. The combinations pg_basebackup refuses are refused here with
//! its words, so that a program embedding the library gets the same refusals as the command line
//! (which only parses flags into a plan). What a typed plan cannot even express (a plain backup
//! to standard output, a slot to create without a name) needs no check.

use std::path::PathBuf;
use std::time::Duration;

use basebackup::checksum::ChecksumKind;
use basebackup::sink::{ClientCompression, TablespaceMapping};
use pgrepl::{BaseBackupOptions, CheckpointMode, ServerCompression};

use crate::wal_stream::SlotChoice;

/// Where the backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// A directory: a data directory (plain) or archives (tar).
    Directory {
        /// The directory (absent or empty).
        path: PathBuf,
        /// Plain or tar.
        tar: bool,
    },
    /// base.tar, with the manifest as its last member, to a stream (`-D -`).
    Stream,
    /// The server keeps the backup (`--target blackhole` or `server:DIR`).
    ServerTarget {
        /// `blackhole` or `server`.
        target: String,
        /// The directory on the server, for `server`.
        detail: Option<String>,
    },
}

/// How the backup gets the WAL it needs to be consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WalChoice {
    /// None: restoring it needs a WAL archive.
    None,
    /// Appended by the server to base.tar at the end.
    Fetch,
    /// Streamed on a second connection while the backup runs (the default).
    #[default]
    Stream,
}

/// Where compression happens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CompressionChoice {
    /// None.
    #[default]
    None,
    /// On the client, for tar output.
    Client(ClientCompression),
    /// On the server (the client decompresses to parse and verify).
    Server(ServerCompression),
}

/// A base backup, as asked for. Build it with [`BackupPlan::new`] and its fields, then
/// [`BackupPlan::validate`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackupPlan {
    /// Where it goes.
    pub output: Output,
    /// Its WAL.
    pub wal: WalChoice,
    /// The WAL stream's slot.
    pub slot: SlotChoice,
    /// Compression.
    pub compression: CompressionChoice,
    /// `-T`: tablespaces written elsewhere (plain only).
    pub tablespace_mappings: Vec<TablespaceMapping>,
    /// `--waldir`: WAL in a directory of its own, `pg_wal` a link to it (plain only).
    pub wal_dir: Option<PathBuf>,
    /// `-R`: the backup starts as a standby of its source.
    pub standby: bool,
    /// Ask for a manifest.
    pub manifest: bool,
    /// Its checksum algorithm, when asked for explicitly.
    pub manifest_checksums: Option<ChecksumKind>,
    /// Hex-encode every path in the manifest.
    pub manifest_force_encode: bool,
    /// Have the server estimate the size (a progress total).
    pub estimate_size: bool,
    /// Progress is wanted (it needs the estimate).
    pub progress: bool,
    /// Incremental to an earlier backup (its manifest is uploaded first).
    pub incremental: bool,
    /// Fast or spread checkpoint.
    pub checkpoint: CheckpointMode,
    /// The backup's label.
    pub label: String,
    /// Server-side rate limit, kB/s.
    pub max_rate_kb: Option<u32>,
    /// Have the server verify page checksums.
    pub verify_checksums: bool,
    /// How often the WAL stream reports its position (`None`: only when asked).
    pub status_interval: Option<Duration>,
}

/// A plan pg_basebackup would refuse, in its words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// WAL streamed beside a backup that goes to a stream.
    #[error("cannot stream write-ahead logs in tar mode to stdout (use -X fetch or -X none)")]
    StreamedWalToStream,
    /// Server compression of a backup that goes to a stream (the manifest goes into base.tar).
    #[error("server-side compression cannot be used when the backup goes to standard output (use -Z gzip or -Z zstd)")]
    ServerCompressionToStream,
    /// Client compression of a plain backup.
    #[error(
        "only tar mode backups can be compressed (use server-side compression with plain format)"
    )]
    CompressedPlain,
    /// Client compression with a server target.
    #[error("client-side compression is not possible when a backup target is specified")]
    ClientCompressionWithTarget,
    /// WAL streamed with a server target.
    #[error("WAL cannot be streamed when a backup target is specified")]
    StreamedWalWithTarget,
    /// WAL fetched with a server target.
    #[error("WAL cannot be fetched when a backup target is specified (use --wal-method=none)")]
    FetchedWalWithTarget,
    /// A slot without WAL streaming.
    #[error("replication slots can only be used with WAL streaming")]
    SlotWithoutStreaming,
    /// A WAL directory for a backup that is not plain.
    #[error("WAL directory location can only be specified in plain mode")]
    WalDirNotPlain,
    /// A WAL directory with a server target.
    #[error("WAL directory location cannot be specified along with a backup target")]
    WalDirWithTarget,
    /// A relative WAL directory.
    #[error("WAL directory location must be an absolute path")]
    WalDirRelative,
    /// Tablespace mappings for a backup that is not plain.
    #[error("tablespace relocation (-T) is only supported in plain format")]
    MappingsNotPlain,
    /// Progress without the size estimate.
    #[error("--progress and --no-estimate-size are incompatible options")]
    ProgressWithoutEstimate,
    /// Manifest options without a manifest.
    #[error("--no-manifest and --manifest-checksums are incompatible options")]
    ChecksumsWithoutManifest,
    /// Manifest options without a manifest.
    #[error("--no-manifest and --manifest-force-encode are incompatible options")]
    ForceEncodeWithoutManifest,
}

impl BackupPlan {
    /// A plain backup into `dir` with pg_basebackup's defaults: WAL streamed with a temporary
    /// slot, a CRC-32C manifest, a spread checkpoint, progress estimates, page checksums.
    pub fn new(output: Output) -> Self {
        BackupPlan {
            output,
            wal: WalChoice::Stream,
            slot: SlotChoice::Temporary,
            compression: CompressionChoice::None,
            tablespace_mappings: Vec::new(),
            wal_dir: None,
            standby: false,
            manifest: true,
            manifest_checksums: None,
            manifest_force_encode: false,
            estimate_size: true,
            progress: false,
            incremental: false,
            checkpoint: CheckpointMode::Spread,
            label: "pgrepl base backup".into(),
            max_rate_kb: None,
            verify_checksums: true,
            status_interval: Some(Duration::from_secs(10)),
        }
    }

    /// Refuses what pg_basebackup refuses, in its order.
    pub fn validate(&self) -> Result<(), PlanError> {
        let plain = matches!(self.output, Output::Directory { tar: false, .. });
        let target = matches!(self.output, Output::ServerTarget { .. });
        let stream = matches!(self.output, Output::Stream);
        if target && matches!(self.compression, CompressionChoice::Client(_)) {
            return Err(PlanError::ClientCompressionWithTarget);
        }
        if target && self.wal_dir.is_some() {
            return Err(PlanError::WalDirWithTarget);
        }
        if self.progress && !self.estimate_size {
            return Err(PlanError::ProgressWithoutEstimate);
        }
        if !self.manifest && self.manifest_checksums.is_some() {
            return Err(PlanError::ChecksumsWithoutManifest);
        }
        if !self.manifest && self.manifest_force_encode {
            return Err(PlanError::ForceEncodeWithoutManifest);
        }
        if target && self.wal == WalChoice::Stream {
            return Err(PlanError::StreamedWalWithTarget);
        }
        if target && self.wal == WalChoice::Fetch {
            return Err(PlanError::FetchedWalWithTarget);
        }
        if stream && self.wal == WalChoice::Stream {
            return Err(PlanError::StreamedWalToStream);
        }
        if stream && matches!(self.compression, CompressionChoice::Server(_)) {
            return Err(PlanError::ServerCompressionToStream);
        }
        if plain && matches!(self.compression, CompressionChoice::Client(_)) {
            return Err(PlanError::CompressedPlain);
        }
        if self.slot != SlotChoice::Temporary && self.wal != WalChoice::Stream {
            return Err(PlanError::SlotWithoutStreaming);
        }
        if let Some(w) = &self.wal_dir {
            if !plain {
                return Err(PlanError::WalDirNotPlain);
            }
            if !w.is_absolute() {
                return Err(PlanError::WalDirRelative);
            }
        }
        if !plain && !self.tablespace_mappings.is_empty() {
            return Err(PlanError::MappingsNotPlain);
        }
        Ok(())
    }

    /// The manifest's checksum algorithm.
    pub fn checksum_kind(&self) -> ChecksumKind {
        self.manifest_checksums.unwrap_or(ChecksumKind::Crc32c)
    }

    /// The BASE_BACKUP options this plan sends.
    pub fn options(&self) -> BaseBackupOptions {
        let plain = matches!(self.output, Output::Directory { tar: false, .. });
        BaseBackupOptions {
            label: self.label.clone(),
            progress: self.estimate_size,
            checkpoint: self.checkpoint,
            wal: self.wal == WalChoice::Fetch,
            wait: self.wal == WalChoice::None,
            max_rate_kb: self.max_rate_kb,
            verify_checksums: self.verify_checksums,
            manifest: self.manifest,
            manifest_force_encode: self.manifest_force_encode,
            manifest_checksums: pgrepl::ManifestChecksums::parse(self.checksum_kind().as_str())
                .unwrap_or_default(),
            incremental: self.incremental,
            // as pg_basebackup: a tar backup carries tablespace_map, so a restore from it can
            // recreate the pg_tblspc links (a plain backup has the links themselves)
            tablespace_map: !plain,
            compression: match &self.compression {
                CompressionChoice::Server(s) => Some(s.clone()),
                _ => None,
            },
            target: match &self.output {
                Output::ServerTarget { target, detail } => Some((target.clone(), detail.clone())),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tar: bool) -> BackupPlan {
        BackupPlan::new(Output::Directory {
            path: "/b".into(),
            tar,
        })
    }

    #[test]
    fn refuses_what_pg_basebackup_refuses() {
        assert_eq!(dir(false).validate(), Ok(()));
        let cases: Vec<(BackupPlan, PlanError)> = vec![
            (
                BackupPlan {
                    wal: WalChoice::Stream,
                    ..BackupPlan::new(Output::Stream)
                },
                PlanError::StreamedWalToStream,
            ),
            (
                BackupPlan {
                    wal: WalChoice::Fetch,
                    compression: CompressionChoice::Server(ServerCompression::Raw {
                        algorithm: "gzip".into(),
                        detail: None,
                    }),
                    ..BackupPlan::new(Output::Stream)
                },
                PlanError::ServerCompressionToStream,
            ),
            (
                BackupPlan {
                    compression: CompressionChoice::Client(ClientCompression::Lz4),
                    ..dir(false)
                },
                PlanError::CompressedPlain,
            ),
            (
                BackupPlan {
                    wal: WalChoice::Fetch,
                    slot: SlotChoice::NoSlot,
                    ..dir(false)
                },
                PlanError::SlotWithoutStreaming,
            ),
            (
                BackupPlan {
                    wal_dir: Some("/w".into()),
                    ..dir(true)
                },
                PlanError::WalDirNotPlain,
            ),
            (
                BackupPlan {
                    wal_dir: Some("w".into()),
                    ..dir(false)
                },
                PlanError::WalDirRelative,
            ),
            (
                BackupPlan {
                    wal: WalChoice::None,
                    ..BackupPlan::new(Output::ServerTarget {
                        target: "blackhole".into(),
                        detail: None,
                    })
                }
                .with_compression(CompressionChoice::Client(ClientCompression::Lz4)),
                PlanError::ClientCompressionWithTarget,
            ),
            (
                BackupPlan::new(Output::ServerTarget {
                    target: "blackhole".into(),
                    detail: None,
                }),
                PlanError::StreamedWalWithTarget,
            ),
            (
                BackupPlan {
                    progress: true,
                    estimate_size: false,
                    ..dir(false)
                },
                PlanError::ProgressWithoutEstimate,
            ),
            (
                BackupPlan {
                    manifest: false,
                    manifest_force_encode: true,
                    ..dir(false)
                },
                PlanError::ForceEncodeWithoutManifest,
            ),
        ];
        for (plan, want) in cases {
            assert_eq!(plan.validate(), Err(want.clone()), "{plan:?}");
        }
        // a tar backup carries tablespace_map; WAL fetch and none map to the options
        let o = BackupPlan {
            wal: WalChoice::None,
            ..dir(true)
        }
        .options();
        assert!(o.tablespace_map && o.wait && !o.wal);
    }

    impl BackupPlan {
        fn with_compression(mut self, c: CompressionChoice) -> Self {
            self.compression = c;
            self
        }
    }
}
