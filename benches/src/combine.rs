//! Combine and verify: `pgrepl combine` against `pg_combinebackup` (copy and copy-file-range) on
//! the same full + incremental chain, and `pgrepl verify` against `pg_verifybackup` (WAL check
//! included on both sides) on the same full backup, alternating who goes first.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgrepl_testbed::{tool, Cluster, Role};

use crate::measure::{median, run, Sample};

struct Setup {
    _cluster: Cluster,
    root: PathBuf,
    full: PathBuf,
    inc: PathBuf,
    ours_bin: PathBuf,
    db_mb: f64,
}

fn setup(scale: u32) -> Setup {
    let c = crate::measure::pgbench_cluster(scale, "combine/verify");
    let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
    let ours_bin = crate::measure::ours_bin();
    let root = pgrepl_testbed::temp_dir("cmbbench");
    let full = root.join("full");
    let inc = root.join("inc");
    // the chain both tools read: taken by pg_basebackup, so neither side reads its own output
    run(Command::new(tool("pg_basebackup"))
        .args(["-d", &conninfo, "-c", "fast", "-N", "-D"])
        .arg(&full));
    c.pgbench(&["-t", "3000", "-c", "2", "-n"]);
    run(Command::new(tool("pg_basebackup"))
        .args(["-d", &conninfo, "-c", "fast", "-N", "-D"])
        .arg(&inc)
        .arg("-i")
        .arg(full.join("backup_manifest")));
    let db_mb = c
        .psql("SELECT pg_database_size('postgres')")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e6;
    Setup {
        _cluster: c,
        root,
        full,
        inc,
        ours_bin,
        db_mb,
    }
}

fn compare(
    job: &str,
    mode: &str,
    rounds: usize,
    mut ours: impl FnMut() -> Sample,
    mut theirs: impl FnMut() -> Sample,
    native: &str,
) -> (String, serde_json::Value) {
    let (mut o, mut t) = (Vec::new(), Vec::new());
    // one unmeasured run of each first: the page cache and the server's writeback settle
    let _ = Command::new("sync").status();
    ours();
    theirs();
    for round in 0..rounds {
        for side in [round % 2, 1 - round % 2] {
            let _ = Command::new("sync").status();
            if side == 0 {
                o.push(ours());
            } else {
                t.push(theirs());
            }
        }
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let (ow, oc) = (m(&o, |s| s.wall), m(&o, |s| s.cpu));
    let (tw, tc) = (m(&t, |s| s.wall), m(&t, |s| s.cpu));
    let orss = o.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024;
    let trss = t.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024;
    let line = format!(
        "{job} {mode:<16} pgrepl {ow:.2}s cpu {oc:.2}s  {native} {tw:.2}s cpu {tc:.2}s  ratio wall {:.2}x cpu {:.2}x  peak RSS {orss} / {trss} MiB",
        ow / tw,
        oc / tc
    );
    println!("{line}");
    (
        line,
        serde_json::json!({
            "mode": mode,
            "ours": {"wall_s": ow, "cpu_s": oc, "peak_rss_mib": orss},
            native: {"wall_s": tw, "cpu_s": tc, "peak_rss_mib": trss},
            "ratio": {"wall": ow / tw, "cpu": oc / tc},
        }),
    )
}

fn clean(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

pub fn bench_combine(scale: u32, rounds: usize) -> serde_json::Value {
    let s = setup(scale);
    let mut json = Vec::new();
    for (mode, flag) in [("copy", "--copy"), ("copy-file-range", "--copy-file-range")] {
        let out = s.root.join("out");
        let (_, j) = compare(
            "combine",
            mode,
            rounds,
            || {
                let r = run(Command::new(&s.ours_bin)
                    .arg("combine")
                    .args([&s.full, &s.inc])
                    .arg("-o")
                    .arg(&out)
                    .args(["--no-sync", flag]));
                clean(&out);
                r
            },
            || {
                let r = run(Command::new(tool("pg_combinebackup"))
                    .args([&s.full, &s.inc])
                    .arg("-o")
                    .arg(&out)
                    .args(["--no-sync", flag]));
                clean(&out);
                r
            },
            "pg_combinebackup",
        );
        json.push(j);
    }
    if std::env::var_os("PGREPL_BENCH_KEEP").is_some() {
        eprintln!("kept the chain in {}", s.root.display());
        std::mem::forget(s._cluster);
    } else {
        clean(&s.root);
    }
    serde_json::json!({"job": "combine", "scale": scale, "database_mb": s.db_mb, "rounds": rounds, "modes": json})
}

pub fn bench_verify(scale: u32, rounds: usize) -> serde_json::Value {
    let s = setup(scale);
    let (_, j) = compare(
        "verify",
        "full + WAL",
        rounds,
        || {
            run(Command::new(&s.ours_bin)
                .args(["verify", "-q"])
                .arg(&s.full))
        },
        || run(Command::new(tool("pg_verifybackup")).arg("-q").arg(&s.full)),
        "pg_verifybackup",
    );
    clean(&s.root);
    serde_json::json!({"job": "verify", "scale": scale, "database_mb": s.db_mb, "rounds": rounds, "modes": [j]})
}
