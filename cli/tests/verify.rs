//! `pgrepl verify` against real backups, and against each kind of damage.

use std::path::Path;
use std::process::{Command, Output};

use pgrepl_testbed::{temp_dir, Cluster, PgVersion, Role};

mod common;
use common::pgrepl;

fn backup(c: &Cluster, target: &Path, extra: &[&str]) {
    let out = pgrepl()
        .args([
            "basebackup",
            "-d",
            &c.conninfo(Role::Postgres, "sslmode=disable"),
            "-c",
            "fast",
            "-N",
            "-D",
        ])
        .arg(target)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn verify(dir: &Path, extra: &[&str]) -> Output {
    pgrepl()
        .arg("verify")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

fn fails_naming(dir: &Path, extra: &[&str], needle: &str) {
    let out = verify(dir, extra);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify passed a damaged backup ({needle})"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(
        err.lines().all(|l| l.starts_with("pgrepl: error: ")),
        "{err}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn good_backups_pass(v: PgVersion) {
    let c = Cluster::start(v);
    c.pgbench_init(1);
    let work = temp_dir("vf");
    for (name, args) in [
        ("plain", &[][..]),
        ("tar", &["-F", "t"][..]),
        ("tarzst", &["-F", "t", "-Z", "zstd:3"][..]),
        ("fetch", &["-X", "fetch"][..]),
        // -X fetch in tar format: the WAL is inside base.tar, under pg_wal/
        ("tarfetch", &["-F", "t", "-X", "fetch", "-Z", "gzip"][..]),
    ] {
        backup(&c, &work.join(name), args);
        let out = verify(&work.join(name), &["--json"]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["files_checked"].as_u64().unwrap() > 900, "{name}");
        // the WAL was decoded, for tar backups too
        assert!(
            v["wal_records"].as_u64().unwrap() > 0,
            "{name}: no WAL decoded"
        );
    }
    // a tar backup without WAL: the first segment it needs is named, and -n skips the WAL
    backup(&c, &work.join("tarnone"), &["-F", "t", "-X", "none"]);
    fails_naming(&work.join("tarnone"), &[], "is not in");
    assert!(verify(&work.join("tarnone"), &["-n"]).status.success());
    // a base.tar.zst cut short: the archive and where it ends are named, and the files it no
    // longer holds are counted in one line rather than listed one by one
    let cut = work.join("tarzst");
    let archive = cut.join("base.tar.zst");
    let len = std::fs::metadata(&archive).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&archive)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = verify(&cut, &["-n"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().next().unwrap_or("").contains("base.tar.zst"),
        "{err}"
    );
    assert!(
        err.contains("files listed in the manifest were not checked: archive \"base.tar.zst\" could not be read to its end"),
        "{err}"
    );
    assert!(
        !err.contains("present in the manifest but not on disk"),
        "{err}"
    );
    assert!(err.lines().count() < 10, "{err}");
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn pg17_good_backups_pass() {
    good_backups_pass(PgVersion::V17);
}

#[test]
fn pg18_good_backups_pass() {
    good_backups_pass(PgVersion::V18);
}

/// The findings of `verify --json`: (kind, path, lsn) each.
fn findings(dir: &Path, extra: &[&str]) -> Vec<(String, Option<String>, Option<String>)> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = verify(dir, &args);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["ok"], false);
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().map(str::to_owned);
            (s("kind").unwrap(), s("path"), s("lsn"))
        })
        .collect()
}

#[test]
fn pg18_every_kind_of_damage_is_named() {
    let c = Cluster::start(PgVersion::V18);
    c.pgbench_init(1);
    let other = Cluster::start(PgVersion::V18);
    let work = temp_dir("vf");
    let good = work.join("good");
    backup(&c, &good, &[]);
    let foreign = work.join("foreign");
    backup(&other, &foreign, &[]);
    let case = |name: &str| {
        let d = work.join(name);
        copy_dir(&good, &d);
        d
    };
    let rel = c.psql("SELECT pg_relation_filepath('pgbench_accounts')");

    let d = case("extra");
    std::fs::write(d.join("base/extra_file"), b"x").unwrap();
    fails_naming(
        &d,
        &[],
        "\"base/extra_file\" is present on disk but not in the manifest",
    );
    assert_eq!(
        findings(&d, &[]),
        [("extra".into(), Some("base/extra_file".into()), None)]
    );

    let d = case("missing");
    std::fs::remove_file(d.join("global/pg_filenode.map")).unwrap();
    fails_naming(
        &d,
        &[],
        "\"global/pg_filenode.map\" is present in the manifest but not on disk",
    );
    assert_eq!(
        findings(&d, &[]),
        [(
            "missing".into(),
            Some("global/pg_filenode.map".into()),
            None
        )]
    );

    let d = case("size");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("PG_VERSION"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\n").unwrap();
    fails_naming(&d, &[], "\"PG_VERSION\" has size");
    assert_eq!(
        findings(&d, &[]),
        [("size".into(), Some("PG_VERSION".into()), None)]
    );

    let d = case("byte");
    let p = d.join(&rel);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[9000] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    fails_naming(&d, &[], &format!("checksum mismatch for file \"{rel}\""));
    assert_eq!(
        findings(&d, &[]),
        [("checksum".into(), Some(rel.clone()), None)]
    );

    let d = case("other_manifest");
    std::fs::copy(foreign.join("backup_manifest"), d.join("backup_manifest")).unwrap();
    fails_naming(&d, &["-n"], "control file has");
    assert_eq!(findings(&d, &["-n"])[0].0, "control");

    let d = case("appended");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("backup_manifest"))
        .unwrap();
    std::io::Write::write_all(&mut f, b" ").unwrap();
    fails_naming(
        &d,
        &[],
        "could not parse backup manifest: last line not newline-terminated",
    );
    // a newline appended, as PostgreSQL's 003_corruption.pl does: the checksum no longer holds
    let d = case("appended_newline");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("backup_manifest"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\n").unwrap();
    fails_naming(&d, &[], "manifest checksum mismatch");

    let d = case("wal_missing");
    for e in std::fs::read_dir(d.join("pg_wal")).unwrap() {
        let e = e.unwrap();
        if e.file_name().len() == 24 {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    fails_naming(&d, &[], "is missing from");
    assert_eq!(findings(&d, &[])[0].0, "wal");

    let d = case("wal_damaged");
    for e in std::fs::read_dir(d.join("pg_wal")).unwrap() {
        let e = e.unwrap();
        if e.file_name().len() == 24 {
            let mut b = std::fs::read(e.path()).unwrap();
            for x in &mut b[100..400] {
                *x ^= 0x5a;
            }
            std::fs::write(e.path(), b).unwrap();
        }
    }
    fails_naming(&d, &[], "WAL parsing failed");
    let f = findings(&d, &[]);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "wal");
    assert!(
        f[0].2.is_some(),
        "a WAL finding names where WAL ended: {f:?}"
    );

    // -e stops at the first problem
    let d = case("two");
    std::fs::write(d.join("extra1"), b"x").unwrap();
    std::fs::write(d.join("extra2"), b"x").unwrap();
    let all = String::from_utf8_lossy(&verify(&d, &[]).stderr)
        .lines()
        .count();
    let first = String::from_utf8_lossy(&verify(&d, &["-e"]).stderr)
        .lines()
        .count();
    assert_eq!((all, first), (2, 1));
    let _ = std::fs::remove_dir_all(&work);
}

/// pg_verifybackup's options and its order of reporting (PostgreSQL's 004_options.pl).
#[test]
fn pg17_options_as_pg_verifybackup() {
    let c = Cluster::start(PgVersion::V17);
    let work = temp_dir("vopt");
    let b = work.join("b");
    backup(&c, &b, &[]);
    let out = verify(&b, &["-q"]);
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    fails_naming(
        &b,
        &["-P", "-q"],
        "cannot specify both -P/--progress and -q/--quiet",
    );
    // --format (PostgreSQL 18's pg_verifybackup): plain is fine, tar is wrong for a data
    // directory and says why, anything else is refused
    for f in ["plain", "p"] {
        let out = verify(&b, &["--format", f]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fails_naming(
        &b,
        &["--format", "y"],
        "invalid backup format \"y\", must be \"plain\" or \"tar\"",
    );
    fails_naming(
        &b,
        &["--format=tar", "--no-parse-wal"],
        "\"pg_multixact\" is not a regular file",
    );
    fails_naming(
        &b,
        &["-F", "t", "-n"],
        "file \"PG_VERSION\" is not expected in a tar format backup",
    );
    // the WAL directory under each of pg_verifybackup's names for it
    let moved = work.join("moved_wal");
    std::fs::rename(b.join("pg_wal"), &moved).unwrap();
    fails_naming(&b, &[], "WAL parsing failed for timeline 1");
    for flag in ["-w", "--wal-path", "--wal-directory"] {
        let out = verify(&b, &[flag, moved.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&moved, b.join("pg_wal")).unwrap();
    // PG_VERSION changed without changing its length
    let v = b.join("PG_VERSION");
    let len = std::fs::metadata(&v).unwrap().len() as usize;
    std::fs::write(&v, "q".repeat(len)).unwrap();
    fails_naming(&b, &["-q"], "checksum mismatch for file \"PG_VERSION\"");
    let ok_with = |extra: &[&str]| {
        let out = verify(&b, extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("backup successfully verified"));
        out
    };
    ok_with(&["-s"]);
    let out = ok_with(&["-P", "-i", "PG_VERSION"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(" kB (100%) verified"));
    std::fs::remove_dir_all(b.join("pg_xact")).unwrap();
    fails_naming(
        &b,
        &["-i", "PG_VERSION"],
        "is present in the manifest but not on disk",
    );
    ok_with(&["-i", "PG_VERSION", "-i", "pg_xact"]);
    // both reported; with -e only the first, the missing file (checksums come last)
    let err = String::from_utf8_lossy(&verify(&b, &[]).stderr).into_owned();
    assert!(
        err.contains("\"pg_xact/0000\" is present in the manifest but not on disk"),
        "{err}"
    );
    assert!(
        err.contains("checksum mismatch for file \"PG_VERSION\""),
        "{err}"
    );
    let err = String::from_utf8_lossy(&verify(&b, &["-e"]).stderr).into_owned();
    assert!(
        err.contains("is present in the manifest but not on disk")
            && !err.contains("checksum mismatch"),
        "{err}"
    );
    // a manifest elsewhere, and a backup directory that does not exist
    fails_naming(
        &work.join("fake"),
        &["-m", b.join("backup_manifest").to_str().unwrap()],
        "could not open directory",
    );
    let _ = std::fs::remove_dir_all(&work);
}
