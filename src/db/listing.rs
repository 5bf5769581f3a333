//! Paged listings served straight from the tables: tags, the catalog, and referrers.

use redb::{ReadTransaction, ReadableTable};

use super::schema::*;
use super::DbError;
use crate::oci::{Descriptor, Digest, RegistryError, RepoName};

/// One page of a sorted listing, and whether more follow it.
#[derive(Clone)]
pub struct Page {
    pub items: Vec<String>,
    pub more: bool,
}

fn page(items: impl Iterator<Item = Result<String, DbError>>, n: usize) -> Result<Page, DbError> {
    let mut out = Vec::new();
    for item in items {
        if out.len() == n {
            return Ok(Page {
                items: out,
                more: true,
            });
        }
        out.push(item?);
    }
    Ok(Page {
        items: out,
        more: false,
    })
}

/// Tags of `repo` after `last`, at most `n`; `None` when the repository does not exist.
pub fn tags(
    tx: &ReadTransaction,
    repo: &RepoName,
    last: Option<&str>,
    n: usize,
) -> Result<Option<Page>, RegistryError> {
    let r = repo.as_str();
    if tx.open_table(REPOS)?.get(r)?.is_none() {
        return Ok(None);
    }
    let table = tx.open_table(TAGS)?;
    let start = last.unwrap_or("");
    let iter = table
        .range((r, start)..)?
        .map(|e| e.map(|(k, _)| (k.value().0 == r, k.value().1.to_string())))
        .take_while(|e| e.as_ref().map_or(true, |(same, _)| *same))
        .map(|e| e.map(|(_, t)| t).map_err(DbError::from))
        .filter(|t| !matches!((t, last), (Ok(t), Some(l)) if t == l));
    Ok(Some(page(iter, n)?))
}

/// A tag with what it points at and when it was last pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    pub tag: String,
    pub digest: String,
    /// Unix milliseconds; 0 when unknown (a tag a pre-schema-2 database held without a
    /// manifest row, which fsck reports).
    pub pushed_ms: u64,
}

/// Every tag of `repo` in name order, with its digest and push time (for retention and for
/// anything that shows tags to a person).
pub fn tag_details(tx: &ReadTransaction, repo: &str) -> Result<Vec<TagInfo>, RegistryError> {
    let tags = tx.open_table(TAGS)?;
    let pushed = tx.open_table(TAG_PUSHED)?;
    let mut out = Vec::new();
    for e in tags.range((repo, "")..)? {
        let (k, v) = e?;
        let (r, t) = k.value();
        if r != repo {
            break;
        }
        out.push(TagInfo {
            tag: t.to_string(),
            digest: v.value().to_string(),
            pushed_ms: pushed.get((r, t))?.map_or(0, |p| p.value()),
        });
    }
    Ok(out)
}

/// One tag's details, read inside a write transaction (the GC's re-check before it deletes).
pub fn tag_details_one(
    tx: &redb::WriteTransaction,
    repo: &str,
    tag: &str,
) -> Result<Option<TagInfo>, RegistryError> {
    let Some(digest) = tx
        .open_table(TAGS)?
        .get((repo, tag))?
        .map(|v| v.value().to_string())
    else {
        return Ok(None);
    };
    let pushed_ms = tx
        .open_table(TAG_PUSHED)?
        .get((repo, tag))?
        .map_or(0, |p| p.value());
    Ok(Some(TagInfo {
        tag: tag.to_string(),
        digest,
        pushed_ms,
    }))
}

/// Repository names after `last` for which `visible` holds, at most `n`.
pub fn catalog(
    tx: &ReadTransaction,
    last: Option<&str>,
    n: usize,
    visible: impl Fn(&str) -> bool,
) -> Result<Page, RegistryError> {
    let table = tx.open_table(REPOS)?;
    let iter = table
        .range(last.unwrap_or("")..)?
        .map(|e| e.map(|(k, _)| k.value().to_string()).map_err(DbError::from))
        .filter(|t| !matches!((t, last), (Ok(t), Some(l)) if t == l))
        .filter(|t| t.as_ref().map_or(true, |t| visible(t)));
    Ok(page(iter, n)?)
}

/// Descriptors of the manifests in `repo` whose subject is `subject`, optionally only those
/// of one artifact type.
pub fn referrers(
    tx: &ReadTransaction,
    repo: &RepoName,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Vec<Descriptor>, RegistryError> {
    let r = repo.as_str();
    let s = subject.to_string();
    let refs = tx.open_table(REFERRERS)?;
    let manifests = tx.open_table(MANIFESTS)?;
    let mut out = Vec::new();
    for e in refs.range((r, s.as_str(), "")..)? {
        let (k, _) = e?;
        let (kr, ks, kd) = k.value();
        if kr != r || ks != s {
            break;
        }
        let Some(v) = manifests.get((r, kd))? else {
            continue;
        };
        let rec: ManifestRecord = decode(v.value())?;
        if artifact_type.is_some_and(|a| rec.artifact_type.as_deref() != Some(a)) {
            continue;
        }
        out.push(Descriptor {
            media_type: rec.media_type,
            digest: kd
                .parse()
                .map_err(|_| DbError::Corrupt(format!("referrer key {kd}")))?,
            size: rec.size,
            artifact_type: rec.artifact_type,
            annotations: rec.annotations,
            urls: Vec::new(),
        });
    }
    Ok(out)
}

/// Whether `repo` holds any manifest (is a repository here at all).
pub fn repo_exists(tx: &ReadTransaction, repo: &str) -> Result<bool, DbError> {
    Ok(tx.open_table(REPOS)?.get(repo)?.is_some())
}
