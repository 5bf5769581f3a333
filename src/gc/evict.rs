//! Step 0b of a pass: bounding the mirror cache (`[mirror_cache] max_size`). When the blobs
//! linked into mirrored repositories (names under a `[[mirror]]` prefix) add up to more than
//! the bound, whole cached repositories go, least recently pulled first (`db::pulls`; never
//! pulled counts as oldest), until what remains fits. Pushed repositories are never touched.
//!
//! Evicting a repository deletes its manifests with `db::manifests::delete` (indexes before
//! the children they list) and its blob links, in one write transaction, as a client's
//! DELETEs would; the blobs' counts fall to zero and step 2 of this pass (or a later one,
//! once `grace` and the lease of their last sighting are over) frees the bytes. A blob also
//! linked into a pushed repository keeps its bytes; it is not counted as cache.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadTransaction, ReadableTable};

use crate::db::schema::*;
use crate::db::{self};
use crate::mirror::Mirrors;
use crate::oci::{Digest, RegistryError, RepoName};
use crate::Core;

/// One cached (mirrored) repository.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CachedRepo {
    pub name: String,
    /// Bytes of the blobs linked into it.
    pub bytes: u64,
    /// Manifests stored.
    pub manifests: u64,
    /// Last pull (Unix seconds), if one was recorded.
    pub last_pull: Option<u64>,
}

/// The mirrored repositories, and each cached blob's size with the repositories (mirrored
/// or not) that link it.
pub struct Cache {
    pub repos: Vec<CachedRepo>,
    blobs: HashMap<String, (u64, Vec<String>)>,
}

impl Cache {
    /// Bytes of blobs linked only into mirrored repositories: what eviction can free.
    pub fn evictable_bytes(&self, mirrors: &Mirrors) -> u64 {
        self.blobs
            .values()
            .filter(|(_, repos)| repos.iter().all(|r| mirrors.is_mirrored(r)))
            .map(|(size, _)| size)
            .sum()
    }
}

/// Reads the cache's extent from one snapshot.
pub fn cache(tx: &ReadTransaction, mirrors: &Mirrors) -> Result<Cache, RegistryError> {
    let mut repos = Vec::new();
    let mut blobs: HashMap<String, (u64, Vec<String>)> = HashMap::new();
    let blob_table = tx.open_table(BLOBS)?;
    let links = tx.open_table(REPO_BLOBS)?;
    let manifests = tx.open_table(MANIFESTS)?;
    let mut mirrored: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in links.iter()? {
        let (k, _) = e?;
        let (repo, digest) = k.value();
        if !mirrors.is_mirrored(repo) {
            continue;
        }
        let size = match blob_table.get(digest)? {
            Some(v) => decode::<BlobRecord>(v.value())?.size,
            None => 0,
        };
        mirrored.entry(repo.to_string()).or_default().0 += size;
        blobs
            .entry(digest.to_string())
            .or_insert((size, Vec::new()))
            .1
            .push(repo.to_string());
    }
    for e in manifests.iter()? {
        let (k, _) = e?;
        let (repo, _) = k.value();
        if mirrors.is_mirrored(repo) {
            mirrored.entry(repo.to_string()).or_default().1 += 1;
        }
    }
    // Pushed repositories sharing a cached blob: they keep its bytes.
    for e in links.iter()? {
        let (k, _) = e?;
        let (repo, digest) = k.value();
        if !mirrors.is_mirrored(repo) {
            if let Some((_, rs)) = blobs.get_mut(digest) {
                rs.push(repo.to_string());
            }
        }
    }
    for (name, (bytes, manifests)) in mirrored {
        let last_pull = db::pulls::last(tx, &name)?;
        repos.push(CachedRepo {
            name,
            bytes,
            manifests,
            last_pull,
        });
    }
    Ok(Cache { repos, blobs })
}

/// Chooses the repositories to evict so that the cache fits `max`: least recently pulled
/// first.
pub fn choose(cache: &Cache, mirrors: &Mirrors, max: u64) -> Vec<String> {
    let mut total = cache.evictable_bytes(mirrors);
    if total <= max {
        return Vec::new();
    }
    let mut order: Vec<&CachedRepo> = cache.repos.iter().collect();
    order.sort_by_key(|r| (r.last_pull.unwrap_or(0), r.name.clone()));
    let mut remaining: HashMap<&str, Vec<&str>> = cache
        .blobs
        .iter()
        .map(|(d, (_, rs))| (d.as_str(), rs.iter().map(String::as_str).collect()))
        .collect();
    let mut out = Vec::new();
    for r in order {
        if total <= max {
            break;
        }
        for (d, repos) in remaining.iter_mut() {
            if !repos.contains(&r.name.as_str()) {
                continue;
            }
            repos.retain(|x| *x != r.name);
            if repos.is_empty() {
                total = total.saturating_sub(cache.blobs[*d].0);
            }
        }
        out.push(r.name.clone());
    }
    out
}

/// Deletes every manifest and blob link of `repo`. Returns the manifests deleted.
pub fn evict_repo(tx: &redb::WriteTransaction, repo: &RepoName) -> Result<u64, RegistryError> {
    let r = repo.as_str();
    let mut deleted = 0;
    // Indexes first: a manifest an index lists cannot be deleted before the index (409).
    loop {
        let digests: Vec<String> = {
            let manifests = tx.open_table(MANIFESTS)?;
            let mut out = Vec::new();
            for e in manifests.range((r, "")..)? {
                let (k, _) = e?;
                if k.value().0 != r {
                    break;
                }
                out.push(k.value().1.to_string());
            }
            out
        };
        if digests.is_empty() {
            break;
        }
        let before = deleted;
        for d in digests {
            let Ok(digest) = d.parse::<Digest>() else {
                continue;
            };
            match db::manifests::delete(tx, repo, &digest) {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                // Listed by an index not deleted yet: the next round.
                Err(e) if e.status() == 409 => {}
                Err(e) => return Err(e),
            }
        }
        if deleted == before {
            break;
        }
    }
    let links: Vec<String> = {
        let table = tx.open_table(REPO_BLOBS)?;
        let mut out = Vec::new();
        for e in table.range((r, "")..)? {
            let (k, _) = e?;
            if k.value().0 != r {
                break;
            }
            out.push(k.value().1.to_string());
        }
        out
    };
    let mut table = tx.open_table(REPO_BLOBS)?;
    for d in &links {
        table.remove((r, d.as_str()))?;
    }
    db::pulls::forget(tx, r)?;
    Ok(deleted)
}

/// The step itself: returns the repositories evicted (or, dry, that would be).
pub fn run(core: &Core, max: u64, dry_run: bool) -> Result<Vec<String>, RegistryError> {
    let mirrors = core.mirrors.clone();
    let chosen = core.db.read_blocking(|tx| {
        let c = cache(tx, &mirrors)?;
        Ok(choose(&c, &mirrors, max))
    })?;
    if dry_run || chosen.is_empty() {
        return Ok(chosen);
    }
    let mut evicted = Vec::new();
    for name in chosen {
        let Some(repo) = RepoName::parse(&name) else {
            continue;
        };
        let n = core.db.write_blocking(|tx| evict_repo(tx, &repo))?;
        tracing::info!(repo = %name, manifests = n, "gc: evicted a cached repository (mirror_cache.max_size)");
        evicted.push(name);
    }
    Ok(evicted)
}
