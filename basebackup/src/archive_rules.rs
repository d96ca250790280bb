//! Which entries an archive of a base backup may hold, checked as the entries are parsed.
//!
//! What the server sends is fixed by `src/backend/backup/basebackup.c` (`sendDir`,
//! `sendTablespace`): the base archive holds the data directory with symbolic links only at
//! `pg_tblspc/<oid>` (one per tablespace outside the data directory, pointing at its location);
//! a tablespace archive holds the tablespace's version directory (`PG_<major>_<catversion>`) and
//! nothing else; a WAL archive (`pg_wal.tar`, as pg_basebackup and our tar sink write it) holds
//! WAL files and their `archive_status` markers. Anything else — a link elsewhere, a link whose
//! name is used again, an entry beneath a link or beneath a file, the same name twice, a path with
//! `.`, `..` or empty components — is refused before any sink sees the entry, so that no writer
//! can be made to follow something the archive created. The file system side (never following a
//! link while writing) is [`crate::safe_dir`]'s.

use std::collections::{HashMap, HashSet};

use crate::tar::EntryKind;

/// What an archive is, which decides what it may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveRole {
    /// `base.tar`: the data directory. `tablespaces` maps each tablespace OID the server
    /// announced to its location; `None` when reading an archive from disk, where any
    /// `pg_tblspc/<oid>` link is taken as a tablespace.
    Base {
        /// Announced tablespaces (OID → location).
        tablespaces: Option<HashMap<u32, String>>,
    },
    /// `<oid>.tar`: one tablespace.
    Tablespace,
    /// `pg_wal.tar`: WAL segments, history files and their `archive_status` markers.
    Wal,
}

/// An entry (or archive name) a backup archive may not hold; the caller adds the archive and
/// the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleViolation {
    /// An empty name.
    #[error("empty entry name")]
    EmptyName,
    /// An absolute name.
    #[error("absolute entry name \"{0}\"")]
    Absolute(String),
    /// A NUL byte in the name.
    #[error("entry name contains NUL")]
    Nul,
    /// An empty component (`a//b`).
    #[error("entry name \"{0}\" has an empty component")]
    EmptyComponent(String),
    /// A `.` or `..` component.
    #[error("entry name \"{path}\" has a \"{component}\" component (it could leave the archive's directory)")]
    DotComponent {
        /// The name.
        path: String,
        /// `.` or `..`.
        component: &'static str,
    },
    /// An entry beneath a link or a file.
    #[error("entry \"{path}\" lies beneath \"{parent}\", which is not a directory")]
    Beneath {
        /// The entry.
        path: String,
        /// The link or file above it.
        parent: String,
    },
    /// A name used twice.
    #[error("duplicate entry \"{0}\"")]
    Duplicate(String),
    /// A link where PostgreSQL sends none.
    #[error("unexpected symbolic link \"{path}\" -> \"{target}\" ({rule})")]
    UnexpectedLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// Where links may be.
        rule: &'static str,
    },
    /// A tablespace link with a relative target.
    #[error("symbolic link \"{path}\" -> \"{target}\": a tablespace link must point at an absolute location")]
    RelativeLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// A tablespace link that does not point at its tablespace's announced location.
    #[error("symbolic link \"{path}\" -> \"{target}\" does not point at tablespace {oid}'s location \"{location}\"")]
    LinkElsewhere {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// The tablespace.
        oid: u32,
        /// Its announced location.
        location: String,
    },
    /// A tablespace link for a tablespace the server did not announce.
    #[error("symbolic link \"{path}\" -> \"{target}\" is for tablespace {oid}, which the server did not announce")]
    UnannouncedTablespace {
        /// The link.
        path: String,
        /// Its target.
        target: String,
        /// The tablespace.
        oid: u32,
    },
    /// An entry of a tablespace archive outside its version directory.
    #[error("entry \"{0}\" is not inside the tablespace's version directory (PG_<version>_<catversion>)")]
    OutsideVersionDirectory(String),
    /// An entry of a WAL archive that is not WAL.
    #[error("entry \"{0}\" does not belong in a WAL archive (WAL segments, history files and archive_status markers only)")]
    NotWal(String),
    /// An archive name that is not `base.tar` / `<oid>.tar` with a compression suffix.
    #[error("unexpected archive name \"{name}\" (expected \"{expected}.tar\" with a compression suffix)")]
    ArchiveName {
        /// The name.
        name: String,
        /// The stem it should have.
        expected: String,
    },
}

/// The rules for one archive, with what it has held so far.
#[derive(Debug, Clone)]
pub struct EntryRules {
    role: ArchiveRole,
    /// Every name used so far: entries and the directories their paths imply.
    names: HashSet<String>,
    /// Names that are links or files: nothing may lie beneath them.
    leaves: HashSet<String>,
}

impl EntryRules {
    /// Rules for an archive of `role`.
    pub fn new(role: ArchiveRole) -> Self {
        EntryRules {
            role,
            names: HashSet::new(),
            leaves: HashSet::new(),
        }
    }

    /// The archive's role.
    pub fn role(&self) -> &ArchiveRole {
        &self.role
    }

    /// Checks the next entry; the message says what is wrong with it (the caller adds the
    /// archive and the byte offset).
    pub fn check(
        &mut self,
        path: &str,
        kind: EntryKind,
        link_target: Option<&str>,
    ) -> Result<(), RuleViolation> {
        check_syntax(path)?;
        // nothing beneath a link or a file, and no name twice
        for (i, b) in path.bytes().enumerate() {
            if b == b'/' {
                let parent = &path[..i];
                if self.leaves.contains(parent) {
                    return Err(RuleViolation::Beneath {
                        path: path.to_owned(),
                        parent: parent.to_owned(),
                    });
                }
            }
        }
        if self.names.contains(path) {
            return Err(RuleViolation::Duplicate(path.to_owned()));
        }
        self.check_role(path, kind, link_target)?;
        // record the name and the directories it implies
        for (i, b) in path.bytes().enumerate() {
            if b == b'/' && !self.names.contains(&path[..i]) {
                self.names.insert(path[..i].to_owned());
            }
        }
        self.names.insert(path.to_owned());
        if kind != EntryKind::Directory {
            self.leaves.insert(path.to_owned());
        }
        Ok(())
    }

    fn check_role(
        &self,
        path: &str,
        kind: EntryKind,
        link_target: Option<&str>,
    ) -> Result<(), RuleViolation> {
        let (owned, target_of) = (
            || path.to_owned(),
            || link_target.unwrap_or_default().to_owned(),
        );
        let first = path.split('/').next().unwrap_or_default();
        match &self.role {
            ArchiveRole::Base { tablespaces } => {
                if kind != EntryKind::Symlink {
                    return Ok(());
                }
                let target = link_target.unwrap_or_default();
                let oid = path
                    .strip_prefix("pg_tblspc/")
                    .filter(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|o| o.parse::<u32>().ok());
                let Some(oid) = oid else {
                    return Err(RuleViolation::UnexpectedLink {
                        path: owned(),
                        target: target_of(),
                        rule: "a base backup has links only at pg_tblspc/<oid>",
                    });
                };
                if !target.starts_with('/') {
                    return Err(RuleViolation::RelativeLink {
                        path: owned(),
                        target: target_of(),
                    });
                }
                if let Some(ts) = tablespaces {
                    match ts.get(&oid) {
                        Some(loc) if loc == target => {}
                        Some(loc) => {
                            return Err(RuleViolation::LinkElsewhere {
                                path: owned(),
                                target: target_of(),
                                oid,
                                location: loc.clone(),
                            })
                        }
                        None => {
                            return Err(RuleViolation::UnannouncedTablespace {
                                path: owned(),
                                target: target_of(),
                                oid,
                            })
                        }
                    }
                }
                Ok(())
            }
            ArchiveRole::Tablespace => {
                if kind == EntryKind::Symlink {
                    return Err(RuleViolation::UnexpectedLink {
                        path: owned(),
                        target: target_of(),
                        rule: "a tablespace archive has none",
                    });
                }
                if !first.starts_with("PG_") {
                    return Err(RuleViolation::OutsideVersionDirectory(owned()));
                }
                Ok(())
            }
            ArchiveRole::Wal => {
                let ok = match kind {
                    EntryKind::Symlink => false,
                    EntryKind::Directory => path == "archive_status",
                    EntryKind::File => match path.strip_prefix("archive_status/") {
                        Some(s) => {
                            (s.ends_with(".done") || s.ends_with(".ready")) && looks_like_wal(s)
                        }
                        None => looks_like_wal(path),
                    },
                };
                if ok {
                    Ok(())
                } else {
                    Err(RuleViolation::NotWal(owned()))
                }
            }
        }
    }
}

/// Checks an archive's name as BASE_BACKUP announces it: `base.tar` for the data directory and
/// `<oid>.tar` for the tablespace `oid`, each with the suffix of the server's compression
/// (`basebackup_copy.c`, `basebackup_gzip.c`, ...). The name becomes a file name in tar-format
/// backups, so nothing else is accepted.
pub fn check_archive_name(
    name: &str,
    tablespace_oid: Option<u32>,
) -> Result<crate::decompress::ArchiveCompression, RuleViolation> {
    let expected = match tablespace_oid {
        None => "base".to_owned(),
        Some(oid) => oid.to_string(),
    };
    let bad = || RuleViolation::ArchiveName {
        name: name.chars().take(200).collect(),
        expected: expected.clone(),
    };
    let compression = crate::decompress::ArchiveCompression::from_name(name).ok_or_else(bad)?;
    let stem = name.split(".tar").next().unwrap_or_default();
    if stem != expected || name[stem.len()..] != *compression.file_suffix() {
        return Err(bad());
    }
    Ok(compression)
}

/// The role of an archive file of a tar-format backup on disk, from its name: `base.tar*`,
/// `<oid>.tar*` or `pg_wal.tar*` (any compression suffix); `None` for other names.
pub fn role_of_archive_file(name: &str) -> Option<ArchiveRole> {
    let stem = name.split(".tar").next().unwrap_or_default();
    if stem.len() == name.len() {
        return None;
    }
    match stem {
        "base" => Some(ArchiveRole::Base { tablespaces: None }),
        "pg_wal" => Some(ArchiveRole::Wal),
        s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(ArchiveRole::Tablespace)
        }
        _ => None,
    }
}

/// A name that starts like a WAL file: 8 hex digits of timeline and a known continuation.
fn looks_like_wal(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 8 && b[..8].iter().all(u8::is_ascii_hexdigit) && !name.contains('/')
}

/// A relative path of plain components: not empty, not absolute, no `.`, `..` or empty
/// component, no NUL.
pub fn check_syntax(path: &str) -> Result<(), RuleViolation> {
    if path.is_empty() {
        return Err(RuleViolation::EmptyName);
    }
    if path.starts_with('/') {
        return Err(RuleViolation::Absolute(path.to_owned()));
    }
    if path.contains('\0') {
        return Err(RuleViolation::Nul);
    }
    for c in path.split('/') {
        match c {
            "" => return Err(RuleViolation::EmptyComponent(path.to_owned())),
            "." => {
                return Err(RuleViolation::DotComponent {
                    path: path.to_owned(),
                    component: ".",
                })
            }
            ".." => {
                return Err(RuleViolation::DotComponent {
                    path: path.to_owned(),
                    component: "..",
                })
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> EntryRules {
        EntryRules::new(ArchiveRole::Base {
            tablespaces: Some(HashMap::from([(16384, "/srv/ts".to_owned())])),
        })
    }

    #[test]
    fn what_postgresql_sends_passes() {
        let mut r = base();
        for (p, k, t) in [
            ("backup_label", EntryKind::File, None),
            ("base", EntryKind::Directory, None),
            ("base/1", EntryKind::Directory, None),
            ("base/1/1259", EntryKind::File, None),
            ("pg_wal", EntryKind::Directory, None),
            ("pg_wal/archive_status", EntryKind::Directory, None),
            ("pg_tblspc", EntryKind::Directory, None),
            ("pg_tblspc/16384", EntryKind::Symlink, Some("/srv/ts")),
            // an in-place tablespace is a directory in the base archive
            ("pg_tblspc/16390", EntryKind::Directory, None),
            ("pg_wal/000000010000000000000002", EntryKind::File, None),
            (
                "pg_wal/archive_status/000000010000000000000002.done",
                EntryKind::File,
                None,
            ),
            ("global/pg_control", EntryKind::File, None),
        ] {
            r.check(p, k, t).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        let mut ts = EntryRules::new(ArchiveRole::Tablespace);
        ts.check("PG_17_202406281", EntryKind::Directory, None)
            .unwrap();
        ts.check("PG_17_202406281/5/16385", EntryKind::File, None)
            .unwrap();
        let mut w = EntryRules::new(ArchiveRole::Wal);
        w.check("000000010000000000000002", EntryKind::File, None)
            .unwrap();
        w.check("00000002.history", EntryKind::File, None).unwrap();
        w.check("archive_status", EntryKind::Directory, None)
            .unwrap();
        w.check(
            "archive_status/000000010000000000000002.done",
            EntryKind::File,
            None,
        )
        .unwrap();
    }

    #[test]
    fn everything_else_is_refused() {
        type Entry<'a> = (&'a str, EntryKind, Option<&'a str>);
        let cases: Vec<(Vec<Entry<'_>>, &str)> = vec![
            (
                vec![("evil", EntryKind::Symlink, Some("/etc"))],
                "unexpected symbolic link",
            ),
            (
                vec![("pg_wal", EntryKind::Symlink, Some("/tmp"))],
                "unexpected symbolic link",
            ),
            (
                vec![("pg_tblspc/16384", EntryKind::Symlink, Some("/etc"))],
                "does not point at tablespace 16384",
            ),
            (
                vec![("pg_tblspc/99", EntryKind::Symlink, Some("/srv/x"))],
                "did not announce",
            ),
            (
                vec![("pg_tblspc/16384", EntryKind::Symlink, Some("relative"))],
                "absolute location",
            ),
            (
                vec![
                    ("pg_tblspc/16384", EntryKind::Symlink, Some("/srv/ts")),
                    ("pg_tblspc/16384/pwned", EntryKind::File, None),
                ],
                "lies beneath",
            ),
            (
                vec![
                    ("pg_tblspc/16384", EntryKind::Symlink, Some("/srv/ts")),
                    ("pg_tblspc/16384", EntryKind::Directory, None),
                ],
                "duplicate entry",
            ),
            (
                vec![
                    ("pg_tblspc/16384/x", EntryKind::File, None),
                    ("pg_tblspc/16384", EntryKind::Symlink, Some("/srv/ts")),
                ],
                "duplicate entry",
            ),
            (
                vec![("a", EntryKind::File, None), ("a", EntryKind::File, None)],
                "duplicate entry",
            ),
            (
                vec![("a", EntryKind::File, None), ("a/b", EntryKind::File, None)],
                "lies beneath",
            ),
            (vec![("a/./b", EntryKind::File, None)], "\".\" component"),
            (vec![("a//b", EntryKind::File, None)], "empty component"),
            (
                vec![("a/../../b", EntryKind::File, None)],
                "\"..\" component",
            ),
            (vec![("/etc/passwd", EntryKind::File, None)], "absolute"),
        ];
        for (entries, want) in cases {
            let mut r = base();
            let mut got = None;
            for (p, k, t) in &entries {
                if let Err(e) = r.check(p, *k, *t) {
                    got = Some(e);
                    break;
                }
            }
            let e = got
                .unwrap_or_else(|| panic!("{entries:?} passed"))
                .to_string();
            assert!(
                e.contains(want),
                "{entries:?}: expected {want:?}, got {e:?}"
            );
        }
        let mut ts = EntryRules::new(ArchiveRole::Tablespace);
        assert!(ts
            .check("base/1", EntryKind::File, None)
            .unwrap_err()
            .to_string()
            .contains("version directory"));
        assert!(ts
            .check("PG_17_1/x", EntryKind::Symlink, Some("/etc"))
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        let mut w = EntryRules::new(ArchiveRole::Wal);
        assert!(w.check("postgresql.conf", EntryKind::File, None).is_err());
        assert!(w.check("sub", EntryKind::Directory, None).is_err());
        assert!(w
            .check("000000010000000000000002", EntryKind::Symlink, Some("/x"))
            .is_err());
        assert!(check_archive_name("base.tar", None).is_ok());
        assert!(check_archive_name("16384.tar.zst", Some(16384)).is_ok());
        for (bad, oid) in [
            ("../../etc/x.tar", None),
            ("base.tar", Some(16384)),
            ("16385.tar", Some(16384)),
            ("base.tar.gz/../x.tar", None),
            ("base.x.tar", None),
            ("base.tar.exe", None),
        ] {
            assert!(check_archive_name(bad, oid).is_err(), "{bad}");
        }
        // reading from disk: any pg_tblspc/<oid> link with an absolute target is a tablespace
        let mut disk = EntryRules::new(ArchiveRole::Base { tablespaces: None });
        disk.check("pg_tblspc/5", EntryKind::Symlink, Some("/anywhere"))
            .unwrap();
        assert!(disk.check("x", EntryKind::Symlink, Some("/y")).is_err());
    }
}
