//! Against pgBackRest (Debian's 2.45, which supports PostgreSQL up to 15) on one PostgreSQL 15
//! cluster with pgbench data: a full backup with zstd (level 3 on both sides) into a local
//! repository, `pgrepl backup --repo DIR` against `pgbackrest backup --type=full` with
//! process-max 1 and 2, alternating, R rounds; then the newest backup restored into a new
//! directory by each, timed until a server started on it accepts connections (pgBackRest's
//! restore_command is its asynchronous archive-get). Wall, the client's CPU (its worker
//! processes included: they are its children) and peak RSS, medians, and bytes stored. Then
//! an incremental after a pgbench load: pgBackRest's `--type=incr` (whole changed files) on 15
//! against our block-level incremental, which needs WAL summaries (PostgreSQL 17+) and so runs
//! on a PostgreSQL 18 cluster with the same data and load: wall and bytes stored.
//!
//! pgBackRest reads the data directory itself, so it runs as the cluster's owner (the test
//! user when we are root); so does everything that writes a data directory a server will start
//! on, ours included, so that neither side pays for a chown.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgrepl_testbed::{hand_over, pg15_bin, run_as_test_user, Role};

use crate::measure::{median, run, Sample};

const PGBACKREST: &str = "/usr/bin/pgbackrest";
const STANZA: &str = "bench";

fn pgbackrest(conf: &Path) -> Command {
    let mut c = run_as_test_user(Path::new(PGBACKREST));
    c.arg(format!("--config={}", conf.display()))
        .arg(format!("--stanza={STANZA}"));
    c
}

/// Bytes under `dir` (apparent sizes of regular files).
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += bytes_under(&e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// The newest backup directory pgBackRest made (labels sort by time).
fn newest_label(repo: &Path) -> PathBuf {
    let dir = repo.join("backup").join(STANZA);
    let mut labels: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with('F') || n.ends_with('I') || n.ends_with('D'))
        })
        .collect();
    labels.sort();
    labels.pop().expect("a pgBackRest backup")
}

/// Starts a PostgreSQL 15 server on `data` (archiving off, its own socket directory and port)
/// and waits until it accepts connections; then stops it. Returns the start's wall time.
fn start_and_stop(data: &Path, sockdir: &Path) -> f64 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let pg_ctl = pg15_bin().join("pg_ctl");
    let opts = format!(
        "-p {port} -k {} -c listen_addresses='' -c archive_mode=off",
        sockdir.display()
    );
    let start = std::time::Instant::now();
    let out = run_as_test_user(&pg_ctl)
        .args(["-D"])
        .arg(data)
        .args(["-o", &opts, "-l"])
        .arg(data.with_extension("log"))
        .args(["-w", "-t", "3600", "start"])
        .output()
        .unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "pg_ctl start on {}: {}\n{}",
        data.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
    );
    let _ = run_as_test_user(&pg_ctl)
        .args(["-D"])
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    wall
}

fn summary(v: &[Sample]) -> (f64, f64, i64) {
    (
        median(v.iter().map(|s| s.wall).collect()),
        median(v.iter().map(|s| s.cpu).collect()),
        v.iter().map(|s| s.max_rss_kb).max().unwrap_or(0) / 1024,
    )
}

pub fn bench(scale: u32, rounds: usize) -> serde_json::Value {
    assert!(
        Path::new(PGBACKREST).exists(),
        "{PGBACKREST} not found: run scripts/install-tools (as root it installs Debian's pgbackrest)"
    );
    let root = pgrepl_testbed::temp_dir("pgbrbench");
    hand_over(&root);
    let conf = root.join("pgbackrest.conf");
    let c = pgrepl_testbed::Cluster::start_with(
        pgrepl_testbed::PgVersion::V15,
        pgrepl_testbed::ClusterOptions {
            conf: vec![
                "max_wal_size = 4GB".into(),
                "archive_mode = on".into(),
                format!(
                    "archive_command = '{PGBACKREST} --config={} --stanza={STANZA} archive-push %p'",
                    conf.display()
                ),
            ],
            ..Default::default()
        },
    );
    let br_repo = root.join("pgbackrest-repo");
    std::fs::write(
        &conf,
        format!(
            "[global]\n\
             repo1-path={repo}\n\
             repo1-retention-full=9999\n\
             compress-type=zst\n\
             compress-level=3\n\
             start-fast=y\n\
             archive-async=y\n\
             spool-path={root}/spool\n\
             lock-path={root}/lock\n\
             log-path={root}/log\n\
             log-level-console=warn\n\
             log-level-file=off\n\
             \n\
             [{STANZA}]\n\
             pg1-path={data}\n\
             pg1-port={port}\n\
             pg1-socket-path={sock}\n\
             pg1-user=postgres\n",
            repo = br_repo.display(),
            root = root.display(),
            data = c.data.display(),
            port = c.port,
            sock = c.socket_dir().display(),
        ),
    )
    .unwrap();
    for d in [
        "spool",
        "lock",
        "log",
        "pgbackrest-repo",
        "restored",
        "sock",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    hand_over(&root);
    eprintln!("pgbackrest: pgbench -i -s {scale} on PostgreSQL 15");
    c.pgbench_init(scale);
    run(pgbackrest(&conf).arg("stanza-create"));
    let db_mb: f64 = c
        .psql("SELECT pg_database_size('postgres')")
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e6;

    let ours = crate::measure::ours_bin();
    let conninfo = c.conninfo(Role::Postgres, "sslmode=disable");
    let our_repo = root.join("pgrepl-repo");
    let out = run_as_test_user(&ours)
        .args(["init", "--repo"])
        .arg(&our_repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let names = [
        "pgrepl backup --repo",
        "pgbackrest process-max=1",
        "pgbackrest process-max=2",
    ];
    let mut samples: [Vec<Sample>; 3] = Default::default();
    let mut stored: [u64; 3] = [0; 3];
    // round 0 warms both sides up and is not counted
    for round in 0..=rounds {
        for k in 0..3 {
            let side = (round + k) % 3;
            let _ = Command::new("sync").status();
            let before = bytes_under(&our_repo);
            let sample = match side {
                0 => run(run_as_test_user(&ours)
                    .args(["backup", "-d", &conninfo, "--repo"])
                    .arg(&our_repo)
                    .args(["-c", "fast", "--type", "full"])),
                n => run(pgbackrest(&conf)
                    .args(["backup", "--type=full"])
                    .arg(format!("--process-max={n}"))),
            };
            stored[side] = match side {
                0 => bytes_under(&our_repo) - before,
                _ => bytes_under(&newest_label(&br_repo)),
            };
            if round > 0 {
                samples[side].push(sample);
            }
        }
    }

    // the newest backup of each, restored to its consistent point, until a server accepts
    // connections
    let mut restore: [Vec<(Sample, f64)>; 2] = Default::default();
    for round in 0..=rounds {
        for side in [round % 2, 1 - round % 2] {
            let target = root.join("restored").join(format!("r{round}-{side}"));
            // an empty directory of the server's user, which both accept
            std::fs::create_dir_all(&target).unwrap();
            hand_over(&target);
            let _ = Command::new("sync").status();
            let sample = if side == 0 {
                run(run_as_test_user(&ours)
                    .args(["restore", "--repo"])
                    .arg(&our_repo)
                    .arg("-D")
                    .arg(&target)
                    .args(["--target", "immediate", "-N"]))
            } else {
                run(pgbackrest(&conf)
                    .arg(format!("--pg1-path={}", target.display()))
                    .args(["restore", "--type=immediate", "--target-action=promote"])
                    .args(["--process-max=2"]))
            };
            let started = start_and_stop(&target, &root.join("sock"));
            if round > 0 {
                restore[side].push((sample, started));
            }
            let _ = std::fs::remove_dir_all(&target);
            for suffix in ["log", "pgrepl-env", "pgrepl-prefetch"] {
                let p = target.with_extension(suffix);
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }

    // an incremental after the same pgbench load: pgBackRest's copies whole changed files (on
    // 15); ours is block-level from WAL summaries, which need PostgreSQL 17+, so it runs on a
    // PostgreSQL 18 cluster with the same data and the same load
    const LOAD: &[&str] = &["-t", "3000", "-c", "2", "-n"];
    c.pgbench(LOAD);
    let br_incr = run(pgbackrest(&conf).args(["backup", "--type=incr", "--process-max=2"]));
    let br_incr_bytes = bytes_under(&newest_label(&br_repo));
    let (our_incr, our_incr_bytes) = {
        let c18 = pgrepl_testbed::Cluster::start_with(
            pgrepl_testbed::PgVersion::V18,
            pgrepl_testbed::ClusterOptions {
                conf: vec!["max_wal_size = 4GB".into(), "summarize_wal = on".into()],
                ..Default::default()
            },
        );
        c18.pgbench_init(scale);
        let ci18 = c18.conninfo(Role::Postgres, "sslmode=disable");
        let repo18 = root.join("pgrepl-repo-18");
        let backup = |kind: &str| {
            run(Command::new(&ours)
                .args(["backup", "-d", &ci18, "--repo"])
                .arg(&repo18)
                .args(["-c", "fast", "--type", kind]))
        };
        run(Command::new(&ours).args(["init", "--repo"]).arg(&repo18));
        backup("full");
        c18.pgbench(LOAD);
        let before = bytes_under(&repo18);
        let s = backup("incremental");
        (s, bytes_under(&repo18) - before)
    };
    println!(
        "pgbackrest incremental after pgbench {}  pgrepl (PG 18, block-level) {:.2}s stored {:.1} MB | pgbackrest --type=incr (PG 15, whole files) {:.2}s stored {:.1} MB  ratio bytes {:.2}x wall {:.2}x",
        LOAD.join(" "),
        our_incr.wall,
        our_incr_bytes as f64 / 1e6,
        br_incr.wall,
        br_incr_bytes as f64 / 1e6,
        our_incr_bytes as f64 / br_incr_bytes as f64,
        our_incr.wall / br_incr.wall
    );

    let mut json = Vec::new();
    let (ow, oc, orss) = summary(&samples[0]);
    let best = (1..3)
        .min_by(|a, b| summary(&samples[*a]).0.total_cmp(&summary(&samples[*b]).0))
        .unwrap();
    for (i, name) in names.iter().enumerate() {
        let (w, c, rss) = summary(&samples[i]);
        json.push(serde_json::json!({
            "what": name, "wall_s": w, "cpu_s": c, "peak_rss_mib": rss, "bytes_stored": stored[i],
        }));
        println!(
            "pgbackrest full  {name:<26} {w:.2}s cpu {c:.2}s rss {rss} MiB stored {:.1} MB",
            stored[i] as f64 / 1e6
        );
    }
    let (bw, bc, _) = summary(&samples[best]);
    println!(
        "pgbackrest full  ratio pgrepl / best pgBackRest ({}) wall {:.2}x cpu {:.2}x  (pgrepl rss {orss} MiB)",
        names[best],
        ow / bw,
        oc / bc
    );
    let r = |side: usize| {
        let v = &restore[side];
        let wall = median(v.iter().map(|(s, st)| s.wall + st).collect());
        let cpu = median(v.iter().map(|(s, _)| s.cpu).collect());
        let rss = v.iter().map(|(s, _)| s.max_rss_kb).max().unwrap_or(0) / 1024;
        (wall, cpu, rss)
    };
    let (rw0, rc0, rr0) = r(0);
    let (rw1, rc1, rr1) = r(1);
    println!(
        "pgbackrest restore until connections  pgrepl {rw0:.2}s cpu {rc0:.2}s rss {rr0} MiB | pgbackrest {rw1:.2}s cpu {rc1:.2}s rss {rr1} MiB  ratio wall {:.2}x",
        rw0 / rw1
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&root);
    serde_json::json!({
        "job": "pgbackrest", "postgres": 15, "scale": scale, "database_mb": db_mb, "rounds": rounds,
        "full_backup": json,
        "ratio_full_wall_vs_best": ow / bw, "ratio_full_cpu_vs_best": oc / bc,
        "restore_until_connections": [
            {"what": "pgrepl restore --repo", "wall_s": rw0, "cpu_s": rc0, "peak_rss_mib": rr0},
            {"what": "pgbackrest restore (archive-get async)", "wall_s": rw1, "cpu_s": rc1, "peak_rss_mib": rr1},
        ],
        "ratio_restore_wall": rw0 / rw1,
        "incremental": {
            "load": LOAD.join(" "),
            "pgrepl": {"postgres": 18, "wall_s": our_incr.wall, "cpu_s": our_incr.cpu, "bytes_stored": our_incr_bytes},
            "pgbackrest": {"postgres": 15, "wall_s": br_incr.wall, "cpu_s": br_incr.cpu, "bytes_stored": br_incr_bytes},
            "ratio_bytes": our_incr_bytes as f64 / br_incr_bytes as f64,
        },
    })
}
