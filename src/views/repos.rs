//! The repository list and one repository's tags.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadTransaction, ReadableTable};
use serde::Serialize;

use super::platform_string;
use crate::auth::users::Pattern;
use crate::db::schema::*;
use crate::db::{pulls, DbError};
use crate::oci::manifest::{DOCKER_LIST, OCI_INDEX};
use crate::oci::RegistryError;

/// Which repository names a listing shows: a substring, or a grant-style pattern (`*` one
/// path component, `**` any number) when the text contains a `*`.
#[derive(Clone, Debug)]
pub enum NameFilter {
    All,
    Contains(String),
    Pattern(Pattern),
}

impl NameFilter {
    pub fn parse(text: &str) -> Result<NameFilter, String> {
        let text = text.trim();
        if text.is_empty() {
            Ok(NameFilter::All)
        } else if text.contains('*') {
            Pattern::parse(text)
                .map(NameFilter::Pattern)
                .map_err(|e| e.to_string())
        } else {
            Ok(NameFilter::Contains(text.to_string()))
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameFilter::All => true,
            NameFilter::Contains(s) => name.contains(s.as_str()),
            NameFilter::Pattern(p) => p.matches(name),
        }
    }
}

/// One row of the repository list.
#[derive(Clone, Debug, Serialize)]
pub struct RepoSummary {
    pub name: String,
    pub tags: Vec<String>,
    pub manifests: u64,
    /// Bytes of blobs that only this repository's manifests reference.
    pub unique_bytes: u64,
    /// Bytes of blobs that manifests of other repositories reference too.
    pub shared_bytes: u64,
    /// The latest push of any of its manifests (Unix seconds).
    pub last_push: Option<u64>,
    /// When a manifest was last pulled, to the minute (Unix seconds).
    pub last_pull: Option<u64>,
}

/// One page of the repository list.
#[derive(Clone, Debug, Serialize)]
pub struct RepoList {
    pub repos: Vec<RepoSummary>,
    /// Repositories the filter and `visible` admit, on every page.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
}

/// The repositories `filter` and `visible` admit, sorted by name: `limit` of them from
/// `offset`, with their tags, sizes and times. The names are one key scan; only the page's
/// repositories are measured.
pub fn repositories(
    tx: &ReadTransaction,
    filter: &NameFilter,
    offset: usize,
    limit: usize,
    visible: impl Fn(&str) -> bool,
) -> Result<RepoList, RegistryError> {
    let mut total = 0;
    let mut names = Vec::new();
    for e in tx.open_table(REPOS)?.iter()? {
        let (k, _) = e?;
        let name = k.value();
        if !filter.matches(name) || !visible(name) {
            continue;
        }
        if total >= offset && names.len() < limit {
            names.push(name.to_string());
        }
        total += 1;
    }
    let repos = names
        .into_iter()
        .map(|name| summary(tx, name))
        .collect::<Result<_, _>>()?;
    Ok(RepoList {
        repos,
        total,
        offset,
        limit,
    })
}

fn summary(tx: &ReadTransaction, name: String) -> Result<RepoSummary, RegistryError> {
    let sizes = sizes(tx, &name)?;
    Ok(RepoSummary {
        tags: tags_of(tx, &name)?.into_keys().collect(),
        manifests: sizes.manifests,
        unique_bytes: sizes.unique,
        shared_bytes: sizes.shared,
        last_push: sizes.last_push,
        last_pull: pulls::last(tx, &name)?,
        name,
    })
}

struct Sizes {
    manifests: u64,
    unique: u64,
    shared: u64,
    last_push: Option<u64>,
}

/// A repository's bytes, split by whether another repository's manifests reference the blob
/// too: a blob's count is the number of (repository, manifest) rows listing it, so it is
/// shared exactly when its count exceeds the rows of this repository that list it.
fn sizes(tx: &ReadTransaction, repo: &str) -> Result<Sizes, RegistryError> {
    let mut local: HashMap<String, u64> = HashMap::new();
    let mut out = Sizes {
        manifests: 0,
        unique: 0,
        shared: 0,
        last_push: None,
    };
    for e in tx.open_table(MANIFESTS)?.range((repo, "")..)? {
        let (k, v) = e?;
        if k.value().0 != repo {
            break;
        }
        let rec: ManifestRecord = decode(v.value())?;
        out.manifests += 1;
        out.last_push = out.last_push.max(Some(rec.pushed_ms / 1000));
        for b in rec.blobs {
            *local.entry(b).or_default() += 1;
        }
    }
    let blobs = tx.open_table(BLOBS)?;
    for (digest, here) in local {
        let Some(v) = blobs.get(digest.as_str())? else {
            continue;
        };
        let rec: BlobRecord = decode(v.value())?;
        if rec.refcount > here {
            out.shared += rec.size;
        } else {
            out.unique += rec.size;
        }
    }
    Ok(out)
}

/// tag → digest, in tag order.
fn tags_of(tx: &ReadTransaction, repo: &str) -> Result<BTreeMap<String, String>, RegistryError> {
    let mut out = BTreeMap::new();
    for e in tx.open_table(TAGS)?.range((repo, "")..)? {
        let (k, v) = e?;
        if k.value().0 != repo {
            break;
        }
        out.insert(k.value().1.to_string(), v.value().to_string());
    }
    Ok(out)
}

/// A tag, or a manifest no tag points at, on a repository's page.
#[derive(Clone, Debug, Serialize)]
pub struct TagRow {
    /// `None` for an untagged manifest.
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// The manifest and every blob it (or, for an index, its children) references, each
    /// blob once.
    pub size: u64,
    /// For an index: its children's platforms.
    pub platforms: Vec<String>,
    /// When the tag was last pushed (for an untagged manifest: the manifest), Unix seconds.
    pub pushed: u64,
    /// For a referrer: the manifest it refers to.
    pub subject: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoDetail {
    pub name: String,
    /// One page of the tags, in tag order.
    pub tags: Vec<TagRow>,
    /// Tags in the repository, on every page.
    pub tag_total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Manifests that no tag and no index references: referrers (signatures, SBOMs) and
    /// leftovers of retagging (at most `limit` of them).
    pub untagged: Vec<TagRow>,
    pub untagged_total: usize,
    pub manifests: u64,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
    pub last_push: Option<u64>,
    pub last_pull: Option<u64>,
}

/// One repository with `limit` of its tags from `offset`; `None` if it does not exist. Only
/// the page's tags are measured.
pub fn repository(
    tx: &ReadTransaction,
    repo: &str,
    offset: usize,
    limit: usize,
) -> Result<Option<RepoDetail>, RegistryError> {
    if tx.open_table(REPOS)?.get(repo)?.is_none() {
        return Ok(None);
    }
    let manifests = tx.open_table(MANIFESTS)?;
    let bodies = tx.open_table(MANIFEST_BODIES)?;
    let blobs = tx.open_table(BLOBS)?;
    let tag_pushed = tx.open_table(TAG_PUSHED)?;
    let row = |tag: Option<String>, digest: &str, rec: &ManifestRecord| {
        // A tag's own push time (schema 2), else the manifest's last push.
        let pushed = match &tag {
            Some(t) => tag_pushed.get((repo, t.as_str()))?.map(|v| v.value()),
            None => None,
        };
        let mut seen = std::collections::HashSet::new();
        let mut size = rec.size;
        let mut add_blobs = |rec: &ManifestRecord, size: &mut u64| -> Result<(), RegistryError> {
            for b in &rec.blobs {
                if seen.insert(b.clone()) {
                    if let Some(v) = blobs.get(b.as_str())? {
                        *size += decode::<BlobRecord>(v.value())?.size;
                    }
                }
            }
            Ok(())
        };
        add_blobs(rec, &mut size)?;
        let mut platforms = Vec::new();
        if !rec.children.is_empty() || [OCI_INDEX, DOCKER_LIST].contains(&rec.media_type.as_str()) {
            for c in &rec.children {
                if let Some(v) = manifests.get((repo, c.as_str()))? {
                    let child: ManifestRecord = decode(v.value())?;
                    size += child.size;
                    add_blobs(&child, &mut size)?;
                }
            }
            if let Some(body) = bodies.get((repo, digest))? {
                let json: serde_json::Value =
                    serde_json::from_slice(body.value()).unwrap_or_default();
                for m in json["manifests"].as_array().into_iter().flatten() {
                    if let Some(p) = platform_string(&m["platform"]) {
                        platforms.push(p);
                    }
                }
            }
        }
        Ok::<_, RegistryError>(TagRow {
            tag,
            digest: digest.to_string(),
            media_type: rec.media_type.clone(),
            artifact_type: super::artifact_type(rec.artifact_type.as_deref()),
            size,
            platforms,
            pushed: pushed.unwrap_or(rec.pushed_ms) / 1000,
            subject: rec.subject.clone(),
        })
    };
    let mut tags = Vec::new();
    let all_tags = tags_of(tx, repo)?;
    let tag_total = all_tags.len();
    for (tag, digest) in all_tags.into_iter().skip(offset).take(limit) {
        let Some(v) = manifests.get((repo, digest.as_str()))? else {
            return Err(
                DbError::Corrupt(format!("tag {repo}:{tag} names a missing manifest")).into(),
            );
        };
        let rec: ManifestRecord = decode(v.value())?;
        tags.push(row(Some(tag), &digest, &rec)?);
    }
    let mut untagged = Vec::new();
    let mut untagged_total = 0;
    for e in manifests.range((repo, "")..)? {
        let (k, v) = e?;
        if k.value().0 != repo {
            break;
        }
        let rec: ManifestRecord = decode(v.value())?;
        if rec.refcount == 0 {
            if untagged.len() < limit {
                untagged.push(row(None, k.value().1, &rec)?);
            }
            untagged_total += 1;
        }
    }
    let sizes = sizes(tx, repo)?;
    Ok(Some(RepoDetail {
        name: repo.to_string(),
        tags,
        tag_total,
        offset,
        limit,
        untagged,
        untagged_total,
        manifests: sizes.manifests,
        unique_bytes: sizes.unique,
        shared_bytes: sizes.shared,
        last_push: sizes.last_push,
        last_pull: pulls::last(tx, repo)?,
    }))
}
