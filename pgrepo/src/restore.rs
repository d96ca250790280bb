//! `restore --repo`: the newest chain that reaches the target, combined on the fly from ranged
//! reads of its packs into a new data directory, with the WAL the repository holds checked
//! before anything is written, and recovery set up to fetch the rest from the repository.

use std::collections::BTreeMap;
use std::path::PathBuf;

use basebackup::combine::CombineOptions;
use basebackup::restore::{
    plan_restore_sources, restore_planned, RecoveryTarget, RestoreError, RestoreOptions,
    RestorePlan, RestoreSummary, TargetAction,
};
use basebackup::sink::TablespaceMapping;
use basebackup::source::BackupSource;
use pgwal::WalSegSize;
use tokio::runtime::Handle;

use crate::reader::{load_index, open_source};
use crate::records::BackupRecord;
use crate::repo::{chain_of, Repo, RepoError};
use crate::wal::{list_wal, RepoWal};

/// How to restore from the repository.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RepoRestoreOptions {
    /// The data directory to create (absent or empty).
    pub data_dir: PathBuf,
    /// Where recovery stops; `None`: the end of the archive.
    pub target: Option<RecoveryTarget>,
    /// What the server does at the target.
    pub target_action: TargetAction,
    /// Restore this backup's chain instead of choosing one.
    pub backup: Option<String>,
    /// `-T OLD=NEW`.
    pub tablespace_mappings: Vec<TablespaceMapping>,
    /// The restore_command recovery runs (`%f` and `%p` in it).
    pub restore_command: String,
    /// fsync what is written.
    pub sync: bool,
}

/// What was restored.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RepoRestoreOutcome {
    /// The chain combined, oldest first.
    pub chain: Vec<String>,
    /// The plan it was checked against.
    pub plan: RestorePlan,
    /// What was written.
    pub summary: RestoreSummary,
}

/// A chain opened for reading.
struct Opened {
    chain: Vec<BackupRecord>,
    sources: Vec<BackupSource>,
    wal: RepoWal,
}

async fn open_chain(repo: &Repo, chain: Vec<BackupRecord>) -> Result<Opened, RepoError> {
    let rt = Handle::current();
    let mut sources = Vec::with_capacity(chain.len());
    for r in &chain {
        let index = load_index(repo, r).await?;
        sources.push(open_source(&rt, repo, r, &index)?);
    }
    let newest = chain
        .last()
        .ok_or_else(|| RepoError::Unusable("empty chain".into()))?;
    let seg = WalSegSize::new(newest.wal_segment_size).map_err(|_| RepoError::Damaged {
        repo: repo.name(),
        key: crate::layout::commit_key(&newest.id),
        detail: format!("invalid WAL segment size {}", newest.wal_segment_size),
    })?;
    let listing = list_wal(repo, seg).await?;
    let carried: BTreeMap<String, basebackup::source::FileLoc> = sources
        .last()
        .map(|s| {
            s.files
                .iter()
                .filter(|(p, _)| p.starts_with("pg_wal/"))
                .map(|(p, l)| (p.clone(), l.clone()))
                .collect()
        })
        .unwrap_or_default();
    let wal = RepoWal::new(
        rt,
        repo.clone(),
        seg,
        Some(newest.system_identifier),
        listing,
        &carried,
    );
    Ok(Opened {
        chain,
        sources,
        wal,
    })
}

/// Whether a plan failed because the target lies before this backup (an older one may do).
fn too_new(e: &RestoreError) -> bool {
    e.to_string()
        .contains("is before the backup's consistent point")
}

/// Backups that may reach `target`, newest first.
fn candidates<'a>(
    all: &'a [BackupRecord],
    target: Option<&RecoveryTarget>,
) -> Vec<&'a BackupRecord> {
    let mut c: Vec<&BackupRecord> = all
        .iter()
        .filter(|b| match target {
            Some(RecoveryTarget::Lsn(l)) => b.end_lsn <= *l,
            // a backup cannot be consistent before it started
            Some(RecoveryTarget::Time(_, t)) => {
                let unix_us = t + 946_684_800_000_000;
                b.start_time * 1_000_000 <= unix_us
            }
            _ => true,
        })
        .collect();
    c.reverse();
    c
}

/// Plans and carries out a restore from `repo`. The chain is chosen newest first among those
/// whose plan reaches the target (or is `opts.backup`'s); nothing is written before a plan
/// succeeds.
pub async fn restore_from_repo(
    repo: &Repo,
    opts: &RepoRestoreOptions,
) -> Result<RepoRestoreOutcome, RepoError> {
    let all = repo.backups().await?;
    if all.is_empty() {
        return Err(RepoError::Unusable(format!(
            "{} holds no backup to restore",
            repo.name()
        )));
    }
    let picks: Vec<&BackupRecord> = match &opts.backup {
        Some(id) => {
            vec![all
                .iter()
                .find(|b| &b.id == id)
                .ok_or_else(|| RepoError::UnknownBackup {
                    repo: repo.name(),
                    id: id.clone(),
                })?]
        }
        None => candidates(&all, opts.target.as_ref()),
    };
    let mut last_err: Option<String> = None;
    for b in picks {
        let chain = chain_of(&all, &b.id).ok_or_else(|| {
            RepoError::Unusable(format!(
                "{}: backup {} lacks an ancestor in the repository",
                repo.name(),
                b.id
            ))
        })?;
        let t0 = std::time::Instant::now();
        let opened = open_chain(repo, chain).await?;
        tracing::info!(
            "backup {}: chain and WAL listing opened in {:.2} s",
            b.id,
            t0.elapsed().as_secs_f64()
        );
        let t0 = std::time::Instant::now();
        let target = opts.target.clone();
        let (opened, planned) = tokio::task::spawn_blocking(move || {
            let p = plan_restore_sources(&opened.sources, &opened.wal, target.as_ref());
            (opened, p)
        })
        .await
        .map_err(|e| RepoError::Unusable(format!("planning the restore: {e}")))?;
        tracing::info!(
            "backup {}: restore planned in {:.2} s",
            b.id,
            t0.elapsed().as_secs_f64()
        );
        match planned {
            Ok(plan) => return carry_out(repo, opened, plan, opts).await,
            Err(e) if too_new(&e) && opts.backup.is_none() => {
                tracing::info!("backup {} cannot reach the target: {e}", b.id);
                last_err = Some(e.to_string());
                continue;
            }
            Err(e) => return Err(RepoError::Unusable(e.to_string())),
        }
    }
    Err(RepoError::Unusable(match last_err {
        Some(e) => format!("no backup in {} reaches the target: {e}", repo.name()),
        None => format!("no backup in {} was taken before the target", repo.name()),
    }))
}

async fn carry_out(
    repo: &Repo,
    opened: Opened,
    plan: RestorePlan,
    opts: &RepoRestoreOptions,
) -> Result<RepoRestoreOutcome, RepoError> {
    let ropts = RestoreOptions {
        data_dir: opts.data_dir.clone(),
        wal_archive: PathBuf::new(),
        target: opts.target.clone(),
        target_action: opts.target_action,
        restore_command: opts.restore_command.clone(),
        combine: CombineOptions {
            tablespace_mappings: opts.tablespace_mappings.clone(),
            sync: opts.sync,
            ..Default::default()
        },
    };
    let chain: Vec<String> = opened.chain.iter().map(|b| b.id.clone()).collect();
    let name = repo.name();
    let kept = plan.clone();
    let t0 = std::time::Instant::now();
    let summary =
        tokio::task::spawn_blocking(move || restore_planned(opened.sources, kept, &ropts))
            .await
            .map_err(|e| RepoError::Unusable(format!("restoring from {name}: {e}")))?
            .map_err(|e| RepoError::Unusable(e.to_string()))?;
    tracing::info!(
        "data directory written in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(RepoRestoreOutcome {
        chain,
        plan,
        summary,
    })
}
