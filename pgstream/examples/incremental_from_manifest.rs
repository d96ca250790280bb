//! A full backup, or an incremental one on top of a backup whose manifest you stored: the
//! stored manifest is uploaded (UPLOAD_MANIFEST), and the server sends only the blocks changed
//! since, as its WAL summaries say (PostgreSQL 17+, `summarize_wal = on`). The backup is a
//! plain data directory, checked against the server's manifest as it arrives, with the WAL it
//! needs fetched into it. Combine the chain with `combine_chain` (basebackup's example) or
//! pg_combinebackup.
//!
//!   cargo run -p pgstream --example incremental_from_manifest -- CONNINFO OUTPUT_DIR [PRIOR_MANIFEST]

use std::path::Path;

use basebackup::sink::{DirectorySink, Tee, VerifySink};
use pgstream::{take_backup, BackupPlan, Output, WalChoice, WalMethod};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (conninfo, output, prior) = match &args[..] {
        [c, o] => (c, o, None),
        [c, o, m] => (c, o, Some(m)),
        _ => {
            return Err(
                "usage: incremental_from_manifest CONNINFO OUTPUT_DIR [PRIOR_MANIFEST]".into(),
            )
        }
    };
    let mut plan = BackupPlan::new(Output::Directory {
        path: output.into(),
        tar: false,
    });
    plan.wal = WalChoice::Fetch;
    plan.incremental = prior.is_some();
    // start now rather than at the next spread checkpoint
    plan.checkpoint = pgrepl::CheckpointMode::Fast;
    plan.label = "incremental_from_manifest example".into();
    // the same refusals as pg_basebackup's, before anything connects
    plan.validate()?;

    let config = pgrepl::Config::from_conninfo(conninfo)?;
    let mut conn = pgrepl::Connection::connect(&config).await?;
    let id = conn.identify_system().await?;
    if let Some(m) = prior {
        let stored = std::fs::read(m)?;
        let bytes = conn.upload_manifest(&stored[..]).await?;
        println!("uploaded {m} ({bytes} bytes)");
    }
    let sink = Tee(
        VerifySink::new(plan.checksum_kind(), Some(id.system_id)),
        DirectorySink::new(Path::new(output), Vec::new(), true)?,
    );
    let (summary, _) =
        take_backup(&mut conn, &plan.options(), &WalMethod::Fetch, sink, |_| {}).await?;
    println!(
        "{} backup in {output}: {} files, {} bytes, WAL {}..{} on timeline {}",
        if prior.is_some() {
            "incremental"
        } else {
            "full"
        },
        summary.files,
        summary.file_bytes,
        summary.start_lsn,
        summary.end_lsn,
        summary.timeline
    );
    Ok(())
}
