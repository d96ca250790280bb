//! `pgrepl info --repo URL`: backups, chains, WAL per timeline with gaps, and the window of
//! points one can restore to.

use std::process::ExitCode;

use clap::Args;
use pgrepo::info::info;

use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn time(unix: i64) -> String {
    basebackup::manifest::format_gmt(unix)
}

fn pg_time(us: i64) -> String {
    basebackup::restore::format_timestamp(us)
}

pub async fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open(&[]).await?;
    let i = info(&repo, true).await?;
    if args.json {
        let backups: Vec<serde_json::Value> = i
            .backups
            .iter()
            .map(|b| serde_json::to_value(b).unwrap_or_default())
            .collect();
        let timelines: Vec<serde_json::Value> = i
            .timelines
            .iter()
            .map(|t| {
                serde_json::json!({
                    "timeline": t.timeline.0,
                    "history": t.history,
                    "ranges": t.ranges.iter().map(|r| serde_json::json!({
                        "start": r.start.to_string(), "end": r.end.to_string(), "ends_partial": r.ends_partial
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let gaps: Vec<serde_json::Value> = i
            .gaps
            .iter()
            .map(|g| {
                serde_json::json!({
                    "timeline": g.timeline.0, "first_missing": g.first_missing,
                    "last_missing": g.last_missing, "affects": g.affects,
                })
            })
            .collect();
        let window = i.window.as_ref().map(|w| {
            serde_json::json!({
                "earliest_lsn": w.earliest_lsn.to_string(),
                "earliest_time": time(w.earliest_time),
                "latest_lsn": w.latest_lsn.to_string(),
                "latest_commit_time": w.latest_commit_time.map(pg_time),
            })
        });
        println!(
            "{}",
            serde_json::json!({
                "repository": i.repo,
                "encrypted": i.encrypted,
                "system_identifier": i.system.as_ref().map(|s| s.system_identifier.to_string()),
                "backups": backups,
                "chains": i.chains,
                "timelines": timelines,
                "gaps": gaps,
                "window": window,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("repository: {}", i.repo);
    if let Some(s) = &i.system {
        println!("system identifier: {}", s.system_identifier);
    }
    println!("backups:");
    if i.backups.is_empty() {
        println!("  (none)");
    }
    for b in &i.backups {
        println!(
            "  {}  {:<11}  timeline {}  {} .. {}  {} .. {}  {} files, {} bytes, {} stored{}",
            b.id,
            match &b.parent {
                Some(_) => "incremental",
                None => "full",
            },
            b.timeline,
            b.start_lsn,
            b.end_lsn,
            time(b.start_time),
            time(b.end_time),
            b.files,
            b.bytes,
            b.stored_bytes,
            b.parent
                .as_ref()
                .map(|p| format!(", on {p}"))
                .unwrap_or_default()
        );
    }
    println!("chains:");
    for c in &i.chains {
        println!("  {}", c.join(" <- "));
    }
    println!("WAL:");
    for t in &i.timelines {
        for r in &t.ranges {
            println!(
                "  timeline {}: {} .. {}{}",
                t.timeline,
                r.start,
                r.end,
                if r.ends_partial {
                    " (last segment partial)"
                } else {
                    ""
                }
            );
        }
        if !t.history {
            println!("  timeline {}: history file missing", t.timeline);
        }
    }
    for g in &i.gaps {
        println!(
            "  GAP on timeline {}: {} .. {} missing (affects {})",
            g.timeline,
            g.first_missing,
            g.last_missing,
            if g.affects.is_empty() {
                "no backup".to_owned()
            } else {
                g.affects.join(", ")
            }
        );
    }
    match &i.window {
        Some(w) => println!(
            "recoverable: from {} ({}) to {}{}",
            w.earliest_lsn,
            time(w.earliest_time),
            w.latest_lsn,
            w.latest_commit_time
                .map(|t| format!(" (last commit {})", pg_time(t)))
                .unwrap_or_default()
        ),
        None => println!("recoverable: nothing (no backup)"),
    }
    Ok(ExitCode::SUCCESS)
}
