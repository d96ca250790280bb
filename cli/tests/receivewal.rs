//! `pgrepl receivewal` against real servers: load, crashes, restarts, timeline switches,
//! compression, and bad input. The server's own pg_wal files are the oracle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use pgrepl_testbed::{temp_dir, Cluster, ClusterOptions, PgVersion, Role};
use pgwal::timeline::TimelineHistory;
use pgwal::{
    parse_wal_file_name, segment_file_name, DecoderOptions, Lsn, TimelineId, WalDecoder,
    WalFileKind, WalSegSize,
};
use walarchive::WalDir;

mod common;
use common::{ok, pgrepl};

const SEG: WalSegSize = WalSegSize::DEFAULT;

fn cluster(v: PgVersion) -> Cluster {
    Cluster::start_with(
        v,
        ClusterOptions {
            conf: vec!["wal_keep_size = 2GB".into()],
            ..Default::default()
        },
    )
}

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_test",
    )
}

fn receive(c: &Cluster, dir: &Path, extra: &[&str]) -> Output {
    pgrepl()
        .args(["receivewal", "-d", &conninfo(c), "-D"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn spawn(c: &Cluster, dir: &Path, extra: &[&str]) -> Child {
    pgrepl()
        .args(["receivewal", "-d", &conninfo(c), "-D"])
        .arg(dir)
        .args(["--status-interval", "1"])
        .args(extra)
        .spawn()
        .unwrap()
}

fn terminate(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "receiver exited with {st} on SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "receiver ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Archive files by kind: name -> bytes (decompressed).
fn archive(dir: &Path) -> BTreeMap<String, (WalFileKind, Vec<u8>)> {
    let wd = WalDir::new(dir, SEG);
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(p) = parse_wal_file_name(&name, SEG) else {
            continue;
        };
        if p.kind == WalFileKind::History {
            continue;
        }
        let found = wd.find(p.timeline, p.segment.unwrap()).unwrap();
        if found.path.file_name().unwrap() != name.as_str() {
            continue;
        }
        out.insert(name, (p.kind, wd.read(&found).unwrap()));
    }
    out
}

fn complete_in_archive(dir: &Path, tli: TimelineId, lsn: Lsn) -> bool {
    let name = segment_file_name(tli, lsn.segment(SEG), SEG);
    dir.join(&name).exists() || dir.join(format!("{name}.zst")).exists()
}

/// Every complete archived segment equals the server's file.
fn complete_segments_match(c: &Cluster, dir: &Path) -> usize {
    let mut n = 0;
    for (name, (kind, bytes)) in archive(dir) {
        if matches!(kind, WalFileKind::Segment { partial: false, .. }) {
            let base = name
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .trim_end_matches(".lz4");
            let server = std::fs::read(c.data.join("pg_wal").join(base))
                .unwrap_or_else(|e| panic!("server has no {base}: {e}"));
            assert!(
                server == bytes,
                "archived {name} differs from the server's pg_wal/{base}"
            );
            n += 1;
        }
    }
    n
}

/// The archive, read by pgwal from its first segment, is one gap-free sequence up to `upto`.
fn continuous_to(dir: &Path, tli: TimelineId, history: &TimelineHistory, upto: Lsn) -> usize {
    let first = archive(dir)
        .keys()
        .filter_map(|n| parse_wal_file_name(n, SEG)?.segment)
        .min()
        .unwrap();
    let start = first.start_lsn(SEG).unwrap();
    let mut d = WalDecoder::new(start, DecoderOptions::new(SEG)).unwrap();
    let mut records = 0;
    let mut last = start;
    WalDir::new(dir, SEG)
        .read_range(tli, history, start, Some(upto), |_, bytes, _| {
            d.feed(bytes);
            while let Ok(Some(r)) = d.next_record() {
                records += 1;
                last = r.end_lsn;
            }
        })
        .unwrap_or_else(|e| panic!("archive is not continuous: {e}"));
    assert!(last >= upto, "decoded WAL ends at {last}, before {upto}");
    records
}

/// The archive holds the server's bytes for everything before `upto`.
fn holds_prefix(c: &Cluster, dir: &Path, tli: TimelineId, from: Lsn, upto: Lsn) {
    let wd = WalDir::new(dir, SEG);
    let mut seg = from.segment(SEG);
    while seg.start_lsn(SEG).unwrap() < upto {
        let start = seg.start_lsn(SEG).unwrap();
        let need = (upto.0 - start.0).min(SEG.bytes()) as usize;
        let found = wd
            .find(tli, seg)
            .unwrap_or_else(|| panic!("segment {seg:?} missing although flushed up to {upto}"));
        let bytes = wd.read(&found).unwrap();
        assert!(
            bytes.len() >= need,
            "{} is short: {} < {need}",
            found.path.display(),
            bytes.len()
        );
        let server =
            std::fs::read(c.data.join("pg_wal").join(segment_file_name(tli, seg, SEG))).unwrap();
        assert!(
            bytes[..need] == server[..need],
            "{} differs from the server",
            found.path.display()
        );
        seg = seg.next();
    }
}

fn modes_are_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o700, "archive directory mode {m:o}");
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{} has mode {m:o}", e.path().display());
    }
}

/// The physical slot `arch`, WAL reserved.
fn create_slot(c: &Cluster) {
    ok(pgrepl()
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "arch",
            "--create-slot",
        ])
        .output()
        .unwrap());
}

fn lsn(c: &Cluster, sql: &str) -> Lsn {
    c.psql(sql).parse().unwrap()
}

fn under_load(v: PgVersion) {
    let c = cluster(v);
    let dir = temp_dir("rw").join("archive");
    ok(pgrepl()
        .args([
            "receivewal",
            "-d",
            &conninfo(&c),
            "--slot",
            "arch",
            "--create-slot",
        ])
        .output()
        .unwrap());
    let restart = c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'");
    assert!(!restart.is_empty(), "--create-slot reserves WAL");
    c.pgbench_init(1);
    let rx = spawn(&c, &dir, &["--slot", "arch", "-v"]);
    c.pgbench(&["-T", "20", "-c", "2", "-n"]);
    // and a fixed amount on top (about 56 MB, a record per row), so that the counts below do
    // not depend on how many transactions a slow or busy machine ran in those 20 s
    c.psql(
        "CREATE TABLE bulk (g int, t text); \
         INSERT INTO bulk SELECT g, repeat('x', 500) FROM generate_series(1, 100000) g",
    );
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the switched segment", || {
        complete_in_archive(&dir, TimelineId(1), Lsn(end.0 - 1))
    });
    terminate(rx);
    let n = complete_segments_match(&c, &dir);
    assert!(n >= 3, "only {n} complete segments");
    let records = continuous_to(&dir, TimelineId(1), &TimelineHistory::default(), end);
    assert!(records > 10_000);
    modes_are_private(&dir);
    // what the server was told is flushed is in the archive
    let told = lsn(
        &c,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'",
    );
    assert!(told >= end.segment_start(SEG));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn pg17_under_load() {
    under_load(PgVersion::V17);
}
#[test]
fn pg18_under_load() {
    under_load(PgVersion::V18);
}

fn crashes(v: PgVersion) {
    let c = cluster(v);
    let dir = temp_dir("rw").join("archive");
    create_slot(&c);
    c.pgbench_init(1);
    let first = lsn(
        &c,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'",
    );
    let mut load = Command::new(pgrepl_testbed::tool("pgbench"))
        .args(["-T", "10", "-c", "2", "-n", "-h"])
        .arg(c.socket_dir())
        .args(["-p", &c.port.to_string(), "-U", "postgres", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut rx = spawn(&c, &dir, &["-S", "arch"]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    for i in 0..2u32 {
        let ms = 1200 + (seed.rotate_left(i * 7) % 2000) as u64;
        std::thread::sleep(Duration::from_millis(ms));
        rx.kill().unwrap(); // SIGKILL
        rx.wait().unwrap();
        // the slot remembers the last flush position the receiver reported
        wait_for("the walsender to exit", || {
            c.psql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgrepl_test'",
            ) == "0"
        });
        let told = lsn(
            &c,
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'",
        );
        holds_prefix(&c, &dir, TimelineId(1), first, told);
        rx = spawn(&c, &dir, &["-S", "arch"]);
    }
    load.wait().unwrap();
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the switched segment", || {
        complete_in_archive(&dir, TimelineId(1), Lsn(end.0 - 1))
    });
    terminate(rx);
    complete_segments_match(&c, &dir);
    continuous_to(&dir, TimelineId(1), &TimelineHistory::default(), end);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn pg17_kill_9_twice() {
    crashes(PgVersion::V17);
}
#[test]
fn pg18_kill_9_twice() {
    crashes(PgVersion::V18);
}

#[test]
fn pg18_server_restart_is_survived() {
    let mut c = cluster(PgVersion::V18);
    let dir = temp_dir("rw").join("archive");
    create_slot(&c);
    let rx = spawn(&c, &dir, &["-S", "arch", "-v"]);
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g");
    let mid = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the first segment", || {
        complete_in_archive(&dir, TimelineId(1), Lsn(mid.0 - 1))
    });
    c.restart();
    c.psql("INSERT INTO t SELECT g FROM generate_series(1, 100000) g");
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("a segment after the restart", || {
        complete_in_archive(&dir, TimelineId(1), Lsn(end.0 - 1))
    });
    terminate(rx);
    complete_segments_match(&c, &dir);
    continuous_to(&dir, TimelineId(1), &TimelineHistory::default(), end);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// Through an SSH tunnel whose sshd session is killed twice while WAL streams: receivewal
/// reconnects SSH and PostgreSQL with its usual backoff, and the archive has no gap (complete
/// segments byte-equal to the server's pg_wal, decodable end to end).
#[test]
fn pg18_killed_ssh_tunnel_is_survived() {
    let c = cluster(PgVersion::V18);
    let sshd = pgrepl_testbed::SshServer::start();
    let dir = temp_dir("rws").join("archive");
    create_slot(&c);
    let first = lsn(
        &c,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'",
    );
    let mut args = vec!["-S".to_owned(), "arch".to_owned(), "-v".to_owned()];
    args.extend(sshd.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rx = spawn(&c, &dir, &args);
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g");
    for round in 0..2 {
        let mid = lsn(&c, "SELECT pg_switch_wal()");
        wait_for("a segment through the tunnel", || {
            complete_in_archive(&dir, TimelineId(1), Lsn(mid.0 - 1))
        });
        let logins = sshd.logins();
        assert!(
            sshd.kill_sessions() > 0,
            "round {round}: no session to kill"
        );
        // WAL written while the tunnel is down
        c.psql("INSERT INTO t SELECT g FROM generate_series(1, 100000) g");
        wait_for("a new SSH connection", || sshd.logins() > logins);
    }
    let end = lsn(&c, "SELECT pg_switch_wal()");
    wait_for("the segments written while the tunnel was down", || {
        complete_in_archive(&dir, TimelineId(1), Lsn(end.0 - 1))
    });
    terminate(rx);
    assert!(complete_segments_match(&c, &dir) >= 3);
    holds_prefix(&c, &dir, TimelineId(1), first, end);
    continuous_to(&dir, TimelineId(1), &TimelineHistory::default(), end);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

fn timeline_switch(v: PgVersion) {
    let primary = cluster(v);
    let standby = primary.standby();
    let sconn = conninfo(&standby);
    ok(pgrepl()
        .args(["receivewal", "-d", &sconn, "-S", "arch", "--create-slot"])
        .output()
        .unwrap());
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let target = lsn(&primary, "SELECT pg_current_wal_insert_lsn()");
    wait_for("the standby to catch up", || {
        lsn(&standby, "SELECT pg_last_wal_replay_lsn()") >= target
    });
    let slot_lsn = lsn(
        &standby,
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'arch'",
    );
    let before = segment_file_name(TimelineId(1), slot_lsn.segment(SEG), SEG);
    standby.promote();
    let after = segment_file_name(
        TimelineId(2),
        lsn(&standby, "SELECT pg_current_wal_insert_lsn()").segment(SEG),
        SEG,
    );
    standby.psql("INSERT INTO t VALUES (7)");
    standby.psql("SELECT pg_switch_wal()");
    let next = lsn(&standby, "SELECT pg_current_wal_insert_lsn()");
    standby.psql("INSERT INTO t VALUES (8)");
    let dir = temp_dir("rw").join("archive");
    let out = ok(pgrepl()
        .args(["receivewal", "-d", &sconn, "-D"])
        .arg(&dir)
        .args([
            "--endpos",
            &next.to_string(),
            "--slot",
            "arch",
            "--no-sync",
            "-n",
            "-v",
        ])
        .output()
        .unwrap());
    let _ = out;
    assert!(dir.join(&before).exists(), "{before} not archived");
    assert!(dir.join(&after).exists(), "{after} not archived");
    let history = std::fs::read(dir.join("00000002.history")).unwrap();
    assert_eq!(
        history,
        std::fs::read(standby.data.join("pg_wal/00000002.history")).unwrap()
    );
    let h = TimelineHistory::parse(std::str::from_utf8(&history).unwrap()).unwrap();
    continuous_to(&dir, TimelineId(2), &h, Lsn(next.0 - 1).segment_start(SEG));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn pg17_timeline_switch() {
    timeline_switch(PgVersion::V17);
}
#[test]
fn pg18_timeline_switch() {
    timeline_switch(PgVersion::V18);
}

/// The server's copy of an archived segment (`name` with or without a compression suffix).
fn server_segment(c: &Cluster, name: &str) -> Vec<u8> {
    let base = &name[..24];
    std::fs::read(c.data.join("pg_wal").join(base)).unwrap()
}

/// The archived partial `name`, decompressed, is a non-empty prefix of the server's segment.
fn partial_is_a_prefix(c: &Cluster, dir: &Path, name: &str) {
    let bytes = &archive(dir)[name].1;
    assert!(
        !bytes.is_empty() && server_segment(c, name).starts_with(bytes),
        "{name} is not a prefix of the server's segment"
    );
}

fn partial_segments(dir: &Path) -> Vec<String> {
    archive(dir)
        .into_iter()
        .filter(|(_, (k, _))| *k == WalFileKind::PARTIAL)
        .map(|(n, _)| n)
        .collect()
}

fn endpos_and_compression(v: PgVersion) {
    let c = cluster(v);
    let dir: PathBuf = temp_dir("rw").join("archive");
    c.psql("CREATE TABLE test_table(x integer PRIMARY KEY)");
    // a new segment with a row in it, streamed up to just before the row
    let switch_and_receive = |row: u32, extra: &[&str]| {
        c.psql("SELECT pg_switch_wal()");
        let next = lsn(&c, "SELECT pg_current_wal_insert_lsn()");
        c.psql(&format!("INSERT INTO test_table VALUES ({row})"));
        let endpos = next.to_string();
        let mut args = vec!["--verbose", "--endpos", &endpos, "--no-loop"];
        args.extend_from_slice(extra);
        ok(receive(&c, &dir, &args));
    };
    switch_and_receive(1, &["--synchronous"]);
    let partials = partial_segments(&dir);
    assert_eq!(partials.len(), 1, "{partials:?}");
    let names = |suffix: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(suffix))
            .collect();
        v.sort();
        v
    };

    // gzip, as PostgreSQL's pg_receivewal test runs it: the earlier partial segment is streamed
    // again and completed as NAME.gz, the next one is being written as NAME.gz.partial
    switch_and_receive(2, &["--compress", "gzip:1"]);
    assert_eq!(names(".gz"), [partials[0].replace(".partial", ".gz")]);
    let gz_partial = names(".gz.partial");
    assert_eq!(gz_partial.len(), 1, "{gz_partial:?}");
    // the complete one decompresses to the server's segment; the partial one, flushed as it
    // was written, to the start of its segment
    assert_eq!(complete_segments_match(&c, &dir), 1);
    partial_is_a_prefix(&c, &dir, &gz_partial[0]);
    // and wal-fetch serves both, the partial one zero-padded
    for name in [
        partials[0].trim_end_matches(".partial"),
        gz_partial[0].trim_end_matches(".gz.partial"),
    ] {
        let dest = dir.parent().unwrap().join("fetched");
        ok(pgrepl()
            .arg("wal-fetch")
            .arg(&dir)
            .arg(name)
            .arg(&dest)
            .output()
            .unwrap());
        let got = std::fs::read(&dest).unwrap();
        assert_eq!(got.len(), SEG.bytes() as usize, "{name}");
    }

    // lz4, as the same test runs it next: the gzip partial's segment is streamed again and
    // completed as NAME.lz4, which the lz4 program checks; the next one fills NAME.lz4.partial
    switch_and_receive(3, &["--compress", "lz4"]);
    assert_eq!(
        names(".lz4"),
        [gz_partial[0].replace(".gz.partial", ".lz4")]
    );
    let st = Command::new("lz4")
        .arg("-t")
        .arg(dir.join(&names(".lz4")[0]))
        .status()
        .expect("the lz4 program (apt-get install lz4; scripts/install-postgres does it)");
    assert!(st.success(), "lz4 -t");
    let lz4_partial = names(".lz4.partial");
    assert_eq!(lz4_partial.len(), 1, "{lz4_partial:?}");
    assert_eq!(complete_segments_match(&c, &dir), 2);
    partial_is_a_prefix(&c, &dir, &lz4_partial[0]);
    let dest = dir.parent().unwrap().join("fetched");
    ok(pgrepl()
        .arg("wal-fetch")
        .arg(&dir)
        .arg(names(".lz4")[0].trim_end_matches(".lz4"))
        .arg(&dest)
        .output()
        .unwrap());
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        server_segment(&c, &names(".lz4")[0])
    );

    c.psql("SELECT pg_switch_wal()");
    let next = lsn(&c, "SELECT pg_current_wal_insert_lsn()");
    c.psql("INSERT INTO test_table VALUES (4)");
    let out = ok(receive(
        &c,
        &dir,
        &[
            "--endpos",
            &next.to_string(),
            "--compress",
            "zstd:1",
            "--no-loop",
            "--json",
        ],
    ));
    // --json: one event object per line, the completed segment among them
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["event"], "started");
    let was_lz4 = lz4_partial[0].replace(".lz4.partial", ".zst");
    assert!(events
        .iter()
        .any(|e| e["event"] == "segment" && e["file"] == was_lz4));
    assert_eq!(names(".zst"), [was_lz4], "the lz4 partial was completed");
    assert_eq!(partial_segments(&dir).len(), 1);
    // the stale .gz.partial went once its segment was complete (at the next start at the
    // latest)
    ok(receive(
        &c,
        &dir,
        &["--endpos", &next.to_string(), "--no-loop"],
    ));
    for stale in [".gz.partial", ".lz4.partial"] {
        assert!(names(stale).is_empty(), "{:?}", names(stale));
    }
    complete_segments_match(&c, &dir);
    modes_are_private(&dir);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn pg17_endpos_and_compression() {
    endpos_and_compression(PgVersion::V17);
}
#[test]
fn pg18_endpos_and_compression() {
    endpos_and_compression(PgVersion::V18);
}
#[test]
fn pg15_endpos_and_compression() {
    endpos_and_compression(PgVersion::V15);
}

#[test]
fn bad_input_is_refused_clearly() {
    let c = cluster(PgVersion::V18);
    let dir = temp_dir("rw").join("archive");
    // option checks, as pg_receivewal
    for (args, msg) in [
        (
            vec!["--create-slot", "--drop-slot", "-S", "x"],
            "--create-slot together with --drop-slot",
        ),
        (vec!["--create-slot"], "needs a slot"),
        (
            vec!["--synchronous", "--no-sync"],
            "--synchronous together with --no-sync",
        ),
        (
            vec!["--compress", "none:1"],
            "compression algorithm \"none\" does not accept a compression level",
        ),
    ] {
        let out = receive(&c, &dir, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("pgrepl: error: ") && err.contains(msg),
            "{args:?}: {err}"
        );
    }
    let out = pgrepl()
        .args(["receivewal", "-d", &conninfo(&c)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // slots: create, create again (fails, unless --if-not-exists), drop
    let slot = |args: &[&str]| {
        pgrepl()
            .args(["receivewal", "-d", &conninfo(&c), "--slot", "s1"])
            .args(args)
            .output()
            .unwrap()
    };
    ok(slot(&["--create-slot"]));
    let again = slot(&["--create-slot"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    ok(slot(&["--create-slot", "--if-not-exists"]));
    ok(slot(&["--drop-slot"]));
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's1'"),
        "0"
    );

    // a slot that does not exist
    let out = receive(
        &c,
        &dir,
        &[
            "--slot",
            "nonexistentslot",
            "-n",
            "--no-sync",
            "--endpos",
            "0/FFFFFFF",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pgrepl: error: replication slot \"nonexistentslot\" does not exist"),
        "{err}"
    );

    // an archive of another system
    c.psql("SELECT pg_switch_wal()");
    let next = lsn(&c, "SELECT pg_current_wal_insert_lsn()");
    c.psql("CREATE TABLE x AS SELECT 1");
    ok(receive(&c, &dir, &["--endpos", &next.to_string(), "-n"]));
    let other = cluster(PgVersion::V18);
    let out = receive(&other, &dir, &["-n", "--endpos", "0/FFFFFFF"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds WAL of database system"), "{err}");

    // WAL the server no longer has: named, and fatal even without -n
    let gone = temp_dir("rw").join("archive");
    c.psql("ALTER SYSTEM SET wal_keep_size = 0");
    c.psql("SELECT pg_reload_conf()");
    let first_seg = lsn(&c, "SELECT pg_current_wal_lsn()").segment(SEG);
    for _ in 0..4 {
        c.psql("CREATE TABLE IF NOT EXISTS y AS SELECT 1; INSERT INTO y SELECT 1; SELECT pg_switch_wal()");
    }
    let name = segment_file_name(TimelineId(1), first_seg, SEG);
    // the WAL summarizer (summarize_wal=on) holds WAL until it has read it: checkpoint until
    // the old segment is gone
    wait_for("the server to remove the old segment", || {
        c.psql("CHECKPOINT");
        !c.data.join("pg_wal").join(&name).exists()
    });
    // a fake partial of the old segment makes the receiver ask for WAL that was removed
    std::fs::create_dir_all(&gone).unwrap();
    std::fs::copy(
        dir.join(partial_segments(&dir)[0].as_str()),
        gone.join(format!("{name}.partial")),
    )
    .ok();
    assert!(
        !c.data.join("pg_wal").join(&name).exists(),
        "the server kept {name}; this check needs it gone"
    );
    let started = Instant::now();
    let out = receive(&c, &gone, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "retried instead of failing"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&name) && err.contains("no longer on the server"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    let _ = std::fs::remove_dir_all(gone.parent().unwrap());
}
