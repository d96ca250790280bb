//! Verifies a backup (plain or tar) against its manifest and its WAL, as pg_verifybackup does,
//! and counts the findings by kind: a backup manager decides from the kinds (a missing WAL
//! range is not a flipped bit), not from the words.
//!
//!   cargo run -p basebackup --example verify_findings -- BACKUP_DIR [WAL_ARCHIVE]
//!
//! Exits 1 when anything is wrong.

use std::collections::BTreeMap;
use std::path::Path;

use basebackup::verify::{verify_backup, VerifyOptions};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(backup) = args.first() else {
        eprintln!("usage: verify_findings BACKUP_DIR [WAL_ARCHIVE]");
        std::process::exit(2);
    };
    let opts = VerifyOptions {
        wal_archive: args.get(1).map(Into::into),
        ..VerifyOptions::default()
    };
    let report = verify_backup(Path::new(backup), &opts);
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for f in &report.findings {
        *by_kind.entry(format!("{:?}", f.kind)).or_default() += 1;
        println!(
            "{:?}\t{}\t{}\t{}",
            f.kind,
            f.path.as_deref().unwrap_or("-"),
            f.lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            f.detail
        );
    }
    println!(
        "{} files ({} bytes) checked, {} WAL records decoded",
        report.files_checked, report.bytes_checked, report.wal_records
    );
    if report.findings.is_empty() {
        println!("backup is valid");
    } else {
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("findings: {}", counts.join(", "));
        std::process::exit(1);
    }
}
