//! `pgrepl basebackup`: a full backup through the sinks, with pg_basebackup's flags.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use basebackup::checksum::ChecksumKind;
use basebackup::run::{take_backup, BackupEvent, WalMethod};
use basebackup::sink::{BackupSink, DirectorySink, TablespaceMapping, TarSink, Tee, VerifySink};
use clap::Args;
use pgrepl::{BaseBackupOptions, CheckpointMode, ManifestChecksums};

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
    /// Compress: none (compression is not supported yet)
    #[arg(short = 'Z', long = "compress", value_name = "METHOD")]
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
    if let Some(c) = &args.compress {
        if c != "none" && c != "0" {
            bail!("compression \"{c}\" is not supported yet");
        }
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
        manifest_checksums: ManifestChecksums::parse(kind.as_str()).unwrap_or_default(),
        incremental: parent_manifest.is_some(),
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
        Box::new(TarSink::new(&args.pgdata, !args.no_sync)?)
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
