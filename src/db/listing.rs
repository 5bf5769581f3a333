//! Paged listings served straight from the tables: tags, the catalog, and referrers.

use redb::ReadTransaction;

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
