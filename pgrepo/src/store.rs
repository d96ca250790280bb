//! Where a repository's objects live: a small object-storage abstraction with two backends, a
//! local directory ([`LocalStore`]) and S3-compatible object storage ([`S3Store`]). Everything
//! else in the crate is written against [`Store`], so a backup manager can plug in its own.
//!
//! The contract every backend keeps:
//! - an upload ([`Store::upload`]) is invisible until [`Upload::finish`] succeeds, and an
//!   aborted or dropped upload leaves nothing under its key (a multipart upload is aborted);
//! - [`Store::put`] with [`PutMode::Create`] writes only if no object has the key, atomically
//!   (`If-None-Match: *` on S3, `link(2)` locally), and says [`StoreError::AlreadyExists`]
//!   otherwise: what must be exclusive (a backup's commit record) relies on it;
//! - reads are whole small objects, or ranges, so that memory stays bounded by the caller.
//!
//! Keys are `/`-separated ASCII names chosen by this crate (letters, digits, `._-`); a key
//! outside that alphabet, or with an empty, `.` or `..` component, is refused.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;

mod local;
mod s3;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

/// A boxed future, as the object-safe [`Store`] returns them.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a put treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it.
    Overwrite,
    /// Only if there is none; otherwise [`StoreError::AlreadyExists`].
    Create,
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written, Unix seconds.
    pub modified: i64,
}

/// What went wrong with the object store, naming the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object has the key.
    #[error("object \"{key}\" does not exist in {store}")]
    NotFound {
        /// The store (URL, never with credentials).
        store: String,
        /// The key.
        key: String,
    },
    /// A create-only put met an existing object.
    #[error("object \"{key}\" already exists in {store}")]
    AlreadyExists {
        /// The store.
        store: String,
        /// The key.
        key: String,
    },
    /// A key outside the alphabet the crate uses.
    #[error("invalid object key \"{key}\": {why}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A local file operation failed.
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The object store refused or failed a request (after its retries).
    #[error("{store}: could not {op} \"{key}\": {detail}")]
    Remote {
        /// The store.
        store: String,
        /// What was being done.
        op: &'static str,
        /// The key.
        key: String,
        /// The store's answer, as one line.
        detail: String,
    },
    /// A repository URL or store setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// An object larger than the caller accepts for a whole read.
    #[error("object \"{key}\" in {store} is {size} bytes, more than the {max} bytes expected")]
    TooLarge {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The most accepted.
        max: u64,
    },
}

impl StoreError {
    /// Whether retrying later may help (the store did not answer, or answered with a server
    /// error); a missing object, a refused key or bad credentials will not change.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Io { .. } => true,
            StoreError::Remote { detail, .. } => !is_permanent_detail(detail),
            _ => false,
        }
    }
}

fn is_permanent_detail(detail: &str) -> bool {
    [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "NoSuchBucket",
        "403",
    ]
    .iter()
    .any(|w| detail.contains(w))
}

/// A streaming upload. Writes apply backpressure: [`Upload::write`] waits while the backend has
/// as much in flight as it allows.
pub trait Upload: Send + std::fmt::Debug {
    /// Appends `data`.
    fn write(&mut self, data: Bytes) -> BoxFut<'_, Result<(), StoreError>>;
    /// Makes the object visible under its key, complete; returns its size.
    fn finish(self: Box<Self>) -> BoxFut<'static, Result<u64, StoreError>>;
    /// Gives up: nothing is left under the key, nor parts of it in the store.
    fn abort(self: Box<Self>) -> BoxFut<'static, ()>;
}

/// An object store. See the module documentation for the contract.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// A name for messages: the URL without credentials.
    fn describe(&self) -> String;
    /// Puts a small object whole.
    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> BoxFut<'_, Result<(), StoreError>>;
    /// Starts a streaming upload to `key` (replacing any object when it finishes).
    fn upload(&self, key: &str) -> BoxFut<'_, Result<Box<dyn Upload>, StoreError>>;
    /// Reads a whole object of at most `max` bytes.
    fn get(&self, key: &str, max: u64) -> BoxFut<'_, Result<Bytes, StoreError>>;
    /// Reads `range` of an object (exactly that many bytes, or an error).
    fn get_range(&self, key: &str, range: Range<u64>) -> BoxFut<'_, Result<Bytes, StoreError>>;
    /// The object's size and time, or `None` when there is none.
    fn head(&self, key: &str) -> BoxFut<'_, Result<Option<ObjectMeta>, StoreError>>;
    /// Every object whose key starts with `prefix` (a directory-like prefix ending in `/`, or
    /// empty), sorted by key.
    fn list(&self, prefix: &str) -> BoxFut<'_, Result<Vec<ObjectMeta>, StoreError>>;
    /// Removes an object; removing one that is not there is not an error.
    fn delete(&self, key: &str) -> BoxFut<'_, Result<(), StoreError>>;
}

/// Checks a key: `/`-separated components of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |why| {
        Err(StoreError::InvalidKey {
            key: key.chars().take(200).collect(),
            why,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    for c in key.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return bad("empty, \".\" or \"..\" component");
        }
        if !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad("characters outside [A-Za-z0-9._-]");
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty, or a key followed by `/`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(p) => check_key(p),
        None => Err(StoreError::InvalidKey {
            key: prefix.to_owned(),
            why: "a listing prefix ends with \"/\"",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("backups/20261202T073000Z-F/pack-0000").is_ok());
        assert!(check_key("wal/0000000100000000/000000010000000000000001.zst").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a b", "a\0b", "ä"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("backups/").is_ok());
        assert!(check_prefix("backups").is_err());
    }
}
