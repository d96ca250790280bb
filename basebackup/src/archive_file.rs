//! Reading one archive file of a tar-format backup from disk: decompressed as its name's suffix
//! says, parsed with the rules of its role (base, tablespace or WAL archive), each event handed
//! on with the offset of its data in the uncompressed tar. Verify, combine and restore all read
//! archives through here.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::archive_rules::{role_of_archive_file, ArchiveRole, EntryRules};
use crate::decompress::{ArchiveCompression, DecompressError, Decompressor};
use crate::tar::{TarError, TarEvent, TarParser};

/// An archive file that cannot be read to its end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveFileError {
    /// The name is not an archive's.
    #[error("archive \"{}\": not an archive (base.tar, <oid>.tar or pg_wal.tar, optionally .gz, .zst or .lz4)", path.display())]
    NotAnArchive {
        /// The file.
        path: PathBuf,
    },
    /// Reading the file (or writing its uncompressed copy) failed.
    #[error("archive \"{}\": {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The compressed stream is damaged or truncated.
    #[error("archive \"{}\": {source}", path.display())]
    Decompress {
        /// The file.
        path: PathBuf,
        /// Where, and what the decoder said.
        #[source]
        source: DecompressError,
    },
    /// The tar stream is malformed, or holds what a backup's archive may not.
    #[error("archive \"{}\": {source}", path.display())]
    Tar {
        /// The file.
        path: PathBuf,
        /// What, and its byte offset.
        #[source]
        source: TarError,
    },
}

/// An error inside the parse, before it is given its archive.
enum Inner {
    Decompress(DecompressError),
    Tar(TarError),
    Io(std::io::Error),
}

impl From<DecompressError> for Inner {
    fn from(e: DecompressError) -> Self {
        Inner::Decompress(e)
    }
}

impl From<TarError> for Inner {
    fn from(e: TarError) -> Self {
        Inner::Tar(e)
    }
}

/// Reads the archive at `path`, calling `on` with each event and, for data, its offset in the
/// uncompressed tar. The uncompressed tar is also written to `spill` when given (so that a
/// compressed archive can be read at offsets afterwards).
pub fn read_archive_file(
    path: &Path,
    mut spill: Option<&mut File>,
    mut on: impl FnMut(TarEvent<'_>, u64),
) -> Result<(), ArchiveFileError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let not_archive = || ArchiveFileError::NotAnArchive {
        path: path.to_path_buf(),
    };
    let comp = ArchiveCompression::from_name(&name).ok_or_else(not_archive)?;
    let role = role_of_archive_file(&name).unwrap_or(ArchiveRole::Base { tablespaces: None });
    let io = |source| ArchiveFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut dec = Decompressor::new(comp).map_err(io)?;
    let mut parser = TarParser::with_rules(EntryRules::new(role));
    let mut f = File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut plain_pos = 0u64;
    let mut feed =
        |parser: &mut TarParser, chunk: &[u8], plain_pos: &mut u64| -> Result<(), Inner> {
            if let Some(s) = &mut spill {
                s.write_all(chunk).map_err(Inner::Io)?;
            }
            let base = chunk.as_ptr() as usize;
            let at = *plain_pos;
            parser.feed(chunk, |ev| -> Result<(), TarError> {
                let offset = match &ev {
                    TarEvent::Data(d) => at + (d.as_ptr() as usize - base) as u64,
                    _ => at,
                };
                on(ev, offset);
                Ok(())
            })?;
            *plain_pos += chunk.len() as u64;
            Ok(())
        };
    let r = (|| -> Result<(), Inner> {
        loop {
            let k = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Inner::Io(e)),
            };
            match &mut dec {
                None => feed(&mut parser, &buf[..k], &mut plain_pos)?,
                Some(d) => d.push(&buf[..k], |plain| feed(&mut parser, plain, &mut plain_pos))?,
            }
        }
        if let Some(d) = dec {
            d.finish(|plain| feed(&mut parser, plain, &mut plain_pos))?;
        }
        parser.finish()?;
        Ok(())
    })();
    r.map_err(|e| match e {
        Inner::Decompress(source) => ArchiveFileError::Decompress {
            path: path.to_path_buf(),
            source,
        },
        Inner::Tar(source) => ArchiveFileError::Tar {
            path: path.to_path_buf(),
            source,
        },
        Inner::Io(source) => io(source),
    })
}
