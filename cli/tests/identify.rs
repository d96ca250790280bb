//! The `pgrepl` binary: `identify` against a real server, and the command-line conventions
//! (one-line errors, exit status, --help, --version, no password in any output).

use pgrepl_testbed::{Cluster, PgVersion, Role};

mod common;
use common::pgrepl;

#[test]
fn identify_prints_the_server_identity() {
    let c = Cluster::start(PgVersion::V18);
    let out = pgrepl()
        .args([
            "identify",
            "--json",
            "-d",
            &c.conninfo(Role::Scram, "sslmode=disable"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["system_identifier"].as_str().unwrap(),
        c.psql("SELECT system_identifier FROM pg_control_system()")
    );
    assert_eq!(v["timeline"], 1);
    assert_eq!(v["wal_segment_size"], 16 << 20);
    assert_eq!(v["server_version_major"], 18);

    // -h/-p/-U override the connection string, as in pg_basebackup
    let out = pgrepl()
        .args([
            "identify",
            "-d",
            "host=nowhere.invalid port=1 sslmode=disable",
        ])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "-U",
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("timeline:          1"));
}

#[test]
fn errors_are_one_line_and_never_show_the_password() {
    let c = Cluster::start(PgVersion::V18);
    let out = pgrepl()
        .args([
            "identify",
            "-d",
            &format!(
                "host=127.0.0.1 port={} user=scram_user password=hunter2-wrong sslmode=disable",
                c.port
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("pgrepl: error: "), "{err}");
    assert!(
        err.contains("password authentication failed for user \"scram_user\""),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(out.stdout.is_empty());

    let out = pgrepl()
        .args([
            "identify",
            "-d",
            "host=127.0.0.1 port=1 user=x sslmode=disable",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("pgrepl: error: connection to server at 127.0.0.1:1 failed"),
        "{err}"
    );

    let out = pgrepl()
        .args(["identify", "-d", "bogus_key=1"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid connection option \"bogus_key\"")
    );
}

#[test]
fn help_and_version() {
    let out = pgrepl().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pgrepl "));
    for (args, expect) in [
        (&["--help"][..], "identify"),
        (&["identify", "--help"][..], "--dbname"),
    ] {
        let out = pgrepl().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(expect),
            "{args:?}"
        );
    }
}

/// `-W`: the password is prompted for before connecting. On a terminal (a pty from `script`)
/// it is not echoed; without one it is read from standard input, as libpq's prompt does.
#[test]
fn password_prompt() {
    let c = Cluster::start(PgVersion::V18);
    let secret = Role::Scram.password().unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=scram_user sslmode=disable",
        c.port
    );
    let bin = env!("CARGO_BIN_EXE_pgrepl");
    for (typed, good) in [(secret, true), ("not-the-password", false)] {
        // typed once the prompt is shown, as a person would (the echo is off before the prompt
        // is written; input that arrived earlier would be echoed by the terminal, not by us)
        let mut child = std::process::Command::new("script")
            .args([
                "-qec",
                &format!("{bin} identify -W -d '{conninfo}'"),
                "/dev/null",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the script program (util-linux), for a terminal");
        use std::io::{Read, Write};
        let mut stdout = child.stdout.take().unwrap();
        let mut shown = Vec::new();
        while !shown.ends_with(b"Password: ") {
            let mut b = [0u8; 1];
            let n = stdout.read(&mut b).unwrap();
            assert!(n == 1, "no prompt: {}", String::from_utf8_lossy(&shown));
            shown.push(b[0]);
        }
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{typed}\n").as_bytes())
            .unwrap();
        stdout.read_to_end(&mut shown).unwrap();
        let status = child.wait().unwrap();
        let out = std::process::Output {
            status,
            stdout: shown,
            stderr: Vec::new(),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("Password: "), "{text}");
        assert!(!text.contains(typed), "the password was echoed: {text}");
        assert_eq!(out.status.success(), good, "{text}");
        assert_eq!(text.contains("system identifier:"), good, "{text}");
    }
    // no terminal: standard input
    let mut child = pgrepl()
        .args(["identify", "-W", "-d", &conninfo])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
}

/// Every subcommand's --help fits 80 columns, as PostgreSQL's tools keep theirs (its tests
/// allow 95).
#[test]
fn help_fits_80_columns() {
    for sub in [
        "",
        "identify",
        "receivewal",
        "basebackup",
        "combine",
        "restore",
        "verify",
        "wal-fetch",
    ] {
        let mut cmd = pgrepl();
        if !sub.is_empty() {
            cmd.arg(sub);
        }
        let out = cmd.arg("--help").output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "{sub}");
        let text = String::from_utf8_lossy(&out.stdout);
        let long: Vec<&str> = text.lines().filter(|l| l.chars().count() > 80).collect();
        assert!(long.is_empty(), "{sub} --help: {long:?}");
    }
}
