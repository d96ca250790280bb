//! `pgrepl-bench`: runs pgrepl and PostgreSQL's own tools side by side on one test-bed server,
//! alternating them for N rounds, and prints medians and ratios (wall time, the client
//! process's user+sys CPU, peak RSS), one line per job; the same goes to
//! `bench-results/<job>.json`.
//!
//!   pgrepl-bench wal-decode [--scale N] [--rounds R]
//!   pgrepl-bench receivewal [--scale N] [--seconds S]    (needs target/release/pgrepl)
//!   pgrepl-bench basebackup [--scale N] [--rounds R] [--only MODE]  (needs target/release/pgrepl and zstd)
//!
//!   pgrepl-bench combine [--scale N] [--rounds R]        (needs target/release/pgrepl)
//!   pgrepl-bench verify [--scale N] [--rounds R]         (needs target/release/pgrepl)
//!   pgrepl-bench micro [--rounds R]                      (no server: tar, WAL, checksums in MB/s)
//!   pgrepl-bench repository [--scale N] [--rounds R]     (needs target/release/pgrepl, zstd, curl)
//!   pgrepl-bench pgbackrest [--scale N] [--rounds R]     (needs target/release/pgrepl, pgbackrest)
//!   pgrepl-bench scaling [--rounds R]                    (scales 20, 100, 300; needs target/release/pgrepl)
//!   pgrepl-bench ssh [--scale N] [--rounds R]            (needs target/release/pgrepl, sshd, ssh)

mod basebackup;
mod combine;
mod measure;
mod micro;
mod pgbackrest;
mod receivewal;
mod repository;
mod scaling;
mod ssh;
mod wal_decode;

use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: pgrepl-bench wal-decode [--scale N] [--rounds R] | receivewal [--scale N] [--seconds S] | basebackup [--scale N] [--rounds R] [--only MODE] | combine|verify [--scale N] [--rounds R] | micro [--rounds R] | repository|pgbackrest [--scale N] [--rounds R] | scaling [--rounds R] | ssh [--scale N] [--rounds R]");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(job) = args.first() else { usage() };
    if job == "decode-dir" {
        let dir = args.get(1).map(PathBuf::from).unwrap_or_else(|| usage());
        let (records, bytes, end) = wal_decode::decode_dir(&dir);
        println!("{records} records, {bytes} bytes read, end of WAL at {end}");
        return;
    }
    let mut scale = 100u32;
    let mut rounds = 5usize;
    let mut seconds = 20u64;
    let mut only: Option<String> = None;
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--scale" => scale = v.parse().unwrap_or_else(|_| usage()),
            "--rounds" => rounds = v.parse().unwrap_or_else(|_| usage()),
            "--seconds" => seconds = v.parse().unwrap_or_else(|_| usage()),
            "--only" => only = Some(v.clone()),
            _ => usage(),
        }
    }
    let result = match job.as_str() {
        "wal-decode" => wal_decode::bench(scale, rounds),
        "receivewal" => receivewal::bench(scale, seconds),
        "basebackup" => basebackup::bench(scale, rounds, only.as_deref()),
        "combine" => combine::bench_combine(scale, rounds),
        "verify" => combine::bench_verify(scale, rounds),
        "micro" => micro::bench(rounds),
        "repository" => repository::bench(scale, rounds),
        "pgbackrest" => pgbackrest::bench(scale, rounds),
        "scaling" => scaling::bench(rounds),
        "ssh" => ssh::bench(scale, rounds),
        _ => usage(),
    };
    let dir = pgrepl_testbed::repo_root().join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{job}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    eprintln!("wrote {}", path.display());
}
