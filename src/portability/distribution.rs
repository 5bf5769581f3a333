//! `dockyard import-distribution PATH`: moves a CNCF Distribution filesystem store (what
//! `registry:2` keeps in `/var/lib/registry`) into this root, reading PATH only.
//!
//! Distribution's layout, under `PATH/docker/registry/v2/`:
//!
//! ```text
//! blobs/sha256/ab/abcdef…/data                         every blob and manifest, once
//! repositories/<name>/_layers/sha256/<hex>/link          blobs readable from <name>
//! repositories/<name>/_manifests/revisions/sha256/<hex>/link   manifests of <name>
//! repositories/<name>/_manifests/tags/<tag>/current/link       what <tag> points at
//! ```
//!
//! A link file holds the digest it stands for; a directory without one is something
//! Distribution deleted. Every manifest revision is read, checked
//! against its digest and parsed; it is imported only if Distribution could serve it: every
//! blob it names linked into its repository with its data present, every child of an index
//! importable too. What fails is reported, one line each, and left out (with the tags that
//! point at it); the rest is imported. Blob files are hard-linked into the root when PATH is
//! on the same filesystem (Distribution never rewrites them either), else copied, and every
//! one is hashed on the way. Running it again skips what the root already has.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::ingest::{self, Plan, PlannedManifest};
use crate::gc::{human_bytes, Progress};
use crate::oci::manifest::{self, ParsedManifest};
use crate::oci::{Digest, RepoName, Tag};
use crate::{Core, Error};

#[derive(Debug, Default)]
pub struct DistributionReport {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub staged: u64,
    pub present: u64,
    pub bytes: u64,
    /// What Distribution holds but could not serve, one line each.
    pub problems: Vec<String>,
    pub elapsed: Duration,
}

impl std::fmt::Display for DistributionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "import-distribution: {} repositories, {} manifests, {} tags, {} blobs ({}): \
             {} stored, {} already there; {} not imported; {:.2?}",
            self.repositories,
            self.manifests,
            self.tags,
            self.blobs,
            human_bytes(self.bytes),
            self.staged,
            self.present,
            self.problems.len(),
            self.elapsed
        )?;
        for p in &self.problems {
            write!(f, "\n  not imported: {p}")?;
        }
        Ok(())
    }
}

fn fail(message: String) -> Error {
    Error::Command(message)
}

/// The digest a link file stands for.
fn read_link(path: &Path) -> Option<Digest> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Digests with a well-formed `link` under `dir/sha256/<hex>/link`; broken ones reported.
fn links(dir: &Path, what: &str, problems: &mut Vec<String>) -> BTreeSet<Digest> {
    let mut out = BTreeSet::new();
    let Ok(entries) = fs::read_dir(dir.join("sha256")) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let link = e.path().join("link");
        // Distribution deletes a manifest or a layer link by removing the `link` file and
        // leaving its directory: that is a deletion, not damage.
        if !link.exists() {
            continue;
        }
        match (format!("sha256:{name}").parse::<Digest>(), read_link(&link)) {
            (Ok(d), Some(l)) if d == l => {
                out.insert(d);
            }
            _ => problems.push(format!("{what}: broken link {}", link.display())),
        }
    }
    out
}

struct Repo {
    name: RepoName,
    layers: BTreeSet<Digest>,
    revisions: BTreeSet<Digest>,
    tags: BTreeMap<String, Digest>,
}

/// Every directory under `repositories/` that holds `_manifests`, with its name.
fn find_repos(base: &Path, problems: &mut Vec<String>) -> Result<Vec<Repo>, Error> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let dir = base.join(&rel);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut is_repo = false;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "_manifests" || name == "_layers" {
                is_repo = true;
            } else if !name.starts_with('_') && e.path().is_dir() {
                todo.push(rel.join(&name));
            }
        }
        if !is_repo {
            continue;
        }
        let text = rel.to_string_lossy().into_owned();
        let Some(name) = RepoName::parse(&text) else {
            problems.push(format!("{text}: not a valid repository name"));
            continue;
        };
        let mut tags = BTreeMap::new();
        if let Ok(entries) = fs::read_dir(dir.join("_manifests/tags")) {
            for e in entries.flatten() {
                let tag = e.file_name().to_string_lossy().into_owned();
                let link = e.path().join("current/link");
                match read_link(&link) {
                    Some(d) => {
                        tags.insert(tag, d);
                    }
                    None => problems.push(format!("{text}:{tag}: broken link {}", link.display())),
                }
            }
        }
        out.push(Repo {
            layers: links(&dir.join("_layers"), &text, problems),
            revisions: links(&dir.join("_manifests/revisions"), &text, problems),
            tags,
            name,
        });
    }
    out.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(out)
}

/// Imports the Distribution store at `path` (see the module documentation). Blocking.
pub fn import(
    core: &Core,
    path: &Path,
    progress: Option<Progress>,
) -> Result<DistributionReport, Error> {
    let started = Instant::now();
    let v2 = path.join("docker/registry/v2");
    if !v2.join("repositories").is_dir() && !v2.join("blobs").is_dir() {
        return Err(fail(format!(
            "{} is not a Distribution filesystem store (no docker/registry/v2/repositories)",
            path.display()
        )));
    }
    let blob_data = |d: &Digest| {
        v2.join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    };
    let mut report = DistributionReport::default();
    let repos = find_repos(&v2.join("repositories"), &mut report.problems)?;
    let mut plan = Plan::default();
    let mut throttle = super::Throttle::new();
    let limit = core.config.max_manifest_size;
    for (i, repo) in repos.iter().enumerate() {
        if let (Some(p), true) = (&progress, throttle.due()) {
            p(&format!(
                "import-distribution: repositories {i}/{}",
                repos.len()
            ));
        }
        let r = repo.name.as_str();
        // Read, verify and parse every revision.
        let mut read: BTreeMap<Digest, (ParsedManifest, Vec<u8>)> = BTreeMap::new();
        for d in &repo.revisions {
            let mut body = Vec::new();
            let opened =
                fs::File::open(blob_data(d)).and_then(|f| f.take(limit + 1).read_to_end(&mut body));
            if let Err(e) = opened {
                report.problems.push(format!("{r}@{d}: manifest data: {e}"));
                continue;
            }
            if body.len() as u64 > limit || Digest::of(d.algorithm(), &body) != *d {
                report
                    .problems
                    .push(format!("{r}@{d}: manifest data does not match its digest"));
                continue;
            }
            match manifest::parse(&body, None) {
                Ok(p) => {
                    read.insert(d.clone(), (p, body));
                }
                Err(e) => report.problems.push(format!("{r}@{d}: {}", e.message)),
            }
        }
        // Keep what Distribution could serve: images whose blobs are linked and present,
        // then indexes whose children are kept (repeated: indexes of indexes).
        let mut kept: Vec<Digest> = Vec::new();
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        for (d, (p, _)) in &read {
            if !p.children.is_empty() {
                continue;
            }
            match p
                .blobs
                .iter()
                .find(|b| !repo.layers.contains(b) || !blob_data(b).is_file())
            {
                Some(b) => report.problems.push(format!(
                    "{r}@{d}: blob {b} is {}",
                    if repo.layers.contains(b) {
                        "missing from the store"
                    } else {
                        "not linked into the repository"
                    }
                )),
                None => {
                    kept.push(d.clone());
                    blobs.extend(p.blobs.iter().map(|b| b.to_string()));
                }
            }
        }
        loop {
            let before = kept.len();
            for (d, (p, _)) in &read {
                if p.children.is_empty() || kept.contains(d) {
                    continue;
                }
                if p.children.iter().all(|c| kept.contains(c))
                    && p.blobs
                        .iter()
                        .all(|b| repo.layers.contains(b) && blob_data(b).is_file())
                {
                    kept.push(d.clone());
                    blobs.extend(p.blobs.iter().map(|b| b.to_string()));
                }
            }
            if kept.len() == before {
                break;
            }
        }
        for (d, (p, _)) in &read {
            if !p.children.is_empty() && !kept.contains(d) {
                report.problems.push(format!(
                    "{r}@{d}: an index whose children cannot all be imported"
                ));
            }
        }
        let mut manifests: Vec<PlannedManifest> = Vec::new();
        for d in &kept {
            let (parsed, body) = read.remove(d).expect("kept from what was read");
            manifests.push(PlannedManifest {
                digest: d.clone(),
                parsed,
                body,
                tags: Vec::new(),
            });
        }
        for (tag, d) in &repo.tags {
            let Some(t) = Tag::parse(tag) else {
                report.problems.push(format!("{r}:{tag}: not a valid tag"));
                continue;
            };
            match manifests.iter_mut().find(|m| &m.digest == d) {
                Some(m) => m.tags.push(t),
                None => report
                    .problems
                    .push(format!("{r}:{tag}: points at {d}, which is not imported")),
            }
        }
        if !manifests.is_empty() {
            report.repositories += 1;
            report.manifests += manifests.len() as u64;
            plan.repos.insert(r.to_string(), (blobs, manifests));
        }
    }
    report.tags = plan.tags() as u64;
    let all: BTreeSet<String> = plan
        .repos
        .values()
        .flat_map(|(b, _)| b.iter().cloned())
        .collect();
    report.blobs = all.len() as u64;
    for (i, d) in all.iter().enumerate() {
        if let (Some(p), true) = (&progress, throttle.due()) {
            p(&format!("import-distribution: blobs {i}/{}", all.len()));
        }
        let digest: Digest = d.parse().map_err(|_| fail(format!("bad digest {d}")))?;
        match ingest::present(core, &digest) {
            Ok(Some(size)) => {
                plan.present.insert(d.clone(), size);
                report.present += 1;
                report.bytes += size;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                plan.abandon(core);
                return Err(e);
            }
        }
        match core.store.stage(&blob_data(&digest), &digest, true) {
            Ok((id, size)) => {
                plan.staged.insert(d.clone(), (id, size));
                report.staged += 1;
                report.bytes += size;
            }
            Err(e) => {
                plan.abandon(core);
                return Err(fail(format!("blob {d}: {e}")));
            }
        }
    }
    ingest::commit(core, plan)?;
    report.elapsed = started.elapsed();
    Ok(report)
}
