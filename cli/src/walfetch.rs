//! `pgrepl wal-fetch ARCHIVE WALFILE DEST`: the restore_command half of the WAL archive. It
//! serves `WALFILE` from the archive (plain, or decompressing `.zst` / `.gz`), falls back to the
//! `.partial` of a segment that was never completed (zero-padded to full size, as recovery
//! requires), serves `.history` files, and exits 1 when the file is not there, as
//! restore_command must; other failures exit 126 so that recovery stops instead of ending early.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use pgwal::page::PageHeader;
use pgwal::{read_stored, StoredAs, SEGMENT_NAMES};

#[derive(Args, Debug)]
pub struct WalFetchArgs {
    /// The WAL archive directory (as written by pgrepl receivewal)
    archive: PathBuf,
    /// The file recovery asks for (%f)
    walfile: String,
    /// Where to put it (%p)
    dest: PathBuf,
    /// Output verbose messages
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Largest segment there is (1 GiB) and a byte, to notice a file that is larger.
const READ_LIMIT: u64 = (1 << 30) + 1;

/// Exit 1 means "not in the archive" to recovery, which then ends or tries elsewhere. Any other
/// failure (a damaged file, a full disk) exits 126: PostgreSQL treats that like a failed command
/// and aborts recovery instead of silently stopping early (`RestoreArchivedFile`).
pub fn run(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    match fetch(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            eprintln!("pgrepl: error: {}", msg.replace('\n', " "));
            Ok(ExitCode::from(126))
        }
    }
}

fn fetch(args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    let name = args.walfile.as_str();
    if name.contains('/') || name.is_empty() {
        bail!("invalid WAL file name \"{name}\"");
    }
    let a = &args.archive;
    let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let candidates: Vec<(PathBuf, StoredAs, bool)> = if is_segment {
        SEGMENT_NAMES
            .iter()
            .map(|&(suffix, stored, partial)| (a.join(format!("{name}{suffix}")), stored, partial))
            .collect()
    } else {
        vec![(a.join(name), StoredAs::Plain, false)]
    };
    let Some((path, stored, partial)) = candidates.into_iter().find(|(p, _, _)| p.is_file()) else {
        if args.verbose > 0 {
            eprintln!("pgrepl: {name} is not in the archive {}", a.display());
        }
        return Ok(ExitCode::from(1));
    };
    let mut data = read_stored(&path, stored, partial, READ_LIMIT)
        .with_context(|| format!("could not read \"{}\"", path.display()))?;
    if is_segment {
        // the segment size is in the segment's own long page header
        let seg_size = PageHeader::parse(&data)
            .and_then(|h| h.long)
            .map(|l| l.seg_size as usize)
            .with_context(|| {
                format!(
                    "\"{}\" does not start with a WAL long page header",
                    path.display()
                )
            })?;
        if !(1 << 20..=1 << 30).contains(&seg_size) || !seg_size.is_power_of_two() {
            bail!(
                "\"{}\" declares an invalid segment size {seg_size}",
                path.display()
            );
        }
        if data.len() > seg_size || (!partial && data.len() != seg_size) {
            bail!(
                "\"{}\" holds {} bytes, expected a {seg_size}-byte segment",
                path.display(),
                data.len()
            );
        }
        data.resize(seg_size, 0);
    }
    let tmp = args.dest.with_extension("pgrepl-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("could not create \"{}\"", tmp.display()))?;
    f.write_all(&data)
        .with_context(|| format!("could not write \"{}\"", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &args.dest)
        .with_context(|| format!("could not rename to \"{}\"", args.dest.display()))?;
    if args.verbose > 0 {
        eprintln!("pgrepl: restored {name} from {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
