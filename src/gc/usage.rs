//! `dockyard du`: bytes per repository, bytes shared between repositories, and what a GC
//! pass would reclaim now. A repository's bytes are those of the blobs linked into it (what
//! it can serve); a blob linked into several is counted in each and once in the shared total.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use redb::ReadableTable;

use crate::db::schema::*;
use crate::gc::{self, human_bytes, GcOptions, GcReport};
use crate::{Core, Error};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoUsage {
    pub name: String,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    /// Bytes of the blobs linked into the repository.
    pub bytes: u64,
    /// Of those, the bytes linked into no other repository.
    pub exclusive_bytes: u64,
    /// Bytes of its manifests (kept in the database).
    pub manifest_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub repos: Vec<RepoUsage>,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Blobs linked into more than one repository, and their bytes (counted once).
    pub shared_blobs: u64,
    pub shared_bytes: u64,
    /// What a GC pass run now would free (a dry run).
    pub reclaimable: GcReport,
    /// Every `[[policy]]` with a quota: its pattern, the unique blob bytes its repositories'
    /// manifests reference (what the quota limits), and the quota.
    pub quotas: Vec<QuotaUsage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUsage {
    pub pattern: String,
    pub used: u64,
    pub quota: u64,
}

/// How full a quota is, in percent (what `du` and the storage page print).
pub fn percent(used: u64, quota: u64) -> f64 {
    used as f64 * 100.0 / quota.max(1) as f64
}

/// Measures the instance, then asks a dry GC pass what it would free.
pub fn measure(core: &Core) -> Result<Usage, Error> {
    let mut usage = core.db.read_blocking(|tx| {
        let mut sizes: HashMap<String, u64> = HashMap::new();
        let mut u = Usage::default();
        for e in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = e?;
            let rec: BlobRecord = decode(v.value())?;
            u.blobs += 1;
            u.blob_bytes += rec.size;
            sizes.insert(k.value().to_string(), rec.size);
        }
        let mut repos: BTreeMap<String, RepoUsage> = BTreeMap::new();
        let mut holders: HashMap<String, Vec<String>> = HashMap::new();
        for e in tx.open_table(REPO_BLOBS)?.iter()? {
            let (k, _) = e?;
            let (r, d) = k.value();
            let Some(&size) = sizes.get(d) else { continue };
            let ru = repos.entry(r.to_string()).or_default();
            ru.blobs += 1;
            ru.bytes += size;
            holders
                .entry(d.to_string())
                .or_default()
                .push(r.to_string());
        }
        for (d, rs) in &holders {
            let size = sizes[d];
            if rs.len() > 1 {
                u.shared_blobs += 1;
                u.shared_bytes += size;
            } else if let Some(ru) = repos.get_mut(&rs[0]) {
                ru.exclusive_bytes += size;
            }
        }
        for e in tx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = e?;
            let rec: ManifestRecord = decode(v.value())?;
            let ru = repos.entry(k.value().0.to_string()).or_default();
            ru.manifests += 1;
            ru.manifest_bytes += rec.size;
        }
        for e in tx.open_table(TAGS)?.iter()? {
            let (k, _) = e?;
            repos.entry(k.value().0.to_string()).or_default().tags += 1;
        }
        u.repos = repos
            .into_iter()
            .map(|(name, ru)| RepoUsage { name, ..ru })
            .collect();
        let policies = &core.config.policies;
        for (i, p) in policies.0.iter().enumerate() {
            let Some(quota) = p.quota else { continue };
            // A repository counts against the first policy that matches it, as pushes do.
            let in_scope = |name: &str| policies.governing(name).is_some_and(|(j, _)| j == i);
            let (_, used) = crate::db::policy::usage(
                &tx.open_table(REPOS)?,
                &tx.open_table(BLOB_USES)?,
                &tx.open_table(BLOBS)?,
                &in_scope,
            )?;
            u.quotas.push(QuotaUsage {
                pattern: p.pattern.as_str().to_string(),
                used,
                quota,
            });
        }
        Ok(u)
    })?;
    usage.reclaimable = gc::run_once(
        core,
        &GcOptions {
            dry_run: true,
            ..Default::default()
        },
    )?;
    Ok(usage)
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .repos
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(0)
            .max("REPOSITORY".len());
        writeln!(
            f,
            "{:<width$}  {:>9}  {:>5}  {:>6}  {:>10}  {:>10}",
            "REPOSITORY", "MANIFESTS", "TAGS", "BLOBS", "SIZE", "ONLY HERE"
        )?;
        for r in &self.repos {
            writeln!(
                f,
                "{:<width$}  {:>9}  {:>5}  {:>6}  {:>10}  {:>10}",
                r.name,
                r.manifests,
                r.tags,
                r.blobs,
                human_bytes(r.bytes + r.manifest_bytes),
                human_bytes(r.exclusive_bytes),
            )?;
        }
        writeln!(
            f,
            "total: {} blobs, {}; shared by several repositories: {} blobs, {}",
            self.blobs,
            human_bytes(self.blob_bytes),
            self.shared_blobs,
            human_bytes(self.shared_bytes),
        )?;
        for q in &self.quotas {
            writeln!(
                f,
                "quota {}: {} used of {} ({:.0}%)",
                q.pattern,
                human_bytes(q.used),
                human_bytes(q.quota),
                percent(q.used, q.quota),
            )?;
        }
        let r = &self.reclaimable;
        write!(
            f,
            "gc would reclaim now: {} ({} blobs, {} manifests, {} uploads, {} stray files)",
            human_bytes(r.bytes()),
            r.blobs,
            r.manifests,
            r.uploads,
            r.stray_files,
        )
    }
}
