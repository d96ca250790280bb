//! The basebackup crate against real BASE_BACKUP archives: the server's own manifest is the
//! oracle for what the archives contain.

use std::collections::BTreeMap;

use basebackup::checksum::{ChecksumKind, FileHasher};
use basebackup::manifest::parse_manifest;
use basebackup::tar::{EntryKind, TarEvent, TarParser};
use pgrepl::{
    BaseBackupEvent, BaseBackupOptions, CheckpointMode, Config, Connection, ManifestChecksums,
};
use pgrepl_testbed::{Cluster, PgVersion, Role};

fn parse_all(v: PgVersion, checksums: ManifestChecksums, kind: ChecksumKind) {
    let c = Cluster::start(v);
    c.pgbench_init(2);
    let ts = c.create_tablespace("ts1");
    c.psql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 5000) g");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (files, manifest) = rt.block_on(async {
        let cfg = Config::from_conninfo(&c.conninfo(Role::Postgres, "sslmode=disable")).unwrap();
        let mut conn = Connection::connect(&cfg).await.unwrap();
        let mut s = conn
            .base_backup(&BaseBackupOptions {
                checkpoint: CheckpointMode::Fast,
                manifest_checksums: checksums,
                ..Default::default()
            })
            .await
            .unwrap();
        // path (as in the manifest) -> (size, checksum), for regular files
        let mut files: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
        let mut manifest = Vec::new();
        let mut parser: Option<(TarParser, String)> = None;
        let mut current: Option<(String, u64, FileHasher)> = None;
        while let Some(ev) = s.next().await.unwrap() {
            match ev {
                BaseBackupEvent::ArchiveStart { name, .. } => {
                    if let Some((p, n)) = parser.take() {
                        p.finish().unwrap_or_else(|e| panic!("{n}: {e}"));
                    }
                    // files of a tablespace archive live under pg_tblspc/<oid>/ in the manifest
                    let prefix = match name.strip_suffix(".tar") {
                        Some("base") => String::new(),
                        Some(oid) => format!("pg_tblspc/{oid}/"),
                        None => panic!("unexpected archive {name}"),
                    };
                    parser = Some((TarParser::new(), prefix));
                }
                BaseBackupEvent::ArchiveData(d) => {
                    let (p, prefix) = parser.as_mut().unwrap();
                    p.feed(&d, |ev| -> Result<(), basebackup::tar::TarError> {
                        match ev {
                            TarEvent::Entry(h) if h.kind == EntryKind::File => {
                                current =
                                    Some((format!("{prefix}{}", h.path), 0, FileHasher::new(kind)))
                            }
                            TarEvent::Data(chunk) => {
                                let c = current.as_mut().unwrap();
                                c.1 += chunk.len() as u64;
                                c.2.update(chunk);
                            }
                            TarEvent::EntryEnd => {
                                if let Some((path, size, h)) = current.take() {
                                    files.insert(path, (size, h.finish()));
                                }
                            }
                            _ => {}
                        }
                        Ok(())
                    })
                    .unwrap_or_else(|e| panic!("archive: {e}"));
                }
                BaseBackupEvent::ManifestData(d) => manifest.extend_from_slice(&d),
                _ => {}
            }
        }
        if let Some((p, n)) = parser.take() {
            p.finish().unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        (files, manifest)
    });
    // our strict parser accepts the server's manifest, checksum included
    let m = parse_manifest(&manifest).unwrap_or_else(|e| panic!("server manifest refused: {e}"));
    assert_eq!(m.version, 2);
    assert_eq!(
        m.system_identifier.unwrap().to_string(),
        c.psql("SELECT system_identifier FROM pg_control_system()")
    );
    assert_eq!(m.wal_ranges.len(), 1);
    let listed: BTreeMap<String, (u64, Vec<u8>)> = m
        .files
        .iter()
        .map(|f| {
            assert_eq!(f.checksum_kind, kind, "{}", f.path);
            (f.path.clone(), (f.size, f.checksum.clone()))
        })
        .collect();
    assert!(
        listed.len() > 900,
        "only {} files in the manifest",
        listed.len()
    );
    assert_eq!(
        files, listed,
        "tar contents differ from the server's manifest"
    );
    assert!(
        files.keys().any(|p| p.starts_with("pg_tblspc/")),
        "no tablespace file seen"
    );
    assert!(files.contains_key("global/pg_control"));
    drop(ts);
}

#[test]
fn pg17_archives_match_the_manifest() {
    parse_all(
        PgVersion::V17,
        ManifestChecksums::Crc32c,
        ChecksumKind::Crc32c,
    );
}

#[test]
fn pg18_archives_match_the_manifest() {
    parse_all(
        PgVersion::V18,
        ManifestChecksums::Crc32c,
        ChecksumKind::Crc32c,
    );
}

#[test]
fn pg18_sha256_checksums_match_the_manifest() {
    parse_all(
        PgVersion::V18,
        ManifestChecksums::Sha256,
        ChecksumKind::Sha256,
    );
}
