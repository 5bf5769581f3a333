//! Blob rows and the repository links that make a blob readable from a repository.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};

use super::schema::*;
use super::{now, DbError};
use crate::oci::{Digest, RegistryError, RepoName};

/// The blob's record if it exists and is linked into `repo`.
pub fn linked<T>(
    blobs: &T,
    links: &impl ReadableTable<(&'static str, &'static str), ()>,
    repo: &RepoName,
    digest: &Digest,
) -> Result<Option<BlobRecord>, DbError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    let d = digest.to_string();
    if links.get((repo.as_str(), d.as_str()))?.is_none() {
        return Ok(None);
    }
    match blobs.get(d.as_str())? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// Records a blob whose file is already in place (written, fsynced, renamed), links it into
/// `repo` and forgets the upload session it came from, all in one transaction.
pub fn record(
    tx: &WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
    size: u64,
    upload_id: Option<&str>,
) -> Result<(), RegistryError> {
    let d = digest.to_string();
    let mut blobs = tx.open_table(BLOBS)?;
    let existing = blobs.get(d.as_str())?.is_some();
    if !existing {
        let t = now();
        let rec = BlobRecord {
            size,
            refcount: 0,
            created: t,
            zero_since: Some(t),
        };
        blobs.insert(d.as_str(), encode(&rec).as_slice())?;
    }
    tx.open_table(REPO_BLOBS)?
        .insert((repo.as_str(), d.as_str()), ())?;
    if let Some(id) = upload_id {
        tx.open_table(UPLOADS)?.remove(id)?;
    }
    Ok(())
}

/// Links an existing blob from `from` into `to`. False when `from` has no such blob.
pub fn mount(
    tx: &WriteTransaction,
    from: &RepoName,
    to: &RepoName,
    digest: &Digest,
) -> Result<Option<BlobRecord>, RegistryError> {
    let blobs = tx.open_table(BLOBS)?;
    let mut links = tx.open_table(REPO_BLOBS)?;
    let Some(rec) = linked(&blobs, &links, from, digest)? else {
        return Ok(None);
    };
    let d = digest.to_string();
    links.insert((to.as_str(), d.as_str()), ())?;
    Ok(Some(rec))
}

/// Removes the blob's link from `repo`. The bytes stay until the GC finds the blob unused.
pub fn unlink(
    tx: &WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let d = digest.to_string();
    let mut links = tx.open_table(REPO_BLOBS)?;
    let removed = links.remove((repo.as_str(), d.as_str()))?.is_some();
    Ok(removed)
}

/// Adds `delta` (+1 or -1) to a blob's reference count, stamping when it reaches zero.
pub fn add_ref(
    blobs: &mut Table<&'static str, &'static [u8]>,
    digest: &str,
    delta: i64,
) -> Result<(), DbError> {
    let Some(mut rec) = blobs
        .get(digest)?
        .map(|v| decode::<BlobRecord>(v.value()))
        .transpose()?
    else {
        return Err(DbError::Corrupt(format!(
            "counted blob {digest} has no row"
        )));
    };
    rec.refcount = rec.refcount.saturating_add_signed(delta);
    rec.zero_since = if rec.refcount == 0 { Some(now()) } else { None };
    blobs.insert(digest, encode(&rec).as_slice())?;
    Ok(())
}

/// A repository that holds `digest` and passes `may_pull`, for a mount without `from`. Looks
/// in every repository that holds a manifest (one point lookup each, `REPOS` order), which is
/// where a client that knows a digest found it.
pub fn holder(
    tx: &ReadTransaction,
    digest: &Digest,
    may_pull: impl Fn(&str) -> bool,
) -> Result<Option<RepoName>, RegistryError> {
    let d = digest.to_string();
    if tx.open_table(BLOBS)?.get(d.as_str())?.is_none() {
        return Ok(None);
    }
    let links = tx.open_table(REPO_BLOBS)?;
    for e in tx.open_table(REPOS)?.iter()? {
        let (k, _) = e?;
        let repo = k.value();
        if links.get((repo, d.as_str()))?.is_some() && may_pull(repo) {
            return Ok(RepoName::parse(repo));
        }
    }
    Ok(None)
}
