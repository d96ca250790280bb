//! Helpers shared by the `pgrepl` binary's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::process::{Command, Output};

use pgrepl_testbed::{tool, Cluster};

/// The `pgrepl` binary under test (`PGREPL_TEST_BIN` runs the tests against another build,
/// for instance to see a new test fail on an older one).
pub fn pgrepl() -> Command {
    match std::env::var_os("PGREPL_TEST_BIN") {
        Some(bin) => Command::new(bin),
        None => Command::new(env!("CARGO_BIN_EXE_pgrepl")),
    }
}

/// Asserts that a run succeeded, showing its output if not.
pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "pgrepl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// pg_dumpall of a cluster, with tablespace locations normalised.
pub fn dumpall(c: &Cluster, ts_location: &Path) -> String {
    let out = Command::new(tool("pg_dumpall"))
        .arg("-h")
        .arg(c.socket_dir())
        .args(["-p", &c.port.to_string(), "-U", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dumpall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump 18.6 fences dumps with \restrict/\unrestrict and a random key per run
    String::from_utf8(out.stdout)
        .unwrap()
        .replace(&ts_location.display().to_string(), "<tablespace>")
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Equal dumps, or a panic showing the first line that differs.
pub fn same_dump(got: &str, want: &str, what: &str) {
    if got == want {
        return;
    }
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let i = g
        .iter()
        .zip(&w)
        .position(|(a, b)| a != b)
        .unwrap_or(g.len().min(w.len()));
    panic!(
        "{what}: dumps differ at line {}: got {:?}, want {:?} ({} vs {} lines)",
        i + 1,
        g.get(i),
        w.get(i),
        g.len(),
        w.len()
    );
}

/// `pgrepl basebackup -c fast --no-sync -D target` with `extra` flags, which must succeed.
pub fn basebackup(conninfo: &str, target: &Path, extra: &[&str]) {
    ok(pgrepl()
        .args([
            "basebackup",
            "-d",
            conninfo,
            "-c",
            "fast",
            "--no-sync",
            "-D",
        ])
        .arg(target)
        .args(extra)
        .output()
        .unwrap());
}

/// PostgreSQL 18's pg_verifybackup accepts the backup in `dir` (with `extra` options).
pub fn pg_verifybackup_ok(dir: &Path, extra: &[&str]) {
    let out = Command::new(tool("pg_verifybackup"))
        .args(extra)
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
