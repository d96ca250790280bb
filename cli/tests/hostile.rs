//! Hostile input: a fake walsender that completes authentication and then lies (links out of
//! the backup, duplicate and misplaced entries, archive names with paths, WAL positions at the
//! end of the address space), and crafted tar backups handed to combine, restore and verify.
//! Each must end in a clear error naming the archive, the entry and its offset (or the LSN),
//! exit 1 — never a panic — with nothing written outside the target and nothing left that
//! looks complete.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use basebackup::tar::{encode_header, EntryHeader, EntryKind};
use common::pgrepl;
use pgrepl_testbed::fake::msg::{self, Archive};
use pgrepl_testbed::fake::FakeServer;
use pgrepl_testbed::temp_dir;

/// One entry of a crafted archive.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

fn tar(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (path, kind, data, target): (&str, EntryKind, &[u8], Option<&str>) = match e {
            E::File(p, d) => (p, EntryKind::File, d, None),
            E::Dir(p) => (p, EntryKind::Directory, &[], None),
            E::Link(p, t) => (p, EntryKind::Symlink, &[], Some(t)),
        };
        let h = EntryHeader {
            path: path.into(),
            kind,
            mode: if kind == EntryKind::File {
                0o600
            } else {
                0o700
            },
            size: data.len() as u64,
            mtime: 1_700_000_000,
            link_target: target.map(Into::into),
        };
        out.extend_from_slice(&encode_header(&h).unwrap());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn archive(name: &str, location: &str, bytes: Vec<u8>) -> Archive {
    Archive {
        name: name.into(),
        location: location.into(),
        bytes,
    }
}

/// A walsender answering the queries of `pgrepl basebackup` and `receivewal` with `backup` for
/// BASE_BACKUP and `wal` for START_REPLICATION.
fn server(backup: Vec<u8>, wal: Vec<u8>, xlogpos: &'static str) -> FakeServer {
    FakeServer::start(move |q| {
        if q.starts_with("IDENTIFY_SYSTEM") {
            msg::identify_system(7_300_000_000_000_000_001, 1, xlogpos)
        } else if q.starts_with("SHOW") && q.contains("wal_segment_size") {
            msg::show("wal_segment_size", "16MB")
        } else if q.starts_with("SHOW") && q.contains("data_directory_mode") {
            msg::show("data_directory_mode", "0700")
        } else if q.starts_with("CREATE_REPLICATION_SLOT") {
            let mut r = msg::result_set(
                &[
                    "slot_name",
                    "consistent_point",
                    "snapshot_name",
                    "output_plugin",
                ],
                &[vec![Some("s"), Some("0/3000000"), None, None]],
            );
            r.extend(msg::ready());
            r
        } else if q.starts_with("BASE_BACKUP") {
            backup.clone()
        } else if q.starts_with("START_REPLICATION") {
            wal.clone()
        } else {
            msg::error("42601", &format!("the fake server does not answer {q}"))
        }
    })
}

/// A whole BASE_BACKUP answer with these archives and tablespaces (oid, location).
fn backup(archives: Vec<Archive>, tablespaces: &[(&str, &str)]) -> Vec<u8> {
    let mut ts: Vec<(Option<&str>, Option<&str>, Option<&str>)> = tablespaces
        .iter()
        .map(|(o, l)| (Some(*o), Some(*l), Some("1")))
        .collect();
    ts.push((None, None, Some("1")));
    msg::base_backup("0/3000028", &ts, &archives, None, "0/3000100")
}

/// The run failed cleanly: exit 1 (no panic), every `needle` in its error output.
fn refused(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure (exit 1), got {:?}:\n{err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
    err
}

/// Nothing but `allowed` names in `dir` (a missing directory counts as empty).
fn holds_only(dir: &Path, allowed: &[&str]) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !allowed.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    assert!(names.is_empty(), "{} holds {names:?}", dir.display());
}

fn basebackup(srv: &FakeServer, work: &Path, format: &str, wal: &str) -> Output {
    pgrepl()
        .args([
            "basebackup",
            "-d",
            &srv.conninfo(),
            "--no-sync",
            "-F",
            format,
            "-X",
            wal,
        ])
        .arg("-D")
        .arg(work.join("backup"))
        .output()
        .unwrap()
}

/// Runs one hostile backup in plain and tar format: refused with `needles`, nothing in the
/// outside directory, no backup and no leftovers in the work directory.
fn hostile_backup(
    name: &str,
    make: impl Fn(&Path) -> (Vec<Archive>, Vec<(String, String)>),
    needles: &[&str],
) {
    for format in ["p", "t"] {
        let work = temp_dir(&format!("hostile-{name}-{format}"));
        let outside = work.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let (archives, ts) = make(&outside);
        let ts: Vec<(&str, &str)> = ts.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let srv = server(backup(archives, &ts), Vec::new(), "0/3000000");
        let out = basebackup(&srv, &work, format, "none");
        let err = refused(&out, needles);
        holds_only(&outside, &[]);
        holds_only(&work, &["outside"]);
        assert!(
            !err.contains("could not create"),
            "{name} ({format}): refused by the file system, not by the archive rules:\n{err}"
        );
        std::fs::remove_dir_all(&work).unwrap();
    }
}

#[test]
fn a_link_out_of_the_backup_is_refused_before_anything_is_written_through_it() {
    // the hole as reported: evil -> /some/dir, then evil/pwned
    hostile_backup(
        "escape",
        |outside| {
            let o = outside.display().to_string();
            let base = tar(&[
                E::File("backup_label", b"x"),
                E::Link("evil", &o),
                E::File("evil/pwned", b"pwned"),
            ]);
            (vec![archive("base.tar", "", base)], Vec::new())
        },
        &[
            "base.tar",
            "unexpected symbolic link \"evil\"",
            "at byte offset 1024",
        ],
    );
    // a linked pg_wal is no better
    hostile_backup(
        "pg-wal-link",
        |outside| {
            let o = outside.display().to_string();
            let base = tar(&[
                E::Link("pg_wal", &o),
                E::File("pg_wal/000000010000000000000003", b"w"),
            ]);
            (vec![archive("base.tar", "", base)], Vec::new())
        },
        &[
            "base.tar",
            "unexpected symbolic link \"pg_wal\"",
            "at byte offset 0",
        ],
    );
}

#[test]
fn tablespace_links_only_where_postgresql_puts_them() {
    // an announced tablespace's link, then an entry beneath it
    hostile_backup(
        "beneath",
        |outside| {
            let o = outside.display().to_string();
            let base = tar(&[
                E::Dir("pg_tblspc"),
                E::Link("pg_tblspc/16384", &o),
                E::File("pg_tblspc/16384/pwned", b"pwned"),
            ]);
            (
                vec![archive("base.tar", "", base)],
                vec![("16384".into(), o.clone())],
            )
        },
        &[
            "base.tar",
            "\"pg_tblspc/16384/pwned\" lies beneath \"pg_tblspc/16384\"",
            "at byte offset 1024",
        ],
    );
    // a tablespace link that points elsewhere than the tablespace's location
    hostile_backup(
        "elsewhere",
        |outside| {
            let base = tar(&[E::Dir("pg_tblspc"), E::Link("pg_tblspc/16384", "/etc")]);
            (
                vec![archive("base.tar", "", base)],
                vec![("16384".into(), outside.join("ts").display().to_string())],
            )
        },
        &[
            "base.tar",
            "does not point at tablespace 16384",
            "at byte offset 512",
        ],
    );
    // a link whose name comes again as a directory
    hostile_backup(
        "reused",
        |outside| {
            let o = outside.display().to_string();
            let base = tar(&[
                E::Link("pg_tblspc/16384", &o),
                E::Dir("pg_tblspc/16384"),
                E::File("pg_tblspc/16384/x", b"x"),
            ]);
            (
                vec![archive("base.tar", "", base)],
                vec![("16384".into(), o.clone())],
            )
        },
        &[
            "base.tar",
            "duplicate entry \"pg_tblspc/16384\"",
            "at byte offset 512",
        ],
    );
}

#[test]
fn duplicates_misplaced_entries_and_archive_names_are_refused() {
    hostile_backup(
        "duplicate",
        |_| {
            let base = tar(&[E::File("global/x", b"a"), E::File("global/x", b"b")]);
            (vec![archive("base.tar", "", base)], Vec::new())
        },
        &[
            "base.tar",
            "duplicate entry \"global/x\"",
            "at byte offset 1024",
        ],
    );
    // a tablespace archive holding something other than its version directory
    hostile_backup(
        "misplaced",
        |outside| {
            let loc = outside.join("ts").display().to_string();
            let ts = tar(&[E::File("base/1/1259", b"x")]);
            (
                vec![
                    archive("16384.tar", &loc, ts),
                    archive("base.tar", "", tar(&[])),
                ],
                vec![("16384".into(), loc.clone())],
            )
        },
        &[
            "16384.tar",
            "not inside the tablespace's version directory",
            "at byte offset 0",
        ],
    );
    // an archive name with a path in it: it would be a file name in a tar backup
    hostile_backup(
        "archive-name",
        |_| (vec![archive("../../evil.tar", "", tar(&[]))], Vec::new()),
        &["archive name \"../../evil.tar\""],
    );
}

#[test]
fn wal_positions_at_the_end_of_the_address_space_are_an_error_not_a_panic() {
    // XLogData whose end would pass 2^64: receivewal
    let start: u64 = 0xFFFF_FFFF_FFFF_F000;
    let mut wal = msg::copy_both();
    wal.extend(msg::xlogdata(start, start, &[0u8; 8192]));
    let srv = server(Vec::new(), wal.clone(), "FFFFFFFF/FF000000");
    let work = temp_dir("hostile-wrap");
    let out = pgrepl()
        .args([
            "receivewal",
            "-d",
            &srv.conninfo(),
            "--no-loop",
            "--no-sync",
            "-D",
        ])
        .arg(work.join("wal"))
        .output()
        .unwrap();
    refused(
        &out,
        &["FFFFFFFF/FFFFF000", "past the end of the WAL address space"],
    );
    holds_only(&work.join("wal"), &[]);

    // ... and the WAL stream of a backup (-X stream)
    let base = tar(&[E::File("backup_label", b"x")]);
    let srv = server(
        backup(vec![archive("base.tar", "", base)], &[]),
        wal,
        "FFFFFFFF/FF000000",
    );
    let out = basebackup(&srv, &work, "p", "stream");
    refused(
        &out,
        &["FFFFFFFF/FFFFF000", "past the end of the WAL address space"],
    );
    holds_only(&work, &["wal"]);
    std::fs::remove_dir_all(&work).unwrap();
}

/// A tar backup on disk made of `base` (and a manifest listing nothing).
fn crafted_tar_backup(dir: &Path, base: Vec<u8>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("base.tar"), base).unwrap();
    let m = basebackup::manifest::ManifestWriter::new(Some(7)).finish(&[
        basebackup::manifest::WalRange {
            timeline: pgwal::TimelineId(1),
            start: pgwal::Lsn(0x200_0028),
            end: pgwal::Lsn(0x200_0100),
        },
    ]);
    std::fs::write(dir.join("backup_manifest"), m).unwrap();
    dir.to_path_buf()
}

/// A WAL archive holding the crafted backups' WAL (0/2000028 to past 0/2000100, system 7), so
/// that restore gets as far as reading the backup.
fn wal_archive(dir: &Path) {
    use pgwal::writer::{RecordSpec, WalWriter};
    let seg = pgwal::WalSegSize::DEFAULT;
    let mut w = WalWriter::new(
        pgwal::Lsn(0x200_0000),
        seg,
        pgwal::TimelineId(1),
        7,
        pgwal::page::WalVersion::V18,
    );
    for _ in 0..8 {
        w.append(&RecordSpec {
            rmid: 10,
            main_data: vec![1; 100],
            ..Default::default()
        });
    }
    let (_, mut bytes) = w.finish();
    bytes.resize(seg.bytes() as usize, 0);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("000000010000000000000002"), bytes).unwrap();
}

#[test]
fn crafted_tar_backups_are_refused_by_combine_restore_and_verify() {
    let work = temp_dir("hostile-crafted");
    wal_archive(&work.join("wal"));
    let outside = work.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let o = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str, u64)> = vec![
        (
            "link",
            tar(&[E::Link("evil", &o), E::File("evil/pwned", b"x")]),
            "unexpected symbolic link \"evil\"",
            0,
        ),
        (
            "beneath",
            tar(&[
                E::Link("pg_tblspc/5", &o),
                E::File("pg_tblspc/5/pwned", b"x"),
            ]),
            "lies beneath",
            512,
        ),
        (
            "duplicate",
            tar(&[E::File("a", b"1"), E::File("a", b"2")]),
            "duplicate entry \"a\"",
            1024,
        ),
        (
            "dotdot",
            {
                // a name the encoder would refuse is written by hand
                let mut t = tar(&[E::File("x/y/passwd", b"x")]);
                t[..10].copy_from_slice(b"../passwd\0");
                let sum: u32 = t[..512]
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| {
                        if (148..156).contains(&i) {
                            32
                        } else {
                            u32::from(b)
                        }
                    })
                    .sum();
                t[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
                t
            },
            "\"..\" component",
            0,
        ),
    ];
    for (name, base, want, offset) in cases {
        let b = crafted_tar_backup(&work.join(format!("b-{name}")), base);
        let at = format!("at byte offset {offset}");
        let runs: Vec<(&str, Vec<String>)> = vec![
            (
                "combine",
                vec![
                    "combine".into(),
                    b.display().to_string(),
                    "-o".into(),
                    work.join("out").display().to_string(),
                ],
            ),
            (
                "restore",
                vec![
                    "restore".into(),
                    "-D".into(),
                    work.join("restored").display().to_string(),
                    b.display().to_string(),
                    "--wal-archive".into(),
                    work.join("wal").display().to_string(),
                ],
            ),
            (
                "verify",
                vec!["verify".into(), "-n".into(), b.display().to_string()],
            ),
        ];
        for (what, args) in runs {
            let out = pgrepl().args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(1), "{what} {name}: {err}");
            for n in ["base.tar", want, &at] {
                assert!(err.contains(n), "{what} {name}: expected {n:?} in:\n{err}");
            }
            holds_only(&outside, &[]);
            assert!(!work.join("out").exists() && !work.join("restored").exists());
        }
    }
    std::fs::remove_dir_all(&work).unwrap();
}
