//! `pgrepl verify BACKUP`: check a plain or tar backup, its manifest and its WAL.

use std::path::PathBuf;
use std::process::ExitCode;

use basebackup::verify::{verify_backup, BackupFormat, VerifyOptions};
use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The backup directory (plain, or tar with base.tar[.gz|.zst])
    backup: PathBuf,
    /// Read the WAL from this archive instead of the backup
    #[arg(
        short = 'w',
        long = "wal-archive",
        value_name = "DIR",
        visible_alias = "wal-path",
        alias = "wal-directory"
    )]
    wal_archive: Option<PathBuf>,
    /// The backup's format: p/plain or t/tar (by default: tar if base.tar[.gz|.zst] is there)
    #[arg(short = 'F', long = "format", value_name = "p|t")]
    format: Option<String>,
    /// Do not check the WAL
    #[arg(short = 'n', long = "no-parse-wal")]
    no_parse_wal: bool,
    /// Stop at the first problem
    #[arg(short = 'e', long = "exit-on-error")]
    exit_on_error: bool,
    /// Print nothing when the backup is fine
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Read the manifest from this file
    #[arg(short = 'm', long = "manifest-path", value_name = "PATH")]
    manifest_path: Option<PathBuf>,
    /// Check sizes but not checksums
    #[arg(short = 's', long = "skip-checksums")]
    skip_checksums: bool,
    /// Ignore this path (relative to the backup) and everything under it; repeatable
    #[arg(short = 'i', long = "ignore", value_name = "RELATIVE_PATH")]
    ignore: Vec<String>,
    /// Show how much was checked
    #[arg(short = 'P', long = "progress")]
    progress: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_format(s: &str) -> anyhow::Result<BackupFormat> {
    match s {
        "p" | "plain" => Ok(BackupFormat::Plain),
        "t" | "tar" => Ok(BackupFormat::Tar),
        _ => anyhow::bail!("invalid backup format \"{s}\", must be \"plain\" or \"tar\""),
    }
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.progress && args.quiet {
        anyhow::bail!("cannot specify both -P/--progress and -q/--quiet");
    }
    let format = args.format.as_deref().map(parse_format).transpose()?;
    let report = verify_backup(
        &args.backup,
        &VerifyOptions {
            wal_archive: args.wal_archive.clone(),
            skip_wal: args.no_parse_wal,
            exit_on_error: args.exit_on_error,
            manifest_path: args.manifest_path.clone(),
            skip_checksums: args.skip_checksums,
            ignore: args.ignore.clone(),
            format,
        },
    );
    if args.progress {
        let kb = report.bytes_checked / 1024;
        eprintln!("{kb}/{kb} kB (100%) verified");
    }
    for p in &report.findings {
        eprintln!("pgrepl: error: {}", p.to_string().replace('\n', " "));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "backup": args.backup.display().to_string(),
                "ok": report.findings.is_empty(),
                "files_checked": report.files_checked,
                "wal_records": report.wal_records,
                "findings": report.findings.iter().map(|f| serde_json::json!({
                    "kind": format!("{:?}", f.kind).to_lowercase(),
                    "path": f.path,
                    "lsn": f.lsn.map(|l| l.to_string()),
                    "detail": f.detail,
                })).collect::<Vec<_>>(),
            })
        );
    } else if report.findings.is_empty() && !args.quiet {
        println!("backup successfully verified");
    }
    Ok(if report.findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
