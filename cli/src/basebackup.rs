//! `pgrepl basebackup`: a full backup through the sinks, with pg_basebackup's flags.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use basebackup::checksum::ChecksumKind;
use basebackup::run::{take_backup, BackupEvent, WalMethod};
use basebackup::sink::{
    BackupSink, DirectorySink, TablespaceMapping, TarSink, Tee, VerifySink, ZstdCompression,
};
use clap::Args;
use pgrepl::{BaseBackupOptions, CheckpointMode, ServerCompression};

use crate::conn::ConnArgs;

#[derive(Args, Debug)]
pub struct BaseBackupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Receive the base backup into this directory
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pgdata: PathBuf,
    /// Output format: p (plain) or t (tar)
    #[arg(short = 'F', long = "format", value_name = "p|t", default_value = "p")]
    format: String,
    /// WAL method: stream (on a second connection while the backup runs), fetch, or none
    #[arg(
        short = 'X',
        long = "wal-method",
        value_name = "METHOD",
        default_value = "stream"
    )]
    wal_method: String,
    /// Set fast or spread checkpointing
    #[arg(
        short = 'c',
        long = "checkpoint",
        value_name = "fast|spread",
        default_value = "spread"
    )]
    checkpoint: String,
    /// Set backup label
    #[arg(
        short = 'l',
        long = "label",
        value_name = "LABEL",
        default_value = "pgrepl base backup"
    )]
    label: String,
    /// Maximum transfer rate (kB/s, or with suffix k or M)
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    max_rate: Option<String>,
    /// Relocate the tablespace in directory OLDDIR to NEWDIR
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    tablespace_mapping: Vec<String>,
    /// Checksum algorithm of the manifest: CRC32C, SHA224, SHA256, SHA384, SHA512, NONE
    #[arg(
        long = "manifest-checksums",
        value_name = "ALGORITHM",
        default_value = "CRC32C"
    )]
    manifest_checksums: String,
    /// Do not ask for a backup manifest
    #[arg(long = "no-manifest")]
    no_manifest: bool,
    /// Do not verify page checksums on the server
    #[arg(long = "no-verify-checksums")]
    no_verify_checksums: bool,
    /// Compress: [client-]zstd[:LEVEL|:level=N,workers=N] (tar format), server-zstd[:...],
    /// server-gzip[:LEVEL], or none
    #[arg(short = 'Z', long = "compress", value_name = "[WHERE-]METHOD[:DETAIL]")]
    compress: Option<String>,
    /// Take an incremental backup relative to this earlier backup (its directory, tar
    /// directory, or backup_manifest file); PostgreSQL 17+ with summarize_wal=on
    #[arg(short = 'i', long = "incremental", value_name = "OLDMANIFEST")]
    incremental: Option<PathBuf>,
    /// Do not wait for changes to be written safely to disk
    #[arg(short = 'N', long = "no-sync")]
    no_sync: bool,
    /// Show progress information
    #[arg(short = 'P', long = "progress")]
    progress: bool,
    /// Print a JSON summary on stdout
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Where compression happens.
enum Compression {
    None,
    Client(ZstdCompression),
    Server(ServerCompression),
}

/// `-Z`: `none`, `[client-]zstd[:DETAIL]`, `server-zstd[:DETAIL]`, `server-gzip[:LEVEL]`, where
/// DETAIL is a level or `level=N,workers=N`.
fn parse_compress(spec: &str) -> anyhow::Result<Compression> {
    let (place, rest) = if let Some(r) = spec.strip_prefix("server-") {
        ("server", r)
    } else if let Some(r) = spec.strip_prefix("client-") {
        ("client", r)
    } else {
        ("client", spec)
    };
    let (method, detail) = match rest.split_once(':') {
        Some((m, d)) => (m, Some(d)),
        None => (rest, None),
    };
    let mut level = None;
    let mut workers = None;
    if let Some(d) = detail {
        for item in d.split(',') {
            match item.split_once('=') {
                None => {
                    level = Some(
                        item.parse::<i32>()
                            .with_context(|| format!("invalid compression level \"{item}\""))?,
                    )
                }
                Some(("level", v)) => {
                    level = Some(
                        v.parse::<i32>()
                            .with_context(|| format!("invalid compression level \"{v}\""))?,
                    )
                }
                Some(("workers", v)) => {
                    workers = Some(
                        v.parse::<u32>()
                            .with_context(|| format!("invalid worker count \"{v}\""))?,
                    )
                }
                Some((k, _)) => bail!(
                    "invalid compression specification: unrecognized compression option \"{k}\""
                ),
            }
        }
    }
    Ok(match (place, method) {
        (_, "none") => {
            if detail.is_some() {
                bail!("invalid compression specification: compression algorithm \"none\" does not accept a compression level");
            }
            Compression::None
        }
        ("client", "zstd") => {
            let level = level.unwrap_or(3);
            if !(1..=22).contains(&level) {
                bail!("zstd compression level {level} is out of range (1 to 22)");
            }
            Compression::Client(ZstdCompression {
                level,
                workers: workers.unwrap_or(0),
            })
        }
        ("server", "zstd") => Compression::Server(ServerCompression::Zstd { level, workers }),
        ("server", "gzip") => {
            if workers.is_some() {
                bail!("invalid compression specification: compression algorithm \"gzip\" does not accept a worker count");
            }
            Compression::Server(ServerCompression::Gzip(level))
        }
        ("client", "gzip") | ("client", "lz4") | ("server", "lz4") => {
            bail!("compression \"{spec}\" is not supported by pgrepl; use zstd, server-zstd or server-gzip")
        }
        (_, m) => {
            bail!("invalid compression specification: unrecognized compression algorithm: \"{m}\"")
        }
    })
}

/// `-r`: kB/s, with an optional k or M suffix; PostgreSQL accepts 32 kB/s to 1 GB/s.
fn parse_rate(s: &str) -> anyhow::Result<u32> {
    let (num, mult) = match s.trim().strip_suffix(['M', 'm']) {
        Some(n) => (n, 1024),
        None => (s.trim().trim_end_matches(['k', 'K']), 1),
    };
    let v: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid transfer rate \"{s}\""))?;
    let kb = v * mult;
    if !(32..=1_048_576).contains(&kb) {
        bail!("transfer rate \"{s}\" is out of range (32 kB/s to 1 GB/s)");
    }
    Ok(kb as u32)
}

pub async fn run(args: BaseBackupArgs) -> anyhow::Result<ExitCode> {
    let plain = match args.format.as_str() {
        "p" | "plain" => true,
        "t" | "tar" => false,
        f => bail!("invalid output format \"{f}\", must be \"plain\" or \"tar\""),
    };
    #[derive(PartialEq)]
    enum Wal {
        None,
        Fetch,
        Stream,
    }
    let wal_method = match args.wal_method.as_str() {
        "f" | "fetch" => Wal::Fetch,
        "n" | "none" => Wal::None,
        "s" | "stream" => Wal::Stream,
        m => bail!("invalid wal-method option \"{m}\", must be \"fetch\", \"stream\", or \"none\""),
    };
    let wal = wal_method == Wal::Fetch;
    let checkpoint = match args.checkpoint.to_ascii_lowercase().as_str() {
        "fast" => CheckpointMode::Fast,
        "spread" => CheckpointMode::Spread,
        c => bail!("invalid checkpoint argument \"{c}\", must be \"fast\" or \"spread\""),
    };
    let compression = match &args.compress {
        Some(c) => parse_compress(c)?,
        None => Compression::None,
    };
    if plain && matches!(compression, Compression::Client(_)) {
        bail!("client-side compression can only be used with tar format (-F t); use server-zstd or server-gzip with plain format");
    }
    // The parent's manifest, read up front so a bad path fails before anything is written.
    let parent_manifest = match &args.incremental {
        None => None,
        Some(p) => {
            let file = if p.is_dir() {
                p.join("backup_manifest")
            } else {
                p.clone()
            };
            Some(std::fs::read(&file).with_context(|| {
                format!(
                    "could not read the manifest of the earlier backup \"{}\"",
                    file.display()
                )
            })?)
        }
    };
    let kind = ChecksumKind::parse(&args.manifest_checksums).with_context(|| {
        format!(
            "unrecognized manifest checksum algorithm: \"{}\"",
            args.manifest_checksums
        )
    })?;
    let mappings = args
        .tablespace_mapping
        .iter()
        .map(|m| TablespaceMapping::parse(m).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !plain && !mappings.is_empty() {
        bail!("tablespace relocation (-T) is only supported in plain format");
    }
    let options = BaseBackupOptions {
        label: args.label.clone(),
        progress: true,
        checkpoint,
        wal,
        wait: wal_method == Wal::None,
        max_rate_kb: args.max_rate.as_deref().map(parse_rate).transpose()?,
        verify_checksums: !args.no_verify_checksums,
        manifest: !args.no_manifest,
        manifest_checksums: kind,
        incremental: parent_manifest.is_some(),
        // as pg_basebackup: a tar backup carries tablespace_map, so a restore from it can
        // recreate the pg_tblspc links (a plain backup has the links themselves)
        tablespace_map: !plain,
        compression: match compression {
            Compression::Server(s) => Some(s),
            _ => None,
        },
        ..Default::default()
    };

    let config = args.conn.config()?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    if let Some(m) = &parent_manifest {
        conn.upload_manifest(&m[..]).await?;
    }
    let writer: Box<dyn BackupSink> = if plain {
        Box::new(DirectorySink::new(&args.pgdata, mappings, !args.no_sync)?)
    } else {
        let zstd = match compression {
            Compression::Client(z) => Some(z),
            _ => None,
        };
        Box::new(TarSink::with_compression(
            &args.pgdata,
            !args.no_sync,
            zstd,
        )?)
    };
    let mut sink = Tee(VerifySink::new(kind, Some(id.system_id)), writer);
    let wal_plan = match wal_method {
        Wal::None => WalMethod::None,
        Wal::Fetch => WalMethod::Fetch,
        Wal::Stream => WalMethod::Stream {
            config: Box::new(config.clone()),
            system_id: id.system_id,
            sync: !args.no_sync,
        },
    };
    let show_progress = args.progress && (std::io::stderr().is_terminal() || args.verbose > 0);
    let summary = take_backup(&mut conn, &options, &wal_plan, &mut sink, |ev| match ev {
        BackupEvent::Notice(n) => eprintln!("pgrepl: {}: {}", n.severity, n.message),
        BackupEvent::Progress { done, total } if show_progress => match total {
            Some(t) if *t > 0 => eprint!(
                "\r{}/{} kB ({}%)   ",
                done / 1024,
                t / 1024,
                (done * 100 / t).min(100)
            ),
            _ => eprint!("\r{} kB   ", done / 1024),
        },
        BackupEvent::Started { start_lsn, timeline, .. } if args.verbose > 0 => {
            eprintln!("pgrepl: checkpoint completed; write-ahead log start point: {start_lsn} on timeline {timeline}")
        }
        _ => {}
    })
    .await;
    if show_progress {
        eprintln!();
    }
    let summary = summary?;
    let _ = conn.close().await;
    if args.verbose > 0 {
        eprintln!(
            "pgrepl: write-ahead log end point: {}; {} files, {} bytes, verified against the manifest",
            summary.end_lsn, summary.files, summary.file_bytes
        );
    }
    if args.json {
        let v = serde_json::json!({
            "label": args.label,
            "directory": args.pgdata.display().to_string(),
            "format": if plain { "plain" } else { "tar" },
            "start_lsn": summary.start_lsn.to_string(),
            "end_lsn": summary.end_lsn.to_string(),
            "timeline": summary.timeline.0,
            "system_identifier": id.system_id.to_string(),
            "archives": summary.archives.iter().map(|(n, b)| serde_json::json!({"name": n, "bytes": b})).collect::<Vec<_>>(),
            "files": summary.files,
            "bytes": summary.file_bytes,
            "duration_s": summary.duration.as_secs_f64(),
            "warnings": summary.warnings.iter().map(|w| w.message.clone()).collect::<Vec<_>>(),
        });
        println!("{v}");
    }
    if !summary.warnings.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
