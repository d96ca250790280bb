//! The PostgreSQL test bed: finds the pinned binaries that `scripts/install-postgres` put in
//! `.pg/`, and starts throwaway clusters of a chosen version for integration tests and
//! benchmarks.
//!
//! PostgreSQL refuses to run as root, and CI runs as root, so when we are root the clusters run
//! as an unprivileged system user ([`TEST_USER`]) that is created on first use; directories a
//! server must own are handed over (owner and mode 0700) before it starts. A missing binary is a
//! test failure with instructions, never a skip.

mod certs;
mod cluster;
pub mod fake;
mod install;
mod seaweed;
mod sshd;
mod user;

pub use certs::TestCa;
pub use cluster::{Cluster, ClusterOptions, Role};
pub use install::{pg15_bin, repo_root, server_bin, tool, tools_bin, PgVersion};
pub use seaweed::{weed_bin, SeaweedCluster, SeaweedFs, S3_ACCESS_KEY, S3_SECRET_KEY};
pub use sshd::SshServer;
pub use user::{hand_over, run_as_test_user, TEST_USER};

/// Runs `cmd` and returns its stdout, panicking with stderr and the command line on failure.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh, empty directory under the system temp dir (short, so socket paths fit), removed by
/// the caller or by [`Cluster`]'s drop.
pub fn temp_dir(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::temp_dir();
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = base.join(format!(
            "{prefix}{}-{}-{:x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            nanos & 0xfff
        ));
        match std::fs::create_dir(&p) {
            Ok(()) => return p,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", p.display()),
        }
    }
}
