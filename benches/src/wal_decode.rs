//! WAL decoding: pgwal against `pg_waldump --stats=record` on the same pgbench WAL.

use std::path::{Path, PathBuf};
use std::process::Command;

use pgrepl_testbed::{tool, Cluster, ClusterOptions, PgVersion};
use pgwal::{parse_wal_file_name, DecoderOptions, Lsn, WalDecoder, WalFileKind, WalSegSize};

use crate::measure::{median, run, Sample};

/// The decode side, run as a child process (`pgrepl-bench decode-dir DIR`): reads every segment
/// in order, decodes every record and keeps per-rmgr counts and bytes, as --stats=record does.
pub fn decode_dir(dir: &Path) -> (u64, u64, Lsn) {
    let seg = WalSegSize::DEFAULT;
    let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().into_string().ok()?;
            let p = parse_wal_file_name(&n, seg)?;
            let s = p.segment?.0;
            (p.kind == WalFileKind::SEGMENT).then_some((s, e.path()))
        })
        .collect();
    names.sort();
    let start = Lsn(names[0].0 * seg.bytes());
    let mut d = WalDecoder::new(start, DecoderOptions::new(seg)).expect("decoder");
    let mut per_rmgr = [(0u64, 0u64); 256];
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut end = None;
    'files: for (_, path) in &names {
        let mut file = std::fs::File::open(path).expect("open segment");
        loop {
            let n = d.feed_from(&mut file, 128 << 10).expect("read segment");
            if n == 0 {
                continue 'files;
            }
            bytes += n as u64;
            loop {
                match d.next_record() {
                    Ok(Some(r)) => {
                        records += 1;
                        let e = &mut per_rmgr[usize::from(r.rmid)];
                        e.0 += 1;
                        e.1 += u64::from(r.total_len);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        end = Some(e.lsn);
                        break 'files;
                    }
                }
            }
        }
    }
    let _ = per_rmgr;
    // without an invalid record, the WAL ends where the last file does
    (records, bytes, end.unwrap_or_else(|| d.position()))
}

pub fn bench(scale: u32, rounds: usize) -> serde_json::Value {
    eprintln!(
        "wal-decode: making WAL with pgbench -i -s {scale} and a pgbench run on PostgreSQL 18"
    );
    let c = Cluster::start_with(
        PgVersion::V18,
        ClusterOptions {
            conf: vec!["wal_keep_size = 4GB".into(), "max_wal_size = 4GB".into()],
            ..Default::default()
        },
    );
    c.pgbench_init(scale);
    c.pgbench(&["-T", "10", "-c", "2", "-j", "2", "-n"]);
    c.psql("SELECT pg_switch_wal()");
    // copy the WAL out so the server cannot recycle it during the rounds
    let dir = pgrepl_testbed::temp_dir("walbench");
    let mut first = None;
    let mut total = 0u64;
    let mut names: Vec<String> = std::fs::read_dir(c.data.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            parse_wal_file_name(n, WalSegSize::DEFAULT)
                .is_some_and(|p| p.kind == WalFileKind::SEGMENT)
        })
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(c.data.join("pg_wal").join(n), dir.join(n)).unwrap();
        total += WalSegSize::DEFAULT.bytes();
        first.get_or_insert(n.clone());
    }
    let first = parse_wal_file_name(first.as_ref().unwrap(), WalSegSize::DEFAULT)
        .unwrap()
        .segment
        .unwrap()
        .start_lsn(WalSegSize::DEFAULT)
        .unwrap();
    drop(c);
    let (records, _, end) = decode_dir(&dir);
    let wal_mb = (end.0 - first.0) as f64 / 1e6;
    eprintln!(
        "wal-decode: {records} records, {wal_mb:.0} MB of WAL ({} segment files, {} MB)",
        names.len(),
        total >> 20
    );

    let me = std::env::current_exe().unwrap();
    let mut ours: Vec<Sample> = Vec::new();
    let mut theirs: Vec<Sample> = Vec::new();
    for round in 0..=rounds {
        let a = run(Command::new(&me).arg("decode-dir").arg(&dir));
        let b = run(Command::new(tool("pg_waldump"))
            .arg("--stats=record")
            .arg("-p")
            .arg(&dir)
            .args(["-s", &first.to_string(), "-e", &end.to_string()]));
        if round > 0 {
            // round 0 warms the page cache
            ours.push(a);
            theirs.push(b);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let (ow, oc) = (m(&ours, |s| s.wall), m(&ours, |s| s.cpu));
    let (tw, tc) = (m(&theirs, |s| s.wall), m(&theirs, |s| s.cpu));
    let orss = ours.iter().map(|s| s.max_rss_kb).max().unwrap_or(0);
    let trss = theirs.iter().map(|s| s.max_rss_kb).max().unwrap_or(0);
    println!(
        "wal-decode   {wal_mb:>6.0} MB  pgwal wall {ow:.3}s ({:.0} MB/s, {:.0} MB/s per CPU-s)  pg_waldump --stats wall {tw:.3}s ({:.0} MB/s)  ratio wall {:.2}x  cpu {:.2}x  peak RSS {} / {} MiB",
        wal_mb / ow,
        wal_mb / oc,
        wal_mb / tw,
        ow / tw,
        oc / tc,
        orss / 1024,
        trss / 1024
    );
    serde_json::json!({
        "job": "wal-decode",
        "wal_mb": wal_mb,
        "records": records,
        "rounds": rounds,
        "ours": {"wall_s": ow, "cpu_s": oc, "peak_rss_kib": orss, "mb_per_s": wal_mb / ow, "mb_per_cpu_s": wal_mb / oc},
        "pg_waldump": {"wall_s": tw, "cpu_s": tc, "peak_rss_kib": trss, "mb_per_s": wal_mb / tw},
        "ratio": {"wall": ow / tw, "cpu": oc / tc},
    })
}
