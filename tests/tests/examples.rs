//! The crates' examples, run against a real server: what README links to must work. Each is
//! judged by PostgreSQL's own tools or files, not by its own output alone.
//!
//! The examples are built by `cargo build --workspace --examples` (scripts/test does it; so does
//! `cargo test`/`cargo nextest run` of the whole workspace).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgrepl_testbed::{run, temp_dir, tool, Cluster, PgVersion, Role};

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/examples-HASH -> target/<profile>/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples").join(name))
        .unwrap();
    assert!(
        p.is_file(),
        "example {name} is not built ({}): run `cargo build --workspace --examples` first",
        p.display()
    );
    p
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn conninfo(c: &Cluster) -> String {
    c.conninfo(Role::Postgres, "sslmode=disable")
}

/// The server's WAL files, copied into a plain archive directory.
fn copy_wal(c: &Cluster, archive: &Path) {
    std::fs::create_dir_all(archive).unwrap();
    for e in std::fs::read_dir(c.data.join("pg_wal")).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), archive.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn pg18_backup_chain_examples() {
    let c = Cluster::start(PgVersion::V18);
    c.psql("CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g");
    let work = temp_dir("examples");

    // a full backup into a sink of one's own (hashes, nothing stored), checked on the way
    let o = run(Command::new(example("backup_into_own_sink")).arg(conninfo(&c)));
    assert!(o.contains("files verified against the manifest"), "{o}");
    assert!(o.contains("base.tar: "), "{o}");

    // full, then incremental from the full one's stored manifest
    let full = work.join("full");
    let o = run(Command::new(example("incremental_from_manifest"))
        .arg(conninfo(&c))
        .arg(&full));
    assert!(o.contains("full backup"), "{o}");
    c.psql("UPDATE t SET pad = repeat('y', 100) WHERE g % 10 = 0");
    let incr = work.join("incr");
    let o = run(Command::new(example("incremental_from_manifest"))
        .arg(conninfo(&c))
        .arg(&incr)
        .arg(full.join("backup_manifest")));
    assert!(o.contains("incremental backup"), "{o}");
    // the server made it incremental: INCREMENTAL.* files, and pg_verifybackup accepts it
    let has_incremental = walk(&incr).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("INCREMENTAL."))
    });
    assert!(
        has_incremental,
        "no INCREMENTAL.* file in {}",
        incr.display()
    );
    for b in [&full, &incr] {
        run(Command::new(tool("pg_verifybackup")).arg(b));
    }

    // verify with typed findings: clean, then one changed file
    let o = run(Command::new(example("verify_findings")).arg(&incr));
    assert!(o.contains("backup is valid"), "{o}");
    let broken = work.join("broken");
    run(Command::new("cp").arg("-a").arg(&full).arg(&broken));
    let pg_version = broken.join("PG_VERSION");
    std::fs::write(&pg_version, b"99\n").unwrap();
    let o = Command::new(example("verify_findings"))
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("Checksum\tPG_VERSION\t-\t"), "{}", out(&o));
    assert!(out(&o).contains("findings: Checksum: 1"), "{}", out(&o));

    // combine the chain; pg_verifybackup judges the result, and the table is all there
    let combined = work.join("combined");
    let o = run(Command::new(example("combine_chain"))
        .arg(&combined)
        .arg(&full)
        .arg(&incr));
    assert!(o.contains("reconstructed from incremental files"), "{o}");
    run(Command::new(tool("pg_verifybackup")).arg(&combined));
    // a chain with its link missing is refused, and nothing is left
    let orphan = work.join("orphan");
    let o = Command::new(example("combine_chain"))
        .arg(&orphan)
        .arg(&incr)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(out(&o).contains("the chain is broken"), "{}", out(&o));
    assert!(!orphan.exists());

    // plan a restore to a time between the backup and the archive's last commit
    let before = c.psql("SELECT now()");
    c.psql("INSERT INTO t VALUES (0, 'after')");
    c.psql("SELECT pg_switch_wal()");
    let archive = work.join("archive");
    copy_wal(&c, &archive);
    let o = run(Command::new(example("plan_restore"))
        .arg(&archive)
        .arg(&full)
        .arg(&incr));
    assert!(o.contains("restorable to any time after"), "{o}");
    let o = run(Command::new(example("plan_restore"))
        .arg(&archive)
        .arg("--time")
        .arg(before.trim())
        .arg(&full)
        .arg(&incr));
    assert!(o.contains("is reachable"), "{o}");
    // a time before the backup is refused with the reason
    let o = Command::new(example("plan_restore"))
        .arg(&archive)
        .arg("--time")
        .arg("2001-01-01 00:00:00+00")
        .arg(&full)
        .arg(&incr)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains("is before the backup's consistent point"),
        "{}",
        out(&o)
    );
}

#[test]
fn pg18_wal_into_own_storage_example() {
    let c = Cluster::start(PgVersion::V18);
    c.psql("SELECT pg_create_physical_replication_slot('own_storage', true)");
    let slot_start =
        c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'own_storage'");
    c.psql("CREATE TABLE w AS SELECT g FROM generate_series(1, 50000) g");
    let stop = c.psql("SELECT pg_current_wal_flush_lsn()");
    let store = temp_dir("own-storage");
    let o = run(Command::new(example("wal_into_own_storage"))
        .arg(conninfo(&c))
        .arg(&store)
        .arg("own_storage")
        .arg(stop.trim()));
    assert!(o.contains(&format!("durable up to {}", stop.trim())), "{o}");

    // the stored bytes are the server's own WAL, byte for byte
    let files: Vec<PathBuf> = walk(&store);
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = std::fs::read(&files[0]).unwrap();
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let start_hex = name.trim_end_matches(".wal").split('-').nth(1).unwrap();
    let start = u64::from_str_radix(start_hex, 16).unwrap();
    let seg = 16u64 << 20;
    assert_eq!(start % seg, 0, "streaming starts at a segment start");
    let slot_start: pgwal::Lsn = slot_start.trim().parse().unwrap();
    assert_eq!(start, slot_start.0 / seg * seg);
    let stop: pgwal::Lsn = stop.trim().parse().unwrap();
    assert_eq!(start + stored.len() as u64, stop.0);
    let mut offset = 0usize;
    while offset < stored.len() {
        let lsn = start + offset as u64;
        let seg_no = lsn / seg;
        let wal_name = format!("{:08X}{:08X}{:08X}", 1, seg_no / 256, seg_no % 256);
        let server = std::fs::read(c.data.join("pg_wal").join(&wal_name)).unwrap();
        let n = (seg as usize).min(stored.len() - offset);
        assert!(
            stored[offset..offset + n] == server[..n],
            "stored WAL differs from the server's {wal_name}"
        );
        offset += n;
    }

    // honest feedback: the slot was told the durable position, no more
    let flushed: pgwal::Lsn = c
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'own_storage'")
        .trim()
        .parse()
        .unwrap();
    assert!(
        flushed > slot_start && flushed <= stop,
        "slot at {flushed}, stop {stop}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
