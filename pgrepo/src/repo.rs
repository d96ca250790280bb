//! An opened repository: its format object, the cluster it belongs to, its backups, and the
//! objects under them, read and written through the repository's codec (plain, or age
//! encryption for an encrypted repository).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::layout;
use crate::records::{BackupRecord, FormatRecord, SystemRecord};
use crate::store::{ObjectMeta, PutMode, Store, StoreError, Upload};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No format object: not a repository (or not initialised).
    #[error("{repo} is not a pgrepl repository (no {key}): run pgrepl init --repo first")]
    NotARepository {
        /// The repository.
        repo: String,
        /// The format object's key.
        key: &'static str,
    },
    /// `init` on a repository that exists.
    #[error("{repo} is already a pgrepl repository")]
    AlreadyInitialized {
        /// The repository.
        repo: String,
    },
    /// A format this code does not read.
    #[error("{repo}: unsupported repository format: {detail}")]
    UnsupportedFormat {
        /// The repository.
        repo: String,
        /// What is wrong.
        detail: String,
    },
    /// The repository belongs to another cluster.
    #[error("{repo} holds backups of database system {repo_system}, but the server is system {server}: use a repository of its own")]
    ForeignSystem {
        /// The repository.
        repo: String,
        /// The system it belongs to.
        repo_system: u64,
        /// The server's.
        server: u64,
    },
    /// A record that does not parse.
    #[error("{repo}: object \"{key}\" is damaged: {detail}")]
    Damaged {
        /// The repository.
        repo: String,
        /// The object.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// No such backup.
    #[error("{repo} has no backup \"{id}\"")]
    UnknownBackup {
        /// The repository.
        repo: String,
        /// The ID asked for.
        id: String,
    },
    /// Nothing to restore from, or a target no backup can reach.
    #[error("{0}")]
    Unusable(String),
}

/// An opened repository.
#[derive(Debug, Clone)]
pub struct Repo {
    store: Arc<dyn Store>,
    format: FormatRecord,
}

/// Largest record (format object, commit record, system binding) read whole.
const MAX_RECORD: u64 = 16 << 20;

fn now_text() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    basebackup::manifest::format_gmt(secs)
}

impl Repo {
    /// Makes `store` a repository: writes the format object (create-only, so that two `init`s
    /// cannot both succeed).
    pub async fn init(store: Arc<dyn Store>) -> Result<Repo, RepoError> {
        let format = FormatRecord {
            format: layout::FORMAT_NAME.into(),
            version: layout::FORMAT_VERSION,
            created: now_text(),
            encryption: None,
        };
        let bytes = serde_json::to_vec_pretty(&format).map_err(|e| RepoError::Damaged {
            repo: store.describe(),
            key: layout::FORMAT_KEY.into(),
            detail: e.to_string(),
        })?;
        match store
            .put(layout::FORMAT_KEY, Bytes::from(bytes), PutMode::Create)
            .await
        {
            Ok(()) => Ok(Repo { store, format }),
            Err(StoreError::AlreadyExists { .. }) => Err(RepoError::AlreadyInitialized {
                repo: store.describe(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the repository in `store`, checking its format object.
    pub async fn open(store: Arc<dyn Store>) -> Result<Repo, RepoError> {
        let bytes = match store.get(layout::FORMAT_KEY, MAX_RECORD).await {
            Ok(b) => b,
            Err(StoreError::NotFound { .. }) => {
                return Err(RepoError::NotARepository {
                    repo: store.describe(),
                    key: layout::FORMAT_KEY,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let format: FormatRecord =
            serde_json::from_slice(&bytes).map_err(|e| RepoError::Damaged {
                repo: store.describe(),
                key: layout::FORMAT_KEY.into(),
                detail: e.to_string(),
            })?;
        if format.format != layout::FORMAT_NAME || format.version != layout::FORMAT_VERSION {
            return Err(RepoError::UnsupportedFormat {
                repo: store.describe(),
                detail: format!(
                    "\"{}\" version {} (this pgrepl reads \"{}\" version {})",
                    format.format,
                    format.version,
                    layout::FORMAT_NAME,
                    layout::FORMAT_VERSION
                ),
            });
        }
        Ok(Repo { store, format })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A name for messages.
    pub fn name(&self) -> String {
        self.store.describe()
    }

    /// The format object.
    pub fn format(&self) -> &FormatRecord {
        &self.format
    }

    fn damaged(&self, key: &str, detail: impl std::fmt::Display) -> RepoError {
        RepoError::Damaged {
            repo: self.name(),
            key: key.to_owned(),
            detail: detail.to_string(),
        }
    }

    /// Writes a record (JSON) under `key`.
    pub async fn put_record<T: Serialize>(
        &self,
        key: &str,
        record: &T,
        mode: PutMode,
    ) -> Result<(), RepoError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| self.damaged(key, e))?;
        self.put_object(key, Bytes::from(bytes), mode).await
    }

    /// Reads a record (JSON) from `key`; `None` when there is none.
    pub async fn get_record<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, RepoError> {
        let bytes = match self.get_object(key, MAX_RECORD).await {
            Ok(b) => b,
            Err(RepoError::Store(StoreError::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.damaged(key, e))
    }

    /// Writes a small object whole.
    pub async fn put_object(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), RepoError> {
        Ok(self.store.put(key, data, mode).await?)
    }

    /// Reads a small object whole (at most `max` bytes).
    pub async fn get_object(&self, key: &str, max: u64) -> Result<Bytes, RepoError> {
        Ok(self.store.get(key, max).await?)
    }

    /// Reads bytes `range` of an object's content.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RepoError> {
        Ok(self.store.get_range(key, range).await?)
    }

    /// Starts a streaming upload of an object's content.
    pub async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, RepoError> {
        Ok(self.store.upload(key).await?)
    }

    /// Lists objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, RepoError> {
        Ok(self.store.list(prefix).await?)
    }

    /// The cluster the repository belongs to, if a backup has bound it.
    pub async fn system(&self) -> Result<Option<SystemRecord>, RepoError> {
        self.get_record(layout::SYSTEM_KEY).await
    }

    /// Binds the repository to `system_id` (create-only), or checks that it is bound to it.
    pub async fn bind(&self, system_id: u64, wal_segment_size: u64) -> Result<(), RepoError> {
        let check = |r: SystemRecord| {
            if r.system_identifier == system_id {
                Ok(())
            } else {
                Err(RepoError::ForeignSystem {
                    repo: self.name(),
                    repo_system: r.system_identifier,
                    server: system_id,
                })
            }
        };
        if let Some(r) = self.system().await? {
            return check(r);
        }
        let record = SystemRecord {
            system_identifier: system_id,
            bound: now_text(),
            wal_segment_size: Some(wal_segment_size),
        };
        match self
            .put_record(layout::SYSTEM_KEY, &record, PutMode::Create)
            .await
        {
            Ok(()) => Ok(()),
            // another writer bound it first: check against what it wrote
            Err(RepoError::Store(StoreError::AlreadyExists { .. })) => match self.system().await? {
                Some(r) => check(r),
                None => Ok(()),
            },
            Err(e) => Err(e),
        }
    }

    /// Every committed backup, oldest first (by end LSN, then ID).
    pub async fn backups(&self) -> Result<Vec<BackupRecord>, RepoError> {
        let mut out = Vec::new();
        for m in self.list(layout::BACKUPS_PREFIX).await? {
            let Some(rest) = m.key.strip_prefix(layout::BACKUPS_PREFIX) else {
                continue;
            };
            let Some((id, "commit.json")) = rest.split_once('/') else {
                continue;
            };
            if !layout::is_backup_id(id) {
                continue;
            }
            if let Some(r) = self.get_record::<BackupRecord>(&m.key).await? {
                if r.id != id {
                    return Err(
                        self.damaged(&m.key, format!("the record names backup \"{}\"", r.id))
                    );
                }
                out.push(r);
            }
        }
        out.sort_by(|a, b| (a.end_lsn, &a.id).cmp(&(b.end_lsn, &b.id)));
        Ok(out)
    }

    /// One committed backup.
    pub async fn backup(&self, id: &str) -> Result<BackupRecord, RepoError> {
        if !layout::is_backup_id(id) {
            return Err(RepoError::UnknownBackup {
                repo: self.name(),
                id: id.chars().take(100).collect(),
            });
        }
        self.get_record(&layout::commit_key(id))
            .await?
            .ok_or_else(|| RepoError::UnknownBackup {
                repo: self.name(),
                id: id.to_owned(),
            })
    }

    /// The chain ending in `id`, oldest (the full backup) first.
    pub async fn chain(&self, id: &str) -> Result<Vec<BackupRecord>, RepoError> {
        let all = self.backups().await?;
        chain_of(&all, id).ok_or_else(|| {
            RepoError::Unusable(format!(
                "{}: backup \"{id}\" is missing or lacks an ancestor",
                self.name()
            ))
        })
    }
}

/// The chain ending in `id` among `all`, oldest first; `None` if a link is missing.
pub fn chain_of(all: &[BackupRecord], id: &str) -> Option<Vec<BackupRecord>> {
    let mut chain = Vec::new();
    let mut cur = all.iter().find(|b| b.id == id)?;
    loop {
        chain.push(cur.clone());
        match &cur.parent {
            None => break,
            Some(p) => {
                if chain.len() > all.len() {
                    return None;
                }
                cur = all.iter().find(|b| &b.id == p)?;
            }
        }
    }
    chain.reverse();
    Some(chain)
}
