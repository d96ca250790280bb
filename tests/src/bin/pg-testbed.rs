//! `pg-testbed`: start and stop a throwaway test-bed cluster from a shell script (README's
//! try-it command uses it).
//!
//!   pg-testbed start 17|18|15     prints shell assignments: PGTB_ROOT, PGTB_PORT, PGTB_CONNINFO,
//!                                 PGTB_SOCKET_CONNINFO
//!   pg-testbed stop ROOT [DATA]   stops the server (of ROOT/data or DATA) and deletes ROOT
//!   pg-testbed start-on 17|18 DIR starts a server on a data directory (a restored backup)
//!   pg-testbed s3-start BUCKET    starts a throwaway SeaweedFS with BUCKET; prints S3_ROOT,
//!                                 S3_PID and the AWS_* variables that reach it
//!   pg-testbed s3-stop ROOT PID   stops it and deletes ROOT

use std::path::PathBuf;

use pgrepl_testbed::{run_as_test_user, server_bin, Cluster, PgVersion, Role};

fn version(s: &str) -> PgVersion {
    match s {
        "15" => PgVersion::V15,
        "17" => PgVersion::V17,
        "18" => PgVersion::V18,
        other => {
            eprintln!("pg-testbed: unknown version {other:?} (15, 17 or 18)");
            std::process::exit(2)
        }
    }
}

fn print(c: &Cluster) {
    println!("PGTB_ROOT='{}'", c.root.display());
    println!("PGTB_DATA='{}'", c.data.display());
    println!("PGTB_PORT={}", c.port);
    println!(
        "PGTB_CONNINFO='{}'",
        c.conninfo(Role::Postgres, "sslmode=disable")
    );
    println!("PGTB_SOCKET_CONNINFO='{}'", c.socket_conninfo());
    if c.has_tls() {
        println!(
            "PGTB_TLS_CONNINFO='host=localhost port={} user={} password={} sslmode=verify-full sslrootcert={}'",
            c.port,
            Role::Scram.name(),
            Role::Scram.password().unwrap_or_default(),
            c.ca_cert().display()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["start", v] => {
            let c = Cluster::start(version(v));
            print(&c);
            c.keep();
        }
        ["start-on", v, dir] => {
            let c = Cluster::start_on(version(v), &PathBuf::from(dir));
            print(&c);
            c.keep();
        }
        ["s3-start", bucket] => {
            let w = pgrepl_testbed::SeaweedFs::start(&[bucket]);
            for (k, v) in w.env() {
                println!("export {k}='{v}'");
            }
            let (dir, pid) = w.keep();
            println!("S3_ROOT='{}'", dir.display());
            println!("S3_PID={pid}");
        }
        ["s3-stop", root, pid] => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid])
                .status();
            let _ = std::fs::remove_dir_all(root);
        }
        ["hand-over", dir] => {
            // give a directory (a WAL archive recovery reads) to the server user
            pgrepl_testbed::hand_over(&PathBuf::from(dir));
        }
        ["stop", root, rest @ ..] => {
            let root = PathBuf::from(root);
            let data = rest
                .first()
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("data"));
            if data.join("postmaster.pid").exists() {
                // pg_ctl stop only signals the postmaster named in postmaster.pid.
                let _ = run_as_test_user(&server_bin(PgVersion::V18).join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "fast", "-w", "stop"])
                    .output();
            }
            let _ = std::fs::remove_dir_all(&root);
        }
        _ => {
            eprintln!(
                "usage: pg-testbed start 15|17|18 | start-on 17|18 DATADIR | hand-over DIR | stop ROOT [DATADIR] | s3-start BUCKET | s3-stop ROOT PID"
            );
            std::process::exit(2);
        }
    }
}
