//! Serving one WAL file from an archive directory, as a `restore_command` must: a segment under
//! any of its stored names (decompressed; a `.partial` zero-padded to full size, as recovery
//! requires), or a history file. "Not there" and "damaged" are different answers: recovery ends
//! (or tries elsewhere) on the first and must stop on the second.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pgwal::page::PageHeader;
use pgwal::{WalCompression, SEGMENT_FORMS};

use crate::read::read_stored;

/// Largest segment there is (1 GiB) and a byte, to notice a file that is larger.
const READ_LIMIT: u64 = (1 << 30) + 1;

/// Why a WAL file could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The name is not a WAL segment or history file name.
    #[error("invalid WAL file name \"{0}\"")]
    BadName(String),
    /// The archive has no such file under any stored name.
    #[error("{name} is not in the archive \"{}\"", dir.display())]
    Missing {
        /// The file asked for.
        name: String,
        /// The archive.
        dir: PathBuf,
    },
    /// The stored file is damaged (cannot be read, decompressed, or is not a whole segment).
    #[error("\"{}\": {detail}", path.display())]
    Damaged {
        /// The stored file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Writing the destination failed.
    #[error("could not write \"{}\": {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The stored file it came from.
    pub from: PathBuf,
    /// Bytes written to the destination.
    pub bytes: u64,
}

/// Copies WAL file `name` (`%f`) from the archive `dir` to `dest` (`%p`), atomically (a
/// temporary file renamed into place).
pub fn fetch(dir: &Path, name: &str, dest: &Path) -> Result<Fetched, FetchError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(FetchError::BadName(name.to_owned()));
    }
    // a segment (24 hex digits) is looked for under every stored form; anything else (history
    // files) as it is named
    let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let candidates: Vec<(PathBuf, WalCompression, bool)> = if is_segment {
        SEGMENT_FORMS
            .iter()
            .map(|&(partial, stored, suffix)| {
                (dir.join(format!("{name}{suffix}")), stored, partial)
            })
            .collect()
    } else {
        vec![(dir.join(name), WalCompression::None, false)]
    };
    let Some((path, stored, partial)) = candidates.into_iter().find(|(p, _, _)| p.is_file()) else {
        return Err(FetchError::Missing {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
        });
    };
    let damaged = |detail: String| FetchError::Damaged {
        path: path.clone(),
        detail,
    };
    let mut data =
        read_stored(&path, stored, partial, READ_LIMIT).map_err(|e| damaged(e.to_string()))?;
    if is_segment {
        // the segment size is in the segment's own long page header
        let seg_size = PageHeader::parse(&data)
            .and_then(|h| h.long)
            .map(|l| l.seg_size as usize)
            .ok_or_else(|| damaged("does not start with a WAL long page header".into()))?;
        if !(1 << 20..=1 << 30).contains(&seg_size) || !seg_size.is_power_of_two() {
            return Err(damaged(format!(
                "declares an invalid segment size {seg_size}"
            )));
        }
        if data.len() > seg_size || (!partial && data.len() != seg_size) {
            return Err(damaged(format!(
                "holds {} bytes, expected a {seg_size}-byte segment",
                data.len()
            )));
        }
        data.resize(seg_size, 0);
    }
    let tmp = dest.with_extension("pgrepl-tmp");
    let write = |source| FetchError::Write {
        path: tmp.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write)?;
    f.write_all(&data).map_err(write)?;
    drop(f);
    std::fs::rename(&tmp, dest).map_err(|source| FetchError::Write {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(Fetched {
        from: path,
        bytes: data.len() as u64,
    })
}
