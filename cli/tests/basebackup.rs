//! `pgrepl basebackup` against real servers; PostgreSQL's pg_verifybackup and a server started on
//! the backup are the judges.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgrepl_testbed::{hand_over, temp_dir, tool, Cluster, PgVersion, Role};

fn pgrepl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgrepl"))
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "pgrepl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

fn conninfo(c: &Cluster) -> String {
    c.conninfo(Role::Postgres, "sslmode=disable application_name=pgrepl_bb")
}

const CHECK: &str =
    "SELECT count(*), sum(abalance), (SELECT count(*) FROM in_ts) FROM pgbench_accounts";

fn source(v: PgVersion) -> Cluster {
    let c = Cluster::start(v);
    c.pgbench_init(1);
    c.create_tablespace("ts1");
    c.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 5000) g");
    c.pgbench(&["-t", "200", "-c", "2", "-n"]);
    c
}

fn plain_backup_starts(v: PgVersion, wal_method: &str) {
    let c = source(v);
    let expect = c.psql(CHECK);
    let work = temp_dir("bb");
    let target = work.join("plain");
    let ts_old = c.root.join("ts_ts1");
    let ts_new = work.join("ts_new");
    let out = ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-D"])
        .arg(&target)
        .args(["-c", "fast", "--json", "-X", wal_method, "-T"])
        .arg(format!("{}={}", ts_old.display(), ts_new.display()))
        .output()
        .unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["files"].as_u64().unwrap() > 900);
    assert_eq!(summary["archives"].as_array().unwrap().len(), 2);
    // the tablespace went where -T said, and the link follows it
    let link = std::fs::read_dir(target.join("pg_tblspc"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_link(&link).unwrap(), ts_new);
    assert!(ts_new.read_dir().unwrap().next().is_some());
    assert!(!work.join(".plain.pgrepl-incomplete").exists());
    // the WAL from the backup's start is in pg_wal, as full-size segments
    let segments: Vec<u64> = std::fs::read_dir(target.join("pg_wal"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().len() == 24)
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(!segments.is_empty(), "no WAL in the backup");
    assert!(segments.iter().all(|&n| n == 16 << 20), "{segments:?}");
    // a streamed backup's temporary slot is gone
    assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    if v == PgVersion::V18 {
        let out = Command::new(tool("pg_verifybackup"))
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_verifybackup: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    hand_over(&ts_new);
    let restored = Cluster::start_on(v, &target);
    assert_eq!(restored.psql(CHECK), expect);
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_plain_backup_starts_with_the_same_data() {
    plain_backup_starts(PgVersion::V17, "stream");
}

#[test]
fn pg17_plain_fetch_backup_starts_with_the_same_data() {
    plain_backup_starts(PgVersion::V17, "fetch");
}

#[test]
fn pg18_plain_backup_is_verified_and_starts() {
    plain_backup_starts(PgVersion::V18, "stream");
}

#[test]
fn pg18_plain_fetch_backup_is_verified_and_starts() {
    plain_backup_starts(PgVersion::V18, "fetch");
}

#[test]
fn pg18_tar_backup_is_verified() {
    let c = source(PgVersion::V18);
    let work = temp_dir("bb");
    let target = work.join("tar");
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-D"])
        .arg(&target)
        .args(["-F", "t", "-c", "fast", "--manifest-checksums", "SHA256"])
        .output()
        .unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // base.tar, <oid>.tar, pg_wal.tar (streamed WAL), backup_manifest
    assert_eq!(names.len(), 4, "{names:?}");
    for n in ["base.tar", "pg_wal.tar", "backup_manifest"] {
        assert!(names.contains(&n.to_owned()), "{n} missing: {names:?}");
    }
    // pg_wal.tar holds full segments, readable by our tar parser
    let wal = std::fs::read(target.join("pg_wal.tar")).unwrap();
    let mut p = basebackup::tar::TarParser::new();
    let mut sizes = Vec::new();
    p.feed(&wal, |ev| -> Result<(), basebackup::tar::TarError> {
        if let basebackup::tar::TarEvent::Entry(h) = ev {
            sizes.push(h.size);
        }
        Ok(())
    })
    .unwrap();
    p.finish().unwrap();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|&n| n == 16 << 20),
        "{sizes:?}"
    );
    let out = Command::new(tool("pg_verifybackup"))
        .arg("-n")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn nothing_complete(work: &Path, name: &str) {
    assert!(
        !work.join(name).exists(),
        "{name} exists after a failed backup"
    );
    assert!(
        !work.join(format!(".{name}.pgrepl-incomplete")).exists(),
        "staging directory left behind"
    );
}

#[test]
fn pg18_a_killed_walsender_leaves_nothing_complete() {
    let c = source(PgVersion::V18);
    let work = temp_dir("bb");
    let child = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-D"])
        .arg(work.join("slow"))
        .args(["-c", "fast", "-r", "32k"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n =
            c.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgrepl_bb'");
        if n == "1" {
            break;
        }
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'pgrepl_bb'");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("pgrepl: error: "), "{err}");
    nothing_complete(&work, "slow");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn a_non_empty_target_is_refused() {
    let c = Cluster::start(PgVersion::V18);
    let work = temp_dir("bb");
    std::fs::create_dir_all(work.join("full")).unwrap();
    std::fs::write(work.join("full/keep"), b"x").unwrap();
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-D"])
        .arg(work.join("full"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists but is not empty"));
    assert_eq!(std::fs::read(work.join("full/keep")).unwrap(), b"x");
    // an empty directory is fine, as with pg_basebackup
    std::fs::create_dir_all(work.join("empty")).unwrap();
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-D"])
        .arg(work.join("empty"))
        .output()
        .unwrap());
    assert!(work.join("empty/backup_manifest").exists());
    let _ = std::fs::remove_dir_all(&work);
}
