//! Backups of a server on a later timeline (a promoted standby), after PostgreSQL's
//! pg_combinebackup/t/008_promote.pl, replayed with our CLI: the full backup, the standby made
//! from it, the incremental taken after its promotion, our combine, and a server on the result.
//! The server's own `pg_wal/<tli>.history` is the oracle for what the backups must carry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgrepl_testbed::{temp_dir, Cluster, ClusterOptions, PgVersion, Role};

mod common;
use common::{ok, pg_verifybackup_ok, pgrepl};

fn conninfo(c: &Cluster) -> String {
    c.conninfo(Role::Postgres, "sslmode=disable")
}

fn wait_for(c: &Cluster, sql: &str, want: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.psql(sql) != want {
        assert!(Instant::now() < deadline, "{what}\n{}", c.log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn basebackup(c: &Cluster, target: &Path, extra: &[&str]) {
    ok(pgrepl()
        .args(["basebackup", "-d", &conninfo(c), "-c", "fast", "-N", "-D"])
        .arg(target)
        .args(extra)
        .output()
        .unwrap());
}

fn combine(inputs: &[&Path], out: &Path) {
    ok(pgrepl()
        .arg("combine")
        .args(inputs)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap());
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

/// The names and contents of the entries of a tar file.
fn tar_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
    use basebackup::tar::{TarError, TarEvent, TarParser};
    let bytes = std::fs::read(path).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut p = TarParser::new();
    p.feed(&bytes, |ev| -> Result<(), TarError> {
        match ev {
            TarEvent::Entry(h) => out.push((h.path, Vec::new())),
            TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    p.finish().unwrap();
    out
}

fn promoted_standby_chain(v: PgVersion) {
    // the standby streams from the backup's start: node1's CHECKPOINT below must not recycle
    // that segment first (it did, now and then, on a loaded machine)
    let node1 = Cluster::start_with(
        v,
        ClusterOptions {
            conf: vec!["wal_keep_size = '256MB'".into()],
            ..Default::default()
        },
    );
    node1.psql("CREATE TABLE mytable (a int, b text); INSERT INTO mytable VALUES (1, 'avocado')");
    let work = temp_dir("bbtli");
    let full = work.join("full");
    basebackup(&node1, &full, &[]);
    node1.psql("CHECKPOINT");
    let lsn = node1.psql("SELECT pg_current_wal_insert_lsn()");
    node1.psql("INSERT INTO mytable VALUES (2, 'beetle')");

    // node2: a standby made from our full backup that stops at `lsn` and is promoted there
    let node2_dir: PathBuf = work.join("node2");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&full)
        .arg(&node2_dir)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(node2_dir.join("standby.signal"), "").unwrap();
    append(
        &node2_dir.join("postgresql.auto.conf"),
        &format!(
            "primary_conninfo = '{}'\nrecovery_target_lsn = '{lsn}'\nrecovery_target_action = 'pause'\n",
            conninfo(&node1)
        ),
    );
    let node2 = Cluster::start_on(v, &node2_dir);
    wait_for(
        &node2,
        "SELECT pg_get_wal_replay_pause_state()",
        "paused",
        "the standby never paused at its recovery target",
    );
    node2.psql("SELECT pg_promote()");
    wait_for(
        &node2,
        "SELECT pg_is_in_recovery()",
        "f",
        "the standby was not promoted",
    );
    node2.psql("INSERT INTO mytable VALUES (2, 'blackberry')");
    let history = std::fs::read(node2_dir.join("pg_wal/00000002.history"))
        .expect("the promoted server has 00000002.history");

    // an incremental backup of the promoted server, on timeline 2, from the timeline-1 full
    let incr = work.join("incr");
    basebackup(&node2, &incr, &["-i", full.to_str().unwrap()]);
    let label = std::fs::read_to_string(incr.join("backup_label")).unwrap();
    assert!(label.contains("START TIMELINE: 2"), "{label}");
    assert!(label.contains("INCREMENTAL FROM TLI: 1"), "{label}");
    // -X stream stores the timeline's history beside its WAL, as pg_basebackup does
    assert_eq!(
        std::fs::read(incr.join("pg_wal/00000002.history")).ok(),
        Some(history.clone()),
        "the backup's pg_wal lacks the server's 00000002.history"
    );
    // and a tar backup carries it in pg_wal.tar, before the segments
    let tar = work.join("tar");
    basebackup(&node2, &tar, &["-F", "t"]);
    let entries = tar_entries(&tar.join("pg_wal.tar"));
    assert_eq!(
        entries[0].0,
        "00000002.history",
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert_eq!(entries[0].1, history);
    assert!(entries[1..]
        .iter()
        .all(|(n, _)| n.len() == 24 && n.starts_with("00000002")));
    // our verify reads the WAL of both (the tar one out of pg_wal.tar) past the history file
    for dir in [&incr, &tar] {
        ok(pgrepl().arg("verify").arg(dir).output().unwrap());
    }
    if v == PgVersion::V18 {
        pg_verifybackup_ok(&incr, &[]);
        pg_verifybackup_ok(&tar, &["-n"]);
    }

    // node3: our combine of the chain starts with node2's rows (008's check)
    let out = work.join("out");
    combine(&[&full, &incr], &out);
    assert_eq!(
        std::fs::read(out.join("pg_wal/00000002.history")).ok(),
        Some(history)
    );
    let mut node3 = Cluster::start_on(v, &out);
    assert_eq!(
        node3.psql("SELECT string_agg(a::text || b, ':' ORDER BY a) FROM mytable"),
        "1avocado:2blackberry"
    );
    // ... and when it ends an archive recovery on timeline 3, that timeline's history still
    // names timeline 1: the server read it from the restored 00000002.history
    node3.stop_server("fast");
    std::fs::write(out.join("recovery.signal"), "").unwrap();
    append(
        &out.join("postgresql.auto.conf"),
        "restore_command = 'false'\nprimary_conninfo = ''\nrecovery_target_lsn = ''\nrecovery_target_action = 'promote'\n",
    );
    node3.start_stopped();
    wait_for(
        &node3,
        "SELECT pg_is_in_recovery()",
        "f",
        "the restored server did not finish recovery",
    );
    let h3 = std::fs::read_to_string(out.join("pg_wal/00000003.history"))
        .expect("recovery ended on timeline 3");
    let parents: Vec<&str> = h3
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(parents, ["1", "2"], "{h3}");
    assert_eq!(node3.psql("SELECT count(*) FROM mytable"), "2");
    drop(node3);
    drop(node2);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_backups_of_a_promoted_standby_carry_its_timeline_history() {
    promoted_standby_chain(PgVersion::V17);
}

#[test]
fn pg18_backups_of_a_promoted_standby_carry_its_timeline_history() {
    promoted_standby_chain(PgVersion::V18);
}

/// PostgreSQL's pg_combinebackup/t/003_timeline.pl with our CLI: node2 is started on our combine
/// of node1's full and incremental backups, diverges from node1, and its own incremental (whose
/// parent is node1's incremental) combines with the first two into a server holding node2's rows.
fn incremental_from_a_restored_node(v: PgVersion) {
    let node1 = Cluster::start(v);
    node1.psql("CREATE TABLE mytable (a int, b text); INSERT INTO mytable VALUES (1, 'aardvark')");
    let work = temp_dir("bbtli3");
    let (b1, b2, b3) = (work.join("b1"), work.join("b2"), work.join("b3"));
    basebackup(&node1, &b1, &[]);
    node1.psql("INSERT INTO mytable VALUES (2, 'beetle')");
    basebackup(&node1, &b2, &["-i", b1.to_str().unwrap()]);
    let node2_dir = work.join("node2");
    combine(&[&b1, &b2], &node2_dir);
    let node2 = Cluster::start_on(v, &node2_dir);
    node1.psql("INSERT INTO mytable VALUES (3, 'crab')");
    node2.psql("INSERT INTO mytable VALUES (4, 'dingo')");
    basebackup(&node2, &b3, &["-i", b2.to_str().unwrap()]);
    let node3_dir = work.join("node3");
    combine(&[&b1, &b2, &b3], &node3_dir);
    let node3 = Cluster::start_on(v, &node3_dir);
    node3.psql("INSERT INTO mytable VALUES (5, 'elephant')");
    assert_eq!(
        node3.psql("SELECT string_agg(a::text, ':' ORDER BY a) || '|' || string_agg(b, ':' ORDER BY a) FROM mytable"),
        "1:2:4:5|aardvark:beetle:dingo:elephant"
    );
    for b in [&b1, &b2, &b3] {
        ok(pgrepl().arg("verify").arg(b).output().unwrap());
        if v == PgVersion::V18 {
            pg_verifybackup_ok(b, &[]);
        }
    }
    drop(node3);
    drop(node2);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_incremental_from_a_node_restored_from_our_combine() {
    incremental_from_a_restored_node(PgVersion::V17);
}

#[test]
fn pg18_incremental_from_a_node_restored_from_our_combine() {
    incremental_from_a_restored_node(PgVersion::V18);
}

/// A standby backed up while its upstream is promoted: the standby moves to timeline 2 during
/// the backup, its walsender ends our WAL stream at the switch, and the stream goes on on
/// timeline 2 (as pg_basebackup's does), so the backup ends on timeline 2, verifies and starts
/// with what the new primary wrote before the backup ended.
fn backup_across_a_failover(v: PgVersion) {
    let primary = Cluster::start(v);
    primary.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let upstream = primary.standby();
    let standby = upstream.standby();
    wait_for(
        &standby,
        "SELECT count(*) FROM pg_class WHERE relname = 't'",
        "1",
        "the cascading standby never replayed the table",
    );
    let work = temp_dir("bbfailover");
    let (target, tar) = (work.join("b"), work.join("t"));
    // throttled so that they are still running after the failover (a fresh cluster is ~25 MB);
    // a plain and a tar backup at once, through the same switch
    let spawn = |dir: &Path, extra: &[&str]| {
        scopeguard(
            pgrepl()
                .args([
                    "basebackup",
                    "-d",
                    &standby.conninfo(Role::Postgres, "sslmode=disable application_name=pgrepl_tl"),
                    "-c",
                    "fast",
                    "-N",
                    "-r",
                    "3M",
                    "-D",
                ])
                .arg(dir)
                .args(extra)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let mut children = [spawn(&target, &[]), spawn(&tar, &["-F", "t"])];
    wait_for(
        &standby,
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'pgrepl_tl' AND state = 'backup'",
        "2",
        "the backups never started",
    );
    upstream.promote();
    upstream.psql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");
    wait_for(
        &standby,
        "SELECT count(*) FROM t",
        "2000",
        "the cascading standby did not follow the promotion",
    );
    // A standby's backup ends at its minimum recovery point, which a restartpoint moves: make
    // one past the switch, so that the backups must end on timeline 2.
    upstream.psql("CHECKPOINT");
    let lsn = upstream.psql("SELECT pg_current_wal_insert_lsn()");
    wait_for(
        &standby,
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
        "t",
        "the cascading standby did not replay the new primary's checkpoint",
    );
    standby.psql("CHECKPOINT");
    for child in &mut children {
        if let Some(status) = child.0.as_mut().unwrap().try_wait().unwrap() {
            let out = child.0.take().unwrap().wait_with_output().unwrap();
            assert!(
                !status.success(),
                "a backup ended before the failover reached the standby: throttle it more"
            );
            panic!(
                "a backup failed across the failover: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for child in &mut children {
        let out = child.0.take().unwrap().wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a backup failed across the failover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let label = std::fs::read_to_string(target.join("backup_label")).unwrap();
    assert!(label.contains("START TIMELINE: 1"), "{label}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(target.join("backup_manifest")).unwrap()).unwrap();
    let timelines: Vec<u64> = manifest["WAL-Ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Timeline"].as_u64().unwrap())
        .collect();
    assert!(
        timelines.contains(&1) && timelines.contains(&2),
        "{timelines:?}"
    );
    let history = std::fs::read(upstream.data.join("pg_wal/00000002.history")).unwrap();
    assert_eq!(
        std::fs::read(target.join("pg_wal/00000002.history")).ok(),
        Some(history)
    );
    ok(pgrepl().arg("verify").arg(&target).output().unwrap());
    if v == PgVersion::V18 {
        pg_verifybackup_ok(&target, &[]);
    }
    // the tar backup: pg_wal.tar holds timeline 1's segment, the history, timeline 2's; our
    // verify decodes across the switch out of the archive
    let names: Vec<String> = tar_entries(&tar.join("pg_wal.tar"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"00000002.history".to_owned()), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("00000001")), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("00000002") && n.len() == 24),
        "{names:?}"
    );
    ok(pgrepl().arg("verify").arg(&tar).output().unwrap());
    if v == PgVersion::V18 {
        pg_verifybackup_ok(&tar, &["-n"]);
    }
    // a backup of a standby would come up as a standby; let it come up on its own
    let _ = std::fs::remove_file(target.join("standby.signal"));
    let restored = Cluster::start_on(v, &target);
    assert_eq!(restored.psql("SELECT count(*) FROM t"), "2000");
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}

/// Kills the child if the test fails before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn scopeguard(c: std::process::Child) -> KillOnDrop {
    KillOnDrop(Some(c))
}

#[test]
fn pg17_a_standby_backed_up_across_its_upstreams_failover() {
    backup_across_a_failover(PgVersion::V17);
}

#[test]
fn pg18_a_standby_backed_up_across_its_upstreams_failover() {
    backup_across_a_failover(PgVersion::V18);
}
