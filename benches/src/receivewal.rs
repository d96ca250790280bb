//! WAL streaming: `pgrepl receivewal` and `pg_receivewal` side by side on one server, under the
//! same pgbench load at the same time. Lag (server WAL position minus reported flush position)
//! is sampled each second from pg_stat_replication; CPU and peak RSS come from wait4.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgrepl_testbed::{tool, Cluster, ClusterOptions, PgVersion, Role};

use crate::measure::{median, wait_child, Sample};

pub fn bench(scale: u32, seconds: u64) -> serde_json::Value {
    let c = Cluster::start_with(
        PgVersion::V18,
        ClusterOptions {
            conf: vec!["wal_keep_size = 4GB".into(), "max_wal_size = 4GB".into()],
            ..Default::default()
        },
    );
    eprintln!("receivewal: pgbench -i -s {scale}, then {seconds} s of pgbench with both receivers attached");
    c.pgbench_init(scale);
    let root = pgrepl_testbed::temp_dir("rwbench");
    let me = std::env::current_exe().unwrap();
    let ours_bin = me.parent().unwrap().join("pgrepl");
    assert!(
        ours_bin.exists(),
        "{} not found: build it with cargo build --release -p pgrepl-cli",
        ours_bin.display()
    );
    let conn = |app: &str| {
        c.conninfo(
            Role::Postgres,
            &format!("sslmode=disable application_name={app}"),
        )
    };
    for slot in ["ours", "theirs"] {
        c.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
    }
    let ours = Command::new(&ours_bin)
        .args(["receivewal", "-d", &conn("ours"), "-S", "ours", "-D"])
        .arg(root.join("ours"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(root.join("theirs")).unwrap();
    let theirs = Command::new(tool("pg_receivewal"))
        .args(["-d", &conn("theirs"), "-S", "theirs", "-D"])
        .arg(root.join("theirs"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut load = Command::new(tool("pgbench"))
        .args(["-T", &seconds.to_string(), "-c", "4", "-j", "2", "-n", "-h"])
        .arg(c.socket_dir())
        .args(["-p", &c.port.to_string(), "-U", "postgres", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start_lsn = c.psql("SELECT pg_current_wal_lsn()");
    let mut lag_ours = Vec::new();
    let mut lag_theirs = Vec::new();
    let began = Instant::now();
    while load.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_secs(1));
        let rows = c.psql(
            "SELECT application_name, coalesce(pg_current_wal_lsn() - flush_lsn, 0) FROM pg_stat_replication",
        );
        for row in rows.lines() {
            if let Some((app, lag)) = row.split_once('|') {
                let lag: f64 = lag.parse().unwrap_or(f64::NAN);
                match app {
                    "ours" => lag_ours.push(lag),
                    "theirs" => lag_theirs.push(lag),
                    _ => {}
                }
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let wal_mb = c
        .psql(&format!(
            "SELECT pg_current_wal_lsn() - '{start_lsn}'::pg_lsn"
        ))
        .parse::<f64>()
        .unwrap_or(0.0)
        / 1e6;
    std::thread::sleep(Duration::from_secs(2));
    for p in [&ours, &theirs] {
        let _ = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status();
    }
    let so: Sample = wait_child(ours, &ours_bin.display().to_string(), true);
    let st: Sample = wait_child(theirs, "pg_receivewal", true);
    let _ = std::fs::remove_dir_all(&root);
    let seg = 16.0 * 1024.0 * 1024.0;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (mo, mt) = (max(&lag_ours), max(&lag_theirs));
    let (medo, medt) = (median(lag_ours.clone()), median(lag_theirs.clone()));
    println!(
        "receivewal   {wal_mb:>6.0} MB in {secs:.0} s  pgrepl cpu {:.2}s  pg_receivewal cpu {:.2}s  ratio cpu {:.2}x  lag median/max pgrepl {:.1}/{:.1} MB, pg_receivewal {:.1}/{:.1} MB (segment 16.8 MB)  peak RSS {} / {} MiB",
        so.cpu,
        st.cpu,
        so.cpu / st.cpu,
        medo / 1e6,
        mo / 1e6,
        medt / 1e6,
        mt / 1e6,
        so.max_rss_kb / 1024,
        st.max_rss_kb / 1024
    );
    serde_json::json!({
        "job": "receivewal",
        "wal_mb": wal_mb,
        "seconds": secs,
        "ours": {"cpu_s": so.cpu, "peak_rss_kib": so.max_rss_kb, "lag_median_bytes": medo, "lag_max_bytes": mo, "lag_max_within_segment": mo <= seg},
        "pg_receivewal": {"cpu_s": st.cpu, "peak_rss_kib": st.max_rss_kb, "lag_median_bytes": medt, "lag_max_bytes": mt},
        "ratio": {"cpu": so.cpu / st.cpu},
    })
}
