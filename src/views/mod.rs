//! What a person looking at the registry sees: the repository list, one repository's tags,
//! one manifest in detail, disk use. Each view is plain data built from one read transaction
//! (plus, for a manifest, its config blob), shared by the web UI (`http::ui`, which renders
//! HTML) and the command line (`dockyard ls`/`show`, which render text or `--json`).
//!
//! Views take a `visible` predicate: the caller decides what the viewer may pull, the view
//! never shows anything else.
//!
//! Builders block (redb, blob files): call them on the blocking pool.

mod manifest;
mod repos;
pub mod text;

pub use manifest::{manifest, Child, ConfigView, HistoryRow, Layer, ManifestView, Referrer};
pub use repos::{repositories, repository, NameFilter, RepoDetail, RepoList, RepoSummary, TagRow};

use serde::Serialize;

use crate::gc::usage::Usage;
use crate::gc::GcReport;

/// The storage page and `du --json`.
#[derive(Clone, Debug, Serialize)]
pub struct StorageView {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub shared_blobs: u64,
    pub shared_bytes: u64,
    pub repos: Vec<RepoUsageRow>,
    /// Every `[[policy]]` with a quota, in config order, as `du` measures it.
    pub quotas: Vec<QuotaRow>,
    /// What a GC pass would free now.
    pub reclaimable: GcSummary,
    /// The last pass this process ran, and when (Unix seconds).
    pub last_gc: Option<(u64, GcSummary)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoUsageRow {
    pub name: String,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub exclusive_bytes: u64,
}

/// One quota: the bytes its repositories' manifests reference (what pushes are checked
/// against) and the limit.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaRow {
    pub pattern: String,
    pub used: u64,
    pub quota: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GcSummary {
    pub bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub uploads: u64,
    pub stray_files: u64,
    pub elapsed_ms: u128,
}

impl From<&GcReport> for GcSummary {
    fn from(r: &GcReport) -> GcSummary {
        GcSummary {
            bytes: r.bytes(),
            blobs: r.blobs,
            manifests: r.manifests,
            uploads: r.uploads,
            stray_files: r.stray_files,
            elapsed_ms: r.elapsed.as_millis(),
        }
    }
}

/// Disk use as `du` measures it, restricted to the repositories `visible` admits (the totals
/// and the quotas are the instance's: they are sums over patterns, not any one repository).
pub fn storage(
    usage: &Usage,
    last_gc: Option<&(u64, GcReport)>,
    visible: impl Fn(&str) -> bool,
) -> StorageView {
    StorageView {
        blobs: usage.blobs,
        blob_bytes: usage.blob_bytes,
        shared_blobs: usage.shared_blobs,
        shared_bytes: usage.shared_bytes,
        repos: usage
            .repos
            .iter()
            .filter(|r| visible(&r.name))
            .map(|r| RepoUsageRow {
                name: r.name.clone(),
                manifests: r.manifests,
                tags: r.tags,
                blobs: r.blobs,
                bytes: r.bytes + r.manifest_bytes,
                exclusive_bytes: r.exclusive_bytes,
            })
            .collect(),
        quotas: usage
            .quotas
            .iter()
            .map(|q| QuotaRow {
                pattern: q.pattern.clone(),
                used: q.used,
                quota: q.quota,
            })
            .collect(),
        reclaimable: (&usage.reclaimable).into(),
        last_gc: last_gc.map(|(t, r)| (*t, r.into())),
    }
}

/// The artifact type worth showing: the stored one falls back to the config's media type
/// (what the referrers API reports), which for a plain image says nothing.
pub fn artifact_type(stored: Option<&str>) -> Option<String> {
    const IMAGE_CONFIGS: [&str; 2] = [
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
    stored
        .filter(|t| !IMAGE_CONFIGS.contains(t))
        .map(str::to_string)
}

/// A platform as `os/architecture[/variant]`, from an index entry's or a config's fields.
pub fn platform_string(v: &serde_json::Value) -> Option<String> {
    let os = v.get("os")?.as_str()?;
    let arch = v.get("architecture")?.as_str()?;
    Some(match v.get("variant").and_then(|x| x.as_str()) {
        Some(var) if !var.is_empty() => format!("{os}/{arch}/{var}"),
        _ => format!("{os}/{arch}"),
    })
}

/// `NAME:TAG` or `NAME@DIGEST`, as `docker pull` spells them (a name never holds `:` or `@`).
pub fn parse_target(s: &str) -> Option<(crate::oci::RepoName, crate::oci::Reference)> {
    let (name, reference) = match s.split_once('@') {
        Some(split) => split,
        None => s.rsplit_once(':')?,
    };
    Some((
        crate::oci::RepoName::parse(name)?,
        crate::oci::Reference::parse(reference)?,
    ))
}
