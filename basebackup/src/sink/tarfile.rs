//! The tar-format sink (as `pg_basebackup -Ft`): each archive is written exactly as the server
//! sent it (server-compressed archives are kept as they are), optionally zstd-compressed on the
//! client, plus `backup_manifest`, under a temporary directory renamed to the target when the
//! backup is complete.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::outfile::OutFile;
use super::{ArchiveInfo, BackupEnd, BackupSink, DirectorySink, SinkError};
use crate::standby::StandbySettings;

/// Client-side compression of the archives (`-Z zstd[:LEVEL]`, with worker threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZstdCompression {
    /// Level, 1 to 22.
    pub level: i32,
    /// Worker threads (0: compress on the calling thread).
    pub workers: u32,
    /// Long-distance matching (`long`), as PostgreSQL's zstd `long` option.
    pub long: bool,
}

/// Client-side compression of the archives: zstd, gzip or lz4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCompression {
    /// zstd (`.zst`).
    Zstd(ZstdCompression),
    /// gzip (`.gz`) at a level from 1 to 9, or -1 for zlib's default.
    Gzip(i32),
    /// lz4 frames (`.lz4`), 64 kB linked blocks with a content checksum. lz4_flex has one
    /// (fast) mode: a level is accepted, as pg_basebackup's 1 to 12, but does not change it.
    Lz4,
}

impl ClientCompression {
    /// The file name suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            ClientCompression::Zstd(_) => ".zst",
            ClientCompression::Gzip(_) => ".gz",
            ClientCompression::Lz4 => ".lz4",
        }
    }
}

impl From<ZstdCompression> for ClientCompression {
    fn from(z: ZstdCompression) -> Self {
        ClientCompression::Zstd(z)
    }
}

/// A writer, compressed on the client or not.
pub(super) enum Compressed<W: Write> {
    Plain(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    Lz4(lz4_flex::frame::FrameEncoder<W>),
}

impl<W: Write> std::fmt::Debug for Compressed<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compressed::Plain(_) => "Plain",
            Compressed::Zstd(_) => "Zstd",
            Compressed::Gzip(_) => "Gzip",
            Compressed::Lz4(_) => "Lz4",
        })
    }
}

impl<W: Write> Compressed<W> {
    /// Wraps `w` in the compressor asked for; `what` names the output in errors.
    pub(super) fn new(
        w: W,
        comp: Option<ClientCompression>,
        what: &str,
    ) -> Result<Self, SinkError> {
        Ok(match comp {
            None => Compressed::Plain(w),
            Some(ClientCompression::Gzip(level)) => {
                let l = if level < 0 {
                    6
                } else {
                    level.clamp(1, 9) as u32
                };
                Compressed::Gzip(flate2::write::GzEncoder::new(
                    w,
                    flate2::Compression::new(l),
                ))
            }
            Some(ClientCompression::Zstd(z)) => {
                let mut e = zstd::stream::write::Encoder::new(w, z.level).map_err(|e| {
                    SinkError::with_source(format!("could not start compression for {what}"), e)
                })?;
                if z.workers > 0 {
                    e.multithread(z.workers).map_err(|e| {
                        SinkError::with_source(
                            format!("could not set compression workers for {what}"),
                            e,
                        )
                    })?;
                }
                if z.long {
                    e.long_distance_matching(true).map_err(|e| {
                        SinkError::with_source(
                            format!("could not set long-distance mode for {what}"),
                            e,
                        )
                    })?;
                }
                Compressed::Zstd(e)
            }
            Some(ClientCompression::Lz4) => {
                use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
                let info = FrameInfo::new()
                    .block_size(BlockSize::Max64KB)
                    .block_mode(BlockMode::Linked)
                    .content_checksum(true);
                Compressed::Lz4(FrameEncoder::with_frame_info(info, w))
            }
        })
    }

    pub(super) fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Compressed::Plain(w) => w.write_all(b),
            Compressed::Zstd(w) => w.write_all(b),
            Compressed::Gzip(w) => w.write_all(b),
            Compressed::Lz4(w) => w.write_all(b),
        }
    }

    /// Ends the compressed stream and returns the writer under it.
    pub(super) fn into_inner(self) -> std::io::Result<W> {
        match self {
            Compressed::Plain(w) => Ok(w),
            Compressed::Zstd(e) => e.finish(),
            Compressed::Gzip(e) => e.finish(),
            Compressed::Lz4(e) => e.finish().map_err(std::io::Error::other),
        }
    }
}

type Out = Compressed<OutFile>;

/// Creates the archive file `name` in `dir` (one file name: never a path the server chose).
fn create_out(
    dir: &crate::safe_dir::SafeDir,
    name: &str,
    comp: Option<ClientCompression>,
    pace: &std::sync::Arc<super::outfile::Pace>,
) -> Result<Out, SinkError> {
    let path = dir.path().join(name);
    // a compressor's output is a fraction of its input: smaller direct writes suffice
    let block = if comp.is_some() { 1 << 20 } else { 4 << 20 };
    let w = OutFile::create_in(
        dir,
        std::ffi::OsStr::new(name),
        &path,
        0o600,
        None,
        block,
        pace,
    )
    .map_err(|e| SinkError::io("could not create file", &path, e))?;
    Compressed::new(w, comp, &format!("\"{}\"", path.display()))
}

fn finish_out(out: Out) -> std::io::Result<()> {
    out.into_inner()?.finish().map(drop)
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A file entry of mode 0600 written now.
pub(super) fn file_entry(path: &str, size: u64) -> crate::tar::EntryHeader {
    crate::tar::EntryHeader {
        path: path.into(),
        kind: crate::tar::EntryKind::File,
        mode: 0o600,
        size,
        mtime: unix_now(),
        link_target: None,
    }
}

/// The largest `postgresql.auto.conf` held in memory to add `-R`'s settings to it.
pub(super) const MAX_AUTO_CONF: usize = 1 << 20;

/// Holds back `postgresql.auto.conf`'s data, refusing one larger than [`MAX_AUTO_CONF`].
pub(super) fn hold_auto_conf(buf: &mut Vec<u8>, d: &[u8]) -> Result<(), SinkError> {
    if buf.len() + d.len() > MAX_AUTO_CONF {
        return Err(SinkError::new(format!(
            "postgresql.auto.conf in the backup is larger than {MAX_AUTO_CONF} bytes; refusing to hold it in memory to add the -R settings"
        )));
    }
    buf.extend_from_slice(d);
    Ok(())
}

/// The entries `-R` adds to base.tar (see [`StandbySettings::files`]): postgresql.auto.conf
/// (the server's, held back, or a new one) with the settings appended, and standby.signal.
pub(super) fn recovery_entries(
    settings: &StandbySettings,
    auto_conf: Option<(crate::tar::EntryHeader, Vec<u8>)>,
) -> Vec<(crate::tar::EntryHeader, Vec<u8>)> {
    let (header, existing) =
        auto_conf.unwrap_or_else(|| (file_entry(crate::standby::AUTO_CONF, 0), Vec::new()));
    settings
        .files(existing)
        .into_iter()
        .map(|(name, data)| {
            let mut h = if name == crate::standby::AUTO_CONF {
                header.clone()
            } else {
                file_entry(name, 0)
            };
            h.size = data.len() as u64;
            (h, data)
        })
        .collect()
}

/// Writes `base.tar`, `<oid>.tar`, `pg_wal.tar` (each `.zst` with client compression, or as
/// the server compressed them) and `backup_manifest`.
#[derive(Debug)]
pub struct TarSink {
    // The directory logic (empty target, staging beside it, rename on finish) is the plain sink's.
    dir: DirectorySink,
    staging: PathBuf,
    zstd: Option<ClientCompression>,
    current: Option<(Out, PathBuf)>,
    /// `-R`: lines appended to postgresql.auto.conf, and standby.signal, in base.tar.
    recovery: Option<StandbySettings>,
    /// Rewriting the current archive from its entries (base.tar with `-R`).
    rewrite: Option<Rewrite>,
}

#[derive(Debug, Default)]
struct Rewrite {
    /// postgresql.auto.conf, held back to be written with the recovery settings at the end.
    auto_conf: Option<(crate::tar::EntryHeader, Vec<u8>)>,
    in_auto_conf: bool,
    size: u64,
}

impl TarSink {
    /// A sink writing to `target` (absent or empty).
    pub fn new(target: &Path, sync: bool) -> Result<Self, SinkError> {
        Self::with_compression(target, sync, None)
    }

    /// As [`TarSink::new`], compressing the archives the server sent uncompressed (zstd or
    /// gzip).
    pub fn with_compression(
        target: &Path,
        sync: bool,
        zstd: Option<ClientCompression>,
    ) -> Result<Self, SinkError> {
        let dir = DirectorySink::new(target, Vec::new(), sync)?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(TarSink {
            staging: parent.join(format!(".{name}.pgrepl-incomplete")),
            dir,
            zstd,
            current: None,
            recovery: None,
            rewrite: None,
        })
    }

    /// Writes standby settings into base.tar as pg_basebackup -R does (see
    /// [`StandbySettings`]). Archives the server compressed cannot be rewritten; base.tar is
    /// then left as it came and this fails the backup.
    pub fn set_standby(&mut self, settings: StandbySettings) {
        self.recovery = Some(settings);
    }

    /// How the finished backup is synced (when syncing at all): fsync by default.
    pub fn set_sync_method(&mut self, method: super::SyncMethod) {
        self.dir.set_sync_method(method);
    }

    /// See [`super::DirectorySink::set_page_cache`].
    pub fn set_page_cache(&mut self) {
        self.dir.set_page_cache();
    }

    /// Appends bytes to the archive being written.
    fn write_current(&mut self, b: &[u8]) -> Result<(), SinkError> {
        if let Some((f, p)) = &mut self.current {
            f.write_all(b)
                .map_err(|e| SinkError::io("could not write to file", p, e))?;
        }
        Ok(())
    }

    fn write_entry(&mut self, h: &crate::tar::EntryHeader, data: &[u8]) -> Result<(), SinkError> {
        let header = crate::tar::encode_header(h).map_err(|e| SinkError::new(e.to_string()))?;
        let pad = (512 - data.len() % 512) % 512;
        self.write_current(&header)?;
        self.write_current(data)?;
        self.write_current(&[0u8; 512][..pad])
    }
}

impl BackupSink for TarSink {
    fn archive_begin(&mut self, a: &ArchiveInfo) -> Result<(), SinkError> {
        // Archives the server compressed are kept as they came: no second compression.
        let zstd = self.zstd.filter(|_| a.name.ends_with(".tar"));
        let name = match zstd {
            Some(c) => format!("{}{}", a.name, c.suffix()),
            None => a.name.clone(),
        };
        crate::archive_rules::check_archive_name(&a.name, a.tablespace_oid)
            .map_err(|e| SinkError::new(e.to_string()))?;
        let path = self.staging.join(&name);
        self.current = Some((
            create_out(self.dir.staging_dir(), &name, zstd, self.dir.pace())?,
            path,
        ));
        if self.recovery.is_some() && a.tablespace_oid.is_none() {
            if !a.name.ends_with(".tar") {
                return Err(SinkError::new(
                    "recovery settings (-R) cannot be written into an archive the server compressed; use client-side compression",
                ));
            }
            self.rewrite = Some(Rewrite::default());
        }
        Ok(())
    }

    fn entry_begin(&mut self, e: &crate::tar::EntryHeader) -> Result<(), SinkError> {
        let Some(rw) = &mut self.rewrite else {
            return Ok(());
        };
        if e.path == "postgresql.auto.conf" && e.kind == crate::tar::EntryKind::File {
            rw.auto_conf = Some((e.clone(), Vec::new()));
            rw.in_auto_conf = true;
            return Ok(());
        }
        rw.in_auto_conf = false;
        rw.size = e.size;
        let header = crate::tar::encode_header(e).map_err(|e| SinkError::new(e.to_string()))?;
        self.write_current(&header)
    }

    fn entry_data(&mut self, d: &[u8]) -> Result<(), SinkError> {
        let Some(rw) = &mut self.rewrite else {
            return Ok(());
        };
        if rw.in_auto_conf {
            if let Some((_, buf)) = &mut rw.auto_conf {
                hold_auto_conf(buf, d)?;
            }
            return Ok(());
        }
        self.write_current(d)
    }

    fn entry_end(&mut self) -> Result<(), SinkError> {
        let Some(rw) = &mut self.rewrite else {
            return Ok(());
        };
        if rw.in_auto_conf {
            rw.in_auto_conf = false;
            return Ok(());
        }
        let pad = ((512 - rw.size % 512) % 512) as usize;
        self.write_current(&[0u8; 512][..pad])
    }

    fn archive_raw(&mut self, raw: &[u8]) -> Result<(), SinkError> {
        if self.rewrite.is_some() {
            return Ok(());
        }
        self.write_current(raw)
    }

    fn archive_end(&mut self) -> Result<(), SinkError> {
        if let Some(rw) = self.rewrite.take() {
            let settings = self
                .recovery
                .clone()
                .ok_or_else(|| SinkError::new("base.tar was rewritten without standby settings"))?;
            for (h, data) in recovery_entries(&settings, rw.auto_conf) {
                self.write_entry(&h, &data)?;
            }
            self.write_current(&[0u8; 1024])?;
        }
        if let Some((f, p)) = self.current.take() {
            finish_out(f).map_err(|e| SinkError::io("could not write to file", &p, e))?;
        }
        Ok(())
    }

    fn manifest(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        self.dir.manifest(chunk)
    }

    fn wal_dir(&mut self) -> Result<Option<PathBuf>, SinkError> {
        let d = self.staging.join(".pg_wal.stream");
        fs::create_dir_all(&d).map_err(|e| SinkError::io("could not create directory", &d, e))?;
        Ok(Some(d))
    }

    /// Packs the streamed segments into `pg_wal.tar[.zst]`, as pg_basebackup -Ft -X stream does.
    fn wal_done(&mut self) -> Result<(), SinkError> {
        let src = self.staging.join(".pg_wal.stream");
        let mut names: Vec<String> = fs::read_dir(&src)
            .map_err(|e| SinkError::io("could not read directory", &src, e))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        let name = match self.zstd {
            Some(c) => format!("pg_wal.tar{}", c.suffix()),
            None => "pg_wal.tar".to_owned(),
        };
        let path = self.staging.join(&name);
        let mut out = create_out(self.dir.staging_dir(), &name, self.zstd, self.dir.pace())?;
        let werr = |e| SinkError::io("could not write to file", &path, e);
        let mut buf = vec![0u8; 1 << 20];
        for n in &names {
            let file = src.join(n);
            let meta =
                fs::metadata(&file).map_err(|e| SinkError::io("could not stat", &file, e))?;
            let header = crate::tar::encode_header(&file_entry(n, meta.len()))
                .map_err(|e| SinkError::new(e.to_string()))?;
            out.write_all(&header).map_err(werr)?;
            let mut r = File::open(&file).map_err(|e| SinkError::io("could not open", &file, e))?;
            loop {
                let k = r.read(&mut buf).map_err(werr)?;
                if k == 0 {
                    break;
                }
                out.write_all(&buf[..k]).map_err(werr)?;
            }
            let pad = (512 - meta.len() % 512) % 512;
            out.write_all(&vec![0u8; pad as usize]).map_err(werr)?;
        }
        out.write_all(&[0u8; 1024]).map_err(werr)?;
        finish_out(out).map_err(werr)?;
        fs::remove_dir_all(&src).map_err(|e| SinkError::io("could not remove", &src, e))
    }

    fn finish(&mut self, end: &BackupEnd) -> Result<(), SinkError> {
        self.archive_end()?;
        // the directory sink syncs the staging directory (the archives are in it) and renames it
        self.dir.finish(end)
    }

    fn abort(&mut self) {
        self.current = None;
        let _ = fs::remove_dir_all(&self.staging);
    }
}
