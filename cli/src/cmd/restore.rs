//! `pgrepl restore -D PGDATA BACKUP... --wal-archive DIR [target]`: lay out a data directory
//! from a backup chain and configure archive recovery to a point in time, so that `pg_ctl start`
//! replays the WAL archive (through `pgrepl wal-fetch`) and stops at the target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use basebackup::combine::{CombineOptions, CopyMethod};
use basebackup::restore::{
    parse_timestamp, restore, shell_quote, RecoveryTarget, RestoreOptions, TargetAction,
};
use basebackup::sink::TablespaceMapping;
use clap::Args;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backups: a full backup, then its incrementals (oldest first); none with --repo
    #[arg(value_name = "BACKUP")]
    backups: Vec<PathBuf>,
    #[command(flatten)]
    repo: crate::repo_args::RepoArgs,
    /// With --repo: restore this backup (and its chain) instead of the newest that reaches the
    /// target
    #[arg(long = "backup", value_name = "ID")]
    backup: Option<String>,
    /// The data directory to create (absent or empty)
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pgdata: PathBuf,
    /// The WAL archive recovery reads from (as written by pgrepl receivewal)
    #[arg(short = 'w', long = "wal-archive", value_name = "DIR")]
    wal_archive: Option<PathBuf>,
    /// Stop at this time (with a zone: "2026-11-24 10:00:00+00")
    #[arg(long = "target-time", value_name = "TIMESTAMP")]
    target_time: Option<String>,
    /// Stop after this WAL position
    #[arg(long = "target-lsn", value_name = "LSN")]
    target_lsn: Option<String>,
    /// Stop after this transaction ends
    #[arg(long = "target-xid", value_name = "XID")]
    target_xid: Option<String>,
    /// Stop at this restore point (pg_create_restore_point)
    #[arg(long = "target-name", value_name = "NAME")]
    target_name: Option<String>,
    /// "immediate": stop as soon as the backup is consistent
    #[arg(long = "target", value_name = "immediate")]
    target: Option<String>,
    /// What the server does at the target: promote (the default: a usable primary), pause
    /// (read-only until pg_wal_replay_resume(); PostgreSQL's own default) or shutdown
    #[arg(
        long = "target-action",
        value_name = "ACTION",
        default_value = "promote"
    )]
    target_action: TargetAction,
    /// Relocate the tablespace at OLDDIR (its location in the newest backup) to NEWDIR
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    tablespace_mapping: Vec<String>,
    /// Do not wait for the data directory to be written safely to disk
    #[arg(short = 'N', long = "no-sync")]
    no_sync: bool,
    /// Copy files with copy_file_range(2)
    #[arg(long = "copy-file-range")]
    copy_file_range: bool,
    /// Print a summary as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn target(args: &RestoreArgs) -> anyhow::Result<Option<RecoveryTarget>> {
    let mut targets = Vec::new();
    if let Some(t) = &args.target_time {
        targets.push(RecoveryTarget::Time(
            t.clone(),
            parse_timestamp(t).map_err(anyhow::Error::msg)?,
        ));
    }
    if let Some(l) = &args.target_lsn {
        targets.push(RecoveryTarget::Lsn(
            l.parse()
                .map_err(|_| anyhow::anyhow!("invalid target LSN \"{l}\""))?,
        ));
    }
    if let Some(x) = &args.target_xid {
        targets.push(RecoveryTarget::Xid(
            x.parse()
                .with_context(|| format!("invalid target xid \"{x}\""))?,
        ));
    }
    if let Some(n) = &args.target_name {
        if n.is_empty() || n.len() >= 64 {
            bail!("invalid restore point name \"{n}\": 1 to 63 bytes");
        }
        targets.push(RecoveryTarget::Name(n.clone()));
    }
    if let Some(t) = &args.target {
        if t != "immediate" {
            bail!("invalid target \"{t}\": the only value is \"immediate\"");
        }
        targets.push(RecoveryTarget::Immediate);
    }
    if targets.len() > 1 {
        bail!("only one of --target-time, --target-lsn, --target-xid, --target-name and --target may be given");
    }
    Ok(targets.pop())
}

pub async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let use_repo =
        args.repo.repo.is_some() || (args.backups.is_empty() && args.repo.url().is_some());
    if use_repo {
        if !args.backups.is_empty() || args.wal_archive.is_some() {
            bail!("with --repo, give no backup directories and no --wal-archive: the repository holds both");
        }
        return run_repo(args).await;
    }
    if args.backups.is_empty() {
        bail!("no backup given: name the backup directories (oldest first), or use --repo");
    }
    if args.backup.is_some() {
        bail!("--backup names a backup in a repository (--repo)");
    }
    let Some(wal_archive) = &args.wal_archive else {
        bail!("no WAL archive given (-w/--wal-archive DIR)");
    };
    let target = target(&args)?;
    let exe =
        std::env::current_exe().context("cannot find the pgrepl executable for restore_command")?;
    let archive = std::path::absolute(wal_archive)
        .with_context(|| format!("bad archive path \"{}\"", wal_archive.display()))?;
    let restore_command = format!(
        "{} wal-fetch {} %f %p",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&archive.to_string_lossy())
    );
    let tablespace_mappings = args
        .tablespace_mapping
        .iter()
        .map(|m| TablespaceMapping::parse(m).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = RestoreOptions {
        data_dir: args.pgdata.clone(),
        wal_archive: archive,
        target,
        target_action: args.target_action,
        restore_command,
        combine: CombineOptions {
            tablespace_mappings,
            sync: !args.no_sync,
            copy_method: if args.copy_file_range {
                CopyMethod::CopyFileRange
            } else {
                CopyMethod::Copy
            },
            ..Default::default()
        },
    };
    let s = restore(&args.backups, &opts)?;
    warn_root_owned(&args.pgdata);
    report(&args, &opts, &s, None);
    Ok(ExitCode::SUCCESS)
}

/// PostgreSQL refuses to run as root: say so now rather than at pg_ctl start.
fn warn_root_owned(pgdata: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(pgdata).is_ok_and(|m| m.uid() == 0) {
        eprintln!(
            "pgrepl: warning: \"{}\" belongs to root; give it to the server's user (chown -R) before starting the server",
            pgdata.display()
        );
    }
}

/// The files beside the data directory that restore_command uses: `<DIR>.pgrepl-env` (S3
/// credentials, 0600) and `<DIR>.pgrepl-prefetch/` (segments fetched ahead).
fn beside(pgdata: &std::path::Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(pgdata)
        .with_context(|| format!("bad data directory \"{}\"", pgdata.display()))?;
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow::anyhow!("bad data directory \"{}\"", pgdata.display()))?;
    Ok(abs.with_file_name(format!("{name}.{suffix}")))
}

async fn run_repo(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args)?;
    let (loc, _) = args.repo.store(&[])?;
    let repo = args.repo.open(&[]).await?;
    let exe =
        std::env::current_exe().context("cannot find the pgrepl executable for restore_command")?;
    let env_file = beside(&args.pgdata, "pgrepl-env")?;
    let cache = beside(&args.pgdata, "pgrepl-prefetch")?;
    let mut words = vec![exe.to_string_lossy().into_owned(), "wal-fetch".to_owned()];
    words.extend(args.repo.to_args(&loc));
    let parent = env_file.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&parent).ok();
    if crate::repo_args::write_env_file(&env_file, &parent)? {
        words.extend(["--env-file".to_owned(), env_file.display().to_string()]);
    }
    words.extend(["--prefetch-dir".to_owned(), cache.display().to_string()]);
    let mut restore_command: String = words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ");
    restore_command.push_str(" %f %p");
    let tablespace_mappings = args
        .tablespace_mapping
        .iter()
        .map(|m| TablespaceMapping::parse(m).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut ropts = pgrepo::restore::RepoRestoreOptions::default();
    ropts.data_dir = args.pgdata.clone();
    ropts.target = target.clone();
    ropts.target_action = args.target_action;
    ropts.backup = args.backup.clone();
    ropts.tablespace_mappings = tablespace_mappings;
    ropts.restore_command = restore_command.clone();
    ropts.sync = !args.no_sync;
    let out = match pgrepo::restore::restore_from_repo(&repo, &ropts).await {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&env_file);
            return Err(e.into());
        }
    };
    warn_root_owned(&args.pgdata);
    let opts = RestoreOptions {
        data_dir: args.pgdata.clone(),
        wal_archive: PathBuf::new(),
        target,
        target_action: args.target_action,
        restore_command,
        combine: CombineOptions::default(),
    };
    report(&args, &opts, &out.summary, Some(&out.chain));
    Ok(ExitCode::SUCCESS)
}

fn report(
    args: &RestoreArgs,
    opts: &RestoreOptions,
    s: &basebackup::restore::RestoreSummary,
    chain: Option<&[String]>,
) {
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "pgdata": args.pgdata.display().to_string(),
                "files": s.combine.files,
                "reconstructed": s.combine.reconstructed,
                "bytes": s.combine.bytes,
                "consistent_lsn": s.consistent_at.to_string(),
                "archive_end_lsn": s.archive_end.to_string(),
                "restore_command": opts.restore_command,
                "target_action": opts.target.is_some().then(|| opts.target_action.as_str()),
                "chain": chain,
            })
        );
    } else {
        let at_target = match (&opts.target, opts.target_action) {
            (None, _) => "replays the whole archive and promotes".to_owned(),
            (Some(_), TargetAction::Promote) => {
                "stops at the target and promotes (--target-action promote)".to_owned()
            }
            (Some(_), a) => format!(
                "stops at the target and will {} (--target-action {})",
                match a {
                    TargetAction::Pause => "pause, read-only, until pg_wal_replay_resume()",
                    _ => "shut down",
                },
                a.as_str()
            ),
        };
        let from = chain
            .map(|c| format!(" from {}", c.join(" + ")))
            .unwrap_or_default();
        let reach = if opts.target.is_some() {
            format!(
                "the WAL archive was read to {}, past the target",
                s.archive_end
            )
        } else {
            format!("the WAL archive reaches {}", s.archive_end)
        };
        eprintln!(
            "pgrepl: restored into \"{}\"{from}; the backup is consistent at {}, {reach}. Start the server to recover: it {at_target}.",
            args.pgdata.display(),
            s.consistent_at,
        );
    }
}
