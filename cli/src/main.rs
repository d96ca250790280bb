//! `pgrepl`: the command-line face of the pgrepl crates. It parses flags, draws progress and
//! prints; every capability is one library call with a typed result.

mod cmd;
mod compress_spec;
mod conn;
mod malloc;
mod repo_args;
mod tty;

use std::process::ExitCode;

use cmd::{
    backup, basebackup, check, combine, expire, identify, info, init, keygen, receivewal, restore,
    verify, walfetch,
};

use clap::{Parser, Subcommand};

/// Physical backups of PostgreSQL over the streaming-replication protocol.
#[derive(Parser, Debug)]
#[command(
    name = "pgrepl",
    version,
    about,
    disable_help_flag = true,
    propagate_version = true,
    // PostgreSQL's tools keep --help within 80 columns (its tests allow 95)
    term_width = 80
)]
struct Cli {
    /// Print help
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect with replication=true and show the server's identity (IDENTIFY_SYSTEM)
    Identify(identify::IdentifyArgs),
    /// Stream WAL into a crash-safe archive directory (as pg_receivewal)
    Receivewal(receivewal::ReceiveWalArgs),
    /// Take a full base backup, verified against the server's manifest (as pg_basebackup)
    Basebackup(Box<basebackup::BaseBackupArgs>),
    /// Rebuild a data directory from a full backup and its incrementals (as pg_combinebackup)
    Combine(combine::CombineArgs),
    /// Restore a backup chain into a data directory set up to recover to a point in time
    Restore(restore::RestoreArgs),
    /// Verify a backup (plain or tar): manifest, files, system identifier and WAL
    Verify(verify::VerifyArgs),
    /// Serve a WAL file from an archive to recovery (restore_command); exit 1 if it is missing
    #[command(name = "wal-fetch")]
    WalFetch(walfetch::WalFetchArgs),
    /// Make an age identity (and print its recipient) for an encrypted repository
    Keygen(keygen::KeygenArgs),
    /// Make a repository (S3 or a directory) for backups and WAL
    Init(init::InitArgs),
    /// Back up into a repository: incremental on the newest backup when possible, else full
    Backup(Box<backup::BackupArgs>),
    /// Show a repository's backups, chains, WAL and the window one can restore to
    Info(info::InfoArgs),
    /// Check that every point a repository lists is restorable (WAL gaps, objects, leftovers)
    Check(check::CheckArgs),
    /// Remove backups and WAL no retention rule needs, never breaking a chain
    Expire(expire::ExpireArgs),
}

fn main() -> ExitCode {
    malloc::one_arena();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgrepl: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let verbose = match &cli.command {
        Command::Identify(a) => a.verbose,
        Command::Receivewal(a) => a.verbose,
        Command::Basebackup(a) => a.verbose,
        Command::WalFetch(a) => a.verbose,
        Command::Verify(a) => a.verbose,
        Command::Combine(a) => a.verbose,
        Command::Restore(a) => a.verbose,
        Command::Init(a) => a.verbose,
        Command::Keygen(a) => a.verbose,
        Command::Backup(a) => a.verbose,
        Command::Info(a) => a.verbose,
        Command::Check(a) => a.verbose,
        Command::Expire(a) => a.verbose,
    };
    init_logging(verbose);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Identify(a) => identify::run(a).await,
            Command::Receivewal(a) => receivewal::run(a).await,
            Command::Basebackup(a) => basebackup::run(*a).await,
            Command::WalFetch(a) => walfetch::run(a).await,
            Command::Verify(a) => verify::run(a).await,
            Command::Combine(a) => combine::run(a),
            Command::Restore(a) => restore::run(a).await,
            Command::Init(a) => init::run(a).await,
            Command::Keygen(a) => keygen::run(a),
            Command::Backup(a) => backup::run(*a).await,
            Command::Info(a) => info::run(a).await,
            Command::Check(a) => check::run(a).await,
            Command::Expire(a) => expire::run(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("pgrepl: error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGREPL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}
