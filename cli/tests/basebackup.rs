//! `pgrepl basebackup` against real servers; PostgreSQL's pg_verifybackup and a server started on
//! the backup are the judges.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pgrepl_testbed::{hand_over, temp_dir, tool, Cluster, PgVersion, Role};

mod common;
use common::{dumpall, ok, pgrepl, same_dump};

/// PostgreSQL 18's pg_verifybackup accepts the backup in `dir` (with `extra` options).
fn pg_verifybackup_ok(dir: impl AsRef<Path>, extra: &[&str]) {
    verifybackup_with(&tool("pg_verifybackup"), dir.as_ref(), extra);
}

/// The pg_verifybackup at `bin` accepts the backup in `dir`.
fn verifybackup_with(bin: &Path, dir: &Path, extra: &[&str]) {
    let out = Command::new(bin).args(extra).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The backup's start LSN, from its backup_label.
fn backup_start(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("backup_label"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_owned()
}

/// `a <= b` as the server compares LSNs.
fn lsn_le(c: &Cluster, a: &str, b: &str) -> bool {
    c.psql(&format!("SELECT '{a}'::pg_lsn <= '{b}'::pg_lsn")) == "t"
}

/// Polls `sql` on `c` every 20 ms until it returns `want`; fails saying `what` after `secs`.
fn wait_for(c: &Cluster, sql: &str, want: &str, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while c.psql(sql) != want {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ALTER SYSTEM SET, reloaded, and waited for: a new session sees the value.
fn set_and_reload(c: &Cluster, name: &str, value: &str) {
    c.psql(&format!("ALTER SYSTEM SET {name} = {value}"));
    c.psql("SELECT pg_reload_conf()");
    wait_for(
        c,
        &format!("SHOW {name}"),
        value,
        30,
        &format!("{name} never became {value}"),
    );
}

/// The command failed with exit status 1, saying `want` on stderr.
fn fails_saying(out: &Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(want), "expected {want:?} in {err}");
}

fn conninfo(c: &Cluster) -> String {
    c.conninfo(Role::Postgres, "sslmode=disable application_name=pgrepl_bb")
}

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
    let work = temp_dir("bb");
    let target = work.join("plain");
    let ts_old = c.root.join("ts_ts1");
    let expect = dumpall(&c, &ts_old);
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
    // a streamed backup's temporary slot is gone (dropped by its walsender as it exits, which
    // may be a moment after we did)
    wait_for(
        &c,
        "SELECT count(*) FROM pg_replication_slots",
        "0",
        10,
        "the temporary slot outlived the backup",
    );
    if v == PgVersion::V18 {
        pg_verifybackup_ok(&target, &[]);
    }
    hand_over(&ts_new);
    let restored = Cluster::start_on(v, &target);
    same_dump(
        &dumpall(&restored, &ts_new),
        &expect,
        "restored backup vs source",
    );
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
    pg_verifybackup_ok(&target, &["-n"]);
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

/// Waits until a (throttled) backup's own walsender is sending files (the WAL stream's has
/// state 'streaming' or 'startup'), and a moment more.
fn wait_for_backup_walsender(c: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.psql(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgrepl_bb' AND state = 'backup'",
    ) != "1"
    {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
}

/// A backup of `source`'s cluster into `target` (its tablespace into `ts`), throttled to 32 kB/s
/// so that it is still running when the test interferes.
fn throttled_backup(c: &Cluster, target: &Path, ts: &Path) -> std::process::Child {
    pgrepl()
        .args(["basebackup", "-d", &conninfo(c), "-D"])
        .arg(target)
        .args(["-c", "fast", "-r", "32k", "-T"])
        .arg(format!(
            "{}={}",
            c.root.join("ts_ts1").display(),
            ts.display()
        ))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn pg18_a_killed_walsender_leaves_nothing_complete() {
    let c = source(PgVersion::V18);
    let work = temp_dir("bb");
    let child = throttled_backup(&c, &work.join("slow"), &work.join("ts"));
    wait_for_backup_walsender(&c);
    c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'pgrepl_bb' AND state = 'backup'");
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // the server's own warning may come first; the error is the last line
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pgrepl: error: ") && last.contains("terminating connection"),
        "{err}"
    );
    nothing_complete(&work, "slow");

    // SIGTERM to pgrepl itself: it stops and removes what it wrote, the tablespace's too
    let ts2 = work.join("ts2");
    let child = throttled_backup(&c, &work.join("term"), &ts2);
    wait_for_backup_walsender(&c);
    assert!(work.join(".term.pgrepl-incomplete").exists());
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    fails_saying(
        &out,
        "pgrepl: error: interrupted; the partial backup was removed",
    );
    nothing_complete(&work, "term");
    assert_eq!(
        std::fs::read_dir(&ts2).map(|d| d.count()).unwrap_or(0),
        0,
        "the tablespace's partial copy was left"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// The WAL streamer's walsender killed while a throttled backup runs: the backup fails at once
/// with pg_basebackup's words, not when the (slow) backup would have ended.
#[test]
fn pg17_a_killed_wal_stream_fails_the_backup_at_once() {
    let c = Cluster::start(PgVersion::V17);
    c.pgbench_init(1);
    let work = temp_dir("bb");
    let started = Instant::now();
    let child = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-D"])
        .arg(work.join("slow"))
        .args(["-c", "fast", "-r", "32k"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let q = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'walsender' AND query ~ 'START_REPLICATION'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.psql(q) != "1" {
        assert!(Instant::now() < deadline, "the WAL stream never started: {}", c.psql("SELECT string_agg(backend_type || ':' || query, ' | ') FROM pg_stat_activity WHERE backend_type = 'walsender'"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("background process terminated unexpectedly"),
        "{err}"
    );
    // the backup of ~30 MB at 32 kB/s would take minutes
    assert!(started.elapsed() < Duration::from_secs(60));
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

fn backup(c: &Cluster, target: &Path, ts_from: &Path, ts_to: &Path, extra: &[&str]) -> Output {
    pgrepl()
        .args(["basebackup", "-d", &conninfo(c), "-c", "fast", "-D"])
        .arg(target)
        .arg("-T")
        .arg(format!("{}={}", ts_from.display(), ts_to.display()))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn pg18_incremental_chain_combines_to_the_source() {
    let c = source(PgVersion::V18);
    let ts = c.root.join("ts_ts1");
    c.psql("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 1000) g");
    c.psql(
        "CREATE TABLE shrink AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    );
    c.psql("CREATE DATABASE extra");
    c.psql_db("extra", "CREATE TABLE e AS SELECT 1 AS x");
    let work = temp_dir("inc");
    ok(backup(
        &c,
        &work.join("full"),
        &ts,
        &work.join("ts_full"),
        &[],
    ));

    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0");
    c.psql("INSERT INTO in_ts SELECT g FROM generate_series(5001, 9000) g");
    c.psql("TRUNCATE pgbench_history");
    c.psql("DROP TABLE doomed");
    let full = work.join("full");
    ok(backup(
        &c,
        &work.join("i1"),
        &ts,
        &work.join("ts_i1"),
        &["-i", full.to_str().unwrap()],
    ));

    c.psql("DELETE FROM shrink WHERE g > 100");
    c.psql("VACUUM FULL shrink");
    c.psql("DROP DATABASE extra");
    c.psql("CREATE DATABASE extra");
    c.psql_db("extra", "CREATE TABLE e2 AS SELECT 2 AS y");
    c.pgbench(&["-t", "100", "-c", "2", "-n"]);
    let i1 = work.join("i1");
    // i1 is durable (large files written directly); i2 without sync goes through the page
    // cache from its first byte (DirectorySink::set_page_cache): the chain covers both
    ok(backup(
        &c,
        &work.join("i2"),
        &ts,
        &work.join("ts_i2"),
        &["-i", i1.to_str().unwrap(), "-N"],
    ));
    // a branch: a second incremental from the same parent is fine too
    ok(backup(
        &c,
        &work.join("i1b"),
        &ts,
        &work.join("ts_i1b"),
        &["-i", full.to_str().unwrap()],
    ));
    let expect = dumpall(&c, &ts);

    for b in ["i1", "i2"] {
        pg_verifybackup_ok(work.join(b), &[]);
    }
    let combined = work.join("combined");
    let ts_out = work.join("ts_out");
    let out = Command::new(tool("pg_combinebackup"))
        .arg("-o")
        .arg(&combined)
        .arg("-T")
        .arg(format!(
            "{}={}",
            work.join("ts_i2").display(),
            ts_out.display()
        ))
        .args([work.join("full"), work.join("i1"), work.join("i2")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_combinebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hand_over(&ts_out);
    let restored = Cluster::start_on(PgVersion::V18, &combined);
    same_dump(
        &dumpall(&restored, &ts_out),
        &expect,
        "combined chain vs source",
    );
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg18_incremental_refusals() {
    let c = Cluster::start(PgVersion::V18);
    let other = Cluster::start(PgVersion::V18);
    let work = temp_dir("inc");
    let foreign = work.join("foreign");
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&other), "-c", "fast", "-D"])
        .arg(&foreign)
        .output()
        .unwrap());
    // another cluster's manifest: the server's error, nothing left behind
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-i"])
        .arg(&foreign)
        .arg("-D")
        .arg(work.join("bad"))
        .output()
        .unwrap();
    fails_saying(&out, "system identifier in backup manifest is");
    nothing_complete(&work, "bad");

    // summarize_wal=off: a clear error
    set_and_reload(&c, "summarize_wal", "off");
    let mine = work.join("mine");
    set_and_reload(&c, "summarize_wal", "on");
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-D"])
        .arg(&mine)
        .output()
        .unwrap());
    set_and_reload(&c, "summarize_wal", "off");
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-i"])
        .arg(&mine)
        .arg("-D")
        .arg(work.join("nosum"))
        .output()
        .unwrap();
    fails_saying(&out, "WAL summarization is enabled");
    nothing_complete(&work, "nosum");

    // a missing earlier backup is refused before anything is written
    let out = pgrepl()
        .args([
            "basebackup",
            "-d",
            &conninfo(&c),
            "-i",
            "/nonexistent/backup",
            "-D",
        ])
        .arg(work.join("nothing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not read the manifest"));
    nothing_complete(&work, "nothing");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg18_a_corrupt_page_fails_the_backup_with_the_server_warning() {
    let mut c = Cluster::start(PgVersion::V18);
    c.psql(
        "CREATE TABLE victim AS SELECT g, repeat('v', 100) AS pad FROM generate_series(1, 2000) g",
    );
    let rel = c.psql("SELECT pg_relation_filepath('victim')");
    c.psql("CHECKPOINT");
    c.stop_server("fast");
    let path = c.data.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4000] ^= 0xff; // inside the first page, after its header
    std::fs::write(&path, bytes).unwrap();
    c.start_stopped();
    let work = temp_dir("bb");
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-D"])
        .arg(work.join("corrupt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("WARNING:  ") && err.contains("checksum verification failed in file"),
        "the server's WARNING must be relayed: {err}"
    );
    assert!(
        err.contains("checksum verification failure during base backup"),
        "{err}"
    );
    nothing_complete(&work, "corrupt");
    // with --no-verify-checksums the server does not check, and the backup completes
    ok(pgrepl()
        .args([
            "basebackup",
            "-d",
            &conninfo(&c),
            "-c",
            "fast",
            "--no-verify-checksums",
            "-D",
        ])
        .arg(work.join("unchecked"))
        .output()
        .unwrap());
    let _ = std::fs::remove_dir_all(&work);
}

/// Decompresses and parses every data archive of a tar-format backup and checks the files and
/// sizes against its backup_manifest. Returns the archive names.
fn tar_backup_matches_manifest(dir: &Path) -> Vec<String> {
    use basebackup::decompress::{ArchiveCompression, DecompressError, Decompressor};
    use basebackup::tar::{EntryKind, TarEvent, TarParser};
    let manifest =
        basebackup::manifest::parse_manifest(&std::fs::read(dir.join("backup_manifest")).unwrap())
            .unwrap();
    let mut want: std::collections::BTreeMap<String, u64> = manifest
        .files
        .iter()
        .map(|f| (f.path.clone(), f.size))
        .collect();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "backup_manifest")
        .collect();
    names.sort();
    for name in &names {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let comp = ArchiveCompression::from_name(name).unwrap_or_else(|| panic!("odd file {name}"));
        let mut plain = Vec::new();
        match Decompressor::new(comp).unwrap() {
            None => plain = bytes,
            Some(mut d) => {
                d.push(&bytes, |b| -> Result<(), DecompressError> {
                    plain.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
                d.finish(|b| -> Result<(), DecompressError> {
                    plain.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
        }
        let stem = name.split('.').next().unwrap();
        let prefix = match stem {
            "base" | "pg_wal" => String::new(),
            oid => format!("pg_tblspc/{oid}/"),
        };
        let mut p = TarParser::new();
        let mut current: Option<(String, u64)> = None;
        let mut seen = Vec::new();
        p.feed(&plain, |ev| -> Result<(), basebackup::tar::TarError> {
            match ev {
                TarEvent::Entry(h) if h.kind == EntryKind::File => {
                    current = Some((format!("{prefix}{}", h.path), 0))
                }
                TarEvent::Data(d) => current.as_mut().unwrap().1 += d.len() as u64,
                TarEvent::EntryEnd => seen.extend(current.take()),
                _ => {}
            }
            Ok(())
        })
        .unwrap();
        p.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
        for (path, size) in seen {
            // WAL segments are whole, and not in the manifest (-X fetch also sends
            // pg_wal/archive_status/*.done, which is)
            if (stem == "pg_wal" || path.starts_with("pg_wal/"))
                && path.rsplit('/').next().is_some_and(|n| n.len() == 24)
            {
                assert_eq!(size, 16 << 20, "{path}");
                continue;
            }
            assert_eq!(want.remove(&path), Some(size), "{name}: {path}");
        }
    }
    assert!(
        want.is_empty(),
        "files of the manifest not in the archives: {want:?}"
    );
    names
}

fn compressed(c: &Cluster, work: &Path, name: &str, args: &[&str]) -> PathBuf {
    let target = work.join(name);
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(c), "-c", "fast", "-D"])
        .arg(&target)
        .args(args)
        .output()
        .unwrap());
    target
}

#[test]
fn pg18_server_gzip_and_client_zstd() {
    let c = source(PgVersion::V18);
    let work = temp_dir("bbz");
    // server-side gzip, tar: the server's compressed archives are kept as they are
    let t = compressed(&c, &work, "sgz", &["-F", "t", "-Z", "server-gzip:1"]);
    let names = tar_backup_matches_manifest(&t);
    assert!(names.contains(&"base.tar.gz".to_owned()), "{names:?}");
    // server-side gzip, plain: decompressed on the fly, and PostgreSQL verifies it
    let map = format!(
        "{}={}",
        c.root.join("ts_ts1").display(),
        work.join("ts_sgzp").display()
    );
    let p = compressed(&c, &work, "sgzp", &["-Z", "server-gzip", "-T", &map]);
    pg_verifybackup_ok(&p, &[]);
    // client-side zstd with worker threads: every archive .tar.zst, WAL included
    let z = compressed(
        &c,
        &work,
        "czst",
        &["-F", "t", "-Z", "zstd:level=5,workers=2"],
    );
    let names = tar_backup_matches_manifest(&z);
    assert!(names.iter().all(|n| n.ends_with(".tar.zst")), "{names:?}");
    assert!(names.contains(&"pg_wal.tar.zst".to_owned()), "{names:?}");
    // long-distance mode, as PostgreSQL's pg_verifybackup test asks for it
    let l = compressed(
        &c,
        &work,
        "czstlong",
        &["-F", "t", "-Z", "client-zstd:level=1,long", "-X", "fetch"],
    );
    let names = tar_backup_matches_manifest(&l);
    assert!(names.contains(&"base.tar.zst".to_owned()), "{names:?}");
    // client-side lz4: the lz4 program (the reference implementation) decompresses every
    // archive to tars that match the manifest, and our verify reads the .lz4 files directly
    let z4 = compressed(&c, &work, "clz4", &["-F", "t", "-Z", "client-lz4:1"]);
    let plain = work.join("clz4_by_lz4");
    std::fs::create_dir(&plain).unwrap();
    std::fs::copy(z4.join("backup_manifest"), plain.join("backup_manifest")).unwrap();
    let mut lz4_names: Vec<String> = std::fs::read_dir(&z4)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "backup_manifest")
        .collect();
    lz4_names.sort();
    // base, the tablespace and pg_wal
    assert!(
        lz4_names.len() == 3 && lz4_names.iter().all(|n| n.ends_with(".tar.lz4")),
        "{lz4_names:?}"
    );
    for n in &lz4_names {
        let stem = n
            .strip_suffix(".lz4")
            .unwrap_or_else(|| panic!("{n} is not .lz4"));
        let st = Command::new("lz4")
            .args(["-d", "-q"])
            .arg(z4.join(n))
            .arg(plain.join(stem))
            .status()
            .expect("the lz4 program (apt-get install lz4; scripts/install-postgres does it)");
        assert!(st.success(), "lz4 -d {n}");
    }
    let names = tar_backup_matches_manifest(&plain);
    assert!(
        names.contains(&"base.tar".to_owned())
            && names.contains(&"pg_wal.tar".to_owned())
            && names.len() == 3,
        "{names:?}"
    );
    ok(pgrepl().arg("verify").arg(&z4).output().unwrap());
    // client compression needs tar format
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-Z", "zstd", "-D"])
        .arg(work.join("nope"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    nothing_complete(&work, "nope");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg15_server_zstd() {
    // Debian's PostgreSQL 15 is the server here built with zstd
    let c = Cluster::start(PgVersion::V15);
    c.pgbench_init(1);
    let work = temp_dir("bbz");
    let t = compressed(&c, &work, "szst", &["-F", "t", "-Z", "server-zstd:3"]);
    let names = tar_backup_matches_manifest(&t);
    assert!(names.contains(&"base.tar.zst".to_owned()), "{names:?}");
    // and with lz4: the server's frames decoded as they stream, kept as .tar.lz4 in tar format
    let t4 = compressed(&c, &work, "slz4", &["-F", "t", "-Z", "server-lz4:level=5"]);
    let names = tar_backup_matches_manifest(&t4);
    assert!(names.contains(&"base.tar.lz4".to_owned()), "{names:?}");
    ok(pgrepl().arg("verify").arg(&t4).output().unwrap());
    let p4 = compressed(&c, &work, "slz4p", &["-Z", "server-lz4"]);
    verifybackup_with(
        &pgrepl_testbed::pg15_bin().join("pg_verifybackup"),
        &p4,
        &[],
    );
    let p = compressed(&c, &work, "szstp", &["-Z", "server-zstd:level=3,workers=2"]);
    verifybackup_with(&pgrepl_testbed::pg15_bin().join("pg_verifybackup"), &p, &[]);
    let expect = dumpall(&c, Path::new("/nonexistent"));
    let restored = Cluster::start_on(PgVersion::V15, &p);
    same_dump(
        &dumpall(&restored, Path::new("/nonexistent")),
        &expect,
        "pg15 restored",
    );
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}

/// Every mode under `dir` (links followed): (directories, files).
fn modes(dir: &Path, out: &mut (Vec<u32>, Vec<u32>)) {
    use std::os::unix::fs::PermissionsExt;
    out.0
        .push(std::fs::metadata(dir).unwrap().permissions().mode() & 0o777);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::metadata(&p).unwrap();
        if m.is_dir() {
            modes(&p, out);
        } else {
            out.1.push(m.permissions().mode() & 0o777);
        }
    }
}

/// pg_basebackup's flags beyond the basics, as PostgreSQL's own 010_pg_basebackup.pl uses them.
#[test]
fn pg18_pg_basebackup_flags() {
    let mut c = Cluster::start(PgVersion::V18);
    let work = temp_dir("bbflags");
    let ci = conninfo(&c);
    let run = |args: &[&str]| -> Output {
        pgrepl()
            .args(["basebackup", "-d", &ci, "-c", "fast", "-N"])
            .args(args)
            .output()
            .unwrap()
    };
    let t = |n: &str| work.join(n).to_string_lossy().into_owned();
    let fails = |out: Output, want: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "succeeded, expected {want}");
        assert!(err.contains(want), "expected {want:?} in {err}");
    };
    // compression specifications: ours checked here, the server's relayed as it words them
    fails(run(&["-D", &t("x"), "--compress", "gzip:level=236"]),
        "pgrepl: error: invalid compression specification: compression algorithm \"gzip\" expects a compression level between 1 and 9");
    fails(
        run(&["-D", &t("x"), "--compress", "extrasquishy"]),
        "pgrepl: error: unrecognized compression algorithm: \"extrasquishy\"",
    );
    fails(run(&["-D", &t("x"), "--compress", "server-gzip:workers=3"]),
        "pgrepl: error: could not initiate base backup: ERROR:  invalid compression specification: compression algorithm \"gzip\" does not accept a worker count");
    fails(
        run(&["-D", &t("x"), "--compress", "gzip"]),
        "only tar mode backups can be compressed",
    );
    assert!(!work.join("x").exists());
    // client gzip: --gzip and a bare level, base.tar.gz and pg_wal.tar.gz that verify
    for (name, flag) in [("gz1", vec!["-z"]), ("gz2", vec!["--compress", "1"])] {
        let dir = t(name);
        let mut a = vec!["-D", dir.as_str(), "-F", "t"];
        a.extend(flag);
        ok(run(&a));
        let mut names: Vec<String> = std::fs::read_dir(work.join(name))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["backup_manifest", "base.tar.gz", "pg_wal.tar.gz"]);
        ok(pgrepl()
            .arg("verify")
            .arg(work.join(name))
            .output()
            .unwrap());
    }
    // slots
    fails(
        run(&["-D", &t("s"), "-S", "slot0"]),
        "replication slot \"slot0\" does not exist",
    );
    fails(
        run(&["-D", &t("s"), "-C"]),
        "--create-slot needs a slot to be specified using --slot",
    );
    fails(
        run(&["-D", &t("s"), "-C", "-S", "slot0", "--no-slot"]),
        "--no-slot cannot be used with slot name",
    );
    // pg_basebackup's other checks, in its words, before connecting
    for (args, want) in [
        (
            &["-D", &t("o"), "-P", "--no-estimate-size"][..],
            "--progress and --no-estimate-size are incompatible options",
        ),
        (
            &[
                "-D",
                &t("o"),
                "--no-manifest",
                "--manifest-checksums",
                "SHA256",
            ][..],
            "--no-manifest and --manifest-checksums are incompatible options",
        ),
        (
            &["-D", &t("o"), "--no-manifest", "--manifest-force-encode"][..],
            "--no-manifest and --manifest-force-encode are incompatible options",
        ),
        (
            &["-t", "blackhole", "-X", "none", "-Z", "client-gzip"][..],
            "client-side compression is not possible when a backup target is specified",
        ),
        (
            &["-t", "blackhole", "-X", "none", "--waldir", &t("wd")][..],
            "WAL directory location cannot be specified along with a backup target",
        ),
    ] {
        fails(run(args), want);
    }
    assert!(!work.join("o").exists());
    // every manifest path hex-encoded, no size estimate, and --target=client (the same as
    // none): all verified as they stream and by pg_verifybackup
    ok(run(&[
        "-D",
        &t("enc"),
        "--manifest-force-encode",
        "--no-estimate-size",
        "-t",
        "client",
    ]));
    let manifest = std::fs::read_to_string(work.join("enc/backup_manifest")).unwrap();
    assert!(manifest.contains("\"Encoded-Path\"") && !manifest.contains("\"Path\""));
    pg_verifybackup_ok(work.join("enc"), &[]);
    ok(run(&["-D", &t("s"), "-C", "-S", "slot0"]));
    assert_ne!(c.psql("SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'slot0'"), "");
    fails(
        run(&["-D", &t("s2"), "-C", "-S", "slot0"]),
        "already exists",
    );
    fails(
        run(&["-D", &t("s3"), "-S", "slot0", "-X", "none"]),
        "replication slots can only be used with WAL streaming",
    );
    ok(run(&["-D", &t("noslot"), "--no-slot"]));
    // a slot made without reserving WAL starts holding it once the backup streams from it
    c.psql("SELECT * FROM pg_create_physical_replication_slot('slot1')");
    let restart = "SELECT coalesce(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'slot1'";
    assert_eq!(c.psql(restart), "");
    ok(run(&["-D", &t("slot1"), "-X", "stream", "-S", "slot1"]));
    let lsn = c.psql(restart);
    assert!(!lsn.is_empty(), "the slot's restart_lsn did not advance");
    let start = backup_start(&work.join("slot1"));
    assert!(lsn_le(&c, &lsn, &start), "{lsn} {start}");
    c.psql("SELECT pg_drop_replication_slot('slot1')");
    // -R: standby.signal and primary_conninfo / primary_slot_name
    ok(run(&["-D", &t("r"), "-S", "slot0", "-R"]));
    let auto = std::fs::read_to_string(work.join("r/postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!(
            "primary_conninfo = 'user=postgres host=127.0.0.1 port={} ",
            c.port
        )),
        "{auto}"
    );
    assert!(auto.contains("\nprimary_slot_name = 'slot0'\n"), "{auto}");
    assert!(work.join("r/standby.signal").exists());
    // -R in tar format: base.tar carries the settings and standby.signal, and still verifies
    ok(run(&["-D", &t("rt"), "-F", "t", "-R"]));
    let mut names = Vec::new();
    let mut conf = Vec::new();
    let mut parser = basebackup::tar::TarParser::new();
    let bytes = std::fs::read(work.join("rt/base.tar")).unwrap();
    let mut in_conf = false;
    parser
        .feed(&bytes, |ev| -> Result<(), basebackup::tar::TarError> {
            match ev {
                basebackup::tar::TarEvent::Entry(h) => {
                    in_conf = h.path == "postgresql.auto.conf";
                    names.push(h.path);
                }
                basebackup::tar::TarEvent::Data(d) if in_conf => conf.extend_from_slice(d),
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    parser.finish().unwrap();
    assert!(names.iter().any(|n| n == "standby.signal"));
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "postgresql.auto.conf")
            .count(),
        1
    );
    assert!(String::from_utf8_lossy(&conf).contains("primary_conninfo = 'user=postgres"));
    ok(pgrepl()
        .arg("verify")
        .arg(work.join("rt"))
        .output()
        .unwrap());
    // --waldir: pg_wal is a link to it and holds the WAL
    ok(run(&[
        "-D",
        &t("w"),
        "--waldir",
        &t("xlog2"),
        "--no-manifest",
    ]));
    assert_eq!(
        std::fs::read_link(work.join("w/pg_wal")).unwrap(),
        work.join("xlog2")
    );
    assert!(std::fs::read_dir(work.join("xlog2"))
        .unwrap()
        .any(|e| e.unwrap().file_name().len() == 24));
    assert!(!work.join("w/backup_manifest").exists());
    // --waldir on another file system (tmpfs), the usual reason for it, with the WAL from the
    // server's archive (-X fetch): written there directly, never moved by rename
    let shm =
        std::path::Path::new("/dev/shm").join(format!("pgrepl-waldir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&shm);
    ok(run(&[
        "-D",
        &t("w3"),
        "--waldir",
        &shm.display().to_string(),
        "-X",
        "fetch",
    ]));
    {
        use std::os::unix::fs::MetadataExt;
        let seg = std::fs::read_dir(&shm)
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_name().len() == 24)
            .expect("a WAL segment in the WAL directory");
        assert_eq!(seg.metadata().unwrap().len(), 16 << 20);
        assert_eq!(std::fs::read_link(work.join("w3/pg_wal")).unwrap(), shm);
        assert!(shm.join("archive_status").is_dir());
        println!(
            "WAL directory on device {}, backup on {}",
            std::fs::metadata(&shm).unwrap().dev(),
            std::fs::metadata(&work).unwrap().dev()
        );
    }
    ok(pgrepl()
        .arg("verify")
        .arg(work.join("w3"))
        .output()
        .unwrap());
    std::fs::remove_dir_all(&shm).unwrap();
    // --target: the server keeps the backup
    fails(
        run(&["--target", "blackhole"]),
        "WAL cannot be streamed when a backup target is specified",
    );
    fails(
        run(&["--target", "blackhole", "-X", "none", "-D", &t("bh")]),
        "cannot specify both output directory and backup target",
    );
    fails(
        run(&["--target", "blackhole", "-X", "none", "-F", "t"]),
        "cannot specify both format and backup target",
    );
    fails(
        run(&["--target", "bogus", "-X", "none"]),
        "unrecognized target",
    );
    ok(run(&["--target", "blackhole", "-X", "none"]));
    let shared = work.join("shared");
    std::fs::create_dir(&shared).unwrap();
    Command::new("chmod")
        .arg("0777")
        .arg(&shared)
        .status()
        .unwrap();
    let on_server = shared.join("onserver");
    ok(run(&[
        "--target",
        &format!("server:{}", on_server.display()),
        "-X",
        "none",
    ]));
    assert!(on_server.join("base.tar").exists() && on_server.join("backup_manifest").exists());
    // an incremental backup kept by the server: its manifest says so
    let incr_on_server = shared.join("incr_onserver");
    ok(run(&[
        "--target",
        &format!("server:{}", incr_on_server.display()),
        "-X",
        "none",
        "-i",
        &on_server.join("backup_manifest").to_string_lossy(),
    ]));
    let label = basebackup_label(&incr_on_server.join("base.tar"));
    assert!(label.contains("INCREMENTAL FROM LSN: "), "{label}");
    fails(run(&[]), "must specify output directory or backup target");
    // default modes: 0700 / 0600
    let mut m = (Vec::new(), Vec::new());
    modes(&work.join("s"), &mut m);
    assert!(
        m.0.iter().all(|&d| d == 0o700) && m.1.iter().all(|&f| f == 0o600),
        "{m:?}"
    );
    // a cluster with group access gets group-readable backups, as with pg_basebackup
    c.stop_server("fast");
    Command::new("chmod")
        .args(["-R", "g+rX"])
        .arg(&c.data)
        .status()
        .unwrap();
    // the server refuses a private key others can read
    let key = c.data.join("server.key");
    if key.exists() {
        Command::new("chmod")
            .arg("0600")
            .arg(&key)
            .status()
            .unwrap();
    }
    c.start_stopped();
    assert_eq!(c.psql("SHOW data_directory_mode"), "0750");
    ok(run(&["-D", &t("grp")]));
    let mut m = (Vec::new(), Vec::new());
    modes(&work.join("grp"), &mut m);
    assert!(
        m.0.iter().all(|&d| d == 0o750) && m.1.iter().all(|&f| f == 0o640),
        "{m:?}"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// backup_label from a tar archive.
fn basebackup_label(tar: &Path) -> String {
    let bytes = std::fs::read(tar).unwrap();
    let mut parser = basebackup::tar::TarParser::new();
    let (mut label, mut inside) = (Vec::new(), false);
    parser
        .feed(&bytes, |ev| -> Result<(), basebackup::tar::TarError> {
            match ev {
                basebackup::tar::TarEvent::Entry(h) => inside = h.path == "backup_label",
                basebackup::tar::TarEvent::Data(d) if inside => label.extend_from_slice(d),
                _ => {}
            }
            Ok(())
        })
        .unwrap();
    String::from_utf8(label).unwrap()
}

/// A file whose name is not UTF-8 in the data directory (PostgreSQL copies whatever is there and
/// hex-encodes such names in the manifest): backed up byte for byte, in plain and tar format,
/// verified by pg_verifybackup and by us, and carried through combine.
#[test]
fn pg18_a_file_name_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let c = Cluster::start(PgVersion::V18);
    let name = std::ffi::OsStr::from_bytes(b"FOO\xe0\xe0\xe0BAR");
    std::fs::write(
        c.data.join(name),
        b"test backup of file with non-UTF8 name\n",
    )
    .unwrap();
    let work = temp_dir("bbutf");
    let run = |args: &[&str]| {
        ok(pgrepl()
            .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-N"])
            .args(args)
            .output()
            .unwrap())
    };
    let plain = work.join("plain");
    run(&["-D", plain.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(plain.join(name)).unwrap(),
        b"test backup of file with non-UTF8 name\n"
    );
    let manifest = std::fs::read_to_string(plain.join("backup_manifest")).unwrap();
    assert!(manifest.contains("\"Encoded-Path\": \"464f4fe0e0e0424152\""));
    pg_verifybackup_ok(&plain, &[]);
    ok(pgrepl().arg("verify").arg(&plain).output().unwrap());
    let tar = work.join("tar");
    run(&["-D", tar.to_str().unwrap(), "-F", "t"]);
    ok(pgrepl().arg("verify").arg(&tar).output().unwrap());
    // through an incremental and combine: our manifest hex-encodes it too
    let inc = work.join("inc");
    run(&["-D", inc.to_str().unwrap(), "-i", plain.to_str().unwrap()]);
    let combined = work.join("combined");
    ok(pgrepl()
        .arg("combine")
        .args([&plain, &inc])
        .arg("-o")
        .arg(&combined)
        .output()
        .unwrap());
    assert!(combined.join(name).exists());
    assert!(std::fs::read_to_string(combined.join("backup_manifest"))
        .unwrap()
        .contains("\"Encoded-Path\": \"464f4fe0e0e0424152\""));
    pg_verifybackup_ok(&combined, &[]);
    let _ = std::fs::remove_dir_all(&work);
}

/// An in-place tablespace (`allow_in_place_tablespaces`, as PostgreSQL's own tests use) is a
/// directory under pg_tblspc/: a plain backup keeps it there, never relative to the working
/// directory; a tar backup's `<oid>.tar` goes back there when combined.
#[test]
fn pg18_in_place_tablespace() {
    let c = Cluster::start(PgVersion::V18);
    c.psql("ALTER SYSTEM SET allow_in_place_tablespaces = on");
    c.psql("SELECT pg_reload_conf()");
    c.psql("CREATE TABLESPACE inplace LOCATION ''");
    c.psql("CREATE TABLE in_place TABLESPACE inplace AS SELECT g FROM generate_series(1, 3000) g");
    let oid = c.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'inplace'");
    let work = temp_dir("inplace");
    // run from an empty directory, which must stay empty
    let cwd = work.join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let run = |target: &Path, extra: &[&str]| {
        ok(pgrepl()
            .current_dir(&cwd)
            .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-N", "-D"])
            .arg(target)
            .args(extra)
            .output()
            .unwrap());
    };
    let full = work.join("full");
    run(&full, &[]);
    let ts_dir = full.join("pg_tblspc").join(&oid);
    assert!(
        std::fs::symlink_metadata(&ts_dir).unwrap().is_dir(),
        "{} is not a directory",
        ts_dir.display()
    );
    let version_dirs: Vec<_> = std::fs::read_dir(&ts_dir).unwrap().collect();
    assert_eq!(version_dirs.len(), 1, "{version_dirs:?}");
    let tar = work.join("tar");
    run(&tar, &["-F", "t"]);
    assert!(tar.join(format!("{oid}.tar")).is_file());

    c.psql("INSERT INTO in_place SELECT g FROM generate_series(3001, 5000) g");
    let incr = work.join("incr");
    run(&incr, &["-i", full.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "the backup wrote into the working directory"
    );
    for b in [&full, &incr] {
        pg_verifybackup_ok(b, &[]);
    }
    // PostgreSQL's combine of our chain, and ours of the tar backup
    let combined = work.join("combined");
    let out = Command::new(tool("pg_combinebackup"))
        .arg("-o")
        .arg(&combined)
        .args([&full, &incr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_combinebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_tar = work.join("from_tar");
    ok(pgrepl()
        .args(["combine", "-N", "-o"])
        .arg(&from_tar)
        .arg(&tar)
        .output()
        .unwrap());
    assert!(
        std::fs::symlink_metadata(from_tar.join("pg_tblspc").join(&oid))
            .unwrap()
            .is_dir()
    );
    for (dir, want) in [(&combined, "5000"), (&from_tar, "3000")] {
        let restored = Cluster::start_on(PgVersion::V18, dir);
        assert_eq!(
            restored.psql("SELECT count(*) FROM in_place"),
            want,
            "{}",
            dir.display()
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// `-D - -F t`: base.tar on standard output with backup_manifest as its last member, as
/// `pg_basebackup -D - -Ft` writes it for a pipe; what cannot fit one stream is refused.
#[test]
fn pg18_tar_to_standard_output() {
    let c = Cluster::start(PgVersion::V18);
    c.pgbench_init(1);
    let work = temp_dir("stdout");
    let out = ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-D", "-"])
        .args(["-F", "t", "-X", "fetch", "-R"])
        .output()
        .unwrap());
    let mut p = basebackup::tar::TarParser::new();
    let mut names = Vec::new();
    p.feed(&out.stdout, |ev| -> Result<(), basebackup::tar::TarError> {
        if let basebackup::tar::TarEvent::Entry(h) = ev {
            names.push(h.path);
        }
        Ok(())
    })
    .unwrap();
    p.finish().unwrap();
    assert_eq!(names.last().map(String::as_str), Some("backup_manifest"));
    assert!(names.iter().any(|n| n == "standby.signal"), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("pg_wal/0")), "{names:?}");
    // extracted, it is a complete backup by PostgreSQL's own judge
    let tar_file = work.join("stream.tar");
    std::fs::write(&tar_file, &out.stdout).unwrap();
    let dir = work.join("extracted");
    std::fs::create_dir(&dir).unwrap();
    let x = Command::new("tar")
        .arg("-xf")
        .arg(&tar_file)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(x.success());
    pg_verifybackup_ok(&dir, &[]);
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo"), "{auto}");

    // refused before anything is written: WAL streaming (the default), plain format, and a
    // second archive (a tablespace)
    c.create_tablespace("ts1");
    for (extra, says) in [
        (&["-F", "t"][..], "cannot stream write-ahead logs"),
        (&["-X", "fetch"][..], "tar format"),
        (&["-F", "t", "-X", "fetch"][..], "tablespace"),
    ] {
        let out = pgrepl()
            .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-D", "-"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(err.contains(says), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?} wrote to standard output");
    }
    assert!(!Path::new("-").exists());
    let _ = std::fs::remove_dir_all(&work);
}

/// The WAL stream's slot (temporary, or the permanent one `-C` creates) exists and reserves WAL
/// while the server is still running the backup's checkpoint, i.e. before the start position is
/// chosen: a checkpoint between the start position and a slot created later could recycle the
/// backup's first segment. A spread checkpoint holds the backup in that phase long enough to
/// look; an immediate CHECKPOINT then lets it finish.
#[test]
fn pg18_the_slot_reserves_wal_before_the_start_point() {
    let c = Cluster::start_with(
        PgVersion::V18,
        pgrepl_testbed::ClusterOptions {
            conf: vec![
                "checkpoint_timeout = 60s".into(),
                "checkpoint_completion_target = 0.9".into(),
            ],
            ..Default::default()
        },
    );
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 200000) g");
    let work = temp_dir("bbslot");
    for (name, slot_args) in [
        ("temporary", &[][..]),
        ("permanent", &["-S", "bbslot", "-C"][..]),
    ] {
        // buffers for the spread checkpoint to pace itself over
        c.psql("UPDATE t SET g = g + 1");
        let target = work.join(name);
        let child = pgrepl()
            .args([
                "basebackup",
                "-d",
                &conninfo(&c),
                "-c",
                "spread",
                "-N",
                "-D",
            ])
            .arg(&target)
            .args(slot_args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(
            &c,
            "SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'waiting for checkpoint to finish'",
            "1",
            60,
            &format!("{name}: the backup never waited for its checkpoint"),
        );
        let reserved = c.psql(
            "SELECT string_agg(restart_lsn::text, ',') FROM pg_replication_slots WHERE restart_lsn IS NOT NULL",
        );
        assert!(
            !reserved.is_empty() && !reserved.contains(','),
            "{name}: expected one slot reserving WAL during the checkpoint, found {reserved:?}"
        );
        // still in the checkpoint when we looked: the start position was not chosen yet
        assert_eq!(
            c.psql("SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'waiting for checkpoint to finish'"),
            "1",
            "{name}: the checkpoint ended while we looked; nothing was shown"
        );
        c.psql("CHECKPOINT");
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let start = backup_start(&target);
        assert!(
            lsn_le(&c, &reserved, &start),
            "{name}: the slot reserved WAL from {reserved}, after the backup's start {start}"
        );
        pg_verifybackup_ok(&target, &[]);
        if name == "permanent" {
            c.psql("SELECT pg_drop_replication_slot('bbslot')");
        }
        wait_for(
            &c,
            "SELECT count(*) FROM pg_replication_slots",
            "0",
            10,
            &format!("{name}: a slot was left behind"),
        );
    }
    // -C for a backup the server refuses: the slot created for it is dropped again
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-N", "-D"])
        .arg(work.join("refused"))
        .args([
            "-S",
            "bbslot",
            "-C",
            "-F",
            "t",
            "--compress",
            "server-gzip:workers=3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not accept a worker count"));
    assert!(!work.join("refused").exists());
    assert_eq!(c.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    // a slot that does not exist is named before anything is copied
    let out = pgrepl()
        .args(["basebackup", "-d", &conninfo(&c), "-c", "fast", "-N", "-D"])
        .arg(work.join("missing"))
        .args(["-S", "nosuchslot"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("replication slot \"nosuchslot\" does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!work.join("missing").exists());
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_stat_progress_basebackup"),
        "0"
    );
    let _ = std::fs::remove_dir_all(&work);
}

/// `-s`: the WAL stream reports its position on a timer (pg_stat_replication.reply_time), or
/// only when asked with `-s 0`; `--sync-method` takes fsync and syncfs and refuses the rest.
#[test]
fn pg18_status_interval_and_sync_method() {
    let c = Cluster::start(PgVersion::V18);
    let work = temp_dir("bbstatus");
    let reply = "SELECT coalesce(reply_time::text, '') FROM pg_stat_replication \
                 WHERE application_name = 'pgrepl_bb' AND state = 'streaming'";
    for (secs, expect_reply) in [("1", true), ("0", false)] {
        let mut child = pgrepl()
            .args([
                "basebackup",
                "-d",
                &conninfo(&c),
                "-c",
                "fast",
                "-N",
                "-r",
                "32k",
            ])
            .arg("-D")
            .arg(work.join(format!("s{secs}")))
            .args(["-s", secs])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for(
            &c,
            &format!("SELECT count(*) FROM ({reply}) r"),
            "1",
            30,
            &format!("-s {secs}: no WAL stream"),
        );
        std::thread::sleep(Duration::from_millis(2500));
        let r = c.psql(reply);
        assert_eq!(!r.is_empty(), expect_reply, "-s {secs}: reply_time {r:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let run = |args: &[&str]| {
        pgrepl()
            .args(["basebackup", "-d", &conninfo(&c), "-c", "fast"])
            .args(args)
            .output()
            .unwrap()
    };
    for (args, want) in [
        (
            &["-s", "-1"][..],
            "-s/--status-interval must be in range 0..2147483",
        ),
        (
            &["-s", "ten"][..],
            "invalid value \"ten\" for option -s/--status-interval",
        ),
        (
            &["--sync-method", "fdatasync"][..],
            "unrecognized sync method: fdatasync",
        ),
    ] {
        let mut a = vec!["-D", work.to_str().unwrap()];
        a.extend(args);
        let out = run(&a.iter().map(|s| &s[..]).collect::<Vec<_>>());
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "expected {want:?} in {err}");
    }
    for (name, format) in [("syncfs_plain", "p"), ("syncfs_tar", "t")] {
        let dir = work.join(name);
        ok(run(&[
            "-D",
            dir.to_str().unwrap(),
            "-F",
            format,
            "--sync-method=syncfs",
        ]));
        // PostgreSQL 18's pg_waldump cannot read WAL out of a tar backup
        pg_verifybackup_ok(&dir, if format == "t" { &["-n"][..] } else { &[] });
    }
    let _ = std::fs::remove_dir_all(&work);
}

/// A backup taken from a standby: its WAL stream's temporary slot is created on the standby
/// before BASE_BACKUP, the backup verifies, and a server started on it has the primary's rows.
#[test]
fn pg18_backup_from_a_standby() {
    let primary = Cluster::start(PgVersion::V18);
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let standby = primary.standby();
    wait_for(
        &standby,
        "SELECT count(*) FROM pg_class WHERE relname = 't'",
        "1",
        30,
        "the standby never replayed the table",
    );
    let work = temp_dir("bbstandby");
    let target = work.join("b");
    ok(pgrepl()
        .args([
            "basebackup",
            "-d",
            &conninfo(&standby),
            "-c",
            "fast",
            "-N",
            "-D",
        ])
        .arg(&target)
        .output()
        .unwrap());
    pg_verifybackup_ok(&target, &[]);
    assert_eq!(
        standby.psql("SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    // as a backup of a standby it would become a standby too; let it come up on its own
    let _ = std::fs::remove_file(target.join("standby.signal"));
    hand_over(&work);
    let restored = Cluster::start_on(PgVersion::V18, &target);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "1000");
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}
