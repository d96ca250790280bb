//! An opened repository: its format object, the cluster it belongs to, its backups, and the
//! objects under them, read and written through the repository's codec (plain, or age
//! encryption for an encrypted repository).

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::age::{self, AgeError, Identity, Layout, Recipient};
use crate::layout;
use crate::records::{BackupRecord, EncryptionRecord, FormatRecord, SystemRecord};
use crate::store::{BoxFut, ObjectMeta, PutMode, Store, StoreError, Upload};

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
    /// The repository is encrypted and reading needs an identity that was not given.
    #[error("{repo} is encrypted: reading \"{key}\" needs the identity (-i/--identity FILE)")]
    IdentityNeeded {
        /// The repository.
        repo: String,
        /// The object.
        key: String,
    },
    /// The repository says it is encrypted but names no recipient to encrypt to.
    #[error("{repo} is encrypted but its format object names no usable recipient: refusing to write anything")]
    NoRecipients {
        /// The repository.
        repo: String,
    },
}

/// An encrypted repository's keys: the recipients every object is written to (public), and
/// the identities it is read with (secret; only readers have them).
#[derive(Debug, Default)]
struct Crypt {
    recipients: Vec<Recipient>,
    identities: Vec<Identity>,
    layouts: std::sync::Mutex<std::collections::HashMap<String, Layout>>,
}

/// An opened repository.
#[derive(Debug, Clone)]
pub struct Repo {
    store: Arc<dyn Store>,
    format: FormatRecord,
    crypt: Option<Arc<Crypt>>,
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
    /// cannot both succeed). With `recipients`, every object stored afterwards is an age file
    /// encrypted to them; the format object stays plaintext and lists them.
    pub async fn init(store: Arc<dyn Store>, recipients: &[Recipient]) -> Result<Repo, RepoError> {
        let format = FormatRecord {
            format: layout::FORMAT_NAME.into(),
            version: layout::FORMAT_VERSION,
            created: now_text(),
            encryption: (!recipients.is_empty()).then(|| EncryptionRecord {
                format: "age".into(),
                recipients: recipients.iter().map(|r| r.to_string()).collect(),
            }),
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
            Ok(()) => {
                let crypt = crypt_of(&store, &format)?;
                Ok(Repo {
                    store,
                    format,
                    crypt,
                })
            }
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
        let crypt = crypt_of(&store, &format)?;
        Ok(Repo {
            store,
            format,
            crypt,
        })
    }

    /// Reads with `identities` (an encrypted repository's objects open with them).
    pub fn with_identities(mut self, identities: Vec<Identity>) -> Repo {
        if let Some(c) = &self.crypt {
            self.crypt = Some(Arc::new(Crypt {
                recipients: c.recipients.clone(),
                identities,
                layouts: Default::default(),
            }));
        }
        self
    }

    /// Whether objects are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.crypt.is_some()
    }

    /// Whether objects can be read (not encrypted, or an identity was given).
    pub fn can_read(&self) -> bool {
        self.crypt.as_ref().is_none_or(|c| !c.identities.is_empty())
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

    fn age_err(&self, key: &str, e: AgeError) -> RepoError {
        match e {
            AgeError::NoIdentity
                if self.crypt.as_ref().is_some_and(|c| c.identities.is_empty()) =>
            {
                RepoError::IdentityNeeded {
                    repo: self.name(),
                    key: key.to_owned(),
                }
            }
            e => RepoError::Damaged {
                repo: self.name(),
                key: key.to_owned(),
                detail: e.to_string(),
            },
        }
    }

    fn recipients(&self, c: &Crypt) -> Result<Vec<Recipient>, RepoError> {
        if c.recipients.is_empty() {
            return Err(RepoError::NoRecipients { repo: self.name() });
        }
        Ok(c.recipients.clone())
    }

    fn identities(&self, c: &Crypt, key: &str) -> Result<Vec<Identity>, RepoError> {
        if c.identities.is_empty() {
            return Err(RepoError::IdentityNeeded {
                repo: self.name(),
                key: key.to_owned(),
            });
        }
        Ok(c.identities.clone())
    }

    /// Writes a small object whole.
    pub async fn put_object(&self, key: &str, data: Bytes, mode: PutMode) -> Result<(), RepoError> {
        let data = match &self.crypt {
            Some(c) => Bytes::from(
                age::encrypt(&self.recipients(c)?, key, &data).map_err(|e| self.age_err(key, e))?,
            ),
            None => data,
        };
        Ok(self.store.put(key, data, mode).await?)
    }

    /// Reads a small object whole (at most `max` bytes of content).
    pub async fn get_object(&self, key: &str, max: u64) -> Result<Bytes, RepoError> {
        match &self.crypt {
            None => Ok(self.store.get(key, max).await?),
            Some(c) => {
                let ids = self.identities(c, key)?;
                // the header, the nonce and a tag per chunk on top of the content
                let overhead = age::MAX_HEADER as u64 + 16 + 16 * (max / age::CHUNK as u64 + 1);
                let stored = self.store.get(key, max + overhead).await?;
                let plain = age::decrypt(&stored, &ids, key).map_err(|e| self.age_err(key, e))?;
                Ok(Bytes::from(plain))
            }
        }
    }

    /// How an encrypted object's chunks lie (read once, then kept): its header opened, and its
    /// last chunk authenticated as the last, so that a truncated or extended object is caught
    /// before any range of it is believed.
    async fn layout(&self, c: &Crypt, key: &str) -> Result<Layout, RepoError> {
        if let Ok(m) = c.layouts.lock() {
            if let Some(l) = m.get(key) {
                return Ok(l.clone());
            }
        }
        let ids = self.identities(c, key)?;
        let size = self
            .store
            .head(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                store: self.name(),
                key: key.to_owned(),
            })?
            .size;
        let mut want = 4096u64.min(size);
        let l = loop {
            let head = self.store.get_range(key, 0..want).await?;
            match Layout::open(&head, size, &ids, key) {
                Ok(l) => break l,
                Err(AgeError::Incomplete(n)) if (n as u64) <= size && want < size => {
                    want = (n as u64).max(want * 2).min(size);
                }
                Err(AgeError::Incomplete(_)) => {
                    return Err(self.age_err(key, AgeError::Truncated("the header is cut".into())))
                }
                Err(e) => return Err(self.age_err(key, e)),
            }
        };
        let last = l.chunks - 1;
        let r = l.chunk_range(last);
        let sealed = self.store.get_range(key, r).await?;
        l.open_chunk(last, &sealed)
            .map_err(|e| self.age_err(key, e))?;
        if let Ok(mut m) = c.layouts.lock() {
            m.insert(key.to_owned(), l.clone());
        }
        Ok(l)
    }

    /// Reads bytes `range` of an object's content.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, RepoError> {
        let Some(c) = &self.crypt else {
            return Ok(self.store.get_range(key, range).await?);
        };
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let l = self.layout(c, key).await?;
        if range.end > l.plain_len {
            return Err(self.age_err(
                key,
                AgeError::Truncated(format!(
                    "bytes up to {} asked for, the object holds {}",
                    range.end, l.plain_len
                )),
            ));
        }
        let chunk = age::CHUNK as u64;
        let (first, last) = (range.start / chunk, (range.end - 1) / chunk);
        let stored = self
            .store
            .get_range(key, l.chunk_range(first).start..l.chunk_range(last).end)
            .await?;
        let base = l.chunk_range(first).start;
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for i in first..=last {
            let r = l.chunk_range(i);
            let plain = l
                .open_chunk(
                    i,
                    &stored[(r.start - base) as usize..(r.end - base) as usize],
                )
                .map_err(|e| self.age_err(key, e))?;
            let from = if i == first {
                (range.start - i * chunk) as usize
            } else {
                0
            };
            let to = if i == last {
                (range.end - i * chunk) as usize
            } else {
                plain.len()
            };
            out.extend_from_slice(&plain[from..to]);
        }
        Ok(Bytes::from(out))
    }

    /// Starts a streaming upload of an object's content (encrypted as it goes, in an encrypted
    /// repository).
    pub async fn upload(&self, key: &str) -> Result<Box<dyn Upload>, RepoError> {
        match &self.crypt {
            None => Ok(self.store.upload(key).await?),
            Some(c) => {
                let (enc, head) = age::Encryptor::start(&self.recipients(c)?, key)
                    .map_err(|e| self.age_err(key, e))?;
                let mut inner = self.store.upload(key).await?;
                inner.write(Bytes::from(head)).await?;
                Ok(Box::new(EncryptingUpload {
                    inner: Some(inner),
                    enc: Some(enc),
                }))
            }
        }
    }

    /// Lists objects under `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, RepoError> {
        Ok(self.store.list(prefix).await?)
    }

    /// The system identifier the repository is bound to, from the binding's name (no
    /// decryption: a writer without the identity can check it).
    pub async fn bound_system(&self) -> Result<Option<u64>, RepoError> {
        let ids: Vec<u64> = self
            .list(layout::SYSTEM_PREFIX)
            .await?
            .iter()
            .filter_map(|m| {
                m.key
                    .strip_prefix(layout::SYSTEM_PREFIX)?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        match ids.as_slice() {
            [] => Ok(None),
            [id] => Ok(Some(*id)),
            _ => Err(self.damaged(
                layout::SYSTEM_PREFIX,
                format!("bound to several systems: {ids:?}"),
            )),
        }
    }

    /// The cluster the repository belongs to, if a writer has bound it.
    pub async fn system(&self) -> Result<Option<SystemRecord>, RepoError> {
        match self.bound_system().await? {
            Some(id) => self.get_record(&layout::system_key(id)).await,
            None => Ok(None),
        }
    }

    /// Binds the repository to `system_id` (create-only), or checks that it is bound to it.
    pub async fn bind(&self, system_id: u64, wal_segment_size: u64) -> Result<(), RepoError> {
        let check = |bound: u64| {
            if bound == system_id {
                Ok(())
            } else {
                Err(RepoError::ForeignSystem {
                    repo: self.name(),
                    repo_system: bound,
                    server: system_id,
                })
            }
        };
        if let Some(bound) = self.bound_system().await? {
            return check(bound);
        }
        let record = SystemRecord {
            system_identifier: system_id,
            bound: now_text(),
            wal_segment_size: Some(wal_segment_size),
        };
        match self
            .put_record(&layout::system_key(system_id), &record, PutMode::Create)
            .await
        {
            Ok(()) | Err(RepoError::Store(StoreError::AlreadyExists { .. })) => {}
            Err(e) => return Err(e),
        }
        // two first writers of two clusters at once: both bindings exist; both refuse
        match self.bound_system().await {
            Ok(Some(b)) => check(b),
            Ok(None) => Ok(()),
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

/// The keys of an encrypted repository, from its format object.
fn crypt_of(
    store: &Arc<dyn Store>,
    format: &FormatRecord,
) -> Result<Option<Arc<Crypt>>, RepoError> {
    let Some(e) = &format.encryption else {
        return Ok(None);
    };
    if e.format != "age" {
        return Err(RepoError::UnsupportedFormat {
            repo: store.describe(),
            detail: format!(
                "encryption \"{}\" (this pgrepl writes and reads age)",
                e.format
            ),
        });
    }
    let recipients = e
        .recipients
        .iter()
        .map(|r| r.parse::<Recipient>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| RepoError::Damaged {
            repo: store.describe(),
            key: layout::FORMAT_KEY.into(),
            detail: err.to_string(),
        })?;
    Ok(Some(Arc::new(Crypt {
        recipients,
        identities: Vec::new(),
        layouts: Default::default(),
    })))
}

/// An upload encrypted on its way: the age header first, then sealed chunks.
#[derive(Debug)]
struct EncryptingUpload {
    inner: Option<Box<dyn Upload>>,
    enc: Option<age::Encryptor>,
}

impl Upload for EncryptingUpload {
    fn write(&mut self, data: Bytes) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (Some(enc), Some(inner)) = (&mut self.enc, &mut self.inner) else {
                return Err(StoreError::Config("upload already ended".into()));
            };
            let sealed = enc.push(&data);
            if sealed.is_empty() {
                return Ok(());
            }
            inner.write(Bytes::from(sealed)).await
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFut<'static, Result<u64, StoreError>> {
        Box::pin(async move {
            let (Some(enc), Some(mut inner)) = (self.enc.take(), self.inner.take()) else {
                return Err(StoreError::Config("upload already ended".into()));
            };
            inner.write(Bytes::from(enc.finish())).await?;
            inner.finish().await
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFut<'static, ()> {
        Box::pin(async move {
            if let Some(inner) = self.inner.take() {
                inner.abort().await;
            }
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
