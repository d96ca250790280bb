//! Plans a point-in-time restore without writing anything: reads the newest backup's manifest,
//! decodes the WAL archive from the backup's start, and says between which commit times (and up
//! to which LSN) the chain can be restored — or why a target cannot be reached.
//!
//!   cargo run -p basebackup --example plan_restore -- WAL_ARCHIVE [--time 'YYYY-MM-DD HH:MM:SS+00'] BACKUP...
//!
//! `basebackup::restore::restore` carries the plan out (data directory, recovery settings).

use std::path::PathBuf;

use basebackup::restore::{format_timestamp, parse_timestamp, plan_restore, RecoveryTarget};

fn main() {
    if let Err(e) = run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let archive = PathBuf::from(
        args.next()
            .ok_or("usage: plan_restore WAL_ARCHIVE [--time T] BACKUP...")?,
    );
    let mut target = None;
    let mut backups = Vec::new();
    while let Some(a) = args.next() {
        if a == "--time" {
            let text = args.next().ok_or("--time needs a timestamp")?;
            let us = parse_timestamp(&text)?;
            target = Some(RecoveryTarget::Time(text, us));
        } else {
            backups.push(PathBuf::from(a));
        }
    }
    let plan = plan_restore(&backups, &archive, target.as_ref())?;
    println!(
        "replay from {} on timeline {}; consistent at {}; WAL archive reaches {}",
        plan.start, plan.timeline, plan.consistent_at, plan.archive_end
    );
    match (plan.consistent_time, plan.last_commit_time) {
        (Some(from), Some(to)) => println!(
            "restorable to any time after {} and before {}",
            format_timestamp(from),
            format_timestamp(to)
        ),
        _ => println!("no commit times known: restore to an LSN or to the end of the archive"),
    }
    if let Some(RecoveryTarget::Time(text, _)) = &plan.target {
        println!("target {text} is reachable");
    }
    Ok(())
}
