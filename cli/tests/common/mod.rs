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

/// Waits (up to two minutes) until `f` holds.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A run's stdout as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An LSN as PostgreSQL prints it.
pub fn parse_lsn(text: &str) -> pgwal::Lsn {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    pgwal::Lsn((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap())
}

/// A repository as the tests reach it: its URL, the environment `pgrepl` runs with (only
/// PATH and the S3 variables), and the library's own store on it, to look at and damage
/// objects directly.
pub struct RepoAccess {
    /// `--repo`.
    pub url: String,
    /// S3 variables (empty for a directory).
    pub env: Vec<(&'static str, String)>,
    /// The store.
    pub store: std::sync::Arc<dyn pgrepo::store::Store>,
    /// A runtime for the store's calls.
    pub rt: tokio::runtime::Runtime,
}

impl RepoAccess {
    /// Opens `url` with `env`.
    pub fn new(url: &str, env: Vec<(&'static str, String)>) -> RepoAccess {
        let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let loc = pgrepo::location::Location::parse(url).unwrap();
        let store = pgrepo::location::open_store(&loc, &Default::default(), &lookup).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        RepoAccess {
            url: url.to_owned(),
            env,
            store,
            rt,
        }
    }

    /// `pgrepl` with a cleared environment but for PATH and the S3 variables.
    pub fn cmd(&self) -> Command {
        let mut c = pgrepl();
        c.env_clear().env("PATH", "/usr/bin:/bin");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.rt
            .block_on(self.store.list(prefix))
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect()
    }

    /// `check --repo`'s exit code and stderr.
    pub fn check(&self) -> (Option<i32>, String) {
        let out = self
            .cmd()
            .args(["check", "--repo", &self.url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A PostgreSQL 18 server (WAL kept, WAL summaries on) with an initialised repository beside
/// it — a directory, or a bucket on a SeaweedFS of its own — and a physical slot for
/// `receivewal --repo`.
pub struct RepoBed {
    /// The server.
    pub c: Cluster,
    /// The object store, when the repository is on S3.
    pub s3: Option<pgrepl_testbed::SeaweedFs>,
    /// The repository.
    pub r: RepoAccess,
    /// A scratch directory (the repository's, when it is a directory).
    pub work: std::path::PathBuf,
    slot: String,
    app: String,
}

impl RepoBed {
    /// `name` names the scratch directory, the bucket, the slot and the application.
    pub fn new(name: &str, on_s3: bool) -> RepoBed {
        let c = Cluster::start_with(
            pgrepl_testbed::PgVersion::V18,
            pgrepl_testbed::ClusterOptions {
                conf: vec!["wal_keep_size = '1GB'".into(), "summarize_wal = on".into()],
                ..Default::default()
            },
        );
        let work = pgrepl_testbed::temp_dir(name);
        let bucket = format!("pgrepl-{name}");
        let s3 = on_s3.then(|| pgrepl_testbed::SeaweedFs::start(&[bucket.as_str()]));
        let url = match on_s3 {
            true => format!("s3://{bucket}/db"),
            false => work.join("repo").display().to_string(),
        };
        let env = s3.as_ref().map(|w| w.env()).unwrap_or_default();
        let b = RepoBed {
            c,
            s3,
            r: RepoAccess::new(&url, env),
            work,
            slot: name.replace('-', "_"),
            app: format!("pgrepl_{}", name.replace('-', "_")),
        };
        ok(b.cmd().args(["init", "--repo", &b.r.url]).output().unwrap());
        ok(b.cmd()
            .args([
                "receivewal",
                "-d",
                &b.conninfo(),
                "-S",
                &b.slot,
                "--create-slot",
            ])
            .output()
            .unwrap());
        b
    }

    /// `pgrepl` with the repository's environment.
    pub fn cmd(&self) -> Command {
        self.r.cmd()
    }

    /// The server's replication conninfo.
    pub fn conninfo(&self) -> String {
        self.c.conninfo(
            pgrepl_testbed::Role::Postgres,
            &format!("sslmode=disable application_name={}", self.app),
        )
    }

    /// `receivewal --repo` on the slot, in the background.
    pub fn spawn_receiver(&self) -> std::process::Child {
        self.spawn_receiver_with(&[])
    }

    /// `receivewal --repo` on the slot with `extra` flags, in the background.
    pub fn spawn_receiver_with(&self, extra: &[&str]) -> std::process::Child {
        self.cmd()
            .args(["receivewal", "-d", &self.conninfo(), "-S", &self.slot])
            .args(extra)
            .args(["--repo", &self.r.url])
            .args(["--status-interval", "1", "--partial-interval", "1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Switches WAL, waits until the repository holds it all, and stops the receiver.
    pub fn stop_receiver(&self, mut rx: std::process::Child) {
        let end = self.c.psql("SELECT pg_switch_wal()");
        wait_for("the WAL in the repository", || {
            self.c.psql(&format!(
                "SELECT restart_lsn >= '{end}' FROM pg_replication_slots WHERE slot_name = '{}'",
                self.slot
            )) == "t"
        });
        let _ = Command::new("kill")
            .args(["-TERM", &rx.id().to_string()])
            .status();
        rx.wait().unwrap();
    }

    /// `backup --repo -c fast --json` with `extra`.
    pub fn backup(&self, extra: &[&str]) -> serde_json::Value {
        json(&ok(self
            .cmd()
            .args(["backup", "-d", &self.conninfo(), "--repo", &self.r.url])
            .args(["-c", "fast", "--json"])
            .args(extra)
            .output()
            .unwrap()))
    }
}

/// Starts a PostgreSQL 18 server on a data directory that `pgrepl restore` wrote, handing the
/// files its restore_command reads (`<pgdata>.pgrepl-env`, `<pgdata>.pgrepl-prefetch/`) to the
/// server's user first.
pub fn start_restored(pgdata: &Path) -> Cluster {
    for suffix in ["pgrepl-env", "pgrepl-prefetch"] {
        let p = pgdata.with_extension(suffix);
        if suffix == "pgrepl-prefetch" {
            std::fs::create_dir_all(&p).unwrap();
        }
        if p.exists() {
            pgrepl_testbed::hand_over(&p);
        }
    }
    Cluster::start_on(pgrepl_testbed::PgVersion::V18, pgdata)
}
