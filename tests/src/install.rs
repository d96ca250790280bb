//! Where the test bed's PostgreSQL binaries are.

use std::path::{Path, PathBuf};

/// The server versions the test bed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgVersion {
    /// Debian's PostgreSQL 15 (the only server here built with zstd and lz4).
    V15,
    /// PostgreSQL 17.10.
    V17,
    /// PostgreSQL 18.4.
    V18,
}

impl PgVersion {
    /// The major version number.
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V17 => 17,
            PgVersion::V18 => 18,
        }
    }
}

/// The repository root (where `.pg/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    if !p.exists() {
        panic!(
            "{what} not found at {}: run scripts/install-postgres (it installs the pinned PostgreSQL 17 and 18 builds into .pg/)",
            p.display()
        );
    }
    p
}

/// Debian's PostgreSQL 15 binaries.
pub fn pg15_bin() -> PathBuf {
    let p = PathBuf::from("/usr/lib/postgresql/15/bin");
    if !p.join("postgres").exists() {
        panic!(
            "PostgreSQL 15 not found in {}: run scripts/install-postgres (it installs Debian's postgresql-15)",
            p.display()
        );
    }
    p
}

/// The `bin/` directory of a server version.
pub fn server_bin(v: PgVersion) -> PathBuf {
    match v {
        PgVersion::V15 => pg15_bin(),
        PgVersion::V17 => must_exist(repo_root().join(".pg/17/bin"), "PostgreSQL 17"),
        PgVersion::V18 => must_exist(repo_root().join(".pg/18/bin"), "PostgreSQL 18"),
    }
}

/// The PostgreSQL 18.6 client tools and oracles (pg_basebackup, pg_verifybackup, psql, ...).
pub fn tools_bin() -> PathBuf {
    must_exist(
        repo_root().join(".pg/18-tools/bin"),
        "PostgreSQL 18 client tools",
    )
}

/// One of the 18.6 tools by name.
pub fn tool(name: &str) -> PathBuf {
    must_exist(tools_bin().join(name), name)
}
