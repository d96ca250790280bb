//! `pgrepl wal-fetch ARCHIVE WALFILE DEST`: the restore_command half of the WAL archive. It
//! serves `WALFILE` from the archive (plain, or decompressing `.zst` / `.gz`), falls back to the
//! `.partial` of a segment that was never completed (zero-padded to full size, as recovery
//! requires), serves `.history` files, and exits 1 when the file is not there, as
//! restore_command must; other failures exit 126 so that recovery stops instead of ending early.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// The WAL archive directory (as written by pgrepl receivewal)
    archive: PathBuf,
    /// The file recovery asks for (%f)
    walfile: String,
    /// Where to put it (%p)
    dest: PathBuf,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Exit 1 means "not in the archive" to recovery, which then ends or tries elsewhere. Any other
/// failure (a damaged file, a full disk) exits 126: PostgreSQL treats that like a failed command
/// and aborts recovery instead of silently stopping early (`RestoreArchivedFile`).
pub fn run(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    match fetch(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("pgrepl: error: {}", msg.replace('\n', " "));
            Ok(ExitCode::from(126))
        }
    }
}

fn fetch(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    match walarchive::fetch(&args.archive, &args.walfile, &args.dest) {
        Ok(f) => {
            if args.verbose > 0 {
                eprintln!(
                    "pgrepl: restored {} from {}",
                    args.walfile,
                    f.from.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ walarchive::FetchError::Missing { .. }) => {
            if args.verbose > 0 {
                eprintln!("pgrepl: {e}");
            }
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}
