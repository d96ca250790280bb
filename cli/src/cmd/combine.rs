//! `pgrepl combine BACKUP... -o OUTPUT`: rebuild a data directory from a full backup and its
//! incrementals (oldest first), as pg_combinebackup does, for PostgreSQL 17 and 18 and from plain
//! or tar backups.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use basebackup::checksum::ChecksumKind;
use basebackup::combine::{combine, CombineOptions, CopyMethod};
use basebackup::sink::{SyncMethod, TablespaceMapping};
use clap::Args;

#[derive(Args, Debug)]
pub struct CombineArgs {
    /// The backups, the full one first and the newest incremental last
    #[arg(required = true, value_name = "BACKUP")]
    backups: Vec<PathBuf>,
    /// The output directory (absent or empty)
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    output: PathBuf,
    /// Relocate the tablespace at OLDDIR (its location in the newest backup) to NEWDIR
    #[arg(short = 'T', long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    tablespace_mapping: Vec<String>,
    /// Checksum algorithm of the new manifest (default: the newest backup's)
    #[arg(long = "manifest-checksums", value_name = "ALGORITHM")]
    manifest_checksums: Option<String>,
    /// Write no backup_manifest
    #[arg(long = "no-manifest")]
    no_manifest: bool,
    /// Do not wait for the result to be written safely to disk
    #[arg(short = 'N', long = "no-sync")]
    no_sync: bool,
    /// How the result is made durable: fsync (every file, the default) or syncfs
    #[arg(long = "sync-method", value_name = "METHOD", value_parser = parse_sync_method)]
    sync_method: Option<SyncMethod>,
    /// How whole files are copied: copy, copy-file-range or clone
    #[arg(long = "copy-method", value_name = "METHOD")]
    copy_method: Option<String>,
    /// Copy files with read and write (the default)
    #[arg(long = "copy")]
    copy: bool,
    /// Copy files with copy_file_range(2)
    #[arg(long = "copy-file-range")]
    copy_file_range: bool,
    /// Clone (reflink) files where the file system can
    #[arg(long = "clone")]
    clone: bool,
    /// Hard-link unchanged files from the backups instead of copying them (the result then
    /// shares those files with the backups)
    #[arg(short = 'k', long = "link")]
    link: bool,
    /// Check the chain and the output, and write nothing
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
    /// Where compressed tar backups are decompressed while combining (default: beside the output)
    #[arg(long = "scratch-dir", value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    /// Print a summary as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", alias = "debug", short_alias = 'd', action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `--sync-method`, in PostgreSQL's words when the value is wrong.
pub fn parse_sync_method(s: &str) -> Result<SyncMethod, String> {
    s.parse()
}

pub fn run(args: CombineArgs) -> anyhow::Result<ExitCode> {
    let mut methods = Vec::new();
    if args.copy {
        methods.push(CopyMethod::Copy);
    }
    if args.copy_file_range {
        methods.push(CopyMethod::CopyFileRange);
    }
    if args.clone {
        methods.push(CopyMethod::Clone);
    }
    if args.link {
        methods.push(CopyMethod::Link);
    }
    if let Some(m) = &args.copy_method {
        methods.push(match m.as_str() {
            "copy" => CopyMethod::Copy,
            "copy-file-range" => CopyMethod::CopyFileRange,
            "clone" => CopyMethod::Clone,
            "link" => CopyMethod::Link,
            other => bail!(
                "invalid copy method \"{other}\", must be \"copy\", \"copy-file-range\", \"clone\" or \"link\""
            ),
        });
    }
    methods.dedup();
    if methods.len() > 1 {
        bail!(
            "only one of --copy, --copy-file-range, --clone, --link and --copy-method may be given"
        );
    }
    let manifest_checksums = args
        .manifest_checksums
        .as_deref()
        .map(|s| {
            ChecksumKind::parse(s)
                .with_context(|| format!("unrecognized checksum algorithm: \"{s}\""))
        })
        .transpose()?;
    let tablespace_mappings = args
        .tablespace_mapping
        .iter()
        .map(|m| TablespaceMapping::parse(m).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = CombineOptions {
        output: args.output.clone(),
        tablespace_mappings,
        manifest_checksums,
        no_manifest: args.no_manifest,
        sync: !args.no_sync,
        sync_method: args.sync_method.unwrap_or_default(),
        copy_method: methods.first().copied().unwrap_or_default(),
        scratch_dir: args.scratch_dir.clone(),
        dry_run: args.dry_run,
    };
    let started = Instant::now();
    let summary = combine(&args.backups, &opts)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "output": args.output.display().to_string(),
                "backups": args.backups.iter().map(|b| b.display().to_string()).collect::<Vec<_>>(),
                "system_identifier": summary.system_identifier.to_string(),
                "files": summary.files,
                "reconstructed": summary.reconstructed,
                "bytes": summary.bytes,
                "duration_s": started.elapsed().as_secs_f64(),
            })
        );
    } else if args.verbose > 0 {
        eprintln!(
            "pgrepl: combined {} backups into \"{}\": {} files ({} reconstructed), {} bytes",
            args.backups.len(),
            args.output.display(),
            summary.files,
            summary.reconstructed,
            summary.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}
