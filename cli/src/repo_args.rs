//! `--repo URL` and the S3 flags, shared by every command that works on a repository. S3
//! credentials come from the standard AWS variables (or, for `wal-fetch`, a 0600 file of
//! them), never from flags: a command line is visible to every user of the host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use pgrepo::location::{open_store, Location, S3Flags};
use pgrepo::store::Store;
use pgrepo::Repo;

/// The variables an S3 repository is reached with.
pub const S3_VARS: [&str; 6] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
];

#[derive(Args, Debug, Clone, Default)]
pub struct RepoArgs {
    /// The repository: s3://BUCKET/PREFIX, file:///PATH or a directory (default: $PGREPL_REPO)
    #[arg(long = "repo", value_name = "URL")]
    pub repo: Option<String>,
    /// S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)
    #[arg(long = "s3-endpoint", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: $AWS_REGION)
    #[arg(long = "s3-region", value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (the default with a custom endpoint)
    #[arg(long = "s3-path-style")]
    pub s3_path_style: bool,
    /// A PEM file of CA certificates to trust for the S3 endpoint
    #[arg(long = "s3-ca-file", value_name = "FILE")]
    pub s3_ca_file: Option<PathBuf>,
    /// The age identity file (0600) that reads an encrypted repository
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
}

impl RepoArgs {
    /// `--repo`, else `$PGREPL_REPO`.
    pub fn url(&self) -> Option<String> {
        self.repo
            .clone()
            .or_else(|| std::env::var("PGREPL_REPO").ok().filter(|v| !v.is_empty()))
    }

    /// Where the repository is.
    pub fn location(&self) -> anyhow::Result<Location> {
        let Some(url) = self.url() else {
            bail!("no repository given: use --repo URL or set PGREPL_REPO");
        };
        Ok(Location::parse(&url)?)
    }

    fn flags(&self) -> S3Flags {
        let mut f = S3Flags::default();
        f.endpoint = self.s3_endpoint.clone();
        f.region = self.s3_region.clone();
        f.path_style = self.s3_path_style;
        f.ca_file = self.s3_ca_file.clone();
        f
    }

    /// The store, with S3 settings from the environment (and `extra`, read from an env file,
    /// over it).
    pub fn store(&self, extra: &[(String, String)]) -> anyhow::Result<(Location, Arc<dyn Store>)> {
        let loc = self.location()?;
        let env = |k: &str| {
            extra
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        };
        let store = open_store(&loc, &self.flags(), &env)?;
        Ok((loc, store))
    }

    /// Opens the repository (it must have been initialised), with the identity if one was
    /// given.
    pub async fn open(&self, extra: &[(String, String)]) -> anyhow::Result<Repo> {
        let (_, store) = self.store(extra)?;
        let repo = Repo::open(store).await?;
        Ok(match &self.identity {
            Some(f) => repo.with_identities(read_identity(f)?),
            None => repo,
        })
    }

    /// The flags again, for a command line written elsewhere (restore_command): no secrets.
    pub fn to_args(&self, loc: &Location) -> Vec<String> {
        let mut v = vec!["--repo".to_owned(), loc.url()];
        if let Some(e) = &self.s3_endpoint {
            v.extend(["--s3-endpoint".to_owned(), e.clone()]);
        }
        if let Some(r) = &self.s3_region {
            v.extend(["--s3-region".to_owned(), r.clone()]);
        }
        if self.s3_path_style {
            v.push("--s3-path-style".to_owned());
        }
        if let Some(c) = &self.s3_ca_file {
            v.extend(["--s3-ca-file".to_owned(), c.display().to_string()]);
        }
        if let Some(i) = &self.identity {
            let abs = std::path::absolute(i).unwrap_or_else(|_| i.clone());
            v.extend(["--identity".to_owned(), abs.display().to_string()]);
        }
        v
    }
}

/// Reads age identities from a file that only its owner can read (the identity is never taken
/// from an argument or the environment).
pub fn read_identity(path: &Path) -> anyhow::Result<Vec<pgrepo::age::Identity>> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)
        .with_context(|| format!("could not open identity file \"{}\"", path.display()))?;
    if m.mode() & 0o077 != 0 {
        bail!(
            "identity file \"{}\" has group or world access; it is a secret key and must be 0600",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read identity file \"{}\"", path.display()))?;
    pgrepo::age::Identity::parse_file(&text)
        .map_err(|e| anyhow::anyhow!("identity file \"{}\": {e}", path.display()))
}

/// Recipients from `--encrypt-to` values: an `age1…` recipient, or a file of recipients (one
/// per line) or of identities (their recipients are taken).
pub fn read_recipients(values: &[String]) -> anyhow::Result<Vec<pgrepo::age::Recipient>> {
    let mut out = Vec::new();
    for v in values {
        if v.starts_with("age1") {
            out.push(
                v.parse()
                    .map_err(|e| anyhow::anyhow!("--encrypt-to {v}: {e}"))?,
            );
            continue;
        }
        let text = std::fs::read_to_string(v).with_context(|| {
            format!("--encrypt-to: could not read \"{v}\" (neither an age1… recipient nor a file)")
        })?;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with("AGE-SECRET-KEY-") {
                let id = pgrepo::age::Identity::parse(line)
                    .map_err(|e| anyhow::anyhow!("\"{v}\": {e}"))?;
                out.push(id.recipient());
            } else {
                out.push(line.parse().map_err(|e| anyhow::anyhow!("\"{v}\": {e}"))?);
            }
        }
    }
    Ok(out)
}

/// Reads `KEY=VALUE` lines (the S3 variables only) from a file that only its owner can read.
pub fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)
        .with_context(|| format!("could not open environment file \"{}\"", path.display()))?;
    if m.mode() & 0o077 != 0 {
        bail!(
            "environment file \"{}\" has group or world access; it holds credentials and must be 0600",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("could not read environment file \"{}\"", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!(
                "environment file \"{}\", line {}: expected KEY=VALUE",
                path.display(),
                i + 1
            );
        };
        if !S3_VARS.contains(&k) {
            bail!(
                "environment file \"{}\", line {}: unexpected variable \"{k}\"",
                path.display(),
                i + 1
            );
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Writes the S3 variables set in this process into `path` (0600, owned like `owner_of` when
/// run as root, so that the server's user can read it); `false` if none is set.
pub fn write_env_file(path: &Path, owner_of: &Path) -> anyhow::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let vars: Vec<(String, String)> = S3_VARS
        .iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k.to_string(), v))
        })
        .collect();
    if vars.is_empty() {
        return Ok(false);
    }
    let mut text = String::from("# S3 settings for pgrepl wal-fetch, written by pgrepl restore\n");
    for (k, v) in &vars {
        if v.contains('\n') {
            bail!("{k} contains a newline");
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create \"{}\"", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("could not write \"{}\"", path.display()))?;
    if let Ok(m) = std::fs::metadata(owner_of) {
        let _ = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()));
    }
    Ok(true)
}
