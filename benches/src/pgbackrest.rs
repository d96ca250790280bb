//! Against pgBackRest (Debian's 2.45, which supports PostgreSQL up to 15) on one PostgreSQL 15
//! cluster with pgbench data: a full backup with zstd (level 3 on both sides) into a local
//! repository and into SeaweedFS over HTTPS, `pgrepl backup --repo` against `pgbackrest backup
//! --type=full` with process-max 1 and 2, alternating, R rounds; then the newest backup restored into a new
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

use pgrepl_testbed::{
    hand_over, pg15_bin, run_as_test_user, Role, SeaweedFs, S3_ACCESS_KEY, S3_SECRET_KEY,
};

use crate::measure::{median, run, Sample};

const PGBACKREST: &str = "/usr/bin/pgbackrest";
const STANZA: &str = "bench";
const BUCKET: &str = "pgbr-bench";
/// Rows of the bulk load the point-in-time restore replays: about 2 GB of WAL.
const PITR_ROWS: u64 = 16_000_000;

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
/// and waits until it has ended recovery (promoted) and accepts connections; runs `check` on
/// it; then stops it. Returns the wall time from start to promotion.
fn start_and_stop(data: &Path, sockdir: &Path, check: &str) -> (f64, String) {
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
    assert!(
        out.status.success(),
        "pg_ctl start on {}: {}\n{}",
        data.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(data.with_extension("log")).unwrap_or_default()
    );
    let psql = |sql: &str| {
        let o = Command::new(pg15_bin().join("psql"))
            .arg("-h")
            .arg(sockdir)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-XAtc",
                sql,
                "postgres",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    while psql("SELECT pg_is_in_recovery()") != "f" {
        assert!(
            start.elapsed().as_secs() < 3600,
            "{} did not leave recovery",
            data.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let wall = start.elapsed().as_secs_f64();
    let checked = psql(check);
    let _ = run_as_test_user(&pg_ctl)
        .args(["-D"])
        .arg(data)
        .args(["-m", "immediate", "-w", "stop"])
        .output();
    (wall, checked)
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
    // the S3 repositories: pgBackRest's S3 client speaks only HTTPS, so SeaweedFS serves it
    // with a certificate from a throwaway CA, which both clients are given
    let s3 = SeaweedFs::start_https(&[BUCKET]);
    let ca = s3.ca_file.clone().unwrap();
    let s3_port = s3.endpoint.rsplit(':').next().unwrap().to_owned();
    std::fs::copy(&ca, root.join("ca.crt")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "[global]\n\
             repo1-path={repo}\n\
             repo1-retention-full=9999\n\
             repo2-type=s3\n\
             repo2-path=/pgbackrest\n\
             repo2-s3-bucket={BUCKET}\n\
             repo2-s3-endpoint=127.0.0.1\n\
             repo2-storage-port={s3_port}\n\
             repo2-storage-ca-file={root}/ca.crt\n\
             repo2-s3-region=us-east-1\n\
             repo2-s3-uri-style=path\n\
             repo2-s3-key={S3_ACCESS_KEY}\n\
             repo2-s3-key-secret={S3_SECRET_KEY}\n\
             repo2-retention-full=9999\n\
             compress-type=zst\n\
             compress-level=3\n\
             start-fast=y\n\
             spool-path={root}/spool\n\
             lock-path={root}/lock\n\
             log-path={root}/log\n\
             log-level-console=warn\n\
             log-level-file=off\n\
             \n\
             [global:archive-get]\n\
             archive-async=y\n\
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
    {
        // it holds the S3 keys
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
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
    // before any WAL is archived, so that archive-push finds the stanza
    run(pgbackrest(&conf).arg("stanza-create"));
    eprintln!("pgbackrest: pgbench -i -s {scale} on PostgreSQL 15");
    c.pgbench_init(scale);
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

    let our_s3 = format!("s3://{BUCKET}/pgrepl");
    let with_s3 = |cmd: &mut Command| {
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
        cmd.arg("--s3-ca-file").arg(root.join("ca.crt"));
    };
    {
        let mut init = run_as_test_user(&ours);
        init.args(["init", "--repo", &our_s3]);
        with_s3(&mut init);
        run(&mut init);
    }

    // our WAL archive: receivewal --repo on a slot, as pgBackRest has archive-push
    run(Command::new(&ours).args([
        "receivewal",
        "-d",
        &conninfo,
        "-S",
        "pgrepl_bench",
        "--create-slot",
    ]));
    let receiver = run_as_test_user(&ours)
        .args([
            "receivewal",
            "-d",
            &conninfo,
            "-S",
            "pgrepl_bench",
            "--repo",
        ])
        .arg(&our_repo)
        .args(["--status-interval", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // (name, repository): 1 a directory, 2 SeaweedFS over HTTPS
    let names = [
        "pgrepl backup --repo DIR",
        "pgbackrest process-max=1, posix",
        "pgbackrest process-max=2, posix",
        "pgrepl backup --repo s3://",
        "pgbackrest process-max=1, s3",
        "pgbackrest process-max=2, s3",
    ];
    let mut samples: [Vec<Sample>; 6] = Default::default();
    let mut stored: [Option<u64>; 6] = [None; 6];
    // round 0 warms both sides up and is not counted
    for round in 0..=rounds {
        for k in 0..names.len() {
            let side = (round + k) % names.len();
            let _ = Command::new("sync").status();
            let before = bytes_under(&our_repo);
            let sample = match side {
                0 | 3 => {
                    let mut cmd = run_as_test_user(&ours);
                    cmd.args(["backup", "-d", &conninfo, "-c", "fast", "--type", "full"]);
                    if side == 0 {
                        cmd.arg("--repo").arg(&our_repo);
                    } else {
                        cmd.args(["--repo", &our_s3]);
                        with_s3(&mut cmd);
                    }
                    run(&mut cmd)
                }
                n => run(pgbackrest(&conf)
                    .args(["backup", "--type=full"])
                    .arg(format!("--repo={}", if n < 3 { 1 } else { 2 }))
                    .arg(format!("--process-max={}", if n % 3 == 1 { 1 } else { 2 }))),
            };
            match side {
                0 => stored[0] = Some(bytes_under(&our_repo) - before),
                1 | 2 => stored[side] = Some(bytes_under(&newest_label(&br_repo))),
                _ => {}
            }
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
            let (started, _) = start_and_stop(&target, &root.join("sock"), "SELECT 1");
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

    // a point-in-time restore that replays a few GB of WAL: each restores its newest backup
    // and replays to a time after the bulk load, timed until the server is promoted
    c.psql("CREATE TABLE pitr_marks (n int)");
    let wal_start = c.psql("SELECT pg_current_wal_lsn()");
    c.psql(&format!(
        "CREATE TABLE pitr_bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, {PITR_ROWS}) g"
    ));
    c.psql("INSERT INTO pitr_marks VALUES (1)");
    let wal_gb = c
        .psql(&format!(
            "SELECT pg_current_wal_lsn() - '{wal_start}'::pg_lsn"
        ))
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e9;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target =
        c.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.psql("INSERT INTO pitr_marks VALUES (2)");
    let end = c.psql("SELECT pg_switch_wal()");
    let segment = c.psql(&format!("SELECT pg_walfile_name('{end}')"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    loop {
        let archived = c.psql(&format!(
            "SELECT coalesce(last_archived_wal >= '{segment}', false) FROM pg_stat_archiver"
        ));
        let streamed = c.psql(&format!(
            "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'pgrepl_bench'"
        ));
        if archived == "t" && streamed == "t" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "WAL not archived");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // alternating which goes first: the first restore after the load runs while the machine
    // still settles from it (about a second slower, whichever tool it is)
    let pitr_rounds = rounds.max(2);
    let mut pitr: [Vec<(Sample, f64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..pitr_rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let dir = root.join("restored").join(format!("pitr-{side}"));
            std::fs::create_dir_all(&dir).unwrap();
            hand_over(&dir);
            let _ = Command::new("sync").status();
            let sample = if side == 0 {
                run(run_as_test_user(&ours)
                    .args(["restore", "--repo"])
                    .arg(&our_repo)
                    .arg("-D")
                    .arg(&dir)
                    .args(["--target-time", &target, "-N"]))
            } else {
                run(pgbackrest(&conf)
                    .arg(format!("--pg1-path={}", dir.display()))
                    .args(["restore", "--type=time", "--target-action=promote"])
                    .arg(format!("--target={target}"))
                    .args(["--process-max=2"]))
            };
            let (started, marks) = start_and_stop(
                &dir,
                &root.join("sock"),
                "SELECT string_agg(n::text, ',' ORDER BY n) FROM pitr_marks",
            );
            assert_eq!(marks, "1", "side {side} restored to the wrong point");
            pitr[side].push((sample, started));
            let _ = std::fs::remove_dir_all(&dir);
            for suffix in ["log", "pgrepl-env", "pgrepl-prefetch"] {
                let p = dir.with_extension(suffix);
                let _ = std::fs::remove_file(&p);
                let _ = std::fs::remove_dir_all(&p);
            }
        }
    }
    // per side: medians of until-promoted, restore, CPU; the largest RSS
    let pitr: Vec<(f64, f64, f64, i64)> = pitr
        .iter()
        .map(|v| {
            (
                median(v.iter().map(|(s, t)| s.wall + t).collect()),
                median(v.iter().map(|(s, _)| s.wall).collect()),
                median(v.iter().map(|(s, _)| s.cpu).collect()),
                v.iter()
                    .map(|(s, _)| s.max_rss_kb / 1024)
                    .max()
                    .unwrap_or(0),
            )
        })
        .collect();
    println!(
        "pgbackrest point-in-time restore replaying {wal_gb:.1} GB of WAL, until promoted (median of {pitr_rounds}, alternating)  pgrepl {:.2}s (restore {:.2}s, cpu {:.2}s, rss {} MiB) | pgbackrest {:.2}s (restore {:.2}s, cpu {:.2}s, rss {} MiB)  ratio wall {:.2}x",
        pitr[0].0,
        pitr[0].1,
        pitr[0].2,
        pitr[0].3,
        pitr[1].0,
        pitr[1].1,
        pitr[1].2,
        pitr[1].3,
        pitr[0].0 / pitr[1].0
    );
    let _ = Command::new("kill")
        .args(["-TERM", &receiver.id().to_string()])
        .status();
    let _ = crate::measure::wait_child(receiver, "receivewal --repo", true);

    // an incremental after the same pgbench load: pgBackRest's copies whole changed files (on
    // 15); ours is block-level from WAL summaries, which need PostgreSQL 17+, so it runs on a
    // PostgreSQL 18 cluster with the same data and the same load
    const LOAD: &[&str] = &["-t", "3000", "-c", "2", "-n"];
    // the point-in-time job's bulk table is not part of this comparison: gone, and a new full
    // backup (not timed) for pgBackRest's incremental to build on
    c.psql("DROP TABLE pitr_bulk, pitr_marks");
    run(pgbackrest(&conf).args(["backup", "--type=full", "--process-max=2"]));
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
    for (i, name) in names.iter().enumerate() {
        let (w, c, rss) = summary(&samples[i]);
        json.push(serde_json::json!({
            "what": name, "wall_s": w, "cpu_s": c, "peak_rss_mib": rss, "bytes_stored": stored[i],
        }));
        println!(
            "pgbackrest full  {name:<32} {w:.2}s cpu {c:.2}s rss {rss} MiB{}",
            stored[i]
                .map(|b| format!(" stored {:.1} MB", b as f64 / 1e6))
                .unwrap_or_default()
        );
    }
    let mut ratios = Vec::new();
    for (ours_side, storage) in [(0, "posix"), (3, "s3")] {
        let (ow, oc, orss) = summary(&samples[ours_side]);
        let best = (ours_side + 1..ours_side + 3)
            .min_by(|a, b| summary(&samples[*a]).0.total_cmp(&summary(&samples[*b]).0))
            .unwrap();
        let (bw, bc, brss) = summary(&samples[best]);
        println!(
            "pgbackrest full  {storage}: ratio pgrepl / best pgBackRest ({}) wall {:.2}x cpu {:.2}x  rss {orss} / {brss} MiB",
            names[best],
            ow / bw,
            oc / bc
        );
        ratios.push(serde_json::json!({
            "storage": storage, "best_pgbackrest": names[best],
            "wall": ow / bw, "cpu": oc / bc,
        }));
    }
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
        "full_ratio_vs_best_pgbackrest": ratios,
        "restore_until_connections": [
            {"what": "pgrepl restore --repo", "wall_s": rw0, "cpu_s": rc0, "peak_rss_mib": rr0},
            {"what": "pgbackrest restore (archive-get async)", "wall_s": rw1, "cpu_s": rc1, "peak_rss_mib": rr1},
        ],
        "ratio_restore_wall": rw0 / rw1,
        "pitr": {
            "wal_gb": wal_gb,
            "rounds": pitr_rounds,
            "pgrepl": {"restore_s": pitr[0].1, "until_promoted_s": pitr[0].0, "cpu_s": pitr[0].2, "peak_rss_mib": pitr[0].3},
            "pgbackrest": {"restore_s": pitr[1].1, "until_promoted_s": pitr[1].0, "cpu_s": pitr[1].2, "peak_rss_mib": pitr[1].3},
            "ratio_wall": pitr[0].0 / pitr[1].0,
        },
        "incremental": {
            "load": LOAD.join(" "),
            "pgrepl": {"postgres": 18, "wall_s": our_incr.wall, "cpu_s": our_incr.cpu, "bytes_stored": our_incr_bytes},
            "pgbackrest": {"postgres": 15, "wall_s": br_incr.wall, "cpu_s": br_incr.cpu, "bytes_stored": br_incr_bytes},
            "ratio_bytes": our_incr_bytes as f64 / br_incr_bytes as f64,
        },
    })
}
