//! Throwaway PostgreSQL clusters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::certs::TestCa;
use crate::install::{server_bin, tool, PgVersion};
use crate::user::{hand_over, run_as_test_user, server_identity};

/// The roles every cluster has, each allowed to replicate with one authentication method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Superuser; `trust` over TCP and the socket.
    Postgres,
    /// `md5`.
    Md5,
    /// `scram-sha-256`.
    Scram,
    /// `cert` (TLS client certificate with CN=cert_user).
    Cert,
    /// `scram-sha-256`, and only over TLS (`hostnossl ... reject`).
    TlsOnly,
    /// `password` (cleartext).
    Cleartext,
}

impl Role {
    /// The role name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Postgres => "postgres",
            Role::Md5 => "md5_user",
            Role::Scram => "scram_user",
            Role::Cert => "cert_user",
            Role::TlsOnly => "tls_only",
            Role::Cleartext => "pw_user",
        }
    }

    /// The role's password, if it has one.
    pub fn password(self) -> Option<&'static str> {
        match self {
            Role::Postgres | Role::Cert => None,
            Role::Md5 => Some("md5 pa'ss:word"),
            Role::Scram => Some("scram-sëcret"),
            Role::TlsOnly => Some("tls-only-secret"),
            Role::Cleartext => Some("plain secret"),
        }
    }
}

const HBA: &str = "\
local     all          all                       trust
local     replication  all                       trust
host      all          postgres    127.0.0.1/32  trust
host      replication  postgres    127.0.0.1/32  trust
host      replication  md5_user    127.0.0.1/32  md5
host      replication  scram_user  127.0.0.1/32  scram-sha-256
host      replication  pw_user     127.0.0.1/32  password
hostssl   replication  cert_user   127.0.0.1/32  cert
hostnossl replication  tls_only    127.0.0.1/32  reject
host      replication  tls_only    127.0.0.1/32  scram-sha-256
host      all          all         127.0.0.1/32  scram-sha-256
";

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// TLS on, with a throwaway CA; the server certificate names `localhost` only.
    pub ssl: bool,
    /// Extra postgresql.conf lines.
    pub conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            ssl: true,
            conf: Vec::new(),
        }
    }
}

/// A running throwaway cluster, stopped and deleted on drop. If the test is panicking, the tail
/// of the server log is printed first.
#[derive(Debug)]
pub struct Cluster {
    /// The server version.
    pub version: PgVersion,
    /// The server's bin directory.
    pub bin: PathBuf,
    /// Working directory: socket, log, certificates, tablespaces.
    pub root: PathBuf,
    /// The data directory.
    pub data: PathBuf,
    /// TCP port on 127.0.0.1 (also names the Unix socket in `root`).
    pub port: u16,
    ca: Option<Arc<TestCa>>,
    running: bool,
    extra_cleanup: Option<PathBuf>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

fn make_owned_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    hand_over(path);
}

impl Cluster {
    /// initdb (with data checksums) and start a cluster of `version` with default options.
    pub fn start(version: PgVersion) -> Cluster {
        Self::start_with(version, ClusterOptions::default())
    }

    /// initdb and start with `opts`.
    pub fn start_with(version: PgVersion, opts: ClusterOptions) -> Cluster {
        let bin = server_bin(version);
        let root = crate::temp_dir("pgr");
        make_owned_dir(&root);
        let data = root.join("data");
        let out = run_as_test_user(&bin.join("initdb"))
            .current_dir(&root)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--data-checksums",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        if !out.status.success() {
            panic!(
                "initdb failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut conf = vec![
            "wal_level = replica".to_owned(),
            "max_wal_senders = 16".into(),
            "max_replication_slots = 16".into(),
            "fsync = off".into(),
            "shared_buffers = 32MB".into(),
            "max_connections = 40".into(),
            "wal_sender_timeout = 60s".into(),
            "log_line_prefix = '%m [%p] %q%u@%d '".into(),
            "password_encryption = 'scram-sha-256'".into(),
        ];
        if version >= PgVersion::V17 {
            conf.push("summarize_wal = on".into());
        }
        let mut ca = None;
        if opts.ssl {
            let c = TestCa::new("pgrepl test CA");
            c.issue(
                "localhost",
                &["localhost"],
                &data.join("server.crt"),
                &data.join("server.key"),
            );
            c.write_cert(&data.join("root.crt"));
            let client = root.join("client");
            std::fs::create_dir_all(&client).expect("client cert dir");
            c.issue(
                "cert_user",
                &[],
                &client.join("cert_user.crt"),
                &client.join("cert_user.key"),
            );
            c.write_cert(&client.join("root.crt"));
            conf.extend([
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
                "ssl_ca_file = 'root.crt'".into(),
            ]);
            ca = Some(Arc::new(c));
        }
        conf.extend(opts.conf.iter().cloned());
        let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
        pgconf.push_str("\n# pgrepl test bed\n");
        for line in &conf {
            pgconf.push_str(line);
            pgconf.push('\n');
        }
        std::fs::write(data.join("postgresql.conf"), pgconf).expect("write conf");
        std::fs::write(data.join("pg_hba.conf"), HBA).expect("write hba");
        hand_over(&data);
        let mut c = Cluster {
            version,
            bin,
            root,
            data,
            port: 0,
            ca,
            running: false,
            extra_cleanup: None,
        };
        c.start_server();
        c.create_roles();
        c
    }

    /// Starts a server of `version` on an existing data directory (a restored backup). The
    /// directory is handed to the server user and deleted with the cluster.
    pub fn start_on(version: PgVersion, data: &Path) -> Cluster {
        let root = crate::temp_dir("pgr");
        make_owned_dir(&root);
        hand_over(data);
        let mut c = Cluster {
            version,
            bin: server_bin(version),
            root,
            data: data.to_path_buf(),
            port: 0,
            ca: None,
            running: false,
            extra_cleanup: None,
        };
        c.start_server();
        c
    }

    /// `pg_ctl start` on our port and socket directory.
    fn pg_ctl_start(&self) -> std::process::Output {
        run_as_test_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1",
                self.port,
                self.root.display()
            ))
            .arg("start")
            .output()
            .expect("cannot run pg_ctl")
    }

    fn start_server(&mut self) {
        let mut last = String::new();
        for _ in 0..3 {
            self.port = free_port();
            let out = self.pg_ctl_start();
            if out.status.success() {
                self.running = true;
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !self.log_tail(20).contains("could not bind") {
                break;
            }
        }
        panic!(
            "could not start PostgreSQL {} on {}: {last}\nserver log:\n{}",
            self.version.major(),
            self.data.display(),
            self.log_tail(40)
        );
    }

    /// Restarts the server (same port).
    pub fn restart(&mut self) {
        self.stop_server("fast");
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "restart failed:\n{}",
            self.log_tail(40)
        );
        self.running = true;
    }

    /// Starts a server stopped with [`Cluster::stop_server`] again, on the same port.
    pub fn start_stopped(&mut self) {
        let out = self.pg_ctl_start();
        assert!(out.status.success(), "start failed:\n{}", self.log_tail(40));
        self.running = true;
    }

    /// Stops the server (`fast` or `immediate`).
    pub fn stop_server(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let _ = run_as_test_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", mode, "-w", "-t", "120", "stop"])
            .output();
        self.running = false;
    }

    fn create_roles(&self) {
        let mut sql = String::new();
        for r in [
            Role::Md5,
            Role::Scram,
            Role::Cert,
            Role::TlsOnly,
            Role::Cleartext,
        ] {
            let pw = r
                .password()
                .map(|p| format!(" PASSWORD '{}'", p.replace('\'', "''")));
            if r == Role::Md5 {
                sql.push_str("SET password_encryption = 'md5';");
            } else {
                sql.push_str("SET password_encryption = 'scram-sha-256';");
            }
            sql.push_str(&format!(
                "CREATE ROLE {} LOGIN REPLICATION{};",
                r.name(),
                pw.unwrap_or_default()
            ));
        }
        self.psql(&sql);
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// A key=value conninfo for `role` over TCP to 127.0.0.1 with the given extra keywords.
    pub fn conninfo(&self, role: Role, extra: &str) -> String {
        let mut s = format!("host=127.0.0.1 port={} user={}", self.port, role.name());
        if let Some(pw) = role.password() {
            s.push_str(&format!(
                " password='{}'",
                pw.replace('\\', "\\\\").replace('\'', "\\'")
            ));
        }
        if !extra.is_empty() {
            s.push(' ');
            s.push_str(extra);
        }
        s
    }

    /// A conninfo over the Unix socket as postgres.
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres",
            self.root.display(),
            self.port
        )
    }

    /// True when the server has TLS on.
    pub fn has_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The CA certificate file clients should trust.
    pub fn ca_cert(&self) -> PathBuf {
        assert!(self.ca.is_some(), "cluster was started without TLS");
        self.root.join("client/root.crt")
    }

    /// The client certificate and key of `cert_user`.
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        assert!(self.ca.is_some(), "cluster was started without TLS");
        (
            self.root.join("client/cert_user.crt"),
            self.root.join("client/cert_user.key"),
        )
    }

    /// Runs SQL as postgres in database `postgres` and returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Runs SQL in `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = Command::new(tool("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("cannot run psql");
        if !out.status.success() {
            panic!(
                "psql failed on PostgreSQL {} with {sql:?}:\n{}\nserver log:\n{}",
                self.version.major(),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(20)
            );
        }
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// `pgbench -i -s scale` into database `postgres`.
    pub fn pgbench_init(&self, scale: u32) {
        crate::run(
            Command::new(tool("pgbench"))
                .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
                .arg(&self.root)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"]),
        );
    }

    /// Runs pgbench with `args` (e.g. `["-T", "5", "-c", "2"]`).
    pub fn pgbench(&self, args: &[&str]) -> String {
        crate::run(
            Command::new(tool("pgbench"))
                .args(args)
                .arg("-h")
                .arg(&self.root)
                .args(["-p", &self.port.to_string(), "-U", "postgres", "postgres"]),
        )
    }

    /// Creates a tablespace in a directory under the cluster root and returns its path.
    pub fn create_tablespace(&self, name: &str) -> PathBuf {
        let dir = self.root.join(format!("ts_{name}"));
        make_owned_dir(&dir);
        self.psql(&format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            dir.display()
        ));
        dir
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        crate::run(
            run_as_test_user(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "promote"]),
        );
        for _ in 0..600 {
            if self.psql("SELECT pg_is_in_recovery()") == "f" {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("standby did not leave recovery:\n{}", self.log_tail(30));
    }

    /// Leaves the server running and its files in place when this value is dropped (for the
    /// `pg-testbed` command). Returns the cluster root.
    pub fn keep(mut self) -> PathBuf {
        self.running = false;
        let root = std::mem::take(&mut self.root);
        self.data = PathBuf::new();
        root
    }

    /// The uid/gid servers run as (None when not root).
    pub fn server_identity() -> Option<(u32, u32)> {
        server_identity()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL {} server log ({}), last lines ---\n{}\n---",
                self.version.major(),
                self.log_path().display(),
                self.log_tail(40)
            );
        }
        if self.root.as_os_str().is_empty() {
            return; // kept
        }
        self.stop_server("immediate");
        let _ = std::fs::remove_dir_all(&self.root);
        if !self.data.starts_with(&self.root) {
            let _ = std::fs::remove_dir_all(&self.data);
        }
        if let Some(d) = &self.extra_cleanup {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Cluster {
    /// A streaming standby of this cluster, built with PostgreSQL's own pg_basebackup (-R), and
    /// started. Used to make timeline switches (promote it).
    pub fn standby(&self) -> Cluster {
        let dir = crate::temp_dir("pgs");
        let data = dir.join("data");
        crate::run(
            Command::new(tool("pg_basebackup"))
                .arg("-D")
                .arg(&data)
                .args(["-X", "stream", "-R", "-c", "fast", "--no-sync", "-h"])
                .arg(&self.root)
                .args(["-p", &self.port.to_string(), "-U", "postgres"]),
        );
        hand_over(&dir);
        let mut c = Cluster::start_on(self.version, &data);
        c.ca = self.ca.clone();
        // the standby's data directory lives in `dir`; remove it with the cluster
        c.extra_cleanup = Some(dir);
        c
    }
}
