//! `pgrepl expire --repo`, on a local directory and on SeaweedFS, against a repository built
//! here: three chains (full, incremental; full, incremental; full) with WAL streamed beside
//! them and an upload that never committed. The plan is checked against what the rules say
//! (worked out here from the backups' IDs and times, not from the plan), `--dry-run` deletes
//! nothing, the real run leaves a repository `check` finds healthy, tiered retention
//! (`--retain-full` with a short `--retain-pitr`) keeps WAL only from the window's first
//! backup, and the earliest point of the PITR window is restored by a real server.

use std::time::Duration;

use pgrepl_testbed::{hand_over, temp_dir, Cluster, Role};
use pgrepo::store::PutMode;
use pgwal::WalSegSize;

mod common;
use common::{json, ok, parse_lsn, start_restored, wait_for, RepoBed};

fn backup(b: &RepoBed, kind: &str) -> serde_json::Value {
    b.backup(&["--type", kind])
}

/// `restore --repo --target immediate` into `dir/pgdata`, and a server started on it.
fn restore_immediate(b: &RepoBed, dir: &std::path::Path) -> Cluster {
    let pgdata = dir.join("pgdata");
    ok(b.cmd()
        .current_dir(dir)
        .args(["restore", "--repo", &b.r.url, "-D"])
        .arg(&pgdata)
        .args(["--no-sync", "--target", "immediate"])
        .output()
        .unwrap());
    start_restored(&pgdata)
}

fn expire(b: &RepoBed, args: &[&str]) -> serde_json::Value {
    json(&ok(b
        .cmd()
        .args(["expire", "--repo", &b.r.url, "--json"])
        .args(args)
        .output()
        .unwrap()))
}

/// The backups' fates in a plan: (id, action).
fn fates(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_owned(),
                b["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The WAL segments (timeline 1) the repository holds, by number.
fn wal_segments(b: &RepoBed) -> Vec<u64> {
    let seg = WalSegSize::DEFAULT;
    b.r.keys("")
        .iter()
        .filter_map(|k| match pgrepo::layout::parse_wal_key(k, seg)? {
            pgrepo::layout::WalObject::Segment(_, s) | pgrepo::layout::WalObject::Partial(_, s) => {
                Some(s.0)
            }
            _ => None,
        })
        .collect()
}

fn run(on_s3: bool) {
    let b = RepoBed::new("expire", on_s3);
    let c = &b.c;
    let work = b.work.clone();
    let rx = b.spawn_receiver();
    c.psql("CREATE TABLE ticks (k int, at timestamptz DEFAULT clock_timestamp())");
    c.pgbench_init(1);
    let load = |k: u32| {
        c.pgbench(&["-t", "50", "-c", "1", "-n"]);
        c.psql(&format!("INSERT INTO ticks (k) VALUES ({k})"));
        c.psql("SELECT pg_switch_wal()");
    };
    // three chains, seconds apart (backup times are whole seconds)
    let f1 = backup(&b, "full");
    load(1);
    let i1 = backup(&b, "auto");
    load(2);
    let f2 = backup(&b, "full");
    load(3);
    std::thread::sleep(Duration::from_secs(2));
    let i2 = backup(&b, "auto");
    // restore counts a backup consistent up to the end of the second it ended in
    std::thread::sleep(Duration::from_millis(1100));
    load(4);
    std::thread::sleep(Duration::from_secs(4));
    load(5);
    let f3 = backup(&b, "full");
    load(6);
    assert_eq!(i1["kind"], "incremental", "{i1}");
    assert_eq!(i2["parent"], f2["id"], "{i2}");
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap().to_owned();
    let (f1, i1, f2, i2, f3) = (f1, i1, f2, i2, f3);
    b.stop_receiver(rx);
    // an upload that never committed (written just now)
    let orphan = "20200101T000000Z-F-0a0b0c";
    b.r.rt
        .block_on(b.r.store.put(
            &format!("backups/{orphan}/pack-00000"),
            vec![1u8; 100].into(),
            PutMode::Overwrite,
        ))
        .unwrap();

    // --retain-full 2, dry run: the two newest fulls' chains stay, WAL from F2's start
    let before = b.r.keys("");
    let plan = expire(&b, &["--retain-full", "2", "--dry-run"]);
    let want: Vec<(String, String)> = [
        (&f1, "expire"),
        (&i1, "expire"),
        (&f2, "keep"),
        (&i2, "keep"),
        (&f3, "keep"),
    ]
    .iter()
    .map(|(v, a)| (id(v), (*a).to_owned()))
    .collect();
    assert_eq!(fates(&plan), want, "{plan}");
    assert_eq!(plan["wal_kept_from"], f2["start_lsn"], "{plan}");
    let g = &plan["garbage"][0];
    assert_eq!(g["id"], orphan);
    assert_eq!(
        g["remove"], false,
        "a young upload would be removed: {plan}"
    );
    assert_eq!(b.r.keys(""), before, "--dry-run deleted something");

    // for real: only what the plan said went; the rest is healthy
    let done = expire(&b, &["--retain-full", "2"]);
    assert_eq!(fates(&done), want);
    assert_eq!(done["objects_deleted"], done["objects_to_delete"], "{done}");
    let after = b.r.keys("");
    for k in &after {
        assert!(
            !k.contains(&id(&f1)) && !k.contains(&id(&i1)),
            "{k} survived its backup's expiry"
        );
    }
    let seg = WalSegSize::DEFAULT;
    let f2_first = parse_lsn(f2["start_lsn"].as_str().unwrap()).segment(seg).0;
    let wal = wal_segments(&b);
    assert!(
        wal.iter().all(|&s| s >= f2_first),
        "WAL before F2 kept: {wal:?}"
    );
    assert!(
        wal.contains(&f2_first),
        "F2's first segment removed: {wal:?}"
    );
    let check = b
        .cmd()
        .args(["check", "--repo", &b.r.url])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // tiered: one full by count, a window opened by I2: F2 stays as I2's parent, WAL only from
    // I2's start; the orphan goes with --min-age 0
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let window = now - i2["end_time"].as_i64().unwrap() - 1;
    let plan = expire(
        &b,
        &[
            "--retain-full",
            "1",
            "--retain-pitr",
            &format!("{window}s"),
            "--min-age",
            "0s",
        ],
    );
    let reasons = |v: &serde_json::Value| -> Vec<String> {
        plan["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == v["id"])
            .unwrap()["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(reasons(&f2), ["ancestor_of_kept"], "{plan}");
    assert_eq!(reasons(&i2), ["retain_pitr"], "{plan}");
    assert_eq!(reasons(&f3), ["retain_full", "retain_pitr"], "{plan}");
    assert_eq!(plan["wal_kept_from"], i2["start_lsn"], "{plan}");
    assert_eq!(plan["garbage"][0]["remove"], true, "{plan}");
    assert!(!b.r.keys("").iter().any(|k| k.contains(orphan)));
    let i2_first = parse_lsn(i2["start_lsn"].as_str().unwrap()).segment(seg).0;
    assert!(wal_segments(&b).iter().all(|&s| s >= i2_first));

    // the window's first seconds past I2: half a second after row 4 (row 5 is 4 s later)
    let t4 = c.psql(
        "SELECT to_char((at + interval '500 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' FROM ticks WHERE k = 4",
    );
    let fresh = temp_dir("expire-restore");
    let pgdata = fresh.join("pgdata");
    if !on_s3 {
        hand_over(&work.join("repo"));
    }
    ok(b.cmd()
        .current_dir(&fresh)
        .args(["restore", "--repo", &b.r.url, "-D"])
        .arg(&pgdata)
        .args(["--no-sync", "--target-time", &t4])
        .output()
        .unwrap());
    let r = start_restored(&pgdata);
    wait_for("recovery to end", || {
        r.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        r.psql("SELECT string_agg(k::text, ',' ORDER BY k) FROM ticks"),
        "1,2,3,4"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&fresh);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg18_expire_on_a_local_directory() {
    run(false);
}

#[test]
fn pg18_expire_on_seaweedfs() {
    run(true);
}

/// Retention across two timelines with a WAL gap: a chain on timeline 1 (its archive missing
/// a segment after the incremental), then a server restored from it and promoted to
/// timeline 2, whose full and incremental backups go into the same repository. `expire
/// --retain-full 1` plans the timeline-2 chain kept and the timeline-1 chain and its WAL
/// gone; after it runs, check passes and the kept chain is restored by a server that holds
/// the timeline-2 rows.
#[test]
fn pg18_expire_across_two_timelines_and_a_gap() {
    let b = RepoBed::new("expire-tl", false);
    let c = &b.c;
    let work = b.work.clone();
    let rx = b.spawn_receiver();
    c.psql("CREATE TABLE ticks (k int, at timestamptz DEFAULT clock_timestamp())");
    c.pgbench_init(1);
    let f1 = backup(&b, "full");
    c.pgbench(&["-t", "50", "-c", "1", "-n"]);
    let i1 = backup(&b, "auto");
    assert_eq!(i1["kind"], "incremental", "{i1}");
    for k in 1..=3 {
        c.psql(&format!("INSERT INTO ticks (k) VALUES ({k})"));
        c.psql("SELECT pg_switch_wal()");
    }
    b.stop_receiver(rx);
    // a gap: the segment after the incremental's end
    let seg = WalSegSize::DEFAULT;
    let i1_end = parse_lsn(i1["end_lsn"].as_str().unwrap()).segment(seg);
    let gone =
        pgrepo::layout::segment_key(pgwal::TimelineId(1), pgwal::SegmentNo(i1_end.0 + 1), seg);
    b.r.rt.block_on(b.r.store.delete(&gone)).unwrap();

    // timeline 2: a server restored from I1 (consistent point) and promoted
    hand_over(&work.join("repo"));
    let fresh = temp_dir("expire-tl2");
    let c2 = restore_immediate(&b, &fresh);
    wait_for("the promotion", || {
        c2.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        c2.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    c2.psql("ALTER SYSTEM SET summarize_wal = on");
    c2.psql("SELECT pg_reload_conf()");
    c2.psql("CREATE TABLE tl2 (x int)");
    c2.psql("INSERT INTO tl2 VALUES (2)");
    let conn2 = c2.conninfo(Role::Postgres, "sslmode=disable");
    let backup2 = |kind: &str| {
        json(&ok(b
            .cmd()
            .args(["backup", "-d", &conn2, "--repo", &b.r.url, "-c", "fast"])
            .args(["--type", kind, "--json"])
            .output()
            .unwrap()))
    };
    let f2 = backup2("auto");
    assert_eq!(f2["kind"], "full", "{f2}");
    assert_eq!(f2["full_reason_code"], "timeline_changed", "{f2}");
    assert_eq!(f2["timeline"], 2);
    c2.psql("INSERT INTO tl2 VALUES (3)");
    let i2 = backup2("auto");
    assert_eq!(i2["parent"], f2["id"], "{i2}");

    let plan = expire(&b, &["--retain-full", "1", "--dry-run"]);
    let id = |v: &serde_json::Value| v["id"].as_str().unwrap().to_owned();
    let want: Vec<(String, String)> = [
        (&f1, "expire"),
        (&i1, "expire"),
        (&f2, "keep"),
        (&i2, "keep"),
    ]
    .iter()
    .map(|(v, a)| (id(v), (*a).to_owned()))
    .collect();
    assert_eq!(fates(&plan), want, "{plan}");
    assert_eq!(plan["wal_kept_from"], f2["start_lsn"], "{plan}");
    expire(&b, &["--retain-full", "1"]);
    let f2_first = parse_lsn(f2["start_lsn"].as_str().unwrap()).segment(seg).0;
    let wal = wal_segments(&b);
    assert!(wal.iter().all(|&s| s >= f2_first), "{wal:?}");
    let check = b
        .cmd()
        .args(["check", "--repo", &b.r.url])
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    drop(c2);

    // the kept chain, restored by a server: timeline 2's rows
    let again = temp_dir("expire-tl2-restore");
    let r = restore_immediate(&b, &again);
    wait_for("recovery to end", || {
        r.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        r.psql("SELECT string_agg(x::text, ',' ORDER BY x) FROM tl2"),
        "2,3"
    );
    drop(r);
    let _ = std::fs::remove_dir_all(&again);
    let _ = std::fs::remove_dir_all(&fresh);
    let _ = std::fs::remove_dir_all(&work);
}
