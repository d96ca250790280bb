//! The verifying layer: sizes and checksums of every file, computed as the bytes pass, checked
//! against the manifest when it arrives at the end. A mismatch fails the backup before any sink
//! behind it commits (put it first in a [`super::Tee`]).

use std::collections::HashMap;

use super::{ArchiveInfo, BackupEnd, BackupSink, SinkError};
use crate::checksum::{ChecksumKind, FileHasher};
use crate::manifest::parse_manifest;
use crate::tar::{EntryHeader, EntryKind};

/// Checks the streamed files against the server's manifest.
#[derive(Debug)]
pub struct VerifySink {
    kind: ChecksumKind,
    prefix: String,
    current: Option<(String, u64, FileHasher)>,
    seen: HashMap<String, (u64, Vec<u8>)>,
    manifest: Vec<u8>,
    /// The system identifier the manifest must carry, if known.
    system_identifier: Option<u64>,
}

impl VerifySink {
    /// Verifies with the checksum algorithm the backup was asked for.
    pub fn new(kind: ChecksumKind, system_identifier: Option<u64>) -> Self {
        VerifySink {
            kind,
            prefix: String::new(),
            current: None,
            seen: HashMap::new(),
            manifest: Vec::new(),
            system_identifier,
        }
    }

    /// Files checked (after a successful finish).
    pub fn files_checked(&self) -> usize {
        self.seen.len()
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
        self.manifest.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        if self.manifest.is_empty() {
            return Ok(()); // no manifest was requested: nothing to check against
        }
        let m = parse_manifest(&self.manifest)
            .map_err(|e| SinkError::new(format!("the server's backup manifest is invalid: {e}")))?;
        if let (Some(want), Some(got)) = (self.system_identifier, m.system_identifier) {
            if want != got {
                return Err(SinkError::new(format!(
                    "manifest system identifier is {got}, but the server's is {want}"
                )));
            }
        }
        for f in &m.files {
            let Some((size, sum)) = self.seen.get(&f.path) else {
                return Err(SinkError::new(format!(
                    "\"{}\" is in the manifest but was not received",
                    f.path
                )));
            };
            if *size != f.size {
                return Err(SinkError::new(format!(
                    "\"{}\" has size {size} but the manifest says {}",
                    f.path, f.size
                )));
            }
            if f.checksum_kind == self.kind && self.kind != ChecksumKind::None && *sum != f.checksum
            {
                return Err(SinkError::new(format!(
                    "checksum mismatch for file \"{}\"",
                    f.path
                )));
            }
        }
        let listed: std::collections::HashSet<&str> =
            m.files.iter().map(|f| f.path.as_str()).collect();
        for path in self.seen.keys() {
            if !listed.contains(path.as_str()) && !path.starts_with("pg_wal/") {
                return Err(SinkError::new(format!(
                    "\"{path}\" was received but is not in the manifest"
                )));
            }
        }
        Ok(())
    }
}
