//! A tar backup written to one stream (as `pg_basebackup -Ft -D -`): base.tar with the backup
//! manifest appended as its last member, for piping into an uploader or a compressor.
//!
//! Only a backup of a single archive fits one stream: no tablespaces, no WAL streamed beside it
//! (`-X fetch` puts the WAL into base.tar). The archive is rewritten from its entries, so that
//! the manifest (and with `-R`, the standby settings) can go in before the end-of-archive
//! marker; archives the server compressed cannot be rewritten and are refused. A stream that
//! fails midway ends without that marker and without a manifest: tar readers report it as
//! truncated, and it cannot pass for a backup.

use std::io::Write;

use super::tarfile::{file_entry, hold_auto_conf, recovery_entries, Compressed};
use super::{ArchiveInfo, BackupEnd, BackupSink, ClientCompression, SinkError};
use crate::standby::StandbySettings;
use crate::tar::{EntryHeader, EntryKind};

/// Writes the backup as one tar stream to `W` (standard output, a pipe, a socket).
pub struct TarStreamSink<W: Write> {
    out: Option<Compressed<W>>,
    /// What the stream is, for messages ("standard output").
    name: String,
    recovery: Option<StandbySettings>,
    /// postgresql.auto.conf, held back with `-R` to be written with the settings added.
    auto_conf: Option<(EntryHeader, Vec<u8>)>,
    in_auto_conf: bool,
    /// Size of the entry being copied, for its padding.
    size: u64,
    manifest: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for TarStreamSink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarStreamSink")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<W: Write> TarStreamSink<W> {
    /// A sink writing to `w`, called `name` in messages, compressed on the client if asked.
    pub fn new(
        w: W,
        name: &str,
        compression: Option<ClientCompression>,
    ) -> Result<Self, SinkError> {
        let out = Compressed::new(w, compression, name)?;
        Ok(TarStreamSink {
            out: Some(out),
            name: name.to_owned(),
            recovery: None,
            auto_conf: None,
            in_auto_conf: false,
            size: 0,
            manifest: Vec::new(),
        })
    }

    /// Writes standby settings into the stream as pg_basebackup -R does (see
    /// [`StandbySettings`]).
    pub fn set_standby(&mut self, settings: StandbySettings) {
        self.recovery = Some(settings);
    }

    fn write(&mut self, b: &[u8]) -> Result<(), SinkError> {
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| SinkError::new(format!("{} is already closed", self.name)))?;
        out.write_all(b)
            .map_err(|e| SinkError::with_source(format!("could not write to {}", self.name), e))
    }

    fn write_entry(&mut self, h: &EntryHeader, data: &[u8]) -> Result<(), SinkError> {
        let header = crate::tar::encode_header(h).map_err(|e| SinkError::new(e.to_string()))?;
        self.write(&header)?;
        self.write(data)?;
        self.write(&[0u8; 512][..(512 - data.len() % 512) % 512])
    }
}

impl<W: Write + Send> BackupSink for TarStreamSink<W> {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        if let Some(oid) = a.tablespace_oid {
            return Err(SinkError::new(format!(
                "can only write a single tablespace to {}, but the server also sends tablespace {oid}; back up to a directory instead",
                self.name
            )));
        }
        if !a.name.ends_with(".tar") {
            return Err(SinkError::new(format!(
                "archive \"{}\" came compressed by the server and cannot be written to {} (the manifest goes into the archive); use client-side compression",
                a.name, self.name
            )));
        }
        Ok(())
    }

    fn entry_begin(&mut self, e: &EntryHeader) -> Result<(), SinkError> {
        if self.recovery.is_some() && e.path == "postgresql.auto.conf" && e.kind == EntryKind::File
        {
            self.auto_conf = Some((e.clone(), Vec::new()));
            self.in_auto_conf = true;
            return Ok(());
        }
        self.in_auto_conf = false;
        self.size = e.size;
        let header = crate::tar::encode_header(e).map_err(|e| SinkError::new(e.to_string()))?;
        self.write(&header)
    }

    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        if self.in_auto_conf {
            if let Some((_, buf)) = &mut self.auto_conf {
                hold_auto_conf(buf, d)?;
            }
            return Ok(());
        }
        self.write(d)
    }

    fn entry_end(&mut self) -> Result<(), SinkError> {
        if std::mem::take(&mut self.in_auto_conf) {
            return Ok(());
        }
        let pad = ((512 - self.size % 512) % 512) as usize;
        self.write(&[0u8; 512][..pad])
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        if let Some(settings) = self.recovery.take() {
            for (h, data) in recovery_entries(&settings, self.auto_conf.take()) {
                self.write_entry(&h, &data)?;
            }
        }
        Ok(())
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        // its size goes into the entry's header, so it is held until the end (pg_basebackup
        // holds it too; it grows with the number of files, not with their size)
        self.manifest.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(&mut self, _end: &BackupEnd) -> Result<(), SinkError> {
        if !self.manifest.is_empty() {
            let manifest = std::mem::take(&mut self.manifest);
            self.write_entry(
                &file_entry("backup_manifest", manifest.len() as u64),
                &manifest,
            )?;
        }
        self.write(&[0u8; 1024])?;
        let out = self
            .out
            .take()
            .ok_or_else(|| SinkError::new(format!("{} is already closed", self.name)))?;
        out.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| SinkError::with_source(format!("could not write to {}", self.name), e))
    }

    fn abort(&mut self) {
        // no end-of-archive marker: what was written reads as truncated
        if let Some(Compressed::Plain(mut w)) = self.out.take() {
            let _ = w.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{TarEvent, TarParser};

    fn entries(bytes: &[u8]) -> (Vec<(String, Vec<u8>)>, bool) {
        let mut p = TarParser::new();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ended = false;
        p.feed(bytes, &mut |ev| {
            match ev {
                TarEvent::Entry(h) => out.push((h.path.clone(), Vec::new())),
                TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                TarEvent::End => ended = true,
                _ => {}
            }
            Ok::<(), crate::tar::TarError>(())
        })
        .unwrap();
        (out, ended)
    }

    fn feed(s: &mut TarStreamSink<&mut Vec<u8>>, path: &str, data: &[u8]) {
        s.entry_begin(&file_entry(path, data.len() as u64)).unwrap();
        s.entry_data(data).unwrap();
        s.entry_end().unwrap();
    }

    fn base() -> ArchiveInfo {
        ArchiveInfo {
            name: "base.tar".into(),
            tablespace_oid: None,
            tablespace_location: None,
        }
    }

    fn end() -> BackupEnd {
        BackupEnd {
            start_lsn: pgwal::Lsn(0),
            end_lsn: pgwal::Lsn(0),
            timeline: pgwal::TimelineId(1),
        }
    }

    #[test]
    fn the_manifest_and_recovery_settings_go_in_before_the_end() {
        let mut buf = Vec::new();
        let mut s = TarStreamSink::new(&mut buf, "standard output", None).unwrap();
        s.set_standby(StandbySettings::new("x", None));
        s.archive_begin(&base()).unwrap();
        feed(&mut s, "PG_VERSION", b"18\n");
        feed(&mut s, "postgresql.auto.conf", b"work_mem = 1MB\n");
        s.archive_end().unwrap();
        s.manifest(b"{\"PostgreSQL-Backup-Manifest-Version\": 1,")
            .unwrap();
        s.manifest(b" \"rest\": true}\n").unwrap();
        s.finish(&end()).unwrap();
        drop(s);
        let (got, ended) = entries(&buf);
        assert!(ended);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "PG_VERSION",
                "postgresql.auto.conf",
                "standby.signal",
                "backup_manifest"
            ]
        );
        assert_eq!(got[1].1, b"work_mem = 1MB\nprimary_conninfo = 'x'\n");
        assert_eq!(
            got[3].1,
            b"{\"PostgreSQL-Backup-Manifest-Version\": 1, \"rest\": true}\n"
        );
    }

    #[test]
    fn an_aborted_stream_has_no_end_and_no_manifest() {
        let mut buf = Vec::new();
        let mut s = TarStreamSink::new(&mut buf, "standard output", None).unwrap();
        s.archive_begin(&base()).unwrap();
        feed(&mut s, "PG_VERSION", b"18\n");
        s.abort();
        drop(s);
        let (got, ended) = entries(&buf);
        assert!(!ended);
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn tablespaces_and_server_compressed_archives_are_refused() {
        let mut buf = Vec::new();
        let mut s = TarStreamSink::new(&mut buf, "standard output", None).unwrap();
        let ts = ArchiveInfo {
            name: "16384.tar".into(),
            tablespace_oid: Some(16384),
            tablespace_location: Some("/ts".into()),
        };
        let e = s.archive_begin(&ts).unwrap_err();
        assert!(e.to_string().contains("tablespace 16384"), "{e}");
        let gz = ArchiveInfo {
            name: "base.tar.gz".into(),
            ..base()
        };
        let e = s.archive_begin(&gz).unwrap_err();
        assert!(e.to_string().contains("base.tar.gz"), "{e}");
    }
}
