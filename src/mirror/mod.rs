//! The pull-through mirror: names under a `[[mirror]]` prefix (or selected by containerd's
//! `?ns=`, or unprefixed names not stored here when a mirror is the default) are served from
//! the local store, and what is missing is fetched from the upstream registry, verified, and
//! stored as if it had been pushed.
//!
//! A mirrored pull, top to bottom:
//! 1. **Manifest** (`manifest`): by digest, a stored one is served and never fetched again.
//!    By tag, a stored one is served while its last upstream check is younger than `ttl`;
//!    after that one HEAD upstream re-checks it (the same digest: served; another: fetched;
//!    no answer: the cached one is served, logged and counted as stale). A fetched manifest
//!    is checked against its digest and stored in one write transaction, as a push would.
//!    An image manifest can only be stored once its blobs are linked into the repository
//!    (the invariant of `db::manifests::put`), so until then it waits in memory
//!    (`Pending`), is served from there, and its blobs are fetched (`fetch`); the last blob
//!    to land commits it. An index is stored at once, sparse: only the children clients
//!    pull are ever fetched.
//! 2. **Blob** (`fetch`): one fetch per (repository, digest) at a time, in the background,
//!    writing through the upload path (`store::Sink` into `uploads/`, fsync, digest check,
//!    `Store::promote`, `db::blobs::record` under the blob's stripe). Every client asking
//!    for it meanwhile gets the upstream's chunks from memory as they arrive (one that falls
//!    behind reads the upload file); the last chunk is held back until the digest is
//!    checked, so a client never receives a whole blob that was refused.
//!
//! Tag check times live in memory: a restart re-checks each cached tag once. Nothing here
//! knows HTTP servers; `http::mirror` routes requests here.

pub mod config;
mod fetch;
pub mod seed;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use reqwest::Method;

use crate::db;
use crate::oci::manifest::{self, Kind, ParsedManifest};
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::Core;
use config::Mirror;
use upstream::{Upstream, UpstreamError};

pub use fetch::BlobBody;

/// Every configured mirror with its upstream client, and what the mirrors keep in memory.
pub struct Mirrors {
    active: Vec<Active>,
    /// When each cached (repository, tag) was last confirmed upstream.
    checked: Mutex<HashMap<(String, String), Instant>>,
    pending: Mutex<PendingSet>,
    /// One upstream manifest fetch per (repository, reference) at a time.
    manifest_fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    flights: fetch::Flights,
}

struct Active {
    config: Mirror,
    upstream: Upstream,
}

/// A request's name resolved to a mirror: the name it is stored (and authorized) under,
/// and the name the upstream knows.
#[derive(Clone, Debug)]
pub struct Target {
    mirror: usize,
    pub stored: RepoName,
    pub remote: String,
}

/// Manifests fetched but not yet storable (their blobs are still on their way).
#[derive(Default)]
struct PendingSet {
    by_digest: HashMap<(String, String), Arc<Pending>>,
    tags: HashMap<(String, String), Digest>,
}

struct Pending {
    target: Target,
    digest: Digest,
    body: Vec<u8>,
    parsed: ParsedManifest,
    /// Whether its blobs' fetches were started.
    prefetched: std::sync::atomic::AtomicBool,
    /// When it was fetched: one whose blobs never all land (an upstream that lost a blob)
    /// is forgotten after `PENDING_LIFETIME`, and the next pull fetches it again.
    fetched: Instant,
}

const PENDING_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// A manifest to answer with.
pub struct ManifestAnswer {
    pub digest: Digest,
    pub media_type: String,
    pub body: Vec<u8>,
}

impl Mirrors {
    pub fn new(configs: &[Mirror]) -> Result<Mirrors, String> {
        let active = configs
            .iter()
            .map(|c| {
                Ok(Active {
                    upstream: Upstream::new(c)?,
                    config: c.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Mirrors {
            active,
            checked: Mutex::default(),
            pending: Mutex::default(),
            manifest_fetches: Mutex::default(),
            flights: Default::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// The mirror a name belongs to: `?ns=` (containerd's hosts.toml mirror) selects one by
    /// its namespaces and the name is then unprefixed; otherwise the name's first component
    /// is a mirror's prefix.
    pub fn resolve(&self, name: &RepoName, ns: Option<&str>) -> Option<Target> {
        if let Some(ns) = ns {
            let i = self
                .active
                .iter()
                .position(|a| a.config.namespaces.iter().any(|n| n == ns))?;
            return self.target(i, name.as_str());
        }
        let (first, rest) = name.as_str().split_once('/')?;
        let i = self.active.iter().position(|a| a.config.prefix == first)?;
        Some(Target {
            mirror: i,
            stored: name.clone(),
            remote: rest.to_string(),
        })
    }

    /// The default mirror's target for an unprefixed name (dockerd's `registry-mirrors`);
    /// the caller checks that the name is not stored here.
    pub fn default_target(&self, name: &RepoName) -> Option<Target> {
        let i = self.active.iter().position(|a| a.config.default)?;
        self.target(i, name.as_str())
    }

    fn target(&self, i: usize, remote: &str) -> Option<Target> {
        let stored = RepoName::parse(&format!("{}/{remote}", self.active[i].config.prefix))?;
        Some(Target {
            mirror: i,
            stored,
            remote: remote.to_string(),
        })
    }

    /// Whether a stored name is in a mirror's prefix (cached content, never pushed).
    pub fn is_mirrored(&self, name: &str) -> bool {
        name.split_once('/')
            .is_some_and(|(first, _)| self.active.iter().any(|a| a.config.prefix == first))
    }

    /// The prefixes, for `mirror list` and eviction.
    pub fn prefixes(&self) -> Vec<String> {
        self.active
            .iter()
            .map(|a| a.config.prefix.clone())
            .collect()
    }

    fn upstream(&self, t: &Target) -> &Upstream {
        &self.active[t.mirror].upstream
    }

    fn config(&self, t: &Target) -> &Mirror {
        &self.active[t.mirror].config
    }
}

/// Answers a manifest GET or HEAD for a mirrored name (see the module's top).
pub async fn manifest(
    core: &Core,
    t: &Target,
    reference: &Reference,
    head: bool,
) -> Result<ManifestAnswer, RegistryError> {
    let m = &core.mirrors;
    if let Some(answer) = answer_pending(core, t, reference, head) {
        return Ok(answer);
    }
    let local = stored(core, t, reference).await?;
    if let Some(found) = &local {
        let fresh = match reference {
            Reference::Digest(_) => true,
            Reference::Tag(tag) => m
                .checked
                .lock()
                .expect("mirror lock")
                .get(&(t.stored.to_string(), tag.to_string()))
                .is_some_and(|at| at.elapsed() < m.config(t).ttl),
        };
        if fresh {
            core.metrics.mirror_lookup(true);
            return Ok(clone_answer(found));
        }
    }
    // One upstream conversation per (repository, reference) at a time: the herd behind the
    // first waits, then finds what it stored.
    let key = format!("{}\0{reference}", t.stored);
    let gate = m
        .manifest_fetches
        .lock()
        .expect("mirror lock")
        .entry(key.clone())
        .or_default()
        .clone();
    let guard = gate.lock().await;
    let result = revalidate_or_fetch(core, t, reference, head, local).await;
    drop(guard);
    {
        let mut gates = m.manifest_fetches.lock().expect("mirror lock");
        // The map's entry and ours: nobody else waits on it.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(&key);
        }
    }
    result
}

/// A manifest fetched but not yet stored (its blobs are still coming) is served from memory;
/// a GET also starts fetching those blobs.
fn answer_pending(
    core: &Core,
    t: &Target,
    reference: &Reference,
    head: bool,
) -> Option<ManifestAnswer> {
    let p = pending(&core.mirrors, t, reference)?;
    if !head {
        prefetch(core, &p);
    }
    core.metrics.mirror_lookup(true);
    Some(p.answer())
}

async fn revalidate_or_fetch(
    core: &Core,
    t: &Target,
    reference: &Reference,
    head: bool,
    local: Option<ManifestAnswer>,
) -> Result<ManifestAnswer, RegistryError> {
    let m = &core.mirrors;
    // A request that waited behind another's fetch finds its result.
    if let Some(answer) = answer_pending(core, t, reference, head) {
        return Ok(answer);
    }
    let tag = match reference {
        Reference::Tag(tag) => Some(tag),
        Reference::Digest(_) => None,
    };
    if let (Some(found), Some(tag)) = (&local, tag) {
        let recent = m
            .checked
            .lock()
            .expect("mirror lock")
            .get(&(t.stored.to_string(), tag.to_string()))
            .is_some_and(|at| at.elapsed() < m.config(t).ttl);
        if recent {
            core.metrics.mirror_lookup(true);
            return Ok(clone_answer(found));
        }
        match upstream_digest(core, t, reference).await {
            Ok(Some(d)) if d == found.digest => {
                mark_checked(m, t, tag);
                core.metrics.mirror_lookup(true);
                return Ok(clone_answer(found));
            }
            Ok(_) => {}
            Err(e) => {
                core.metrics.mirror_stale();
                tracing::warn!(
                    repo = %t.stored, tag = %tag, upstream = %m.upstream(t).base, error = %e,
                    "mirror: cannot re-check a cached tag upstream; serving the cached manifest"
                );
                return Ok(clone_answer(found));
            }
        }
    }
    core.metrics.mirror_lookup(false);
    match fetch_manifest(core, t, reference, head).await {
        Ok(a) => Ok(a),
        Err(e) => match local {
            // The tag moved upstream but the new manifest cannot be had: the cached one is
            // still a valid answer.
            Some(found) if e.code != ErrorCode::ManifestInvalid => {
                core.metrics.mirror_stale();
                tracing::warn!(repo = %t.stored, error = %e.message,
                    "mirror: cannot fetch a moved tag; serving the cached manifest");
                Ok(found)
            }
            _ => Err(e),
        },
    }
}

fn mark_checked(m: &Mirrors, t: &Target, tag: &Tag) {
    m.checked
        .lock()
        .expect("mirror lock")
        .insert((t.stored.to_string(), tag.to_string()), Instant::now());
}

fn clone_answer(a: &ManifestAnswer) -> ManifestAnswer {
    ManifestAnswer {
        digest: a.digest.clone(),
        media_type: a.media_type.clone(),
        body: a.body.clone(),
    }
}

impl Pending {
    fn answer(&self) -> ManifestAnswer {
        ManifestAnswer {
            digest: self.digest.clone(),
            media_type: self.parsed.media_type.clone(),
            body: self.body.clone(),
        }
    }
}

fn pending(m: &Mirrors, t: &Target, reference: &Reference) -> Option<Arc<Pending>> {
    let mut set = m.pending.lock().expect("mirror lock");
    let before = set.by_digest.len();
    set.by_digest
        .retain(|_, p| p.fetched.elapsed() < PENDING_LIFETIME);
    if set.by_digest.len() != before {
        let PendingSet { by_digest, tags } = &mut *set;
        tags.retain(|(r, _), d| by_digest.contains_key(&(r.clone(), d.to_string())));
    }
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(tag) => set
            .tags
            .get(&(t.stored.to_string(), tag.to_string()))?
            .clone(),
    };
    set.by_digest
        .get(&(t.stored.to_string(), digest.to_string()))
        .cloned()
}

/// The stored manifest, if any.
async fn stored(
    core: &Core,
    t: &Target,
    reference: &Reference,
) -> Result<Option<ManifestAnswer>, RegistryError> {
    let (name, r) = (t.stored.clone(), reference.clone());
    let found = core
        .db
        .read(move |tx| db::manifests::get(tx, &name, &r, true))
        .await?;
    Ok(found.map(|(digest, rec, body)| ManifestAnswer {
        digest,
        media_type: rec.media_type,
        body: body.unwrap_or_default(),
    }))
}

/// What the upstream's tag points at now (HEAD), `None` when it does not say.
async fn upstream_digest(
    core: &Core,
    t: &Target,
    reference: &Reference,
) -> Result<Option<Digest>, UpstreamError> {
    let resp = core
        .mirrors
        .upstream(t)
        .send(
            &core.metrics,
            "head",
            Method::HEAD,
            &format!("/v2/{}/manifests/{reference}", t.remote),
            &t.remote,
            Some(upstream::MANIFEST_ACCEPT),
        )
        .await?;
    Ok(resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok()))
}

/// A failed upstream request as the client sees it: a clear message naming the upstream.
fn upstream_error(core: &Core, t: &Target, what: &str, e: UpstreamError) -> RegistryError {
    let base = &core.mirrors.upstream(t).base;
    match e {
        UpstreamError::Status(s, _) if s == reqwest::StatusCode::NOT_FOUND => RegistryError::new(
            if what.contains("blob") {
                ErrorCode::BlobUnknown
            } else {
                ErrorCode::ManifestUnknown
            },
            format!("{what} is not cached here and the upstream {base} does not have it"),
        ),
        e => {
            tracing::warn!(repo = %t.stored, upstream = %base, error = %e, "mirror: upstream failed");
            RegistryError::new(
                ErrorCode::Unknown,
                format!("{what} is not cached here and the upstream {base} failed: {e}"),
            )
            .with_status(502)
        }
    }
}

/// GETs a manifest upstream, checks its digest, and stores it (or keeps it pending until
/// its blobs are here).
async fn fetch_manifest(
    core: &Core,
    t: &Target,
    reference: &Reference,
    head: bool,
) -> Result<ManifestAnswer, RegistryError> {
    use futures_util::StreamExt;
    let what = format!("manifest {}:{reference}", t.stored);
    let resp = core
        .mirrors
        .upstream(t)
        .send(
            &core.metrics,
            "manifest",
            Method::GET,
            &format!("/v2/{}/manifests/{reference}", t.remote),
            &t.remote,
            Some(upstream::MANIFEST_ACCEPT),
        )
        .await
        .map_err(|e| upstream_error(core, t, &what, e))?;
    let invalid = |why: String| {
        tracing::warn!(repo = %t.stored, reference = %reference, "mirror: refused an upstream manifest: {why}");
        RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("the upstream's {what} was refused: {why}"),
        )
        .with_status(502)
    };
    let max = core.config.max_manifest_size;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type");
    let claimed = header("docker-content-digest");
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| invalid(format!("the body failed: {e}")))?;
        if (body.len() + chunk.len()) as u64 > max {
            return Err(invalid(format!(
                "larger than max_manifest_size ({max} bytes)"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    let digest = match reference {
        Reference::Digest(d) => {
            let actual = Digest::of(d.algorithm(), &body);
            if &actual != d {
                return Err(invalid(format!("its bytes have digest {actual}")));
            }
            actual
        }
        Reference::Tag(_) => {
            let actual = Digest::sha256_of(&body);
            if let Some(c) = claimed.as_deref().and_then(|c| c.parse::<Digest>().ok()) {
                if Digest::of(c.algorithm(), &body) != c {
                    return Err(invalid(format!(
                        "the upstream said {c} but the bytes have digest {actual}"
                    )));
                }
            }
            actual
        }
    };
    let parsed = manifest::parse(&body, content_type.as_deref()).map_err(|e| invalid(e.message))?;
    let tags: Vec<Tag> = match reference {
        Reference::Tag(t) => vec![t.clone()],
        Reference::Digest(_) => Vec::new(),
    };
    let answer = ManifestAnswer {
        digest: digest.clone(),
        media_type: parsed.media_type.clone(),
        body: body.clone(),
    };
    let p = Arc::new(Pending {
        target: t.clone(),
        digest,
        body,
        parsed,
        prefetched: Default::default(),
        fetched: Instant::now(),
    });
    if !store_manifest(core, &p, &tags).await? {
        let mut set = core.mirrors.pending.lock().expect("mirror lock");
        set.by_digest
            .insert((t.stored.to_string(), p.digest.to_string()), p.clone());
        for tag in &tags {
            set.tags
                .insert((t.stored.to_string(), tag.to_string()), p.digest.clone());
        }
        drop(set);
        if !head {
            prefetch(core, &p);
        }
    }
    for tag in &tags {
        mark_checked(&core.mirrors, t, tag);
    }
    Ok(answer)
}

/// Stores a fetched manifest with `tags`, as a push would (sparse for an index). False
/// when some of its blobs are not linked into the repository yet.
async fn store_manifest(core: &Core, p: &Pending, tags: &[Tag]) -> Result<bool, RegistryError> {
    let (name, d, parsed, body, tags) = (
        p.target.stored.clone(),
        p.digest.clone(),
        p.parsed.clone(),
        p.body.clone(),
        tags.to_vec(),
    );
    let r = core
        .db
        .write_checked(move |tx| {
            match db::manifests::put(tx, &name, &d, &parsed, &body, &tags, true) {
                Err(e) if e.code == ErrorCode::ManifestBlobUnknown => Ok(Err(())),
                other => other.map(Ok),
            }
        })
        .await?;
    Ok(r.is_ok())
}

/// Starts the fetches of a pending image manifest's blobs (once), so that it is stored
/// whole even when the client already had some layers and never asks for them.
fn prefetch(core: &Core, p: &Arc<Pending>) {
    if p.parsed.kind != Kind::Image
        || p.prefetched
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return;
    }
    for b in &p.parsed.blobs {
        fetch::start(core, &p.target, b);
    }
}

/// After a blob of `repo` landed: stores every pending manifest of it whose blobs are all
/// there now.
async fn commit_pending(core: &Core, repo: &RepoName) {
    let waiting: Vec<(Arc<Pending>, Vec<Tag>)> = {
        let set = core.mirrors.pending.lock().expect("mirror lock");
        set.by_digest
            .iter()
            .filter(|((r, _), _)| r == repo.as_str())
            .map(|(_, p)| {
                let tags = set
                    .tags
                    .iter()
                    .filter(|((r, _), d)| r == repo.as_str() && **d == p.digest)
                    .filter_map(|((_, t), _)| Tag::parse(t))
                    .collect();
                (p.clone(), tags)
            })
            .collect()
    };
    for (p, tags) in waiting {
        match store_manifest(core, &p, &tags).await {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => tracing::warn!(repo = %repo, digest = %p.digest, error = %e.message,
                "mirror: cannot store a fetched manifest"),
        }
        let mut set = core.mirrors.pending.lock().expect("mirror lock");
        set.by_digest
            .remove(&(repo.to_string(), p.digest.to_string()));
        set.tags
            .retain(|(r, _), d| !(r == repo.as_str() && *d == p.digest));
    }
}

/// What a mirrored blob request gets: the stored blob (served as any other), its size from
/// upstream for a HEAD, or the body of the fetch in progress.
pub enum BlobAnswer {
    Stored,
    Head { size: u64 },
    Fetching { size: Option<u64>, body: BlobBody },
}

/// Answers a blob GET or HEAD for a mirrored name.
pub async fn blob(
    core: &Core,
    t: &Target,
    digest: &Digest,
    head: bool,
) -> Result<BlobAnswer, RegistryError> {
    if is_linked(core, &t.stored, digest).await? {
        core.metrics.mirror_lookup(true);
        return Ok(BlobAnswer::Stored);
    }
    core.metrics.mirror_lookup(false);
    let what = format!("blob {}@{digest}", t.stored);
    if head {
        let resp = core
            .mirrors
            .upstream(t)
            .send(
                &core.metrics,
                "head",
                Method::HEAD,
                &format!("/v2/{}/blobs/{digest}", t.remote),
                &t.remote,
                None,
            )
            .await
            .map_err(|e| upstream_error(core, t, &what, e))?;
        let size = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return Ok(BlobAnswer::Head { size });
    }
    let flight = fetch::start(core, t, digest);
    match fetch::tail(core, &flight, digest).await {
        Ok((size, body)) => Ok(BlobAnswer::Fetching { size, body }),
        Err(fetch::Failure::Upstream(e)) => Err(upstream_error(core, t, &what, e)),
        Err(fetch::Failure::Other(e)) => Err(e),
    }
}

async fn is_linked(core: &Core, repo: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
    let (n, d) = (repo.clone(), digest.clone());
    core.db
        .read(move |tx| {
            Ok(db::blobs::linked(
                &tx.open_table(db::schema::BLOBS)?,
                &tx.open_table(db::schema::REPO_BLOBS)?,
                &n,
                &d,
            )?
            .is_some())
        })
        .await
}
