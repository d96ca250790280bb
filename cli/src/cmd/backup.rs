//! `pgrepl backup --repo URL`: a full or incremental backup streamed into the repository
//! (`--type auto` chooses, and says why a backup is full).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use pgrepl::CheckpointMode;
use pgrepo::backup::{backup_to_repo, RepoBackupOptions, Requested};
use pgrepo::sink::ChunkCompression;
use pgstream::BackupEvent;

use crate::conn::ConnArgs;
use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    repo: RepoArgs,
    /// auto (incremental on the newest backup when possible), full or incremental
    #[arg(long = "type", value_name = "TYPE", default_value = "auto")]
    kind: String,
    /// Compression of stored data: none or zstd[:LEVEL] (default zstd:3)
    #[arg(short = 'Z', long = "compress", value_name = "METHOD[:LEVEL]")]
    compress: Option<String>,
    /// Set fast or spread checkpointing
    #[arg(
        short = 'c',
        long = "checkpoint",
        value_name = "fast|spread",
        default_value = "spread"
    )]
    checkpoint: String,
    /// Longest chain (the full backup included) an automatic incremental may extend
    #[arg(long = "max-chain", value_name = "N", default_value_t = 10)]
    max_chain: usize,
    /// Where WAL streamed beside the backup waits until the backup ends (default: the
    /// system's temporary directory)
    #[arg(long = "spool", value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Set the backup label
    #[arg(
        short = 'l',
        long = "label",
        value_name = "LABEL",
        default_value = "pgrepl backup"
    )]
    label: String,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Show progress
    #[arg(short = 'P', long = "progress")]
    progress: bool,
    /// Maximum transfer rate (kB/s, or with suffix k or M)
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    max_rate: Option<String>,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub fn parse_compression(spec: Option<&str>) -> anyhow::Result<ChunkCompression> {
    Ok(match spec {
        None => ChunkCompression::Zstd(3),
        Some("none") => ChunkCompression::None,
        Some("zstd") => ChunkCompression::Zstd(3),
        Some(s) => match s.strip_prefix("zstd:") {
            Some(l) => {
                let level: i32 = l
                    .strip_prefix("level=")
                    .unwrap_or(l)
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid zstd level \"{l}\""))?;
                if !(-7..=22).contains(&level) {
                    bail!("zstd level {level} is outside -7..22");
                }
                ChunkCompression::Zstd(level)
            }
            None => bail!("invalid compression \"{s}\": none or zstd[:LEVEL]"),
        },
    })
}

pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let requested = match args.kind.as_str() {
        "auto" => Requested::Auto,
        "full" => Requested::Full,
        "incremental" => Requested::Incremental,
        k => bail!("invalid backup type \"{k}\": auto, full or incremental"),
    };
    let checkpoint = match args.checkpoint.as_str() {
        "fast" => CheckpointMode::Fast,
        "spread" => CheckpointMode::Spread,
        c => bail!("invalid checkpoint argument \"{c}\", must be \"fast\" or \"spread\""),
    };
    let mut opts = RepoBackupOptions::default();
    opts.requested = requested;
    opts.compression = parse_compression(args.compress.as_deref())?;
    opts.checkpoint = checkpoint;
    opts.max_chain = args.max_chain.max(1);
    opts.label = args.label.clone();
    opts.progress = args.progress;
    opts.max_rate_kb = args
        .max_rate
        .as_deref()
        .map(crate::cmd::basebackup::parse_rate)
        .transpose()?;
    if let Some(s) = &args.spool {
        opts.spool_parent = s.clone();
    }
    let config = args.conn.config()?;
    let repo = args.repo.open(&[]).await?;
    let progress = args.progress;
    let out = backup_to_repo(&repo, &config, &opts, |e| match e {
        BackupEvent::Notice(n) => eprintln!("pgrepl: {}: {}", n.severity, n.message),
        BackupEvent::Progress { done, total } if progress => match total {
            Some(t) if *t > 0 => eprint!(
                "\r{} / {} kB ({}%)   ",
                done / 1024,
                t / 1024,
                done * 100 / t
            ),
            _ => eprint!("\r{} kB   ", done / 1024),
        },
        _ => {}
    })
    .await?;
    if progress {
        eprintln!();
    }
    let r = &out.record;
    if args.json {
        let mut v = serde_json::to_value(r)?;
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "full_reason_code".into(),
                out.full_reason
                    .as_ref()
                    .map(|f| serde_json::Value::from(f.code()))
                    .unwrap_or(serde_json::Value::Null),
            );
        }
        println!("{v}");
    } else {
        let kind = match (&r.parent, &out.full_reason) {
            (Some(p), _) => format!("an incremental backup on {p}"),
            (None, Some(why)) => format!("a full backup ({why})"),
            (None, None) => "a full backup".to_owned(),
        };
        eprintln!(
            "pgrepl: {} is {kind}: {} files, {} bytes stored as {}; consistent at {} on timeline {}",
            r.id, r.files, r.bytes, r.stored_bytes, r.end_lsn, r.timeline
        );
    }
    Ok(ExitCode::SUCCESS)
}
