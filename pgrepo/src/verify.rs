//! `verify --repo`: a stored backup verified where it is — its manifest (and the manifest's own
//! checksum), pg_control's system identifier, every file against the manifest, and optionally
//! the WAL it carries, decoded — reading objects by ranges as streams, writing nothing locally.
//! The findings are `basebackup`'s typed ones, as for a backup on disk.

use basebackup::verify::{verify_source, VerifyOptions, VerifyReport};
use tokio::runtime::Handle;

use crate::reader::{load_index, open_source};
use crate::repo::{Repo, RepoError};

/// Verifies backup `id` of `repo` (`opts.skip_wal`, `skip_checksums`, `exit_on_error` and
/// `ignore` apply).
pub async fn verify_stored(
    repo: &Repo,
    id: &str,
    opts: VerifyOptions,
) -> Result<VerifyReport, RepoError> {
    let record = repo.backup(id).await?;
    let index = load_index(repo, &record).await?;
    let source = open_source(&Handle::current(), repo, &record, &index)?;
    // the readers block on the runtime for each ranged read: run them off its threads
    tokio::task::spawn_blocking(move || verify_source(&source, &opts))
        .await
        .map_err(|e| RepoError::Unusable(format!("verifying {id}: {e}")))
}
