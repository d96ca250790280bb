//! The repository when things break, with the real components killed and restarted: the
//! object store dying in the middle of a backup and of WAL streaming, `receivewal --repo`
//! killed at random moments, bad credentials, a missing bucket, an endpoint that does not
//! answer, and another cluster's backup. The judge of WAL is the server's own pg_wal.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgrepl_testbed::{temp_dir, Cluster, ClusterOptions, PgVersion, Role, SeaweedFs};

mod common;
use common::{json, ok, pgrepl, wait_for};

const BUCKET: &str = "pgrepl-faults";

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_faults",
    )
}

fn cmd(w: &SeaweedFs) -> Command {
    let mut c = pgrepl();
    c.env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in w.env() {
        c.env(k, v);
    }
    c
}

fn info(w: &SeaweedFs, url: &str) -> serde_json::Value {
    json(&ok(cmd(w)
        .args(["info", "--repo", url, "--json"])
        .output()
        .unwrap()))
}

fn lsn(c: &Cluster, sql: &str) -> u64 {
    let t = c.psql(sql);
    let (hi, lo) = t.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn seg_name(l: u64) -> String {
    let seg = l / (16 << 20);
    format!("{:08X}{:08X}{:08X}", 1, seg / 256, seg % 256)
}

/// The repository holds the server's WAL from `from` up to `to`, byte for byte (served by
/// wal-fetch, compared with the server's own pg_wal).
fn holds(c: &Cluster, w: &SeaweedFs, url: &str, from: u64, to: u64) {
    let work = temp_dir("holds");
    let seg = 16u64 << 20;
    let mut at = from / seg * seg;
    while at < to {
        let name = seg_name(at);
        let dest = work.join(&name);
        let out = cmd(w)
            .args(["wal-fetch", "--repo", url, &name])
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} (needed up to {to:X}) not served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = std::fs::read(&dest).unwrap();
        let server = std::fs::read(c.data.join("pg_wal").join(&name)).unwrap();
        let upto = ((to - at).min(seg)) as usize;
        assert!(
            got[..upto] == server[..upto],
            "{name}: the repository's bytes differ from the server's before {to:X}"
        );
        at += seg;
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn spawn_receiver(c: &Cluster, w: &SeaweedFs, url: &str) -> Child {
    cmd(w)
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "faults",
            "--repo",
            url,
        ])
        .args(["--status-interval", "1", "--partial-interval", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn setup(v: PgVersion, url: &str) -> (Cluster, SeaweedFs) {
    // all WAL stays on the server, to compare with
    let c = Cluster::start_with(
        v,
        ClusterOptions {
            conf: vec!["wal_keep_size = '2GB'".into()],
            ..Default::default()
        },
    );
    let w = SeaweedFs::start(&[BUCKET]);
    ok(cmd(&w).args(["init", "--repo", url]).output().unwrap());
    ok(cmd(&w)
        .args([
            "receivewal",
            "-d",
            &conninfo(&c),
            "-S",
            "faults",
            "--create-slot",
        ])
        .output()
        .unwrap());
    (c, w)
}

fn slot_lsn(c: &Cluster) -> u64 {
    lsn(
        c,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'faults'",
    )
}

#[test]
fn pg18_store_killed_during_a_backup() {
    let url = format!("s3://{BUCKET}/backup-kill");
    let (c, mut w) = setup(PgVersion::V18, &url);
    c.pgbench_init(20);
    // a backup of a few hundred MB, uncompressed, killed while it streams
    let child = cmd(&w)
        .args([
            "backup",
            "-d",
            &conninfo(&c),
            "--repo",
            &url,
            "-c",
            "fast",
            "-Z",
            "none",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the backup to be sending", || {
        c.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'backup'") == "1"
    });
    std::thread::sleep(Duration::from_millis(300));
    w.kill();
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the backup succeeded without its store: {err}"
    );
    assert!(t.elapsed() < Duration::from_secs(90), "{:?}", t.elapsed());
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(&url) || err.contains("s3://"), "{err}");
    w.restart();
    // nothing committed; the next backup succeeds; info lists only it
    assert_eq!(info(&w, &url)["backups"].as_array().unwrap().len(), 0);
    ok(cmd(&w)
        .args(["backup", "-d", &conninfo(&c), "--repo", &url, "-c", "fast"])
        .output()
        .unwrap());
    let i = info(&w, &url);
    assert_eq!(i["backups"].as_array().unwrap().len(), 1, "{i}");
    assert_eq!(i["backups"][0]["kind"], "full", "{i}");
}

#[test]
fn pg18_store_killed_while_receiving_wal() {
    let url = format!("s3://{BUCKET}/wal-kill");
    let (c, mut w) = setup(PgVersion::V18, &url);
    let first = slot_lsn(&c);
    let rx = spawn_receiver(&c, &w, &url);
    c.pgbench_init(5);
    wait_for("WAL in the repository", || slot_lsn(&c) > first);
    w.kill();
    let killed_at = slot_lsn(&c);
    // WAL goes on; the slot does not move past what the repository holds
    c.pgbench(&["-t", "300", "-c", "2", "-n"]);
    c.psql("SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        slot_lsn(&c),
        killed_at,
        "the slot advanced while the store was down"
    );
    w.restart();
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the receiver to catch up after the store came back", || {
        slot_lsn(&c) >= end
    });
    let mut rx = rx;
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    rx.wait().unwrap();
    holds(&c, &w, &url, first, end);
    let i = info(&w, &url);
    assert_eq!(i["gaps"].as_array().unwrap().len(), 0, "{i}");
}

/// A receiver started while the store is down (a host that boots before its object store)
/// waits for it with its reconnect backoff, then streams from the slot without a gap.
#[test]
fn pg18_receiver_started_while_the_store_is_down() {
    let url = format!("s3://{BUCKET}/late-store");
    let (c, mut w) = setup(PgVersion::V18, &url);
    let work = temp_dir("late-store");
    let events = work.join("events.jsonl");
    let errors = work.join("events.err");
    let first = slot_lsn(&c);
    c.pgbench_init(2);
    w.kill();
    let mut rx = cmd(&w)
        .args(["receivewal", "-d", &conninfo(&c), "-S", "faults", "--repo"])
        .arg(&url)
        .args(["--status-interval", "1", "--json"])
        .stdout(std::fs::File::create(&events).unwrap())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .unwrap();
    wait_for("the receiver to say it waits", || {
        still_running(&mut rx, &events);
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"reconnecting\""))
            .count()
            >= 2
    });
    assert_eq!(slot_lsn(&c), first, "the slot moved without a store");
    w.restart();
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the receiver to stream once the store is back", || {
        still_running(&mut rx, &events);
        slot_lsn(&c) >= end
    });
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    assert!(rx.wait().unwrap().success());
    holds(&c, &w, &url, first, end);
    let log = std::fs::read_to_string(&events).unwrap();
    assert!(log.contains("\"started\""), "{log}");
    assert!(
        !log.contains(pgrepl_testbed::S3_SECRET_KEY),
        "the secret printed: {log}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg18_receiver_killed_at_random_moments() {
    let url = format!("s3://{BUCKET}/kill9");
    let (c, w) = setup(PgVersion::V18, &url);
    c.pgbench_init(2);
    let first = slot_lsn(&c);
    let mut load = Command::new(pgrepl_testbed::tool("pgbench"))
        .args(["-T", "8", "-c", "2", "-n", "-h"])
        .arg(c.socket_dir())
        .args(["-p", &c.port.to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rx = spawn_receiver(&c, &w, &url);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for i in 0..3u32 {
        let ms = 800 + (seed.rotate_left(i * 7) % 1800) as u64;
        std::thread::sleep(Duration::from_millis(ms));
        rx.kill().unwrap(); // SIGKILL
        rx.wait().unwrap();
        wait_for("the walsender to exit", || {
            c.psql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgrepl_faults'",
            ) == "0"
        });
        // what the server was told is durable is in the repository, byte for byte
        let told = slot_lsn(&c);
        holds(&c, &w, &url, first, told);
        rx = spawn_receiver(&c, &w, &url);
    }
    load.wait().unwrap();
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the last segment", || slot_lsn(&c) >= end);
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    rx.wait().unwrap();
    holds(&c, &w, &url, first, end);
    let i = info(&w, &url);
    assert_eq!(i["gaps"].as_array().unwrap().len(), 0, "{i}");
}

/// Completed segments (and history files) waiting in a spool.
fn spooled(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.len() == 24 || n.ends_with(".history")
                })
                .count()
        })
        .unwrap_or(0)
}

fn spool_receiver(
    c: &Cluster,
    w: &SeaweedFs,
    url: &str,
    spool: &std::path::Path,
    log: &std::path::Path,
) -> Child {
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    let errors = open(&log.with_extension("err"));
    let log = open(log);
    cmd(w)
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "faults",
            "--repo",
            url,
            "--spool",
        ])
        .arg(spool)
        .args([
            "--status-interval",
            "1",
            "--partial-interval",
            "1",
            "--json",
        ])
        .stdout(log)
        .stderr(errors)
        .spawn()
        .unwrap()
}

/// Fails with the receiver's stderr if it has exited.
fn still_running(rx: &mut Child, log: &std::path::Path) {
    if let Some(st) = rx.try_wait().unwrap() {
        let err = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
        panic!("the receiver exited ({st}): {err}");
    }
}

/// `receivewal --repo --spool`: the slot advances past WAL durable in the spool while the
/// store is down, a receiver killed then leaves it there, and the next one carries it into
/// the repository without a gap. wal-fetch --json reports what it served and what is missing.
#[test]
fn pg18_spool_streams_on_while_the_store_is_down() {
    let url = format!("s3://{BUCKET}/spool");
    let (c, mut w) = setup(PgVersion::V18, &url);
    let work = temp_dir("spool");
    let spool = work.join("spool");
    let log = work.join("events.jsonl");
    let first = slot_lsn(&c);
    let mut rx = spool_receiver(&c, &w, &url, &spool, &log);
    c.pgbench_init(5);
    let a = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the spool to reach the switch", || {
        still_running(&mut rx, &log);
        slot_lsn(&c) >= a
    });
    wait_for("the spool to drain", || spooled(&spool) == 0);
    holds(&c, &w, &url, first, a);

    // the store goes away: streaming goes on into the spool, and the slot with it
    w.kill();
    c.pgbench(&["-t", "300", "-c", "2", "-n"]);
    let b = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the slot to pass WAL held in the spool only", || {
        slot_lsn(&c) >= b
    });
    assert!(
        spooled(&spool) > 0,
        "nothing waits in the spool while the store is down"
    );
    wait_for("a failure to be reported", || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("\"spool_failed\"")
    });
    // and the receiver dies with it there
    rx.kill().unwrap();
    rx.wait().unwrap();
    let waiting = spooled(&spool);
    assert!(waiting > 0);

    w.restart();
    let mut rx = spool_receiver(&c, &w, &url, &spool, &log);
    c.psql("CREATE TABLE after_spool AS SELECT generate_series(1, 1000) AS i");
    let e = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the receiver to stream on", || {
        still_running(&mut rx, &log);
        slot_lsn(&c) >= e
    });
    wait_for("the spool to drain after the store came back", || {
        spooled(&spool) == 0
    });
    let _ = Command::new("kill")
        .args(["-TERM", &rx.id().to_string()])
        .status();
    assert!(rx.wait().unwrap().success());
    holds(&c, &w, &url, first, e);
    let i = info(&w, &url);
    assert_eq!(i["gaps"].as_array().unwrap().len(), 0, "{i}");
    let events = std::fs::read_to_string(&log).unwrap();
    assert!(events.contains("\"spool_stored\""), "{events}");

    // wal-fetch --json: what it served, and what it does not have
    let name = seg_name(first);
    let dest = work.join(&name);
    let out = cmd(&w)
        .args(["wal-fetch", "--repo", &url, "--json", &name])
        .arg(&dest)
        .output()
        .unwrap();
    let j = json(&ok(out));
    assert_eq!(j["status"], "restored", "{j}");
    assert_eq!(j["file"], name.as_str(), "{j}");
    assert_eq!(j["bytes"], 16u64 << 20, "{j}");
    let out = cmd(&w)
        .args([
            "wal-fetch",
            "--repo",
            &url,
            "--json",
            "0000000100000000000000FF",
        ])
        .arg(work.join("ff"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["status"], "missing");
    let _ = std::fs::remove_dir_all(&work);
}

/// One line on stderr, exit 1, in bounded time.
fn fails_clearly(out: &Output, took: Duration, want: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(
        want.iter().any(|w| err.contains(w)),
        "expected one of {want:?} in {err}"
    );
    assert!(
        !err.contains(pgrepl_testbed::S3_SECRET_KEY),
        "the secret printed: {err}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn bad_credentials_missing_bucket_and_a_dead_endpoint() {
    let w = SeaweedFs::start(&[BUCKET]);
    let url = format!("s3://{BUCKET}/creds");
    ok(cmd(&w).args(["init", "--repo", &url]).output().unwrap());
    let t = Instant::now();
    let out = cmd(&w)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["info", "--repo", &url])
        .output()
        .unwrap();
    fails_clearly(
        &out,
        t.elapsed(),
        &[
            "SignatureDoesNotMatch",
            "AccessDenied",
            "InvalidAccessKeyId",
        ],
    );
    // a long-running receiver does not wait for credentials to change: it exits at once
    let t = Instant::now();
    let out = cmd(&w)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["receivewal", "-d", "host=127.0.0.1 port=1", "--repo", &url])
        .output()
        .unwrap();
    fails_clearly(
        &out,
        t.elapsed(),
        &[
            "SignatureDoesNotMatch",
            "AccessDenied",
            "InvalidAccessKeyId",
        ],
    );
    let t = Instant::now();
    let out = cmd(&w)
        .args(["init", "--repo", "s3://no-such-bucket/x"])
        .output()
        .unwrap();
    fails_clearly(&out, t.elapsed(), &["NoSuchBucket"]);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let t = Instant::now();
    let out = cmd(&w)
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .args(["info", "--repo", &url])
        .output()
        .unwrap();
    fails_clearly(&out, t.elapsed(), &["cannot connect"]);
    // no credentials at all
    let t = Instant::now();
    let out = pgrepl()
        .env_clear()
        .args(["info", "--repo", &url])
        .output()
        .unwrap();
    fails_clearly(&out, t.elapsed(), &["no S3 credentials"]);
}

#[test]
fn pg18_another_clusters_backup_is_refused() {
    let w = SeaweedFs::start(&[BUCKET]);
    let url = format!("s3://{BUCKET}/one-cluster");
    ok(cmd(&w).args(["init", "--repo", &url]).output().unwrap());
    let a = Cluster::start(PgVersion::V18);
    let b = Cluster::start(PgVersion::V18);
    ok(cmd(&w)
        .args(["backup", "-d", &conninfo(&a), "--repo", &url, "-c", "fast"])
        .output()
        .unwrap());
    let before = objects(&w, &url);
    let t = Instant::now();
    let out = cmd(&w)
        .args(["backup", "-d", &conninfo(&b), "--repo", &url, "-c", "fast"])
        .output()
        .unwrap();
    fails_clearly(&out, t.elapsed(), &["holds backups of database system"]);
    let out = cmd(&w)
        .args(["receivewal", "-d", &conninfo(&b), "--repo", &url, "-n"])
        .output()
        .unwrap();
    fails_clearly(&out, t.elapsed(), &["holds backups of database system"]);
    assert_eq!(objects(&w, &url), before, "something was written");
    assert_eq!(info(&w, &url)["backups"].as_array().unwrap().len(), 1);
}

/// Every object key under the repository, through the library's own listing.
fn objects(w: &SeaweedFs, url: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let env = w.env();
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let loc = pgrepo::location::Location::parse(url).unwrap();
    let store = pgrepo::location::open_store(&loc, &Default::default(), &lookup).unwrap();
    rt.block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect()
}

/// A SeaweedFS cluster (master, three volume servers with replication 001, filer with S3),
/// one volume server stopped in the middle of a backup: the backup succeeds or fails in one
/// line, and either way the repository is consistent — `check` passes, every listed backup
/// verifies, and a failed one is not listed.
#[test]
fn pg18_volume_server_stopped_during_a_backup() {
    let c = Cluster::start(PgVersion::V18);
    let mut cl = pgrepl_testbed::SeaweedCluster::start("pgrepl-multi");
    let url = "s3://pgrepl-multi/db";
    let env = cl.env();
    let cmd = || {
        let mut x = pgrepl();
        x.env_clear().env("PATH", "/usr/bin:/bin");
        for (k, v) in &env {
            x.env(k, v);
        }
        x
    };
    ok(cmd().args(["init", "--repo", url]).output().unwrap());
    c.pgbench_init(20);
    let child = cmd()
        .args(["backup", "-d", &conninfo(&c), "--repo", url, "-c", "fast"])
        .args(["-Z", "none", "--max-rate", "32M", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the backup to be sending", || {
        c.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'backup'") == "1"
    });
    std::thread::sleep(Duration::from_secs(2));
    cl.stop_volume(1);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let listed = |i: &serde_json::Value| i["backups"].as_array().unwrap().len();
    let i = json(&ok(cmd()
        .args(["info", "--repo", url, "--json"])
        .output()
        .unwrap()));
    if out.status.success() {
        assert_eq!(listed(&i), 1, "{i}");
    } else {
        assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
        assert_eq!(listed(&i), 0, "a failed backup is listed: {i}");
    }
    eprintln!(
        "the backup {} with a volume server stopped",
        if out.status.success() {
            "succeeded"
        } else {
            "failed"
        }
    );
    let chk = cmd().args(["check", "--repo", url]).output().unwrap();
    assert_eq!(
        chk.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&chk.stderr)
    );
    ok(cmd().args(["verify", "--repo", url]).output().unwrap());
}
