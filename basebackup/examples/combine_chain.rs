//! Combines a full backup and the incrementals on top of it into one runnable data directory,
//! as pg_combinebackup does: whole files copied from the newest backup that has them, blocks of
//! incremental files taken from the newest backup that changed them, and a new manifest.
//!
//!   cargo run -p basebackup --example combine_chain -- OUTPUT FULL INCREMENTAL...
//!
//! A broken chain (a missing link, backups of another system, a manifest that does not match)
//! is refused before anything is written; on failure nothing complete-looking is left.

use std::path::PathBuf;

use basebackup::combine::{combine, CombineError, CombineOptions};

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [output, chain @ ..] = &args[..] else {
        eprintln!("usage: combine_chain OUTPUT FULL INCREMENTAL...");
        std::process::exit(2);
    };
    let opts = CombineOptions {
        output: output.clone(),
        sync: true,
        ..CombineOptions::default()
    };
    match combine(chain, &opts) {
        Ok(s) => println!(
            "{}: {} files ({} reconstructed from incremental files), {} bytes, system {}",
            output.display(),
            s.files,
            s.reconstructed,
            s.bytes,
            s.system_identifier
        ),
        Err(e) => {
            // the kind of failure is a value; the words are for people
            let what = match &e {
                CombineError::Chain { .. } => "the chain is broken",
                CombineError::Write { .. } => "the output could not be written",
                _ => "a backup is damaged",
            };
            eprintln!("{what}: {e}");
            std::process::exit(1);
        }
    }
}
