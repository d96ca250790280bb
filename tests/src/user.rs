//! Running servers as an unprivileged user when the tests run as root.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The system user the test servers run as when the tests run as root.
pub const TEST_USER: &str = "pgrepltest";

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn lookup(user: &str) -> Option<(u32, u32)> {
    let out = Command::new("id").arg("-u").arg(user).output().ok()?;
    let gout = Command::new("id").arg("-g").arg(user).output().ok()?;
    if !out.status.success() || !gout.status.success() {
        return None;
    }
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let gid = String::from_utf8_lossy(&gout.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

/// The (uid, gid) servers run as: the test user if we are root (created when missing), else
/// ourselves (`None`).
pub fn server_identity() -> Option<(u32, u32)> {
    static ID: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *ID.get_or_init(|| {
        if effective_uid() != 0 {
            return None;
        }
        if let Some(id) = lookup(TEST_USER) {
            return Some(id);
        }
        let status = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER])
            .status();
        // Another test process may have created it at the same time: look again either way.
        match lookup(TEST_USER) {
            Some(id) => Some(id),
            None => panic!(
                "running as root, and the unprivileged user {TEST_USER} that PostgreSQL must run as could not be created (useradd: {status:?})"
            ),
        }
    })
}

/// A command that runs as the server user.
pub fn run_as_test_user(program: &Path) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = server_identity() {
        c.uid(uid).gid(gid);
        c.env("HOME", "/tmp").env("USER", TEST_USER);
    }
    c
}

/// Gives `dir` and everything under it to the server user, with the directory at 0700, as a
/// server wants its data directory.
pub fn hand_over(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid)) = server_identity() {
        chown_recursive(dir, uid, gid);
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("chmod 0700 {}: {e}", dir.display()));
}

fn chown_recursive(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    let meta = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    if meta.is_dir() {
        for entry in std::fs::read_dir(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())) {
            let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            chown_recursive(&entry.path(), uid, gid);
        }
    }
}
