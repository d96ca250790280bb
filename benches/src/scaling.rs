//! How cost grows with the database: the base-backup (plain, durable), repository-backup (full,
//! into a local directory) and restore (`restore --repo --target immediate`) jobs at pgbench
//! scale 20, 100 and 300, R rounds each, pg_basebackup beside ours for reference. Time should
//! grow linearly with size (seconds per GB stay level) and peak RSS stay flat.

use std::process::Command;

use pgrepl_testbed::{tool, Role};

use crate::measure::{median, run, Sample};

const SCALES: &[u32] = &[20, 100, 300];

fn med(v: &[Sample]) -> (f64, f64, i64) {
    (
        median(v.iter().map(|s| s.wall).collect()),
        median(v.iter().map(|s| s.cpu).collect()),
        v.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024,
    )
}

pub fn bench(rounds: usize) -> serde_json::Value {
    let ours = crate::measure::ours_bin();
    let mut points = Vec::new();
    for &scale in SCALES {
        let c = crate::measure::pgbench_cluster(scale, "scaling");
        let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
        let gb: f64 = c
            .psql("SELECT pg_database_size('postgres')")
            .parse::<f64>()
            .unwrap_or(0.0)
            / 1e9;
        let root = pgrepl_testbed::temp_dir("scalebench");
        let (mut bb, mut pgbb, mut repo, mut restore) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // round 0 warms up and is not counted
        for round in 0..=rounds {
            let keep = |v: &mut Vec<Sample>, s: Sample| {
                if round > 0 {
                    v.push(s);
                }
            };
            for side in [round % 2, 1 - round % 2] {
                let target = root.join(format!("bb{round}-{side}"));
                let _ = Command::new("sync").status();
                if side == 0 {
                    let s = run(Command::new(&ours)
                        .args(["basebackup", "-d", &conninfo, "-c", "fast", "-D"])
                        .arg(&target));
                    keep(&mut bb, s);
                } else {
                    let s = run(Command::new(tool("pg_basebackup"))
                        .args(["-d", &conninfo, "-c", "fast", "-D"])
                        .arg(&target));
                    keep(&mut pgbb, s);
                }
                let _ = std::fs::remove_dir_all(&target);
            }
            let url = root.join(format!("repo{round}"));
            run(Command::new(&ours).args(["init", "--repo"]).arg(&url));
            let _ = Command::new("sync").status();
            let s = run(Command::new(&ours)
                .args(["backup", "-d", &conninfo, "--repo"])
                .arg(&url)
                .args(["-c", "fast", "--type", "full"]));
            keep(&mut repo, s);
            let target = root.join(format!("restored{round}"));
            let _ = Command::new("sync").status();
            let s = run(Command::new(&ours)
                .args(["restore", "--repo"])
                .arg(&url)
                .arg("-D")
                .arg(&target)
                .args(["--target", "immediate"]));
            keep(&mut restore, s);
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_file(root.join(format!("restored{round}.pgrepl-env")));
            let _ = std::fs::remove_dir_all(&url);
        }
        let (bw, bc, br) = med(&bb);
        let (pw, pc, pr) = med(&pgbb);
        let (rw, rc, rr) = med(&repo);
        let (sw, sc, sr) = med(&restore);
        println!(
            "scaling scale {scale:<4} {gb:.2} GB  basebackup {bw:.2}s ({:.2} s/GB, cpu {bc:.2}s, rss {br} MiB; pg_basebackup {pw:.2}s cpu {pc:.2}s rss {pr} MiB)  backup --repo {rw:.2}s ({:.2} s/GB, cpu {rc:.2}s, rss {rr} MiB)  restore --repo {sw:.2}s ({:.2} s/GB, cpu {sc:.2}s, rss {sr} MiB)",
            bw / gb,
            rw / gb,
            sw / gb
        );
        points.push(serde_json::json!({
            "scale": scale, "database_gb": gb,
            "basebackup": {"wall_s": bw, "s_per_gb": bw / gb, "cpu_s": bc, "peak_rss_mib": br},
            "pg_basebackup": {"wall_s": pw, "cpu_s": pc, "peak_rss_mib": pr},
            "backup_repo": {"wall_s": rw, "s_per_gb": rw / gb, "cpu_s": rc, "peak_rss_mib": rr},
            "restore_repo": {"wall_s": sw, "s_per_gb": sw / gb, "cpu_s": sc, "peak_rss_mib": sr},
        }));
        drop(c);
        let _ = std::fs::remove_dir_all(&root);
    }
    serde_json::json!({"job": "scaling", "rounds": rounds, "points": points})
}
