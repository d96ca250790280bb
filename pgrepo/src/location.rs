//! Naming a repository: `s3://BUCKET/PREFIX`, `file:///path`, or a plain path; with the S3
//! settings from the standard AWS variables and the flags that override them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::store::{LocalStore, S3Options, S3Store, Store, StoreError};

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// A bucket and a prefix inside it.
    S3 {
        /// The bucket.
        bucket: String,
        /// The prefix (no leading or trailing `/`).
        prefix: String,
    },
}

impl Location {
    /// Parses `s3://BUCKET[/PREFIX]`, `file:///PATH` or a path.
    pub fn parse(url: &str) -> Result<Location, StoreError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StoreError::Config(format!(
                    "invalid repository URL \"{url}\": no bucket (expected s3://BUCKET/PREFIX)"
                )));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            if !prefix.is_empty() {
                crate::store::check_key(&prefix).map_err(|e| {
                    StoreError::Config(format!("invalid repository URL \"{url}\": {e}"))
                })?;
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StoreError::Config(format!(
                    "invalid repository URL \"{url}\": a file URL names an absolute path (file:///path)"
                )));
            }
            return Ok(Location::Dir(PathBuf::from(path)));
        }
        if url.contains("://") {
            return Err(StoreError::Config(format!(
                "invalid repository URL \"{url}\": expected s3://BUCKET/PREFIX, file:///PATH or a path"
            )));
        }
        if url.is_empty() {
            return Err(StoreError::Config(
                "no repository given: use --repo URL or set PGREPL_REPO".into(),
            ));
        }
        Ok(Location::Dir(PathBuf::from(url)))
    }

    /// The URL, for messages and for `restore_command` (never with credentials).
    pub fn url(&self) -> String {
        match self {
            Location::Dir(p) => p.display().to_string(),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }
}

/// Settings for S3 beyond the URL: what flags say, over the environment.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct S3Flags {
    /// `--s3-endpoint`.
    pub endpoint: Option<String>,
    /// `--s3-region`.
    pub region: Option<String>,
    /// `--s3-path-style`.
    pub path_style: bool,
    /// `--s3-ca-file`.
    pub ca_file: Option<PathBuf>,
}

/// Opens the store of `location`, reading S3 settings from `env` (the standard AWS variables)
/// under `flags`.
pub fn open_store(
    location: &Location,
    flags: &S3Flags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Store>, StoreError> {
    match location {
        Location::Dir(p) => Ok(Arc::new(LocalStore::new(p.clone())?)),
        Location::S3 { bucket, prefix } => {
            let mut o = S3Options::from_env(bucket, prefix, env);
            if let Some(e) = &flags.endpoint {
                o.endpoint = Some(e.clone());
            }
            if let Some(r) = &flags.region {
                o.region = Some(r.clone());
            }
            // a custom endpoint (a store that is not AWS) rarely has virtual-hosted buckets
            o.path_style = flags.path_style || o.endpoint.is_some();
            o.ca_file = flags.ca_file.clone();
            Ok(Arc::new(S3Store::new(&o)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Location::parse("s3://bkp/team/db1/").unwrap(),
            Location::S3 {
                bucket: "bkp".into(),
                prefix: "team/db1".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bkp").unwrap().url(),
            "s3://bkp".to_owned()
        );
        assert_eq!(
            Location::parse("file:///var/backups").unwrap(),
            Location::Dir("/var/backups".into())
        );
        assert_eq!(
            Location::parse("./repo").unwrap(),
            Location::Dir("./repo".into())
        );
        for bad in [
            "s3://",
            "s3:///x",
            "file://relative",
            "gs://b/p",
            "",
            "s3://b/a b",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
