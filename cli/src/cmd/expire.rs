//! `pgrepl expire --repo URL`: retention that never breaks a chain. The plan (what goes, what
//! stays and why, bytes freed) is printed before anything is deleted; `--dry-run` stops there.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use pgrepo::expire::{expire, plan_expire, ExpirePlan, Retention};

use crate::repo_args::RepoArgs;

#[derive(Args, Debug)]
pub struct ExpireArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep the N newest full backups and every incremental on them
    #[arg(long = "retain-full", value_name = "N")]
    retain_full: Option<usize>,
    /// Keep every point of the last DURATION restorable (e.g. 7d, 12h, 30m, 90s)
    #[arg(long = "retain-pitr", value_name = "DURATION", value_parser = parse_duration)]
    retain_pitr: Option<Duration>,
    /// Remove uploads without a commit record only once this old (default 24h)
    #[arg(long = "min-age", value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    min_age: Duration,
    /// Print the plan and delete nothing
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Print the plan (and what was done) as JSON
    #[arg(long)]
    json: bool,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// `N[s|m|h|d|w]` (seconds without a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration \"{s}\": expected N[s|m|h|d|w]"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("invalid duration \"{s}\": expected N[s|m|h|d|w]")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration \"{s}\" is too long"))
}

fn plan_json(p: &ExpirePlan) -> serde_json::Value {
    serde_json::json!({
        "backups": p.backups.iter().map(|b| serde_json::json!({
            "id": b.id,
            "action": if b.keep.is_empty() { "expire" } else { "keep" },
            "reasons": b.keep.iter().map(|r| r.code()).collect::<Vec<_>>(),
            "bytes": b.bytes,
        })).collect::<Vec<_>>(),
        "wal_kept_from": p.wal_from.map(|l| l.to_string()),
        "wal_removed": p.wal.iter().map(|w| serde_json::json!({
            "timeline": w.timeline.0, "first": w.first, "last": w.last,
            "objects": w.objects, "bytes": w.bytes,
        })).collect::<Vec<_>>(),
        "garbage": p.garbage.iter().map(|g| serde_json::json!({
            "id": g.id, "objects": g.objects, "bytes": g.bytes,
            "modified": basebackup::manifest::format_gmt(g.modified), "remove": g.remove,
        })).collect::<Vec<_>>(),
        "objects_to_delete": p.deletions.len(),
        "bytes_freed": p.bytes_freed,
    })
}

pub async fn run(args: ExpireArgs) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open(&[]).await?;
    let rules = Retention {
        retain_full: args.retain_full,
        retain_pitr: args.retain_pitr,
        min_age: args.min_age,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let plan = plan_expire(&repo, &rules, now).await?;
    if !args.json {
        for b in &plan.backups {
            if b.keep.is_empty() {
                eprintln!("pgrepl: expire backup {} ({} bytes)", b.id, b.bytes);
            } else if args.verbose > 0 {
                let why: Vec<&str> = b.keep.iter().map(|r| r.code()).collect();
                eprintln!("pgrepl: keep backup {} ({})", b.id, why.join(", "));
            }
        }
        for w in &plan.wal {
            eprintln!(
                "pgrepl: remove WAL {} .. {} ({} objects, {} bytes)",
                w.first, w.last, w.objects, w.bytes
            );
        }
        for g in &plan.garbage {
            if g.remove {
                eprintln!(
                    "pgrepl: remove upload {} without a commit record ({} objects, {} bytes)",
                    g.id, g.objects, g.bytes
                );
            } else {
                eprintln!(
                    "pgrepl: leave upload {} without a commit record: younger than --min-age",
                    g.id
                );
            }
        }
    }
    // carried out with the running backups' leases read again: what one claims meanwhile stays
    let (plan, deleted) = if args.dry_run {
        (plan, 0)
    } else {
        let done = expire(&repo, &rules, now).await?;
        for b in &done.plan.backups {
            let was = plan.backups.iter().find(|x| x.id == b.id);
            if !args.json && !b.keep.is_empty() && was.is_some_and(|w| w.keep.is_empty()) {
                eprintln!(
                    "pgrepl: kept backup {} after all: a running backup claims it",
                    b.id
                );
            }
        }
        (done.plan, done.deleted)
    };
    if args.json {
        let mut v = plan_json(&plan);
        v["dry_run"] = args.dry_run.into();
        v["objects_deleted"] = deleted.into();
        println!("{v}");
    } else {
        println!(
            "{}: {} of {} backups expired, {} objects {}, {} bytes {}",
            repo.name(),
            plan.expired().len(),
            plan.backups.len(),
            plan.deletions.len(),
            if args.dry_run { "to delete" } else { "deleted" },
            plan.bytes_freed,
            if args.dry_run { "to free" } else { "freed" },
        );
    }
    Ok(ExitCode::SUCCESS)
}
