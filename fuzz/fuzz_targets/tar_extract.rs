//! A base archive from a hostile server, parsed with the rules of a base backup's archive and
//! written by the plain-format sink under a temporary root: whatever the archive holds (links,
//! `..`, duplicates, entries beneath links), nothing may appear outside that root.
#![no_main]
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use basebackup::archive_rules::{ArchiveRole, EntryRules};
use basebackup::sink::{ArchiveInfo, BackupSink, DirectorySink};
use basebackup::tar::{TarError, TarEvent, TarParser};

static N: AtomicU64 = AtomicU64::new(0);

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let base = std::env::temp_dir().join(format!(
        "pgrepl-fuzz-extract-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = base.join("root").join("backup");
    let ts = HashMap::from([(16384u32, outside.join("ts").display().to_string())]);
    let mut parser = TarParser::with_rules(EntryRules::new(ArchiveRole::Base {
        tablespaces: Some(ts),
    }));
    if let Ok(mut sink) = DirectorySink::new(&target, Vec::new(), false) {
        let info = ArchiveInfo {
            name: "base.tar".into(),
            tablespace_oid: None,
            tablespace_location: None,
        };
        let mut ok = sink.archive_begin(&info).is_ok();
        if ok {
            ok = parser
                .feed(data, |ev| -> Result<(), Step> {
                    match ev {
                        TarEvent::Entry(h) => sink.entry_begin(&h).map_err(|_| Step),
                        TarEvent::Data(d) => sink.entry_data(d).map_err(|_| Step),
                        TarEvent::EntryEnd => sink.entry_end().map_err(|_| Step),
                        TarEvent::End => Ok(()),
                    }
                })
                .is_ok();
        }
        // either way the partial backup is removed
        let _ = ok;
        sink.abort();
    }
    assert!(entries(&outside).is_empty(), "written outside the root: {:?}", entries(&outside));
    assert_eq!(entries(&base.join("root")), Vec::<String>::new(), "left behind");
    let mut top = entries(&base);
    top.sort();
    assert_eq!(top, ["outside", "root"]);
    std::fs::remove_dir_all(&base).unwrap();
});

struct Step;

impl From<TarError> for Step {
    fn from(_: TarError) -> Self {
        Step
    }
}
