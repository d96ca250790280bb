//! Writers on different hosts, coordinated through the store alone (no local lock file).
//!
//! The one conflict that could break a chain: an incremental backup streams on parent P while
//! `expire` removes P (a newer full having made P's chain expendable). Both sides write first
//! and read second, so that one of them always sees the other:
//!
//! - a backup writes a **lease** naming P's chain, then reads the **expiry markers** and the
//!   commit records: if P's chain is being expired or is gone, it drops the lease and takes a
//!   full backup instead ([`crate::backup::FullReason::ParentExpiring`]);
//! - `expire` writes an expiry marker for each backup it means to remove, then lists the
//!   leases: a backup a live lease names is kept (with its ancestors), and only then are
//!   commit records deleted.
//!
//! Leases and markers expire (5 and 10 minutes), so a writer that died never blocks the
//! repository: a running backup renews its lease every minute; `expire` refuses to go on
//! deleting once its markers are past their expiry, and removes stale leases and markers.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::layout;
use crate::repo::{Repo, RepoError};
use crate::store::PutMode;

/// How long a lease holds unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(300);
/// How often a running backup renews its lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(60);
/// How long an expiry marker holds.
pub const MARKER_TTL: Duration = Duration::from_secs(600);

/// A lease: a running backup's claim on backups it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The backups claimed (a parent's whole chain).
    pub backups: Vec<String>,
    /// Void after this (Unix seconds).
    pub expires: i64,
    /// Who holds it, for people reading the repository.
    pub holder: String,
}

/// An expiry marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkerRecord {
    /// The backup about to be removed.
    pub backup: String,
    /// Void after this (Unix seconds).
    pub expires: i64,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A held lease: renewed in the background until dropped or released.
#[derive(Debug)]
pub struct Lease {
    repo: Repo,
    key: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// Writes a lease on `backups`.
    pub async fn take(repo: &Repo, backups: Vec<String>) -> Result<Lease, RepoError> {
        let key = layout::lease_key(&token());
        let holder = format!(
            "{} pid {}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            std::process::id()
        );
        let record = move |at: i64| LeaseRecord {
            backups: backups.clone(),
            expires: at + LEASE_TTL.as_secs() as i64,
            holder: holder.clone(),
        };
        repo.put_record(&key, &record(now()), PutMode::Create)
            .await?;
        let (r, k) = (repo.clone(), key.clone());
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                // a failed renewal is tried again at the next tick; the lease lasts 5 of them
                let _ = r.put_record(&k, &record(now()), PutMode::Overwrite).await;
            }
        });
        Ok(Lease {
            repo: repo.clone(),
            key,
            renewer,
        })
    }

    /// Stops renewing and removes the lease.
    pub async fn release(self) {
        self.renewer.abort();
        let _ = self.repo.store().delete(&self.key).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // not released (an error path): stop renewing; it expires on its own
        self.renewer.abort();
    }
}

/// The backups live leases claim, and the keys of void leases.
pub async fn claimed(repo: &Repo, at: i64) -> Result<(BTreeSet<String>, Vec<String>), RepoError> {
    let mut live = BTreeSet::new();
    let mut void = Vec::new();
    for m in repo.list(layout::LEASES_PREFIX).await? {
        match repo.get_record::<LeaseRecord>(&m.key).await {
            Ok(Some(l)) if l.expires >= at => live.extend(l.backups),
            Ok(Some(_)) => void.push(m.key),
            Ok(None) => {}
            // unreadable: treated as live for nothing, left alone
            Err(_) => {}
        }
    }
    Ok((live, void))
}

/// Backups with a live expiry marker, and the keys of void markers.
pub async fn expiring(repo: &Repo, at: i64) -> Result<(BTreeSet<String>, Vec<String>), RepoError> {
    let mut live = BTreeSet::new();
    let mut void = Vec::new();
    for m in repo.list(layout::EXPIRING_PREFIX).await? {
        match repo.get_record::<MarkerRecord>(&m.key).await? {
            Some(r) if r.expires >= at => {
                live.insert(r.backup);
            }
            Some(_) => void.push(m.key),
            None => {}
        }
    }
    Ok((live, void))
}

/// Marks `ids` as about to be removed; returns when the marks become void.
pub async fn mark_expiring(repo: &Repo, ids: &[&str]) -> Result<i64, RepoError> {
    let expires = now() + MARKER_TTL.as_secs() as i64;
    for id in ids {
        repo.put_record(
            &layout::expiring_key(id),
            &MarkerRecord {
                backup: (*id).to_owned(),
                expires,
            },
            PutMode::Overwrite,
        )
        .await?;
    }
    Ok(expires)
}
