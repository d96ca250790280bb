//! `pgrepl wal-fetch ARCHIVE WALFILE DEST` and `pgrepl wal-fetch --repo URL WALFILE DEST`: the
//! restore_command half of the WAL archive. It serves `WALFILE` from an archive directory (plain,
//! or decompressing `.zst` / `.gz`) or a repository, falls back to the tail of a segment that was
//! never completed (zero-padded to full size, as recovery requires), serves `.history` files,
//! and exits 1 when the file is not there, as restore_command must; other failures exit 126 so
//! that recovery stops instead of ending early.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::repo_args::{read_env_file, RepoArgs};

#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// ARCHIVE WALFILE DEST (an archive directory), or WALFILE DEST with --repo; WALFILE is
    /// recovery's %f and DEST its %p
    #[arg(value_name = "ARGS", num_args = 2..=3, required = true)]
    args: Vec<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// With --repo: read the S3 settings from this file (KEY=VALUE lines, 0600)
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// With --repo: fetch the next segments ahead, in parallel, into this directory
    #[arg(long = "prefetch-dir", value_name = "DIR")]
    prefetch_dir: Option<PathBuf>,
    /// How many segments to fetch ahead
    #[arg(long = "prefetch", value_name = "N", default_value_t = 8)]
    prefetch: usize,
    /// Internal: only fill the prefetch directory with the segments after WALFILE (the
    /// background process a fetch starts)
    #[arg(long = "refill-only", hide = true)]
    refill_only: bool,
    /// Print the outcome as one JSON object on stdout: `{"file", "status": "restored" |
    /// "missing" | "error", "from", "bytes", "error"}` (recovery ignores stdout)
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// What one fetch did, for `--json`.
fn report(
    args: &WalFetchArgs,
    status: &str,
    from: Option<String>,
    bytes: Option<u64>,
    error: Option<String>,
) {
    if !args.json {
        return;
    }
    let file = if args.args.len() == 3 {
        &args.args[1]
    } else {
        &args.args[0]
    };
    let mut o = serde_json::json!({ "file": file, "status": status });
    if let Some(f) = from {
        o["from"] = f.into();
    }
    if let Some(b) = bytes {
        o["bytes"] = b.into();
    }
    if let Some(e) = error {
        o["error"] = e.into();
    }
    println!("{o}");
}

/// Exit 1 means "not in the archive" to recovery, which then ends or tries elsewhere. Any other
/// failure (a damaged file, a full disk, a store that does not answer) exits 126: PostgreSQL
/// treats that like a failed command and aborts recovery instead of silently stopping early
/// (`RestoreArchivedFile`).
pub async fn run(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    let r = if args.repo.repo.is_some() || (args.args.len() == 2 && args.repo.url().is_some()) {
        fetch_repo(&args).await
    } else {
        fetch_dir(&args)
    };
    match r {
        Ok(code) => Ok(code),
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            let msg = msg.replace('\n', " ");
            eprintln!("pgrepl: error: {msg}");
            report(&args, "error", None, None, Some(msg));
            Ok(ExitCode::from(126))
        }
    }
}

fn fetch_dir(args: &WalFetchArgs) -> anyhow::Result<ExitCode> {
    let [archive, walfile, dest] = &args.args[..] else {
        bail!("expected ARCHIVE WALFILE DEST (or WALFILE DEST with --repo)");
    };
    match walarchive::fetch(&PathBuf::from(archive), walfile, &PathBuf::from(dest)) {
        Ok(f) => {
            if args.verbose > 0 {
                eprintln!("pgrepl: restored {walfile} from {}", f.from.display());
            }
            report(
                args,
                "restored",
                Some(f.from.display().to_string()),
                Some(f.bytes),
                None,
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ walarchive::FetchError::Missing { .. }) => {
            if args.verbose > 0 {
                eprintln!("pgrepl: {e}");
            }
            report(args, "missing", None, None, Some(e.to_string()));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// Starts `pgrepl wal-fetch ... --refill-only` in the background unless one is running (it holds
/// the cache's lock) or the cache is full: it keeps fetching the next segments while recovery
/// replays these, as pgBackRest's asynchronous archive-get does, and ends when the archive
/// does or recovery stops asking. It stays in recovery's process group, so it ends with it.
fn start_refill(p: &pgrepo::wal::Prefetch) {
    if pgrepo::wal::cached_segments(&p.cache) >= p.depth {
        return;
    }
    if let Ok(f) = std::fs::File::open(p.cache.join(REFILL_LOCK)) {
        if f.try_lock().is_err() {
            return;
        }
    }
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let _ = std::process::Command::new(me)
        .args(std::env::args_os().skip(1))
        .arg("--refill-only")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Held by the background refill while it runs.
const REFILL_LOCK: &str = ".refill.lock";

/// How long the background refill waits for recovery to take a segment before it ends.
const REFILL_IDLE: Duration = Duration::from_secs(5);

async fn fetch_repo(args: &WalFetchArgs) -> anyhow::Result<ExitCode> {
    let [walfile, dest] = &args.args[..] else {
        bail!("with --repo, expected WALFILE DEST");
    };
    let prefetch = args
        .prefetch_dir
        .as_ref()
        .filter(|_| args.prefetch > 0)
        .map(|d| pgrepo::wal::Prefetch {
            cache: d.clone(),
            depth: args.prefetch.min(64),
        });
    // a segment fetched ahead is served without opening the repository at all
    if let Some(p) = prefetch.as_ref().filter(|_| !args.refill_only) {
        if let Some(s) = pgrepo::wal::serve_cached(&p.cache, walfile, &PathBuf::from(dest))? {
            start_refill(p);
            if args.verbose > 0 {
                eprintln!("pgrepl: restored {walfile} from {}", s.from);
            }
            report(args, "restored", Some(s.from), Some(s.bytes), None);
            return Ok(ExitCode::SUCCESS);
        }
    }
    let extra = match &args.env_file {
        Some(f) => read_env_file(f)?,
        None => Vec::new(),
    };
    let repo = args.repo.open(&extra).await?;
    if args.refill_only {
        let Some(p) = &prefetch else {
            bail!("--refill-only needs --prefetch-dir");
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&p.cache)?;
        let lock = std::fs::File::create(p.cache.join(REFILL_LOCK))?;
        // one refill at a time; another one running covers this one's segments
        if lock.try_lock().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        pgrepo::wal::refill_after(&repo, walfile, p, REFILL_IDLE).await?;
        return Ok(ExitCode::SUCCESS);
    }
    match pgrepo::wal::fetch(&repo, walfile, &PathBuf::from(dest), None).await {
        Ok(s) => {
            if let Some(p) = prefetch.as_ref().filter(|_| !walfile.ends_with(".history")) {
                pgrepo::wal::prune_cache(&p.cache, walfile);
                start_refill(p);
            }
            if args.verbose > 0 {
                eprintln!("pgrepl: restored {walfile} from {}", s.from);
            }
            report(args, "restored", Some(s.from), Some(s.bytes), None);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ pgrepo::wal::FetchError::Missing { .. }) => {
            if args.verbose > 0 {
                eprintln!("pgrepl: {e}");
            }
            report(args, "missing", None, None, Some(e.to_string()));
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
