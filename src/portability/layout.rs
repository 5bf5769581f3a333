//! OCI image layouts (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`), the format skopeo,
//! umoci, podman and oras read and write: `dockyard export` writes one, `dockyard import`
//! reads one.
//!
//! Export names each image in `index.json` with `org.opencontainers.image.ref.name`: the tag
//! when everything exported comes from one repository (so `skopeo copy oci:DIR:TAG` finds
//! it), else `REPO:TAG`; `dev.dockyard.repository` records the repository either way, so an
//! import puts images back where they came from. Blob files are hard-linked into the layout
//! when it is on the root's filesystem (blob files never change), else copied.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ingest::{self, Plan, PlannedManifest};
use crate::db;
use crate::gc::{human_bytes, Progress};
use crate::oci::manifest::{self, OCI_INDEX};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::store::Placed;
use crate::{Core, Error};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const REPOSITORY: &str = "dev.dockyard.repository";

fn fail(message: String) -> Error {
    Error::Command(message)
}

/// `NAME`, `NAME:TAG` or `NAME@DIGEST`.
pub fn parse_ref(s: &str) -> Result<(RepoName, Option<Reference>), Error> {
    let bad = || fail(format!("{s:?} is not NAME, NAME:TAG or NAME@DIGEST"));
    let (name, reference) = if let Some((n, d)) = s.split_once('@') {
        (n, Some(Reference::Digest(d.parse().map_err(|_| bad())?)))
    } else {
        match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                (n, Some(Reference::Tag(Tag::parse(t).ok_or_else(bad)?)))
            }
            _ => (s, None),
        }
    };
    Ok((RepoName::parse(name).ok_or_else(bad)?, reference))
}

#[derive(Debug, Default)]
pub struct LayoutReport {
    pub import: bool,
    pub images: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub linked: u64,
    pub copied: u64,
    pub present: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for LayoutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} images, {} manifests, {} blobs ({}): {} linked, {} copied, {} already there; {:.2?}",
            if self.import { "import" } else { "export" },
            self.images,
            self.manifests,
            self.blobs,
            human_bytes(self.bytes),
            self.linked,
            self.copied,
            self.present,
            self.elapsed
        )
    }
}

/// One `index.json` entry to write.
struct Entry {
    repo: String,
    tag: Option<String>,
    digest: String,
    media_type: String,
    size: u64,
}

/// Writes the images `refs` name (whole repositories for bare names, index children
/// included) into the OCI layout at `to`, which must be new, empty, or a layout already (its
/// other entries are kept). Blocking.
pub fn export(
    core: &Core,
    refs: &[String],
    to: &Path,
    progress: Option<Progress>,
) -> Result<LayoutReport, Error> {
    let started = Instant::now();
    if refs.is_empty() {
        return Err(fail(
            "name at least one image: NAME, NAME:TAG or NAME@DIGEST".into(),
        ));
    }
    let parsed = refs
        .iter()
        .map(|r| parse_ref(r))
        .collect::<Result<Vec<_>, _>>()?;
    let (root, target) = (super::resolve(core.store.root())?, super::resolve(to)?);
    if target.starts_with(&root) || root.starts_with(&target) {
        return Err(fail(format!(
            "{} is inside the registry root {} (or holds it): choose a directory outside it",
            to.display(),
            root.display()
        )));
    }
    if to.exists() {
        let empty = fs::read_dir(to)?.next().is_none();
        if !empty && !to.join("oci-layout").is_file() {
            return Err(fail(format!(
                "{} is neither empty nor an OCI image layout",
                to.display()
            )));
        }
    }
    // One read transaction: the export is a consistent view of every image it names.
    let (entries, manifests, blobs) = core.db.read_blocking(|tx| {
        let mut entries = Vec::new();
        let mut manifests: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
        for (repo, reference) in &parsed {
            let roots: Vec<(Option<String>, Reference)> = match reference {
                Some(Reference::Tag(t)) => vec![(Some(t.to_string()), Reference::Tag(t.clone()))],
                Some(d) => vec![(None, d.clone())],
                None => {
                    let page = db::listing::tags(tx, repo, None, usize::MAX)?
                        .ok_or_else(|| fail_registry(format!("no repository {repo}")))?;
                    page.items
                        .into_iter()
                        .map(|t| {
                            let tag = Tag::parse(&t).expect("stored tags are valid");
                            (Some(t), Reference::Tag(tag))
                        })
                        .collect()
                }
            };
            for (tag, reference) in roots {
                let (digest, rec, body) = db::manifests::get(tx, repo, &reference, true)?
                    .ok_or_else(|| fail_registry(format!("no manifest {repo}:{reference}")))?;
                entries.push(Entry {
                    repo: repo.to_string(),
                    tag,
                    digest: digest.to_string(),
                    media_type: rec.media_type.clone(),
                    size: rec.size,
                });
                let mut todo = vec![(digest, rec, body.expect("asked for the body"))];
                while let Some((d, rec, body)) = todo.pop() {
                    if manifests.insert(d.to_string(), body).is_some() {
                        continue;
                    }
                    for b in &rec.blobs {
                        let size = db::snapshot::blob_size(tx, b)?
                            .ok_or_else(|| fail_registry(format!("blob {b} has no row")))?;
                        blobs.insert(b.clone(), size);
                    }
                    for c in &rec.children {
                        let c: Digest = c
                            .parse()
                            .map_err(|_| fail_registry(format!("bad digest {c}")))?;
                        let (cd, crec, cbody) =
                            db::manifests::get(tx, repo, &Reference::Digest(c.clone()), true)?
                                .ok_or_else(|| {
                                    fail_registry(format!("{repo}@{d} lists {c}, which is missing"))
                                })?;
                        todo.push((cd, crec, cbody.expect("asked for the body")));
                    }
                }
            }
        }
        Ok((entries, manifests, blobs))
    })?;

    fs::create_dir_all(to)?;
    let mut report = LayoutReport {
        images: entries.len() as u64,
        manifests: manifests.len() as u64,
        blobs: blobs.len() as u64,
        ..Default::default()
    };
    let mut throttle = super::Throttle::new();
    for (i, (d, size)) in blobs.iter().enumerate() {
        if let (Some(p), true) = (&progress, throttle.due()) {
            p(&format!("export: blobs {i}/{}", blobs.len()));
        }
        let digest: Digest = d.parse().map_err(|_| fail(format!("bad digest {d}")))?;
        let path = blob_path(to, &digest);
        fs::create_dir_all(path.parent().expect("blob paths have a directory"))?;
        let staging = path.with_extension("partial");
        let placed = core
            .store
            .place_at(&digest, *size, false, &path, &staging)
            .map_err(|e| fail(format!("blob {d}: {e}")))?;
        report.bytes += size;
        match placed {
            Placed::Present => report.present += 1,
            Placed::Linked => report.linked += 1,
            Placed::Copied => report.copied += 1,
        }
    }
    for (d, body) in &manifests {
        let digest: Digest = d.parse().map_err(|_| fail(format!("bad digest {d}")))?;
        let path = blob_path(to, &digest);
        fs::create_dir_all(path.parent().expect("blob paths have a directory"))?;
        write_durably(&path, body)?;
    }
    for dir in [
        to.join("blobs").join("sha256"),
        to.join("blobs").join("sha512"),
    ] {
        if dir.is_dir() {
            fs::File::open(&dir)?.sync_all()?;
        }
    }
    // index.json: earlier entries of the layout are kept unless an export replaces their name.
    let one_repo = entries
        .iter()
        .map(|e| &e.repo)
        .collect::<BTreeSet<_>>()
        .len()
        == 1;
    let mut index: Value = match fs::read(to.join("index.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("{}/index.json: {e}", to.display())))?,
        Err(_) => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let list = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| fail(format!("{}/index.json has no manifests list", to.display())))?;
    for e in &entries {
        let mut annotations = json!({ REPOSITORY: e.repo });
        if let Some(t) = &e.tag {
            let name = if one_repo {
                t.clone()
            } else {
                format!("{}:{t}", e.repo)
            };
            list.retain(|m| m["annotations"][REF_NAME].as_str() != Some(name.as_str()));
            annotations[REF_NAME] = json!(name);
        }
        list.push(json!({
            "mediaType": e.media_type,
            "digest": e.digest,
            "size": e.size,
            "annotations": annotations,
        }));
    }
    write_durably(&to.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_durably(
        &to.join("index.json"),
        &serde_json::to_vec_pretty(&index).map_err(io::Error::other)?,
    )?;
    fs::File::open(to)?.sync_all()?;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn fail_registry(message: String) -> crate::oci::RegistryError {
    crate::oci::RegistryError::new(crate::oci::ErrorCode::NameUnknown, message)
}

fn blob_path(layout: &Path, d: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(d.algorithm().as_str())
        .join(d.hex())
}

/// Writes `bytes` beside `path`, fsyncs, renames into place.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("partial");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Reads the layout at `dir` into the root: every `index.json` entry (and what it lists),
/// into `repo` when given, else into the repository its annotations name. Every blob and
/// manifest is checked against its digest before anything is stored. Blocking.
pub fn import(
    core: &Core,
    dir: &Path,
    repo: Option<&str>,
    progress: Option<Progress>,
) -> Result<LayoutReport, Error> {
    let started = Instant::now();
    let not_layout = |why: String| {
        fail(format!(
            "{} is not an OCI image layout: {why}",
            dir.display()
        ))
    };
    let marker: Value = serde_json::from_slice(
        &fs::read(dir.join("oci-layout")).map_err(|e| not_layout(format!("oci-layout: {e}")))?,
    )
    .map_err(|e| not_layout(format!("oci-layout: {e}")))?;
    if marker["imageLayoutVersion"].as_str().is_none() {
        return Err(not_layout("oci-layout has no imageLayoutVersion".into()));
    }
    let index: Value = serde_json::from_slice(
        &fs::read(dir.join("index.json")).map_err(|e| not_layout(format!("index.json: {e}")))?,
    )
    .map_err(|e| not_layout(format!("index.json: {e}")))?;
    let entries = index["manifests"]
        .as_array()
        .ok_or_else(|| not_layout("index.json has no manifests list".into()))?;
    let forced = match repo {
        Some(r) => Some(
            RepoName::parse(r).ok_or_else(|| fail(format!("{r:?} is not a repository name")))?,
        ),
        None => None,
    };
    let mut plan = Plan::default();
    let mut report = LayoutReport {
        import: true,
        images: entries.len() as u64,
        ..Default::default()
    };
    let result = (|| -> Result<(), Error> {
        let mut throttle = super::Throttle::new();
        for e in entries {
            let digest: Digest = e["digest"]
                .as_str()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| {
                    not_layout(format!("an index.json entry has no valid digest: {e}"))
                })?;
            let ref_name = e["annotations"][REF_NAME].as_str();
            let (target, tag) = name_of(
                forced.as_ref(),
                e["annotations"][REPOSITORY].as_str(),
                ref_name,
            )
            .map_err(|m| fail(format!("{}: {digest}: {m}", dir.display())))?;
            let media_type = e["mediaType"].as_str();
            let (blob_set, manifests) = plan
                .repos
                .entry(target.to_string())
                .or_insert_with(|| (BTreeSet::new(), Vec::new()));
            let mut order = Vec::new();
            load_tree(core, dir, &digest, media_type, &mut order, 0)?;
            for (d, parsed, body) in order {
                for b in &parsed.blobs {
                    blob_set.insert(b.to_string());
                }
                if !manifests.iter().any(|m| m.digest == d) {
                    manifests.push(PlannedManifest {
                        digest: d,
                        parsed,
                        body,
                        tags: Vec::new(),
                    });
                }
            }
            if let Some(t) = tag {
                let m = manifests
                    .iter_mut()
                    .find(|m| m.digest == digest)
                    .expect("the root was just planned");
                m.tags.push(t);
            }
            if let (Some(p), true) = (&progress, throttle.due()) {
                p(&format!("import: {} manifests read", manifests.len()));
            }
        }
        let all: BTreeSet<String> = plan
            .repos
            .values()
            .flat_map(|(b, _)| b.iter().cloned())
            .collect();
        for (i, d) in all.iter().enumerate() {
            if let (Some(p), true) = (&progress, throttle.due()) {
                p(&format!("import: blobs {i}/{}", all.len()));
            }
            let digest: Digest = d.parse().map_err(|_| fail(format!("bad digest {d}")))?;
            if let Some(size) = ingest::present(core, &digest)? {
                plan.present.insert(d.clone(), size);
                report.present += 1;
                report.bytes += size;
                continue;
            }
            let from = blob_path(dir, &digest);
            let (id, size) = core
                .store
                .stage(&from, &digest, false)
                .map_err(|e| fail(format!("{}: blob {d}: {e}", dir.display())))?;
            plan.staged.insert(d.clone(), (id, size));
            report.copied += 1;
            report.bytes += size;
        }
        report.blobs = all.len() as u64;
        Ok(())
    })();
    if let Err(e) = result {
        plan.abandon(core);
        return Err(e);
    }
    report.manifests = plan.manifests() as u64;
    ingest::commit(core, plan)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Where an `index.json` entry goes: (repository, tag).
fn name_of(
    forced: Option<&RepoName>,
    annotated: Option<&str>,
    ref_name: Option<&str>,
) -> Result<(RepoName, Option<Tag>), String> {
    let (from_ref, tag) = match ref_name {
        None => (None, None),
        Some(r) => match r.rsplit_once(':') {
            Some((repo, t)) => (Some(repo), Some(t)),
            None => (None, Some(r)),
        },
    };
    let tag = match tag {
        Some(t) => Some(Tag::parse(t).ok_or_else(|| format!("{t:?} cannot be a tag"))?),
        None => None,
    };
    let repo = match (forced, annotated, from_ref) {
        (Some(r), _, _) => r.clone(),
        (None, Some(a), _) => {
            RepoName::parse(a).ok_or_else(|| format!("{a:?} is not a repository name"))?
        }
        (None, None, Some(f)) => {
            RepoName::parse(f).ok_or_else(|| format!("{f:?} is not a repository name"))?
        }
        (None, None, None) => return Err("no repository is named for it: pass --repo NAME".into()),
    };
    Ok((repo, tag))
}

/// Reads the manifest `digest` from the layout, checks it, and appends it after its children
/// (post-order) to `out`.
fn load_tree(
    core: &Core,
    dir: &Path,
    digest: &Digest,
    media_type: Option<&str>,
    out: &mut Vec<(Digest, manifest::ParsedManifest, Vec<u8>)>,
    depth: usize,
) -> Result<(), Error> {
    if depth > 8 {
        return Err(fail(format!(
            "{}: indexes nested too deep at {digest}",
            dir.display()
        )));
    }
    if out.iter().any(|(d, _, _)| d == digest) {
        return Ok(());
    }
    let path = blob_path(dir, digest);
    let limit = core.config.max_manifest_size;
    let mut body = Vec::new();
    fs::File::open(&path)
        .map_err(|e| fail(format!("{}: manifest {digest}: {e}", dir.display())))?
        .take(limit + 1)
        .read_to_end(&mut body)?;
    if body.len() as u64 > limit {
        return Err(fail(format!(
            "{}: manifest {digest} is larger than {limit} bytes",
            dir.display()
        )));
    }
    let found = Digest::of(digest.algorithm(), &body);
    if &found != digest {
        return Err(fail(format!(
            "{}: manifest {digest} is corrupt: its bytes hash to {found}",
            dir.display()
        )));
    }
    let parsed = manifest::parse(&body, media_type).map_err(|e| {
        fail(format!(
            "{}: manifest {digest}: {}",
            dir.display(),
            e.message
        ))
    })?;
    let children: Vec<(Digest, String)> = child_descriptors(&body);
    for (c, mt) in &children {
        load_tree(core, dir, c, Some(mt.as_str()), out, depth + 1)?;
    }
    out.push((digest.clone(), parsed, body));
    Ok(())
}

/// `manifests[]` of an index: (digest, media type).
fn child_descriptors(body: &[u8]) -> Vec<(Digest, String)> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    v["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                m["digest"].as_str()?.parse().ok()?,
                m["mediaType"]
                    .as_str()
                    .unwrap_or(manifest::OCI_MANIFEST)
                    .to_string(),
            ))
        })
        .collect()
}
