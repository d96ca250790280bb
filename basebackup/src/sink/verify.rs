//! The verifying layer: sizes and checksums of every file, computed as the bytes pass, checked
//! against the manifest when it arrives at the end. A mismatch fails the backup before any sink
//! behind it commits (put it first in a [`super::Tee`]).

use std::collections::HashMap;

use super::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use crate::checksum::{ChecksumKind, FileHasher};
use crate::manifest::{ManifestError, ManifestItem, ManifestParser};
use crate::tar::{EntryHeader, EntryKind};

/// Checks the streamed files against the server's manifest.
#[derive(Debug)]
pub struct VerifySink {
    kind: ChecksumKind,
    prefix: String,
    current: Option<(String, u64, FileHasher)>,
    /// Files received and not yet met in the manifest: size and checksum.
    seen: HashMap<String, (u64, Vec<u8>)>,
    checked: usize,
    /// The manifest, parsed as it arrives (its text is never held).
    manifest: Option<ManifestParser>,
    /// The system identifier the manifest must carry, if known.
    system_identifier: Option<u64>,
}

/// A mismatch between a manifest item and what was received.
fn check_item(
    item: &ManifestItem,
    seen: &mut HashMap<String, (u64, Vec<u8>)>,
    kind: ChecksumKind,
    system_identifier: Option<u64>,
) -> Result<bool, String> {
    match item {
        ManifestItem::SystemIdentifier(got) => match system_identifier {
            Some(want) if want != *got => Err(format!(
                "manifest system identifier is {got}, but the server's is {want}"
            )),
            _ => Ok(false),
        },
        ManifestItem::File(f) => {
            let Some((size, sum)) = seen.remove(&f.path) else {
                return Err(format!(
                    "\"{}\" is in the manifest but was not received",
                    f.path
                ));
            };
            if size != f.size {
                return Err(format!(
                    "\"{}\" has size {size} but the manifest says {}",
                    f.path, f.size
                ));
            }
            if f.checksum_kind == kind && kind != ChecksumKind::None && sum != f.checksum {
                return Err(format!("checksum mismatch for file \"{}\"", f.path));
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

impl VerifySink {
    /// Verifies with the checksum algorithm the backup was asked for.
    pub fn new(kind: ChecksumKind, system_identifier: Option<u64>) -> Self {
        VerifySink {
            kind,
            prefix: String::new(),
            current: None,
            seen: HashMap::new(),
            checked: 0,
            manifest: None,
            system_identifier,
        }
    }

    /// Files checked against the manifest (after a successful finish).
    pub fn files_checked(&self) -> usize {
        self.checked
    }
}

impl BackupSink for VerifySink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        self.prefix = match a.tablespace_oid {
            Some(oid) => format!("pg_tblspc/{oid}/"),
            None => String::new(),
        };
        Ok(())
    }

    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        if e.kind == EntryKind::File {
            self.current = Some((
                format!("{}{}", self.prefix, e.path),
                0,
                FileHasher::new(self.kind),
            ));
        }
        Ok(())
    }

    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        if let Some((_, n, h)) = &mut self.current {
            *n += d.len() as u64;
            h.update(d);
        }
        Ok(())
    }

    fn entry_end(&mut self) -> Result<(), SinkError> {
        if let Some((path, n, h)) = self.current.take() {
            self.seen.insert(path, (n, h.finish()));
        }
        Ok(())
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        let parser = self.manifest.get_or_insert_with(ManifestParser::new);
        let (seen, kind, id) = (&mut self.seen, self.kind, self.system_identifier);
        let checked = &mut self.checked;
        let mut mismatch = None;
        let r = parser.feed(chunk, &mut |item| match check_item(&item, seen, kind, id) {
            Ok(file) => {
                *checked += usize::from(file);
                Ok(())
            }
            Err(m) => {
                mismatch = Some(m);
                Err(ManifestError::Refused(String::new()))
            }
        });
        match (r, mismatch) {
            (_, Some(m)) => Err(SinkError::Mismatch(m)),
            (Err(e), None) => Err(SinkError::Mismatch(format!(
                "the server's backup manifest is invalid: {e}"
            ))),
            (Ok(()), None) => Ok(()),
        }
    }

    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        let Some(parser) = self.manifest.take() else {
            return Ok(()); // no manifest was requested: nothing to check against
        };
        let (seen, kind, id) = (&mut self.seen, self.kind, self.system_identifier);
        let mut mismatch = None;
        let r = parser.finish(&mut |item| {
            check_item(&item, seen, kind, id).map(drop).map_err(|m| {
                mismatch = Some(m);
                ManifestError::Refused(String::new())
            })
        });
        if let Some(m) = mismatch {
            return Err(SinkError::Mismatch(m));
        }
        r.map_err(|e| SinkError::new(format!("the server's backup manifest is invalid: {e}")))?;
        // WAL streamed or fetched with the backup is not in the manifest's file list
        if let Some(path) = self.seen.keys().find(|p| !p.starts_with("pg_wal/")) {
            return Err(SinkError::Mismatch(format!(
                "\"{path}\" was received but is not in the manifest"
            )));
        }
        Ok(())
    }
}
