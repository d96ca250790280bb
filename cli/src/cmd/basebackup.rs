//! `pgrepl basebackup`: a full backup through the sinks, with pg_basebackup's flags.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use basebackup::checksum::ChecksumKind;
use basebackup::sink::NullSink;
use basebackup::sink::{
    BackupSink, ClientCompression, DirectorySink, SyncMethod, TablespaceMapping, TarSink,
    TarStreamSink, Tee, VerifySink, ZstdCompression,
};
use basebackup::standby::StandbySettings;
use clap::Args;
use pgrepl::{CheckpointMode, ServerCompression};
use pgstream::{
    take_backup, take_backup_until, BackupError, BackupEvent, BackupPlan, CompressionChoice,
    Output, SlotChoice, WalChoice, WalMethod,
};

use crate::compress_spec::{self, Algorithm, Location};
use crate::conn::ConnArgs;

#[derive(Args, Debug)]
pub struct BaseBackupArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Receive the base backup into this directory ("-": a tar backup to standard output,
    /// with backup_manifest as its last member)
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// Output format: p (plain, the default) or t (tar)
    #[arg(short = 'F', long = "format", value_name = "p|t")]
    format: Option<String>,
    /// Have the server keep the backup: blackhole, or server:DIRECTORY (on the server)
    #[arg(short = 't', long = "target", value_name = "TARGET[:DETAIL]")]
    target: Option<String>,
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
    /// Checksum algorithm of the manifest: CRC32C (the default), SHA224, SHA256, SHA384, SHA512,
    /// NONE
    #[arg(long = "manifest-checksums", value_name = "ALGORITHM")]
    manifest_checksums: Option<String>,
    /// Hex-encode every path in the manifest
    #[arg(long = "manifest-force-encode")]
    manifest_force_encode: bool,
    /// Do not ask for a backup manifest
    #[arg(long = "no-manifest")]
    no_manifest: bool,
    /// Do not have the server estimate the backup's size (no progress total)
    #[arg(long = "no-estimate-size")]
    no_estimate_size: bool,
    /// Do not verify page checksums on the server
    #[arg(long = "no-verify-checksums")]
    no_verify_checksums: bool,
    /// Compress: [client-|server-]METHOD[:DETAIL] with METHOD gzip, zstd, lz4
    /// or none, DETAIL a level or level=N,workers=N; a bare number is a gzip level.
    /// Client zstd uses one worker thread per core unless workers=N (as zstd -T0)
    #[arg(short = 'Z', long = "compress", value_name = "[WHERE-]METHOD[:DETAIL]")]
    compress: Option<String>,
    /// Compress tar output with gzip (as --compress=gzip)
    #[arg(short = 'z', long = "gzip")]
    gzip: bool,
    /// Write standby.signal and primary_conninfo (plain format), as pg_basebackup -R
    #[arg(short = 'R', long = "write-recovery-conf")]
    write_recovery_conf: bool,
    /// Stream WAL from this replication slot
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    slot: Option<String>,
    /// Create the slot named by --slot (it stays after the backup)
    #[arg(short = 'C', long = "create-slot")]
    create_slot: bool,
    /// Stream WAL without a replication slot
    #[arg(long = "no-slot")]
    no_slot: bool,
    /// Do not remove the partial backup after an error
    #[arg(short = 'n', long = "no-clean")]
    no_clean: bool,
    /// Location of the backup's WAL directory (plain format; pg_wal becomes a link to it)
    #[arg(long = "waldir", value_name = "WALDIR")]
    waldir: Option<PathBuf>,
    /// Take an incremental backup relative to this earlier backup (its directory, tar
    /// directory, or backup_manifest file); PostgreSQL 17+ with summarize_wal=on
    #[arg(short = 'i', long = "incremental", value_name = "OLDMANIFEST")]
    incremental: Option<PathBuf>,
    /// Do not wait for changes to be written safely to disk
    #[arg(short = 'N', long = "no-sync")]
    no_sync: bool,
    /// Time between status packets sent to the server while streaming WAL, in seconds (0:
    /// only when the server asks)
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    status_interval: Option<String>,
    /// How the backup is made durable: fsync (every file, the default) or syncfs
    #[arg(long = "sync-method", value_name = "METHOD", value_parser = crate::combine::parse_sync_method)]
    sync_method: Option<SyncMethod>,
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

/// `-Z`, as pg_basebackup parses it: client specifications are parsed and validated here with
/// PostgreSQL's messages, server ones are passed to the server for it to validate.
fn parse_compress(option: &str) -> anyhow::Result<CompressionChoice> {
    let (loc, algorithm, detail) = compress_spec::split(option);
    if loc == Location::Server {
        return Ok(CompressionChoice::Server(ServerCompression::Raw {
            algorithm,
            detail,
        }));
    }
    let Some(alg) = Algorithm::parse(&algorithm) else {
        bail!("unrecognized compression algorithm: \"{algorithm}\"");
    };
    let spec = compress_spec::parse(alg, detail.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid compression specification: {e}"))?;
    Ok(match spec.algorithm {
        Algorithm::None => CompressionChoice::None,
        Algorithm::Gzip => CompressionChoice::Client(ClientCompression::Gzip(spec.level)),
        Algorithm::Zstd => {
            if !(1..=22).contains(&spec.level) {
                bail!(
                    "zstd compression level {} is not supported by pgrepl on the client (1 to 22)",
                    spec.level
                );
            }
            CompressionChoice::Client(ClientCompression::Zstd(ZstdCompression {
                level: spec.level,
                // as `zstd -T0`: one worker per core unless workers=N says otherwise
                workers: match spec.workers {
                    Some(n) => n.max(0) as u32,
                    None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                },
                long: spec.long_distance == Some(true),
            }))
        }
        Algorithm::Lz4 => CompressionChoice::Client(ClientCompression::Lz4),
    })
}

/// Group-readable modes for a cluster initialised with group access, applied to the finished
/// plain backup (and its WAL directory) before it is renamed into place.
fn finishing(
    waldir: Option<PathBuf>,
) -> impl FnMut(&std::path::Path) -> Result<(), basebackup::sink::SinkError> + Send {
    use basebackup::sink::SinkError;
    move |root: &std::path::Path| {
        group_modes(root)
            .map_err(|e| SinkError::io("could not set group permissions under", root, e))?;
        if let Some(w) = &waldir {
            group_modes(w)
                .map_err(|e| SinkError::io("could not set group permissions under", w, e))?;
        }
        Ok(())
    }
}

/// Directories 0750 and files 0640 (a cluster initialised with group access), links followed
/// into tablespaces.
fn group_modes(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = std::fs::metadata(e.path())?;
        if m.is_dir() {
            group_modes(&e.path())?;
        } else {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o640))?;
        }
    }
    Ok(())
}

/// A refusal of the BASE_BACKUP command itself (before the backup started) is worded as
/// pg_basebackup words it.
fn backup_error(e: BackupError, started: bool) -> anyhow::Error {
    match e {
        BackupError::Server(pgrepl::Error::Db { error, .. }) if !started => {
            anyhow::anyhow!("could not initiate base backup: {error}")
        }
        e => e.into(),
    }
}

/// `-c fast|spread`.
fn parse_checkpoint(c: &str) -> anyhow::Result<CheckpointMode> {
    Ok(match c.to_ascii_lowercase().as_str() {
        "fast" => CheckpointMode::Fast,
        "spread" => CheckpointMode::Spread,
        c => bail!("invalid checkpoint argument \"{c}\", must be \"fast\" or \"spread\""),
    })
}

/// `-r`: kB/s, with an optional k or M suffix; PostgreSQL accepts 32 kB/s to 1 GB/s.
pub(crate) fn parse_rate(s: &str) -> anyhow::Result<u32> {
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

/// The parent's manifest (`-i`), read up front so a bad path fails before anything is written.
/// The earlier backup's manifest for `-i`, opened to be streamed to the server (a manifest can
/// be larger than memory should hold).
fn parent_manifest(args: &BaseBackupArgs) -> anyhow::Result<Option<tokio::fs::File>> {
    let Some(p) = &args.incremental else {
        return Ok(None);
    };
    let file = if p.is_dir() {
        p.join("backup_manifest")
    } else {
        p.clone()
    };
    std::fs::File::open(&file)
        .map(|f| Some(tokio::fs::File::from_std(f)))
        .with_context(|| {
            format!(
                "could not read the manifest of the earlier backup \"{}\"",
                file.display()
            )
        })
}

/// `-s`: pg_basebackup's range and words; 10 s by default, 0 for none.
fn status_interval(args: &BaseBackupArgs) -> anyhow::Result<Option<Duration>> {
    let Some(v) = &args.status_interval else {
        return Ok(Some(Duration::from_secs(10)));
    };
    let n: i64 = v
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid value \"{v}\" for option -s/--status-interval"))?;
    if !(0..=2_147_483).contains(&n) {
        bail!("-s/--status-interval must be in range 0..2147483");
    }
    Ok((n > 0).then(|| Duration::from_secs(n as u64)))
}

/// The flags as a backup plan: what only the command line can get wrong (unknown values, two
/// flags for one thing) is refused here; combinations are the plan's to refuse.
fn plan_of(args: &BaseBackupArgs) -> anyhow::Result<BackupPlan> {
    // --target=client is the same as no target
    let target = args.target.as_deref().filter(|t| *t != "client");
    let interval = status_interval(args)?;
    if target.is_some() && args.format.is_some() {
        bail!("cannot specify both format and backup target");
    }
    let output = match (&args.pgdata, target) {
        (None, None) => bail!("must specify output directory or backup target"),
        (Some(_), Some(_)) => bail!("cannot specify both output directory and backup target"),
        (None, Some(t)) => {
            let (target, detail) = match t.split_once(':') {
                Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                None => (t.to_owned(), None),
            };
            Output::ServerTarget { target, detail }
        }
        (Some(d), None) => {
            let tar = match args.format.as_deref().unwrap_or("p") {
                "p" | "plain" => false,
                "t" | "tar" => true,
                f => bail!("invalid output format \"{f}\", must be \"plain\" or \"tar\""),
            };
            if d.as_os_str() == "-" {
                // -D -: base.tar (with the manifest inside) to standard output
                if !tar {
                    bail!("standard output (-D -) can only take a tar format backup (-F t)");
                }
                Output::Stream
            } else {
                Output::Directory {
                    path: d.clone(),
                    tar,
                }
            }
        }
    };
    if output == Output::Stream && args.json {
        bail!("--json cannot be used when the backup goes to standard output");
    }
    if args.no_slot && args.slot.is_some() {
        bail!("--no-slot cannot be used with slot name");
    }
    if args.create_slot && args.slot.is_none() {
        bail!("--create-slot needs a slot to be specified using --slot");
    }
    if args.create_slot && args.no_slot {
        bail!("--create-slot and --no-slot are incompatible options");
    }
    let wal = match args.wal_method.as_str() {
        "f" | "fetch" => WalChoice::Fetch,
        "n" | "none" => WalChoice::None,
        "s" | "stream" => WalChoice::Stream,
        m => bail!("invalid wal-method option \"{m}\", must be \"fetch\", \"stream\", or \"none\""),
    };
    let compression = match (&args.compress, args.gzip) {
        (Some(_), true) => bail!("--compress and --gzip cannot be used together"),
        // with a target the server compresses: a bare algorithm means the server's
        (Some(c), false) if target.is_some() && !c.starts_with("client-") => {
            parse_compress(&format!("server-{}", c.trim_start_matches("server-")))?
        }
        (Some(c), false) => parse_compress(c)?,
        (None, true) => parse_compress("gzip")?,
        (None, false) => CompressionChoice::None,
    };
    let manifest_checksums = args
        .manifest_checksums
        .as_deref()
        .map(|name| {
            ChecksumKind::parse(name)
                .with_context(|| format!("unrecognized manifest checksum algorithm: \"{name}\""))
        })
        .transpose()?;
    let mut plan = BackupPlan::new(output);
    plan.wal = wal;
    plan.slot = match (&args.slot, args.create_slot, args.no_slot) {
        (Some(n), true, _) => SlotChoice::Create(n.clone()),
        (Some(n), false, _) => SlotChoice::Existing(n.clone()),
        (None, _, true) => SlotChoice::NoSlot,
        _ => SlotChoice::Temporary,
    };
    plan.compression = compression;
    plan.tablespace_mappings = args
        .tablespace_mapping
        .iter()
        .map(|m| TablespaceMapping::parse(m).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<Vec<_>>>()?;
    plan.wal_dir = args.waldir.clone();
    plan.standby = args.write_recovery_conf;
    plan.manifest = !args.no_manifest;
    plan.manifest_checksums = manifest_checksums;
    plan.manifest_force_encode = args.manifest_force_encode;
    plan.estimate_size = !args.no_estimate_size;
    plan.progress = args.progress;
    plan.incremental = args.incremental.is_some();
    plan.checkpoint = parse_checkpoint(&args.checkpoint)?;
    plan.label = args.label.clone();
    plan.max_rate_kb = args.max_rate.as_deref().map(parse_rate).transpose()?;
    plan.verify_checksums = !args.no_verify_checksums;
    plan.status_interval = interval;
    plan.validate()?;
    Ok(plan)
}

pub async fn run(args: BaseBackupArgs) -> anyhow::Result<ExitCode> {
    let plan = plan_of(&args)?;
    let (pgdata, plain, to_stdout) = match &plan.output {
        Output::ServerTarget { .. } => return run_target(&args, &plan).await,
        Output::Directory { path, tar } => (path.clone(), !tar, false),
        Output::Stream => (PathBuf::from("-"), false, true),
        _ => bail!("this output is not supported by the command line"),
    };
    if let Some(w) = &plan.wal_dir {
        if w.exists()
            && std::fs::read_dir(w)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            bail!("directory \"{}\" exists but is not empty", w.display());
        }
    }
    let parent_manifest = parent_manifest(&args)?;
    let kind = plan.checksum_kind();
    let options = plan.options();
    let client_compression = match plan.compression {
        CompressionChoice::Client(z) => Some(z),
        _ => None,
    };
    let mappings = plan.tablespace_mappings.clone();

    let config = args.conn.config()?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    // an incremental without sync goes through the page cache (DirectorySink::set_page_cache)
    let incremental = parent_manifest.is_some();
    if let Some(m) = parent_manifest {
        conn.upload_manifest(m).await?;
    }
    // a cluster initialised with group access gets group-readable backups, as pg_basebackup
    // gives (SHOW data_directory_mode)
    let group = conn
        .show("data_directory_mode")
        .await
        .map(|m| m.trim() == "0750")
        .unwrap_or(false);
    let recovery = plan.standby.then(|| {
        StandbySettings::new(&config.to_conninfo_without_password(), args.slot.as_deref())
    });
    let writer: Box<dyn BackupSink> = if to_stdout {
        let stdout = std::fs::File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("could not use standard output")?,
        );
        let mut t = TarStreamSink::new(
            std::io::BufWriter::with_capacity(1 << 20, stdout),
            "standard output",
            client_compression,
        )?;
        if let Some(r) = recovery {
            t.set_standby(r);
        }
        Box::new(t)
    } else if plain {
        let mut d = DirectorySink::new(&pgdata, mappings, !args.no_sync)?;
        d.set_sync_method(args.sync_method.unwrap_or_default());
        if incremental {
            d.set_page_cache();
        }
        if let Some(w) = &plan.wal_dir {
            d.set_wal_dir(w)?;
        }
        if let Some(r) = recovery {
            d.set_standby(r);
        }
        if group {
            d.set_finishing(Box::new(finishing(args.waldir.clone())));
        }
        d.set_keep_on_abort(args.no_clean);
        Box::new(d)
    } else {
        let mut t = TarSink::with_compression(&pgdata, !args.no_sync, client_compression)?;
        t.set_sync_method(args.sync_method.unwrap_or_default());
        if incremental {
            t.set_page_cache();
        }
        if let Some(r) = recovery {
            t.set_standby(r);
        }
        Box::new(t)
    };
    let sink = Tee(VerifySink::new(kind, Some(id.system_id)), writer);
    let wal_plan = match plan.wal {
        WalChoice::None => WalMethod::None,
        WalChoice::Fetch => WalMethod::Fetch,
        _ => WalMethod::Stream {
            config: Box::new(config.clone()),
            system_id: id.system_id,
            sync: !args.no_sync,
            slot: plan.slot.clone(),
            status_interval: plan.status_interval,
        },
    };
    let show_progress = args.progress && (std::io::stderr().is_terminal() || args.verbose > 0);
    let started = std::cell::Cell::new(false);
    // SIGINT/SIGTERM: stop, and remove what was written (unless --no-clean), rather than
    // leave a partial backup for someone to find
    let outcome = take_backup_until(
        &mut conn,
        &options,
        &wal_plan,
        sink,
        crate::cmd::receivewal::shutdown_signal(),
        |ev| match ev {
        BackupEvent::Started { .. } if args.verbose == 0 => started.set(true),
        // relayed verbatim, as libpq prints a server's notices
        BackupEvent::Notice(n) => eprintln!("{}:  {}", n.severity, n.message),
        BackupEvent::Progress { done, total } if show_progress => match total {
            Some(t) if *t > 0 => eprint!(
                "\r{}/{} kB ({}%)   ",
                done / 1024,
                t / 1024,
                (u128::from(*done) * 100 / u128::from(*t)).min(100)
            ),
            _ => eprint!("\r{} kB   ", done / 1024),
        },
        BackupEvent::Started { start_lsn, timeline, .. } => {
            started.set(true);
            eprintln!("pgrepl: checkpoint completed; write-ahead log start point: {start_lsn} on timeline {timeline}")
        }
        _ => {}
        },
    )
    .await;
    if show_progress {
        eprintln!();
    }
    if let Err(BackupError::Cancelled) = outcome {
        bail!(if args.no_clean {
            "interrupted; the partial backup was left in place (--no-clean)"
        } else {
            "interrupted; the partial backup was removed"
        });
    }
    let (summary, _) = outcome.map_err(|e| backup_error(e, started.get()))?;
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
            "directory": pgdata.display().to_string(),
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

/// `--target`: the server keeps the backup (`blackhole` discards it, `server:DIR` writes it on
/// the server); no WAL streaming, no local output, as pg_basebackup allows it.
async fn run_target(args: &BaseBackupArgs, plan: &BackupPlan) -> anyhow::Result<ExitCode> {
    let target = match &plan.output {
        Output::ServerTarget {
            target,
            detail: Some(d),
        } => format!("{target}:{d}"),
        Output::ServerTarget { target, .. } => target.clone(),
        _ => bail!("not a server target"),
    };
    let parent = parent_manifest(args)?;
    let options = plan.options();
    let config = args.conn.config()?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    if let Some(m) = parent {
        conn.upload_manifest(m).await?;
    }
    let summary = take_backup(&mut conn, &options, &WalMethod::None, NullSink, |ev| {
        if let BackupEvent::Notice(n) = ev {
            eprintln!("{}:  {}", n.severity, n.message)
        }
    })
    .await;
    let (summary, _) = summary.map_err(|e| backup_error(e, false))?;
    let _ = conn.close().await;
    if args.verbose > 0 {
        eprintln!(
            "pgrepl: the server kept the backup ({target}); write-ahead log end point: {}",
            summary.end_lsn
        );
    }
    Ok(if summary.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
