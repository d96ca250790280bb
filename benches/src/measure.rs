//! Running a command as a child and measuring it: wall time, user+sys CPU and peak RSS (wait4).

use std::process::{Command, Stdio};
use std::time::Instant;

/// One run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub wall: f64,
    pub cpu: f64,
    pub max_rss_kb: i64,
}

/// Runs `cmd` with stdout discarded and returns its figures; panics if it fails.
pub fn run(cmd: &mut Command) -> Sample {
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut s = wait_child(child, &format!("{cmd:?}"), false);
    s.wall = start.elapsed().as_secs_f64();
    s
}

/// Reaps `child` with wait4 and returns its CPU time and peak RSS (wall is left 0). Panics if
/// it failed, unless `signalled_ok` and it was ended by SIGTERM/SIGINT or exited 0.
pub fn wait_child(child: std::process::Child, what: &str, signalled_ok: bool) -> Sample {
    let start = Instant::now();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: `usage` is a plain C struct that wait4 fills in; pid is our own child, not yet
    // reaped (we never call Child::wait).
    #[allow(unsafe_code)]
    let (ret, usage) = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let ret = libc::wait4(pid, &mut status, 0, &mut usage);
        (ret, usage)
    };
    let wall = start.elapsed().as_secs_f64();
    assert_eq!(ret, pid, "wait4 failed for {what}");
    let ok = (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
        || (signalled_ok
            && (libc::WIFSIGNALED(status)
                || (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 143)));
    if !ok {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("{what} failed (status {status}): {err}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Sample {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kb: usage.ru_maxrss,
    }
}

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A PostgreSQL 18 test-bed cluster with pgbench data at `scale`, for `job`'s measurements.
pub fn pgbench_cluster(scale: u32, job: &str) -> pgrepl_testbed::Cluster {
    let c = pgrepl_testbed::Cluster::start_with(
        pgrepl_testbed::PgVersion::V18,
        pgrepl_testbed::ClusterOptions {
            conf: vec!["max_wal_size = 4GB".into()],
            ..Default::default()
        },
    );
    eprintln!("{job}: pgbench -i -s {scale} on PostgreSQL 18");
    c.pgbench_init(scale);
    c
}

/// The release `pgrepl` beside this benchmark binary.
pub fn ours_bin() -> std::path::PathBuf {
    let bin = std::env::current_exe()
        .expect("the benchmark's own path")
        .with_file_name("pgrepl");
    assert!(
        bin.exists(),
        "build it: cargo build --release -p pgrepl-cli"
    );
    bin
}
