//! `pgrepl receivewal`: a continuous WAL archive, with pg_receivewal's flags.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use pgrepl::Lsn;
use pgstream::receive::{self as receivewal, ReceiveEvent, ReceiveOptions};
use walarchive::SegmentCompression;

use crate::conn::ConnArgs;

#[derive(Args, Debug)]
pub struct ReceiveWalArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Receive WAL files into this directory
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    directory: Option<PathBuf>,
    #[command(flatten)]
    repo: crate::repo_args::RepoArgs,
    /// With --repo: store the tail of the segment being filled at least this often, in
    /// seconds (the newest point one can restore to trails the server by at most this)
    #[arg(long = "partial-interval", value_name = "SECS", default_value_t = 60)]
    partial_interval: u64,
    /// With --repo: make WAL durable in this local directory first and carry it into the
    /// repository behind the stream; the server's slot then advances past WAL that is on this
    /// host only until it is stored (see README)
    #[arg(long = "spool", value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Exit after receiving the specified LSN
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    endpos: Option<Lsn>,
    /// Do not error out when --create-slot finds the slot already there
    #[arg(long = "if-not-exists")]
    if_not_exists: bool,
    /// Do not loop on connection lost
    #[arg(short = 'n', long = "no-loop")]
    no_loop: bool,
    /// Do not wait for changes to be written safely to disk
    #[arg(long = "no-sync")]
    no_sync: bool,
    /// Time between status packets sent to the server, in seconds
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "SECS",
        default_value_t = 10
    )]
    status_interval: u64,
    /// Replication slot to use
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    slot: Option<String>,
    /// Flush WAL to disk and report it after every write
    #[arg(long = "synchronous")]
    synchronous: bool,
    /// Compress segments: gzip[:LEVEL] or lz4 (pg_receivewal's NAME.gz / NAME.lz4, the filling
    /// one NAME.gz.partial / NAME.lz4.partial), zstd[:LEVEL] (completed ones as NAME.zst), or none
    #[arg(short = 'Z', long = "compress", value_name = "METHOD[:LEVEL]")]
    compress: Option<String>,
    /// Create a new physical replication slot (RESERVE_WAL) and exit
    #[arg(long = "create-slot")]
    create_slot: bool,
    /// Drop the replication slot and exit
    #[arg(long = "drop-slot")]
    drop_slot: bool,
    /// Print events as JSON lines on stdout
    #[arg(long)]
    json: bool,
    /// Output verbose messages (a line per segment)
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Parses `--compress`: `none`, `gzip[:N]` (a bare N too), `lz4[:N]`, `zstd[:N]`, `METHOD:level=N`.
pub fn parse_compress(spec: &str) -> anyhow::Result<Option<SegmentCompression>> {
    use crate::compress_spec::{self, Algorithm, Location};
    // as pg_receivewal: METHOD[:DETAIL], a bare integer being a gzip level (0: none)
    let (location, name, detail) = compress_spec::split(spec);
    let algorithm = Algorithm::parse(&name)
        .filter(|_| location == Location::Unspecified)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "invalid compression specification: unrecognized compression algorithm: \"{spec}\""
            )
        })?;
    let s = compress_spec::parse(algorithm, detail.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid compression specification: {e}"))?;
    if s.workers.is_some() || s.long_distance.is_some() {
        bail!(
            "invalid compression specification: compression algorithm \"{}\" does not accept worker or long-distance options here",
            algorithm.name()
        );
    }
    Ok(match algorithm {
        Algorithm::None => None,
        // zlib's default level is 6
        Algorithm::Gzip => Some(SegmentCompression::Gzip(if s.level < 0 {
            6
        } else {
            s.level as u32
        })),
        Algorithm::Zstd => Some(SegmentCompression::Zstd(s.level)),
        Algorithm::Lz4 => Some(SegmentCompression::Lz4),
    })
}

/// SIGINT or SIGTERM.
/// Opens the repository and binds it to the server's system (or refuses another system's),
/// before anything streams.
async fn open_bound_repo(
    args: &ReceiveWalArgs,
    config: &pgrepl::Config,
) -> anyhow::Result<pgrepo::Repo> {
    let repo = args.repo.open(&[]).await?;
    let mut c = pgrepl::Connection::connect(config).await?;
    let id = c.identify_system().await?;
    let seg = c.wal_segment_size().await?;
    let _ = c.close().await;
    repo.bind(id.system_id, seg.bytes()).await?;
    Ok(repo)
}

/// A store that failed transiently, or a server that a reconnect may reach.
fn startup_error_is_transient(e: &anyhow::Error) -> bool {
    use pgrepo::store::StoreError;
    let store = |s: &StoreError| match s {
        // a local directory that cannot be read or is not there will not become one
        StoreError::Io { source, .. } => !matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound
        ),
        s => s.is_transient(),
    };
    if let Some(pgrepo::RepoError::Store(s)) = e.downcast_ref::<pgrepo::RepoError>() {
        return store(s);
    }
    if let Some(s) = e.downcast_ref::<StoreError>() {
        return store(s);
    }
    if let Some(c) = e.downcast_ref::<pgrepl::Error>() {
        return !receivewal::connection_error_is_fatal(c);
    }
    false
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn event_json(e: &ReceiveEvent) -> serde_json::Value {
    match e {
        ReceiveEvent::Started {
            system_id,
            start,
            timeline,
        } => serde_json::json!({
            "event": "started", "system_identifier": system_id.to_string(), "start": start.to_string(), "timeline": timeline.0 }),
        ReceiveEvent::SegmentDone(s) => serde_json::json!({
            "event": "segment", "file": s.file_name, "timeline": s.timeline.0, "end": s.end.to_string() }),
        ReceiveEvent::Flushed {
            written,
            flushed,
            server_end,
        } => serde_json::json!({
            "event": "flushed", "written": written.to_string(), "flushed": flushed.to_string(), "server_end": server_end.to_string() }),
        ReceiveEvent::TimelineSwitch { from, to, at } => serde_json::json!({
            "event": "timeline_switch", "from": from.0, "to": to.0, "at": at.to_string() }),
        ReceiveEvent::Reconnecting { error, delay } => serde_json::json!({
            "event": "reconnecting", "error": error, "delay_ms": delay.as_millis() as u64 }),
        _ => serde_json::json!({ "event": "other" }),
    }
}

fn spool_event(e: &pgrepo::spool::SpoolEvent, json: bool, verbose: u8) {
    use pgrepo::spool::SpoolEvent;
    match e {
        SpoolEvent::Stored { file_name, partial } if json => println!(
            "{}",
            serde_json::json!({ "event": "spool_stored", "file": file_name, "partial": partial })
        ),
        SpoolEvent::Stored { file_name, partial } if verbose > 0 && !partial => {
            eprintln!("pgrepl: stored {file_name} from the spool")
        }
        SpoolEvent::Failed {
            error,
            retry,
            waiting,
        } if json => println!(
            "{}",
            serde_json::json!({ "event": "spool_failed", "error": error, "retry_ms": retry.as_millis() as u64, "waiting": waiting })
        ),
        SpoolEvent::Failed {
            error,
            retry,
            waiting,
        } => eprintln!(
            "pgrepl: storing from the spool failed ({error}); {waiting} file(s) wait in the spool; retrying in {} s",
            retry.as_secs()
        ),
        _ => {}
    }
}

pub async fn run(args: ReceiveWalArgs) -> anyhow::Result<ExitCode> {
    if args.create_slot && args.drop_slot {
        bail!("cannot use --create-slot together with --drop-slot");
    }
    if (args.create_slot || args.drop_slot) && args.slot.is_none() {
        bail!(
            "{} needs a slot to be specified using --slot",
            if args.create_slot {
                "--create-slot"
            } else {
                "--drop-slot"
            }
        );
    }
    if args.synchronous && args.no_sync {
        bail!("cannot use --synchronous together with --no-sync");
    }
    let compress_level = match &args.compress {
        Some(s) => parse_compress(s)?,
        None => None,
    };
    if let Some(s) = &args.slot {
        pgrepl::validate_slot_name(s)?;
    }
    let config = args.conn.config()?;
    if args.drop_slot {
        let slot = args.slot.as_deref().unwrap_or_default();
        receivewal::drop_slot(&config, slot).await?;
        if args.verbose > 0 {
            eprintln!("pgrepl: dropped replication slot \"{slot}\"");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.create_slot {
        let slot = args.slot.as_deref().unwrap_or_default();
        receivewal::create_slot(&config, slot, args.if_not_exists).await?;
        if args.verbose > 0 {
            eprintln!("pgrepl: created replication slot \"{slot}\"");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let use_repo =
        args.repo.repo.is_some() || (args.directory.is_none() && args.repo.url().is_some());
    if use_repo && args.directory.is_some() {
        bail!("cannot use -D/--directory together with --repo");
    }
    let dir = match (&args.directory, use_repo) {
        (Some(d), _) => d.clone(),
        (None, true) => PathBuf::new(),
        (None, false) => bail!("no target directory specified (-D/--directory or --repo)"),
    };
    let mut opts = ReceiveOptions::new(dir);
    opts.slot = args.slot.clone();
    opts.synchronous = args.synchronous;
    opts.no_sync = args.no_sync;
    opts.status_interval = Duration::from_secs(args.status_interval.max(1));
    opts.endpos = args.endpos;
    opts.no_loop = args.no_loop;
    opts.compression = compress_level;

    let status_line = !args.json && args.verbose == 0 && std::io::stderr().is_terminal();
    let verbose = args.verbose;
    let json = args.json;
    if args.spool.is_some() && !use_repo {
        bail!("--spool needs --repo (with -D/--directory, the directory is the archive)");
    }
    let mut spool_store = None;
    let mut repo_store = if use_repo {
        if opts.compression.is_some() {
            bail!("-Z/--compress applies to -D/--directory; a repository stores WAL with zstd");
        }
        // a store or server that is down when the receiver starts is waited for with the
        // same backoff as one lost while streaming (unless --no-loop); refusals end it
        let mut delay = Duration::from_millis(500);
        let repo = loop {
            match open_bound_repo(&args, &config).await {
                Ok(repo) => break repo,
                Err(e) if args.no_loop || !startup_error_is_transient(&e) => return Err(e),
                Err(e) => {
                    let event = ReceiveEvent::Reconnecting {
                        error: format!("{e:#}"),
                        delay,
                    };
                    if json {
                        println!("{}", event_json(&event));
                    } else {
                        eprintln!(
                            "pgrepl: cannot start ({e:#}); retrying in {:.1} s",
                            delay.as_secs_f64()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        let interval = if args.synchronous {
            Duration::ZERO
        } else {
            Duration::from_secs(args.partial_interval)
        };
        if let Some(dir) = &args.spool {
            spool_store = Some(pgrepo::spool::SpoolWalStore::new(
                repo,
                dir,
                !args.no_sync,
                3,
                interval,
                move |e| spool_event(e, json, verbose),
            ));
            None
        } else {
            Some(pgrepo::wal::RepoWalStore::new(repo, 3, interval))
        }
    } else {
        None
    };
    let mut dir_store = pgstream::DirWalStore::new(&opts.dir, opts.compression, !opts.no_sync);
    let store: &mut dyn pgstream::WalStore = match (&mut repo_store, &mut spool_store) {
        (Some(r), _) => r,
        (None, Some(s)) => s,
        (None, None) => &mut dir_store,
    };
    let summary = receivewal::receive_wal_into(&config, &opts, store, shutdown_signal(), |e| {
        if json {
            println!("{}", event_json(e));
            return;
        }
        match e {
            ReceiveEvent::Started {
                start, timeline, ..
            } if verbose > 0 => {
                eprintln!("pgrepl: starting log streaming at {start} (timeline {timeline})")
            }
            ReceiveEvent::SegmentDone(s) if verbose > 0 => {
                eprintln!(
                    "pgrepl: finished segment {} at {} (timeline {})",
                    s.file_name, s.end, s.timeline
                )
            }
            ReceiveEvent::TimelineSwitch { from, to, at } => {
                eprintln!("pgrepl: switched to timeline {to} at {at} (timeline {from} ended)")
            }
            ReceiveEvent::Reconnecting { error, delay } => {
                eprintln!(
                    "pgrepl: connection lost ({error}); retrying in {:.1} s",
                    delay.as_secs_f64()
                )
            }
            ReceiveEvent::Flushed {
                written,
                flushed,
                server_end,
            } if status_line => {
                eprint!("\rreceived {written}  flushed {flushed}  server at {server_end}   ")
            }
            _ => {}
        }
    })
    .await?;
    if status_line {
        eprintln!();
    }
    if let Some(s) = &mut spool_store {
        let waiting = s.finish().await?;
        if waiting > 0 {
            eprintln!(
                "pgrepl: warning: {waiting} WAL file(s) are in the spool {:?} but not yet in the repository; the next receivewal --spool stores them",
                args.spool.as_deref().unwrap_or(std::path::Path::new(""))
            );
        }
    }
    if verbose > 0 {
        eprintln!(
            "pgrepl: stopped ({:?}); WAL up to {} is durable in the archive",
            summary.reason, summary.flushed
        );
    }
    Ok(ExitCode::SUCCESS)
}
