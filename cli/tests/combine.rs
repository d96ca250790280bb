//! `pgrepl combine` against real chains: PG 18's pg_combinebackup and pg_verifybackup are the
//! judges on 18, a server started on the result (its pg_dumpall against the source's) on both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgrepl_testbed::{hand_over, temp_dir, tool, Cluster, PgVersion, Role};

mod common;
use common::{dumpall, ok, pg_verifybackup_ok, pgrepl, same_dump};

fn conninfo(c: &Cluster) -> String {
    c.conninfo(
        Role::Postgres,
        "sslmode=disable application_name=pgrepl_combine",
    )
}

/// A backup of `c` into `target` (plain unless `extra` says otherwise).
fn backup(c: &Cluster, target: &Path, extra: &[&str]) {
    common::basebackup(&conninfo(c), target, extra);
}

fn combine(inputs: &[&Path], output: &Path, extra: &[&str]) -> Output {
    pgrepl()
        .arg("combine")
        .args(inputs)
        .arg("-o")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

/// Every file under `root` (links followed) with its bytes' length, by relative path.
fn files(root: &Path) -> BTreeMap<String, u64> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, u64>) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let m = std::fs::metadata(e.path()).unwrap();
            if m.is_dir() {
                walk(root, &r, out);
            } else {
                out.insert(r, m.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

/// The on-disk path of a relation's main fork, relative to the data directory.
fn relpath(c: &Cluster, db: &str, rel: &str) -> String {
    c.psql_db(db, &format!("SELECT pg_relation_filepath('{rel}')"))
}

/// Builds the changes PostgreSQL's own pg_combinebackup tests exercise, between backups.
fn prepare(c: &Cluster) {
    c.pgbench_init(1);
    c.create_tablespace("ts1");
    c.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 5000) g");
    c.psql("CREATE TABLE doomed AS SELECT g FROM generate_series(1, 1000) g");
    c.psql("CREATE TABLE shrink WITH (autovacuum_enabled = off) AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g");
    c.psql("CREATE DATABASE samoid OID 50000 STRATEGY FILE_COPY");
    c.psql_db(
        "samoid",
        "CREATE TABLE old_rel AS SELECT g FROM generate_series(1, 3000) g",
    );
    c.psql("CHECKPOINT");
}

fn change_1(c: &Cluster) {
    c.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 7 = 0");
    c.psql("INSERT INTO in_ts SELECT g FROM generate_series(5001, 9000) g");
    c.psql("TRUNCATE pgbench_history");
    c.psql("DROP TABLE doomed");
    // VACUUM truncates the emptied tail of the relation
    c.psql("DELETE FROM shrink WHERE g > 1000");
    c.psql("VACUUM shrink");
    // a database dropped and created again with the same OID, copied file by file
    c.psql("DROP DATABASE samoid");
    c.psql("CREATE DATABASE samoid OID 50000 STRATEGY FILE_COPY");
    c.psql_db("samoid", "CREATE TABLE new_rel AS SELECT 1 AS x");
}

fn change_2(c: &Cluster) {
    c.psql("VACUUM FULL pgbench_branches");
    c.psql("DROP DATABASE IF EXISTS extra");
    c.psql("CREATE DATABASE extra");
    c.psql_db("extra", "CREATE TABLE e AS SELECT 2 AS y");
    c.pgbench(&["-t", "100", "-c", "2", "-n"]);
}

fn assert_fails_with(out: Output, pattern: &str, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(
        err.contains(pattern),
        "{what}: expected \"{pattern}\" in: {err}"
    );
}

#[test]
fn pg18_combine_matches_pg_combinebackup() {
    let c = Cluster::start(PgVersion::V18);
    prepare(&c);
    let ts = c.root.join("ts_ts1");
    let work = temp_dir("comb18");
    let map = |to: &str| format!("{}={}", ts.display(), work.join(to).display());
    let (full, i1, i2) = (work.join("full"), work.join("i1"), work.join("i2"));
    backup(&c, &full, &["-T", &map("ts_full")]);
    change_1(&c);
    backup(
        &c,
        &i1,
        &["-T", &map("ts_i1"), "-i", full.to_str().unwrap()],
    );
    change_2(&c);
    backup(&c, &i2, &["-T", &map("ts_i2"), "-i", i1.to_str().unwrap()]);
    let expect = dumpall(&c, &ts);
    let shrink = relpath(&c, "postgres", "shrink");
    let shrink_size = std::fs::metadata(c.data.join(&shrink)).unwrap().len();

    let ts_i2 = work.join("ts_i2");
    let theirs = work.join("theirs");
    let out = Command::new(tool("pg_combinebackup"))
        .args([&full, &i1, &i2])
        .arg("-o")
        .arg(&theirs)
        .arg("-T")
        .arg(format!(
            "{}={}",
            ts_i2.display(),
            work.join("ts_theirs").display()
        ))
        .arg("--no-sync")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_combinebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // (pg_combinebackup's -d and --sync-method accepted too)
    for (name, method) in [
        ("ours", &["--copy"][..]),
        (
            "ours_cfr",
            &["--copy-file-range", "-d", "--sync-method=syncfs"][..],
        ),
    ] {
        let ours = work.join(name);
        let ts_ours = work.join(format!("ts_{name}"));
        let mapping = format!("-T{}={}", ts_i2.display(), ts_ours.display());
        let mut args = method.to_vec();
        args.push(&mapping);
        ok(combine(&[&full, &i1, &i2], &ours, &args));
        // the same files, and every one byte-identical (backup_manifest aside: mtimes differ)
        let (a, b) = (files(&ours), files(&theirs));
        assert_eq!(
            a.keys()
                .filter(|k| *k != "backup_manifest")
                .collect::<Vec<_>>(),
            b.keys()
                .filter(|k| *k != "backup_manifest")
                .collect::<Vec<_>>(),
            "{name}: file sets differ"
        );
        assert!(a.len() > 900, "{} files", a.len());
        for k in a.keys().filter(|k| *k != "backup_manifest") {
            let (x, y) = (
                std::fs::read(ours.join(k)).unwrap(),
                std::fs::read(theirs.join(k)).unwrap(),
            );
            assert!(x == y, "{name}: {k} differs from pg_combinebackup's");
        }
        pg_verifybackup_ok(&ours, &[]);
    }
    let ours = work.join("ours");
    // the truncated relation has the source's size; the recreated database's old relation is gone
    assert_eq!(
        std::fs::metadata(ours.join(&shrink)).unwrap().len(),
        shrink_size
    );
    let relations = |d: &Path| -> Vec<String> {
        files(&d.join("base/50000"))
            .into_keys()
            .filter(|k| k != "pg_internal.init")
            .collect()
    };
    assert_eq!(relations(&ours), relations(&c.data));
    // another checksum algorithm on request
    let sha = work.join("sha");
    ok(combine(
        &[&full, &i1, &i2],
        &sha,
        &[
            "--manifest-checksums=SHA224",
            "-T",
            &format!("{}={}", ts_i2.display(), work.join("ts_sha").display()),
        ],
    ));
    let m = std::fs::read_to_string(sha.join("backup_manifest")).unwrap();
    assert!(m.matches("SHA224").count() > 100);
    pg_verifybackup_ok(&sha, &[]);

    hand_over(&work.join("ts_ours"));
    let restored = Cluster::start_on(PgVersion::V18, &ours);
    same_dump(
        &dumpall(&restored, &work.join("ts_ours")),
        &expect,
        "combined chain vs source",
    );
    assert_eq!(
        restored.psql_db("samoid", "SELECT to_regclass('old_rel') IS NULL"),
        "t"
    );
    drop(restored);
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_tar_chain_combines_and_starts() {
    let c = Cluster::start(PgVersion::V17);
    prepare(&c);
    let ts = c.root.join("ts_ts1");
    let work = temp_dir("comb17");
    let (full, i1, i2) = (work.join("full"), work.join("i1"), work.join("i2"));
    // a tar.zst full backup, a tar.lz4 incremental, a plain incremental (plain tar backups are
    // combined in the in-place tablespace test)
    backup(&c, &full, &["-F", "t", "--compress", "zstd:3"]);
    change_1(&c);
    backup(
        &c,
        &i1,
        &["-F", "t", "--compress", "lz4", "-i", full.to_str().unwrap()],
    );
    assert!(i1.join("base.tar.lz4").exists());
    change_2(&c);
    backup(
        &c,
        &i2,
        &[
            "-T",
            &format!("{}={}", ts.display(), work.join("ts_i2").display()),
            "-i",
            i1.to_str().unwrap(),
        ],
    );
    let expect = dumpall(&c, &ts);
    let shrink = relpath(&c, "postgres", "shrink");
    let shrink_size = std::fs::metadata(c.data.join(&shrink)).unwrap().len();
    let out_ts = work.join("ts_out");
    let out = work.join("out");
    let summary = ok(combine(
        &[&full, &i1, &i2],
        &out,
        &[
            "--json",
            "-T",
            &format!("{}={}", work.join("ts_i2").display(), out_ts.display()),
        ],
    ));
    let s: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert!(s["reconstructed"].as_u64().unwrap() > 100, "{s}");
    assert_eq!(
        std::fs::metadata(out.join(&shrink)).unwrap().len(),
        shrink_size
    );
    // our own verify accepts the result (manifest, files, WAL)
    ok(pgrepl().arg("verify").arg(&out).output().unwrap());
    // no scratch copies of the decompressed archive are left
    assert!(!std::fs::read_dir(&work).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("scratch")));
    hand_over(&out_ts);
    let restored = Cluster::start_on(PgVersion::V17, &out);
    same_dump(
        &dumpall(&restored, &out_ts),
        &expect,
        "PG 17 combined chain vs source",
    );
    assert_eq!(
        restored.psql_db("samoid", "SELECT to_regclass('old_rel') IS NULL"),
        "t"
    );
    drop(restored);

    // the whole chain in tar form: the newest backup's tablespace_map gives the location
    let i2t = work.join("i2t");
    backup(&c, &i2t, &["-F", "t", "-i", i1.to_str().unwrap()]);
    let out2 = work.join("out2");
    let ts2 = work.join("ts_out2");
    ok(combine(
        &[&full, &i1, &i2t],
        &out2,
        &["-T", &format!("{}={}", ts.display(), ts2.display())],
    ));
    assert_eq!(
        std::fs::read_link(
            out2.join("pg_tblspc")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
        )
        .unwrap(),
        ts2
    );
    assert!(!out2.join("tablespace_map").exists());
    ok(pgrepl().arg("verify").arg(&out2).output().unwrap());
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_bad_chains_are_refused_before_anything_is_written() {
    let c = Cluster::start(PgVersion::V17);
    c.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let other = Cluster::start(PgVersion::V17);
    let work = temp_dir("combbad");
    let p = |n: &str| work.join(n);
    backup(&c, &p("full"), &[]);
    c.psql("UPDATE t SET g = g + 1");
    backup(&c, &p("i1"), &["-i", p("full").to_str().unwrap()]);
    c.psql("UPDATE t SET g = g + 1");
    backup(&c, &p("i2"), &["-i", p("i1").to_str().unwrap()]);
    backup(&other, &p("ofull"), &[]);
    backup(&other, &p("oi1"), &["-i", p("ofull").to_str().unwrap()]);
    let out = p("out");
    let cases: Vec<(Vec<PathBuf>, &str, &str)> = vec![
        (
            vec![p("full"), p("full")],
            "is a full backup, but only the first backup should be a full backup",
            "two full backups",
        ),
        (
            vec![p("i1"), p("i1")],
            "is an incremental backup, but the first backup should be a full backup",
            "incremental first",
        ),
        (
            vec![p("full"), p("oi1")],
            "expected system identifier",
            "another cluster's backup",
        ),
        (
            vec![p("full"), p("i2")],
            "starts at LSN",
            "a gap in the chain",
        ),
        (
            vec![p("full"), p("i2"), p("i1")],
            "starts at LSN",
            "wrong order",
        ),
    ];
    for (inputs, pattern, what) in cases {
        let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
        assert_fails_with(combine(&refs, &out, &[]), pattern, what);
        assert!(!out.exists(), "{what}: output written");
        assert!(
            !p(".out.pgrepl-incomplete").exists(),
            "{what}: staging left"
        );
    }
    // another cluster's manifest in the middle backup
    std::fs::rename(p("i1/backup_manifest"), p("i1/manifest.orig")).unwrap();
    std::fs::copy(p("oi1/backup_manifest"), p("i1/backup_manifest")).unwrap();
    assert_fails_with(
        combine(&[&p("full"), &p("i1"), &p("i2")], &out, &[]),
        "manifest system identifier is",
        "foreign manifest",
    );
    std::fs::rename(p("i1/manifest.orig"), p("i1/backup_manifest")).unwrap();
    // an INCREMENTAL file in the full backup
    let inc = std::fs::read_dir(p("i1/base/5"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("INCREMENTAL."))
        .expect("an incremental file in i1");
    std::fs::copy(p("i1/base/5").join(&inc), p("full/base/5").join(&inc)).unwrap();
    assert_fails_with(
        combine(&[&p("full"), &p("i1")], &out, &[]),
        "full backup contains unexpected incremental file",
        "INCREMENTAL file in the full backup",
    );
    std::fs::remove_file(p("full/base/5").join(&inc)).unwrap();
    // a damaged incremental file is named
    let inc2 = std::fs::read_dir(p("i2/base/5"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("INCREMENTAL."))
        .expect("an incremental file in i2");
    let victim = p("i2/base/5").join(&inc2);
    let mut b = std::fs::read(&victim).unwrap();
    b[0] ^= 0xff;
    std::fs::write(&victim, b).unwrap();
    assert_fails_with(
        combine(&[&p("full"), &p("i1"), &p("i2")], &out, &[]),
        &inc2,
        "damaged incremental file",
    );
    assert!(!out.exists());
    // a non-empty output directory
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"x").unwrap();
    assert_fails_with(
        combine(&[&p("full"), &p("i1")], &out, &[]),
        "exists but is not empty",
        "non-empty output",
    );
    std::fs::remove_dir_all(&out).unwrap();
    // and the good chain works (into an existing empty directory)
    std::fs::create_dir(&out).unwrap();
    ok(combine(&[&p("full"), &p("i1")], &out, &[]));
    ok(pgrepl().arg("verify").arg(&out).output().unwrap());
    // --dry-run checks and writes nothing
    let dry = p("dry");
    ok(combine(&[&p("full"), &p("i1")], &dry, &["-n"]));
    assert!(!dry.exists());
    // --link: files the newest backup holds whole are hard links, reconstructed ones are not
    use std::os::unix::fs::MetadataExt;
    let linked = p("linked");
    ok(combine(&[&p("full"), &p("i1")], &linked, &["--link"]));
    assert_eq!(
        std::fs::metadata(linked.join("PG_VERSION"))
            .unwrap()
            .nlink(),
        2
    );
    let t = c.psql("SELECT pg_relation_filepath('t')");
    assert_eq!(std::fs::metadata(linked.join(&t)).unwrap().nlink(), 1);
    ok(pgrepl().arg("verify").arg(&linked).output().unwrap());
    drop(other);
    let _ = std::fs::remove_dir_all(&work);
}
