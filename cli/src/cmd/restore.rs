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
    /// The backups: a full backup, then its incrementals (oldest first)
    #[arg(required = true, value_name = "BACKUP")]
    backups: Vec<PathBuf>,
    /// The data directory to create (absent or empty)
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pgdata: PathBuf,
    /// The WAL archive recovery reads from (as written by pgrepl receivewal)
    #[arg(short = 'w', long = "wal-archive", value_name = "DIR")]
    wal_archive: PathBuf,
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

pub fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = target(&args)?;
    let exe =
        std::env::current_exe().context("cannot find the pgrepl executable for restore_command")?;
    let archive = std::path::absolute(&args.wal_archive)
        .with_context(|| format!("bad archive path \"{}\"", args.wal_archive.display()))?;
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
    {
        use std::os::unix::fs::MetadataExt;
        // PostgreSQL refuses to run as root: say so now rather than at pg_ctl start
        if std::fs::metadata(&args.pgdata).is_ok_and(|m| m.uid() == 0) {
            eprintln!(
                "pgrepl: warning: \"{}\" belongs to root; give it to the server's user (chown -R) before starting the server",
                args.pgdata.display()
            );
        }
    }
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
        eprintln!(
            "pgrepl: restored into \"{}\"; the backup is consistent at {}, the WAL archive reaches {}. Start the server to recover: it {at_target}.",
            args.pgdata.display(),
            s.consistent_at,
            s.archive_end
        );
    }
    Ok(ExitCode::SUCCESS)
}
