//! Point-in-time restore end to end: receivewal archives WAL while rows are committed steadily,
//! a full backup early and an incremental in the middle; `pgrepl restore` to several targets,
//! then a server started on the result (replaying through `pgrepl wal-fetch`) must hold exactly
//! the rows committed at or before the target.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use pgrepl_testbed::{hand_over, temp_dir, Cluster, PgVersion, Role};

mod common;
use common::{ok, pgrepl, wait_for};

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_pitr",
    )
}

fn terminate(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "receivewal exited with {st}");
}

struct Fixture {
    work: PathBuf,
    archive: PathBuf,
    full: PathBuf,
    inc: PathBuf,
    /// (k, commit-side timestamp text in UTC) per row
    rows: Vec<(u32, String)>,
    lsn_after_32: String,
    xid_of_35: String,
}

fn tick(c: &Cluster, k: u32) {
    c.psql(&format!(
        "INSERT INTO ticks VALUES ({k}, clock_timestamp(), pg_current_xact_id())"
    ));
    std::thread::sleep(Duration::from_millis(120));
}

/// A backup of `c` into `target` (plain unless `extra` says otherwise).
fn backup(c: &Cluster, target: &Path, extra: &[&str]) {
    common::basebackup(&conninfo(c), target, extra);
}

fn fixture(c: &Cluster) -> Fixture {
    let work = temp_dir("pitr");
    let archive = work.join("archive");
    std::fs::create_dir(&archive).unwrap();
    c.psql("CREATE TABLE ticks (k int PRIMARY KEY, at timestamptz, x xid8)");
    ok(pgrepl()
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "pitr",
            "--create-slot",
        ])
        .output()
        .unwrap());
    let rx = pgrepl()
        .args([
            "receivewal",
            "-d",
            &conninfo(c),
            "-S",
            "pitr",
            "--status-interval",
            "1",
            "-D",
        ])
        .arg(&archive)
        .spawn()
        .unwrap();
    for k in 1..=10 {
        tick(c, k);
    }
    let full = work.join("full");
    backup(c, &full, &[]);
    for k in 11..=25 {
        tick(c, k);
    }
    let inc = work.join("inc");
    backup(c, &inc, &["-i", full.to_str().unwrap()]);
    let mut lsn_after_32 = String::new();
    for k in 26..=45 {
        tick(c, k);
        if k == 32 {
            lsn_after_32 = c.psql("SELECT pg_current_wal_lsn()");
        }
        if k == 38 {
            c.psql("SELECT pg_create_restore_point('rp38')");
        }
    }
    let xid_of_35 = c.psql("SELECT x FROM ticks WHERE k = 35");
    // everything is in the archive: a commit after the last row, then the slot's flush position
    c.psql("CREATE TABLE after_all (x int)");
    let end = c.psql("SELECT pg_current_wal_insert_lsn()");
    wait_for("the archive to catch up", || {
        c.psql(&format!(
            "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = 'pitr'"
        )) == "t"
    });
    terminate(rx);
    hand_over(&archive);
    let rows = c
        .psql("SELECT k || '|' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ticks ORDER BY k")
        .lines()
        .map(|l| {
            let (k, t) = l.split_once('|').unwrap();
            (k.parse().unwrap(), format!("{t}+00"))
        })
        .collect();
    Fixture {
        work,
        archive,
        full,
        inc,
        rows,
        lsn_after_32,
        xid_of_35,
    }
}

fn restore(f: &Fixture, name: &str, backups: &[&Path], target: &[&str]) -> (Output, PathBuf) {
    let pgdata = f.work.join(name);
    let out = pgrepl()
        .arg("restore")
        .arg("-D")
        .arg(&pgdata)
        .args(backups)
        .arg("--wal-archive")
        .arg(&f.archive)
        .arg("--no-sync")
        .args(target)
        .output()
        .unwrap();
    (out, pgdata)
}

/// Restores, starts a server, waits for recovery to end (the default target action is to
/// promote), and returns (count, max k).
fn recovered_rows(
    v: PgVersion,
    f: &Fixture,
    name: &str,
    backups: &[&Path],
    target: &[&str],
) -> (u32, u32) {
    let (out, pgdata) = restore(f, name, backups, target);
    ok(out);
    assert!(pgdata.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("restore_command = '") && auto.contains(" wal-fetch "),
        "{auto}"
    );
    let r = Cluster::start_on(v, &pgdata);
    wait_for("recovery to end", || {
        r.psql("SELECT pg_is_in_recovery()") == "f"
    });
    let got = r.psql("SELECT count(*) || ' ' || coalesce(max(k), 0) FROM ticks");
    let (n, m) = got.split_once(' ').unwrap();
    let res = (n.parse().unwrap(), m.parse().unwrap());
    drop(r);
    let _ = std::fs::remove_dir_all(&pgdata);
    res
}

/// A pseudo-random pick in `lo..=hi` (varies from run to run; printed on failure).
fn pick(lo: u32, hi: u32, salt: u32) -> u32 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(salt.wrapping_mul(40_503));
    lo + n % (hi - lo + 1)
}

/// Half way between row `k`'s insert and row `k + 1`'s: after `k` committed, before `k + 1`.
fn time_after(f: &Fixture, k: u32) -> String {
    let t = &f.rows[(k - 1) as usize].1;
    // add 60 ms to the fractional seconds by re-parsing and formatting through the library
    let us = basebackup::restore::parse_timestamp(t).unwrap() + 60_000;
    basebackup::restore::format_timestamp(us)
}

fn pitr(v: PgVersion) {
    let c = Cluster::start(v);
    let f = fixture(&c);
    assert_eq!(f.rows.len(), 45);
    let (full, inc) = (f.full.as_path(), f.inc.as_path());

    // several target times: one only the full backup can reach, two after the incremental
    // (each more than a second after its backup's start: restore refuses targets within the
    // second of the start checkpoint, whose time has whole seconds)
    for (i, (lo, hi, chain)) in [
        (20, 24, vec![full]),
        (36, 44, vec![full, inc]),
        (36, 44, vec![full, inc]),
    ]
    .into_iter()
    .enumerate()
    {
        let k = pick(lo, hi, i as u32);
        let t = time_after(&f, k);
        let got = recovered_rows(v, &f, &format!("t{i}"), &chain, &["--target-time", &t]);
        assert_eq!(
            got,
            (k, k),
            "target time {t} (after row {k}), chain of {}",
            chain.len()
        );
    }
    assert_eq!(
        recovered_rows(
            v,
            &f,
            "lsn",
            &[full, inc],
            &["--target-lsn", &f.lsn_after_32]
        ),
        (32, 32),
        "target LSN {}",
        f.lsn_after_32
    );
    assert_eq!(
        recovered_rows(v, &f, "xid", &[full, inc], &["--target-xid", &f.xid_of_35]),
        (35, 35)
    );
    assert_eq!(
        recovered_rows(v, &f, "name", &[full, inc], &["--target-name", "rp38"]),
        (38, 38)
    );
    // immediate: the incremental backup's own state (rows 1-25 committed before it began)
    assert_eq!(
        recovered_rows(v, &f, "imm", &[full, inc], &["--target", "immediate"]),
        (25, 25)
    );
    // no target: the whole archive
    assert_eq!(recovered_rows(v, &f, "all", &[full, inc], &[]), (45, 45));

    // --target-action pause, as asked and said: a read-only server waiting at the target
    let (out, pgdata) = restore(
        &f,
        "pause",
        &[full, inc],
        &["--target-name", "rp38", "--target-action", "pause"],
    );
    let said = String::from_utf8_lossy(&ok(out).stderr).into_owned();
    assert!(said.contains("--target-action pause"), "{said}");
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("recovery_target_action = 'pause'"), "{auto}");
    let r = Cluster::start_on(v, &pgdata);
    wait_for("replay to pause at the target", || {
        r.psql("SELECT pg_get_wal_replay_pause_state()") == "paused"
    });
    assert_eq!(r.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(r.psql("SELECT count(*) FROM ticks"), "38");
    drop(r);
    let _ = std::fs::remove_dir_all(&pgdata);

    // refused, with nothing written: before the chain's consistency point, or never reached
    let refusals: Vec<(Vec<&Path>, Vec<String>, &str)> = vec![
        (
            vec![full, inc],
            vec!["--target-time".into(), time_after(&f, 15)],
            "before the backup's consistent point",
        ),
        (
            vec![full],
            vec!["--target-time".into(), time_after(&f, 3)],
            "before the backup's consistent point",
        ),
        (
            vec![full, inc],
            vec!["--target-lsn".into(), "0/1000000".into()],
            "before the backup's consistent point",
        ),
        (
            vec![full, inc],
            vec!["--target-name".into(), "nope".into()],
            "is not in the WAL archive",
        ),
        (
            vec![full, inc],
            vec!["--target-time".into(), "2999-01-01 00:00:00+00".into()],
            "recovery would end before reaching it",
        ),
        (
            vec![full, inc],
            vec!["--target-time".into(), "yesterday".into()],
            "invalid target time",
        ),
    ];
    for (i, (chain, target, pattern)) in refusals.iter().enumerate() {
        let args: Vec<&str> = target.iter().map(String::as_str).collect();
        let (out, pgdata) = restore(&f, &format!("bad{i}"), chain, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{target:?} accepted");
        assert!(
            err.contains(pattern),
            "{target:?}: expected \"{pattern}\" in {err}"
        );
        assert!(!pgdata.exists(), "{target:?}: data directory left behind");
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&f.work);
}

#[test]
fn pg17_point_in_time_restore() {
    pitr(PgVersion::V17);
}

#[test]
fn pg18_point_in_time_restore() {
    pitr(PgVersion::V18);
}
