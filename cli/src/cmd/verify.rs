//! `pgrepl verify BACKUP`: check a plain or tar backup, its manifest and its WAL; `pgrepl
//! verify --repo URL [ID …]`: the same for backups stored in a repository, where they are.

use std::path::PathBuf;
use std::process::ExitCode;

use basebackup::verify::{verify_backup, BackupFormat, VerifyOptions, VerifyReport};
use clap::Args;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The backup directory (plain, or tar with base.tar[.gz|.zst]); with --repo, backup IDs
    /// (none: every backup)
    #[arg(value_name = "BACKUP")]
    backup: Vec<String>,
    /// Verify backups stored in this repository (s3://BUCKET/PREFIX, file:///PATH or a
    /// directory), reading them where they are
    #[arg(long = "repo", value_name = "URL")]
    repo: Option<String>,
    /// With --repo: the age identity file of an encrypted repository (-i is --ignore here, as
    /// in pg_verifybackup)
    #[arg(long = "identity", value_name = "FILE")]
    identity: Option<PathBuf>,
    /// With --repo: decode the WAL each backup carries too
    #[arg(long = "wal")]
    wal: bool,
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

fn findings_json(report: &VerifyReport) -> Vec<serde_json::Value> {
    report
        .findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "kind": format!("{:?}", f.kind).to_lowercase(),
                "path": f.path,
                "lsn": f.lsn.map(|l| l.to_string()),
                "detail": f.detail,
            })
        })
        .collect()
}

async fn run_repo(args: VerifyArgs, url: String) -> anyhow::Result<ExitCode> {
    if args.wal_archive.is_some() || args.format.is_some() || args.manifest_path.is_some() {
        anyhow::bail!("-w, -F and -m apply to a backup directory, not to --repo");
    }
    let repo = crate::repo_args::RepoArgs {
        repo: Some(url),
        s3_endpoint: None,
        s3_region: None,
        s3_path_style: false,
        s3_ca_file: None,
        identity: args.identity.clone(),
    }
    .open(&[])
    .await?;
    let ids: Vec<String> = if args.backup.is_empty() {
        repo.backups().await?.into_iter().map(|b| b.id).collect()
    } else {
        args.backup.clone()
    };
    let mut all_ok = true;
    let mut out = Vec::new();
    for id in &ids {
        let opts = VerifyOptions {
            skip_wal: !args.wal,
            exit_on_error: args.exit_on_error,
            skip_checksums: args.skip_checksums,
            ignore: args.ignore.clone(),
            ..Default::default()
        };
        let report = pgrepo::verify::verify_stored(&repo, id, opts).await?;
        for p in &report.findings {
            eprintln!("pgrepl: error: {id}: {}", p.to_string().replace('\n', " "));
        }
        all_ok &= report.findings.is_empty();
        if args.json {
            out.push(serde_json::json!({
                "backup": id,
                "ok": report.findings.is_empty(),
                "files_checked": report.files_checked,
                "bytes_checked": report.bytes_checked,
                "wal_records": report.wal_records,
                "findings": findings_json(&report),
            }));
        } else if report.findings.is_empty() && !args.quiet {
            println!(
                "backup {id} successfully verified ({} files, {} bytes{})",
                report.files_checked,
                report.bytes_checked,
                if args.wal {
                    format!(", {} WAL records", report.wal_records)
                } else {
                    String::new()
                }
            );
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "repository": repo.name(), "ok": all_ok, "backups": out })
        );
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    if args.progress && args.quiet {
        anyhow::bail!("cannot specify both -P/--progress and -q/--quiet");
    }
    if let Some(url) = args.repo.clone() {
        return run_repo(args, url).await;
    }
    if args.wal || args.identity.is_some() {
        anyhow::bail!("--wal and --identity apply to --repo");
    }
    // pg_verifybackup's words
    let backup = match &args.backup[..] {
        [] => anyhow::bail!("no backup directory specified"),
        [b] => b,
        [_, extra, ..] => {
            anyhow::bail!("too many command-line arguments (first is \"{extra}\")")
        }
    };
    let backup = PathBuf::from(backup);
    let format = args.format.as_deref().map(parse_format).transpose()?;
    let report = verify_backup(
        &backup,
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
                "backup": backup.display().to_string(),
                "ok": report.findings.is_empty(),
                "files_checked": report.files_checked,
                "wal_records": report.wal_records,
                "findings": findings_json(&report),
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
