//! `pgrepl check --repo URL`: whether every point the repository lists is restorable, from
//! listings and records only (cheap enough to run on a schedule).

use std::process::ExitCode;

use clap::Args;
use pgrepo::check::{check, Problem};

use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn problem_json(p: &Problem) -> serde_json::Value {
    let mut v = match p {
        Problem::WalGap {
            timeline,
            first_missing,
            last_missing,
            affects,
        } => serde_json::json!({
            "timeline": timeline.0, "first_missing": first_missing,
            "last_missing": last_missing, "affects": affects }),
        Problem::MissingObject { backup, key } => {
            serde_json::json!({ "backup": backup, "key": key })
        }
        Problem::WrongSize {
            backup,
            key,
            expected,
            found,
        } => serde_json::json!({
            "backup": backup, "key": key, "expected": expected, "found": found }),
        Problem::MissingParent { backup, parent } => {
            serde_json::json!({ "backup": backup, "parent": parent })
        }
        Problem::MissingHistory { timeline, affects } => {
            serde_json::json!({ "timeline": timeline.0, "affects": affects })
        }
        Problem::UncommittedUpload {
            id,
            objects,
            bytes,
            modified,
        } => serde_json::json!({
            "id": id, "objects": objects, "bytes": bytes,
            "modified": basebackup::manifest::format_gmt(*modified) }),
        Problem::UnlistedObject { backup, key } => {
            serde_json::json!({ "backup": backup, "key": key })
        }
        _ => serde_json::json!({}),
    };
    v["kind"] = p.kind().into();
    v["breaks_restore"] = p.breaks_restore().into();
    v["message"] = p.to_string().into();
    v
}

/// Exit 0: healthy (leftovers may be reported); 2: something listed cannot be restored;
/// 1: the check itself failed.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open(&[]).await?;
    let r = check(&repo).await?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "repository": r.repo,
                "healthy": r.healthy(),
                "backups": r.backups,
                "wal_segments": r.wal_segments,
                "problems": r.problems.iter().map(problem_json).collect::<Vec<_>>(),
                "window": r.window.as_ref().map(|w| serde_json::json!({
                    "earliest_lsn": w.earliest_lsn.to_string(),
                    "latest_lsn": w.latest_lsn.to_string(),
                })),
            })
        );
    } else {
        for p in &r.problems {
            let what = if p.breaks_restore() {
                "error"
            } else {
                "warning"
            };
            eprintln!("pgrepl: {what}: {p}");
        }
        let window = r
            .window
            .as_ref()
            .map(|w| format!("; restorable from {} to {}", w.earliest_lsn, w.latest_lsn))
            .unwrap_or_default();
        if r.healthy() {
            println!(
                "{}: {} backups and {} WAL segments check out{window}",
                r.repo, r.backups, r.wal_segments
            );
        } else {
            println!(
                "{}: {} of {} problems make listed points unrestorable",
                r.repo,
                r.problems.iter().filter(|p| p.breaks_restore()).count(),
                r.problems.len()
            );
        }
    }
    Ok(if r.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
