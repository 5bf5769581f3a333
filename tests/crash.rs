//! Crashes at random points of pushes, deletes and GC passes; restart on the same root.
//! Every tag whose PUT was acknowledged (and not since deleted) must pull byte for byte with
//! its media type and its referrers, every acknowledged delete must stay deleted, and fsck may
//! find only what the next GC pass removes.
//!
//! The crash comes after a number of acknowledged operations of one kind (pushes, deletes or
//! GC passes), chosen at random per round, never after a wall-clock delay: on a machine
//! whose CPUs are saturated the rounds take longer but test the same thing. The driver,
//! [`chaos`], does not know how the crash happens: here it is a SIGKILL, in `powercut.rs` a
//! power cut under the server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::util::*;

const ITERATIONS: usize = 30;
const REPOS: [&str; 3] = ["crash/a", "crash/b", "crash/c/deep"];
const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

type Key = (String, String);

/// An acknowledged push: the manifest under the tag, its media type, and the index's
/// children and the artifacts whose subject it is.
#[derive(Clone, Debug, PartialEq)]
struct Pushed {
    manifest: Vec<u8>,
    media_type: &'static str,
    children: Vec<Vec<u8>>,
    referrers: Vec<Vec<u8>>,
}

/// What a request in flight does to its tag if it takes effect.
#[derive(Clone, Debug)]
enum Effect {
    /// A push whose manifest PUT has not been sent: nothing yet.
    None,
    Put(Pushed),
    /// A delete; by digest (named) the manifest goes with the tag.
    Delete(Option<String>),
}

/// The kinds of acknowledged operation a round counts before it crashes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Push,
    Delete,
    Gc,
}

/// What the tags must hold, and the requests in flight (their effect unknown at a crash).
#[derive(Default)]
struct Model {
    tags: HashMap<Key, Pushed>,
    /// Acknowledged deletes not since overwritten by a push: the tag must stay gone, and
    /// after a delete by digest the manifest too.
    gone: HashMap<Key, Option<String>>,
    in_flight: HashMap<Key, Effect>,
    /// Answers that no crash explains (a 5xx, a 404 for a tag the model holds …).
    failures: Vec<String>,
    /// Acknowledged operations of this round, per kind.
    round: Vec<Kind>,
    pushes: usize,
    deletes: usize,
    gc_passes: usize,
}

type Shared = Arc<Mutex<Model>>;

impl Model {
    /// Marks `key` busy unless another task works on it.
    fn claim(&mut self, key: &Key) -> bool {
        if self.in_flight.contains_key(key) {
            return false;
        }
        self.in_flight.insert(key.clone(), Effect::None);
        true
    }

    fn settle(&mut self, key: &Key, outcome: Result<u16, String>, what: &str) {
        let effect = self.in_flight.remove(key).unwrap_or(Effect::None);
        match (outcome, effect) {
            (Ok(201), Effect::Put(p)) => {
                self.gone.remove(key);
                self.tags.insert(key.clone(), p);
                self.pushes += 1;
                self.round.push(Kind::Push);
            }
            (Ok(202), Effect::Delete(by_digest)) => {
                self.tags.remove(key);
                self.gone.insert(key.clone(), by_digest);
                self.deletes += 1;
                self.round.push(Kind::Delete);
            }
            (Ok(s), _) => self.failures.push(format!("{what} {key:?}: HTTP {s}")),
            (Err(e), _) if e.starts_with("HTTP ") => {
                self.failures.push(format!("{what} {key:?}: {e}"))
            }
            // A connection error: the server is gone; the effect stays unknown.
            (Err(_), effect) => {
                self.in_flight.insert(key.clone(), effect);
            }
        }
    }

    /// Whether this round has seen `n` acknowledgments of `kind`, and at least one push (so
    /// every round adds to what must survive).
    fn reached(&self, kind: Kind, n: usize) -> bool {
        self.round.iter().filter(|k| **k == kind).count() >= n && self.round.contains(&Kind::Push)
    }
}

async fn upload(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    check_first: bool,
) -> Result<(), String> {
    let d = sha256(bytes);
    if check_first {
        let resp = c
            .head(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() == 200 {
            return Ok(());
        }
    }
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(bytes.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        201 => Ok(()),
        s => Err(format!("HTTP {s} for blob upload")),
    }
}

/// A chunked upload: POST, two PATCHes, then the closing PUT with the digest.
async fn chunked_upload(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let d = sha256(bytes);
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 202 {
        return Err(format!("HTTP {} for an upload POST", resp.status()));
    }
    let mut location = resp.headers()["location"].to_str().unwrap().to_string();
    let half = bytes.len() / 2;
    for (start, part) in [(0, &bytes[..half]), (half, &bytes[half..])] {
        let resp = c
            .patch(absolute(base, &location))
            .header("Content-Type", "application/octet-stream")
            .header(
                "Content-Range",
                format!("{start}-{}", start + part.len() - 1),
            )
            .body(part.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() != 202 {
            return Err(format!("HTTP {} for a PATCH", resp.status()));
        }
        location = resp.headers()["location"].to_str().unwrap().to_string();
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = c
        .put(format!("{}{sep}digest={d}", absolute(base, &location)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        201 => Ok(()),
        s => Err(format!("HTTP {s} for the closing PUT")),
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{base}{location}")
    }
}

async fn put_manifest(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Result<u16, String> {
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        s @ 201 => Ok(s),
        s => Err(format!(
            "HTTP {s}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}

/// A monolithic upload from a slow client: 16 chunks 15 ms apart, so that crashes land
/// while the bytes are still arriving (an upload file without a session: a leftover). The
/// pauses only spread the body out; nothing waits on them for correctness.
async fn slow_upload(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let d = sha256(bytes);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes
        .chunks(bytes.len() / 16)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let body = futures_util::stream::iter(chunks).then(|c| async move {
        tokio::time::sleep(Duration::from_millis(15)).await;
        c
    });
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        201 => Ok(()),
        s => Err(format!("HTTP {s} for a slow upload")),
    }
}

/// A monolithic upload that sends 64 KiB and then nothing more, so that every crash finds
/// one upload in progress (its file is what `chaos` waits to see before it crashes).
async fn stalled_upload(base: String) {
    let first: Result<Vec<u8>, std::io::Error> = Ok(random_bytes(64 << 10));
    let body = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    let d = sha256(b"never finished");
    let _ = fresh_client()
        .post(format!("{base}/v2/crash/a/blobs/uploads/?digest={d}"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
}

/// Uploads an image's blobs (a config, two layers of a pool every push shares, one layer of
/// its own, sent monolithic, chunked or slowly) and returns its manifest.
async fn image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pool: &[Vec<u8>],
) -> Result<Vec<u8>, String> {
    let (shared, check, how): (Vec<Vec<u8>>, bool, u8) = {
        let mut rng = rand::thread_rng();
        (
            pool.choose_multiple(&mut rng, 2).cloned().collect(),
            rng.gen(),
            rng.gen_range(0..10),
        )
    };
    let own = random_bytes(if how < 3 {
        1 << 20
    } else {
        rand::thread_rng().gen_range(2000..60_000)
    });
    let config = serde_json::to_vec(
        &serde_json::json!({"os": "linux", "nonce": hex::encode(random_bytes(8))}),
    )
    .unwrap();
    for b in [&config, &shared[0], &shared[1]] {
        upload(c, base, repo, b, check).await?;
    }
    match how {
        0..3 => slow_upload(c, base, repo, &own).await?,
        3..6 => chunked_upload(c, base, repo, &own).await?,
        _ => upload(c, base, repo, &own, check).await?,
    }
    Ok(image_manifest(&config, &[&shared[0], &shared[1], &own]))
}

/// An artifact whose subject is `subject` (an image manifest), pushed by digest.
async fn referrer(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    subject: &[u8],
) -> Result<Vec<u8>, String> {
    let layer = random_bytes(300);
    upload(c, base, repo, b"{}", true).await?;
    upload(c, base, repo, &layer, false).await?;
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": descriptor(EMPTY_CONFIG, b"{}"),
        "layers": [descriptor("application/vnd.example.data", &layer)],
        "subject": descriptor(OCI_MANIFEST, subject),
    }))
    .unwrap();
    put_manifest(c, base, repo, &sha256(&m), OCI_MANIFEST, &m).await?;
    Ok(m)
}

/// Builds an image (sometimes with an artifact referring to it, pushed first), or an index
/// over two images pushed by digest (untagged until the index lands), and says what its tag
/// will hold.
async fn build(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pool: &[Vec<u8>],
    index: bool,
) -> Result<Pushed, String> {
    if !index {
        let m = image(c, base, repo, pool).await?;
        let mut referrers = Vec::new();
        if rand::thread_rng().gen_bool(0.3) {
            put_manifest(c, base, repo, &sha256(&m), OCI_MANIFEST, &m).await?;
            referrers.push(referrer(c, base, repo, &m).await?);
        }
        return Ok(Pushed {
            manifest: m,
            media_type: OCI_MANIFEST,
            children: vec![],
            referrers,
        });
    }
    let mut children = Vec::new();
    for _ in 0..2 {
        let m = image(c, base, repo, pool).await?;
        put_manifest(c, base, repo, &sha256(&m), OCI_MANIFEST, &m).await?;
        children.push(m);
    }
    let refs: Vec<serde_json::Value> = children
        .iter()
        .map(|m| descriptor(OCI_MANIFEST, m))
        .collect();
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": refs,
    }))
    .unwrap();
    Ok(Pushed {
        manifest: idx,
        media_type: OCI_INDEX,
        children,
        referrers: vec![],
    })
}

/// Pushes to random free tags (images and indexes, often over an older push) until the
/// connection fails: the crash.
async fn pusher(model: Shared, base: String, pool: Arc<Vec<Vec<u8>>>) {
    let c = fresh_client();
    loop {
        let (key, index) = {
            let mut rng = rand::thread_rng();
            let key = (
                REPOS.choose(&mut rng).unwrap().to_string(),
                TAGS.choose(&mut rng).unwrap().to_string(),
            );
            (key, rng.gen_bool(0.25))
        };
        if !model.lock().unwrap().claim(&key) {
            tokio::task::yield_now().await;
            continue;
        }
        let outcome = match build(&c, &base, &key.0, &pool, index).await {
            Ok(pushed) => {
                model
                    .lock()
                    .unwrap()
                    .in_flight
                    .insert(key.clone(), Effect::Put(pushed.clone()));
                put_manifest(
                    &c,
                    &base,
                    &key.0,
                    &key.1,
                    pushed.media_type,
                    &pushed.manifest,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let gone = matches!(&outcome, Err(e) if !e.starts_with("HTTP "));
        model.lock().unwrap().settle(&key, outcome, "push");
        if gone {
            return;
        }
    }
}

/// Deletes acknowledged tags (by tag or by digest) until the connection fails, whenever at
/// least four are stored. It lets the pushers get ahead (a few milliseconds per turn).
async fn deleter(model: Shared, base: String) {
    let c = fresh_client();
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let picked = {
            let mut m = model.lock().unwrap();
            // Keep a stock of tags for the checks after each crash.
            if m.tags.len() < 4 {
                drop(m);
                continue;
            }
            let mut keys: Vec<Key> = m
                .tags
                .keys()
                .filter(|k| !m.in_flight.contains_key(*k))
                .cloned()
                .collect();
            keys.sort();
            let key = keys.choose(&mut rand::thread_rng()).cloned();
            key.map(|k| {
                let digest = sha256(&m.tags[&k].manifest);
                // By digest, the manifest goes with every tag on it; by tag, only the tag
                // (the manifest stays, untagged, for the GC).
                let by_digest = rand::thread_rng().gen_bool(0.5).then_some(digest);
                m.in_flight
                    .insert(k.clone(), Effect::Delete(by_digest.clone()));
                (k, by_digest)
            })
        };
        let Some((key, by_digest)) = picked else {
            continue;
        };
        let reference = by_digest.clone().unwrap_or_else(|| key.1.clone());
        let outcome = c
            .delete(format!("{base}/v2/{}/manifests/{reference}", key.0))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string());
        let gone = outcome.is_err();
        model.lock().unwrap().settle(&key, outcome, "delete");
        if gone {
            return;
        }
    }
}

/// Runs GC passes through the admin socket, one after another, until the server is gone.
async fn collector(model: Shared, root: PathBuf) {
    let gc = dockyard::admin::Command::Gc { dry_run: false };
    loop {
        match dockyard::admin::call(&root, &gc).await {
            Ok(Some(dockyard::admin::Outcome::Ok(_))) => {
                let mut m = model.lock().unwrap();
                m.gc_passes += 1;
                m.round.push(Kind::Gc);
            }
            Ok(Some(dockyard::admin::Outcome::Err(e))) => {
                model.lock().unwrap().failures.push(format!("gc pass: {e}"));
                return;
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// GETs `repo:reference` and returns the body if it is there; checks the media type.
async fn fetch(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    when: &str,
) -> Option<(Vec<u8>, String)> {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{when}: GET {repo}:{reference}: {e}"));
    match resp.status().as_u16() {
        404 => None,
        200 => {
            let media_type = resp.headers()["content-type"].to_str().unwrap().to_string();
            Some((resp.bytes().await.unwrap().to_vec(), media_type))
        }
        s => panic!("{when}: GET {repo}:{reference}: HTTP {s}"),
    }
}

/// After a restart: settles the requests that were in flight at the crash (each tag holds
/// what it held before or what the request would have made it), then checks every
/// acknowledged tag (bytes, media type, children, referrers, every blob) and every
/// acknowledged delete.
async fn verify(model: &Shared, base: &str, when: &str) {
    let c = fresh_client();
    let uncertain: Vec<(Key, Effect)> = model.lock().unwrap().in_flight.drain().collect();
    for (key, effect) in uncertain {
        let seen = fetch(&c, base, &key.0, &key.1, when).await.map(|s| s.0);
        let mut m = model.lock().unwrap();
        let before = m.tags.get(&key).map(|p| p.manifest.clone());
        if seen == before {
            continue;
        }
        match effect {
            Effect::Put(p) if seen.as_deref() == Some(p.manifest.as_slice()) => {
                m.gone.remove(&key);
                m.tags.insert(key, p);
            }
            Effect::Delete(by_digest) if seen.is_none() => {
                m.tags.remove(&key);
                m.gone.insert(key, by_digest);
            }
            e => panic!(
                "{when}: {key:?} holds {:?} after a crash during {e:?}; acknowledged {:?}",
                seen.map(|s| sha256(&s)),
                before.map(|b| sha256(&b))
            ),
        }
    }
    let (tags, gone) = {
        let m = model.lock().unwrap();
        (m.tags.clone(), m.gone.clone())
    };
    for ((repo, tag), pushed) in tags {
        let what = format!("{when}: {repo}:{tag}");
        let (body, media_type) = fetch(&c, base, &repo, &tag, &what)
            .await
            .unwrap_or_else(|| panic!("{what}: acknowledged tag is gone"));
        assert_eq!(body, pushed.manifest, "{what}: manifest bytes");
        assert_eq!(media_type, pushed.media_type, "{what}: media type");
        assert_pulls(&c, base, &repo, &tag, &pushed.manifest, &what).await;
        for child in &pushed.children {
            assert_pulls(&c, base, &repo, &sha256(child), child, &what).await;
        }
        if !pushed.referrers.is_empty() {
            let subject = sha256(&pushed.manifest);
            let resp = c
                .get(format!("{base}/v2/{repo}/referrers/{subject}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{what}: referrers");
            let list: serde_json::Value = resp.json().await.unwrap();
            let listed: Vec<&str> = list["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["digest"].as_str().unwrap())
                .collect();
            for r in &pushed.referrers {
                assert!(
                    listed.contains(&sha256(r).as_str()),
                    "{what}: referrer {} not listed in {list}",
                    sha256(r)
                );
                assert_pulls(&c, base, &repo, &sha256(r), r, &what).await;
            }
        }
    }
    for ((repo, tag), by_digest) in gone {
        let what = format!("{when}: deleted {repo}:{tag}");
        assert!(
            fetch(&c, base, &repo, &tag, &what).await.is_none(),
            "{what}: an acknowledged delete came back"
        );
        if let Some(d) = by_digest {
            assert!(
                fetch(&c, base, &repo, &d, &what).await.is_none(),
                "{what}: the manifest deleted by digest came back"
            );
        }
    }
}

/// fsck finds only what GC removes (returns how many); after a GC pass, nothing.
fn fsck_then_gc_then_clean(config: &Path, when: &str, gc: bool) -> usize {
    let (ok, _, err) = dockyard_with_config(&["fsck"], config);
    let mut found = 0;
    if !ok {
        let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
        assert!(
            !problems.is_empty(),
            "{when}: fsck failed without problems: {err}"
        );
        for p in &problems {
            assert!(
                p.ends_with("(the next gc removes it)"),
                "{when}: fsck found {p}\n{err}"
            );
        }
        found = problems.len();
    }
    if gc {
        let (ok, _, err) = dockyard_with_config(&["gc"], config);
        assert!(ok, "{when}: gc: {err}");
        let (ok, out, err) = dockyard_with_config(&["fsck"], config);
        assert!(ok, "{when}: fsck after gc: {out}{err}");
    }
    found
}

/// What a run of [`chaos`] did.
pub(crate) struct Summary {
    pub pushes: usize,
    pub deletes: usize,
    pub gc_passes: usize,
    pub tags: usize,
    /// Problems fsck found after crashes, every one of them the next GC pass's to remove.
    pub leftovers: usize,
    /// The most of them after any one crash.
    pub most_leftovers: usize,
    pub crashes: Vec<String>,
}

/// Serves `root` (inside `dir`, which holds the configs), drives pushes (monolithic,
/// chunked, slow, indexes, artifacts with a subject), tag moves, deletes and GC passes
/// against it, and `rounds` times calls `crash` after a random number of acknowledged
/// operations of a random kind; after each crash, fsck (through the stopped files or the
/// restarted server) and a full check of everything acknowledged.
pub(crate) async fn chaos(
    rounds: usize,
    dir: &Path,
    root: &Path,
    env: &[(&str, &str)],
    mut crash: impl FnMut(Process),
) -> Summary {
    // A timer pass every 50 ms with zero grace, untagged manifests collected as soon as the
    // push window allows, and passes through the socket back to back: crashes land in
    // passes as often as in pushes.
    let storage = format!("[storage]\nroot = {:?}\n", root.display().to_string());
    let served = write_config(
        dir,
        "chaos.toml",
        &format!(
            "{storage}[gc]\ninterval = \"50ms\"\ngrace = \"0s\"\npush_window = \"3s\"\nuntagged = \"0s\"\n"
        ),
    );
    // For the stopped instance: no lease, so every leftover of the crash is one.
    let stopped = write_config(
        dir,
        "stopped.toml",
        &format!(
            "{storage}[gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"0s\"\nuntagged = \"0s\"\n"
        ),
    );
    let pool: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|_| random_bytes(20_000)).collect());
    let model: Shared = Arc::default();
    let mut crashes = Vec::new();
    let (mut leftovers, mut most_leftovers) = (0, 0);
    for i in 0..rounds {
        let when = format!("restart {i} (crashes after {crashes:?})");
        if i > 0 {
            // Right after the crash, before any GC: only leftovers. Every other time the
            // stopped instance is collected and checked clean; otherwise the restarted
            // server's timer collects them, and fsck through it is clean after a pass.
            let (cfg, w) = (stopped.clone(), when.clone());
            let found =
                tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, i % 2 == 0))
                    .await
                    .unwrap();
            leftovers += found;
            most_leftovers = most_leftovers.max(found);
        }
        let p = Process::spawn_with_config_env(root, &served, env);
        let base = p.url("");
        verify(&model, &base, &when).await;
        if i % 2 == 1 {
            // Through the restarted server: what its timer has not collected yet (a file
            // that just outgrew the lease) may be reported, but only as GC's to remove.
            let (cfg, w) = (served.clone(), when.clone());
            tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, true))
                .await
                .unwrap();
        }
        let (kind, n) = {
            let mut rng = rand::thread_rng();
            let kind = *[Kind::Push, Kind::Delete, Kind::Gc]
                .choose(&mut rng)
                .unwrap();
            (kind, rng.gen_range(1..=4))
        };
        model.lock().unwrap().round.clear();
        let tasks = vec![
            tokio::spawn(pusher(model.clone(), base.clone(), pool.clone())),
            tokio::spawn(pusher(model.clone(), base.clone(), pool.clone())),
            tokio::spawn(deleter(model.clone(), base.clone())),
            tokio::spawn(collector(model.clone(), root.to_path_buf())),
            tokio::spawn(stalled_upload(base.clone())),
        ];
        // Crash once the round has its acknowledgments and the stalled upload's file has
        // bytes: both observable, neither a matter of time.
        loop {
            let failed = !model.lock().unwrap().failures.is_empty();
            if failed || (model.lock().unwrap().reached(kind, n) && upload_in_progress(root)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        crashes.push(format!("{n}x{kind:?}"));
        crash(p);
        // Whatever each task was doing is now in flight for good (see `verify`).
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        let m = model.lock().unwrap();
        assert!(
            m.failures.is_empty(),
            "answers no crash explains: {:?}",
            m.failures
        );
    }
    let when = format!("after the last crash (crashes after {crashes:?})");
    let (cfg, w) = (stopped.clone(), when.clone());
    let found = tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, true))
        .await
        .unwrap();
    leftovers += found;
    most_leftovers = most_leftovers.max(found);
    let p = Process::spawn_with_config_env(root, &served, env);
    verify(&model, &p.url(""), &when).await;
    assert!(p.stop().success());
    let m = model.lock().unwrap();
    Summary {
        pushes: m.pushes,
        deletes: m.deletes,
        gc_passes: m.gc_passes,
        tags: m.tags.len(),
        leftovers,
        most_leftovers,
        crashes,
    }
}

/// Whether an upload file with bytes in it exists under `root/uploads`.
fn upload_in_progress(root: &Path) -> bool {
    std::fs::read_dir(root.join("uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pushes_deletes_and_gc_loses_nothing_acknowledged() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let s = chaos(ITERATIONS, dir.path(), &root, &[], drop).await;
    eprintln!(
        "crash: {ITERATIONS} SIGKILLs (after {:?}), {} pushes, {} deletes and {} GC passes \
         acknowledged, {} tags at the end, {} leftovers found by fsck and removed by gc, {:.1?}",
        s.crashes,
        s.pushes,
        s.deletes,
        s.gc_passes,
        s.tags,
        s.leftovers,
        started.elapsed()
    );
    assert!(s.pushes >= ITERATIONS, "every round acknowledges a push");
    // Every kill finds the stalled upload's file, which only the GC removes.
    assert!(
        s.leftovers > 0,
        "the kills left debris for fsck and gc to find"
    );
}

/// An upload through a session, as docker and most clients do it: POST, then PUT with the
/// bytes. The session row is written without fsync and the blob row by the group commit.
async fn session_upload(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
) -> Result<(), String> {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 202 {
        return Err(format!("HTTP {} for an upload start", resp.status()));
    }
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("HTTP 202 without a Location")?
        .to_string();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = c
        .put(format!("{url}{sep}digest={}", sha256(bytes)))
        .body(bytes.to_vec())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match resp.status().as_u16() {
        201 => Ok(()),
        s => Err(format!("HTTP {s} for an upload's PUT")),
    }
}

/// Pushes small images (three layers, a config, a manifest) to fresh tags until the server
/// is killed; returns the acknowledged ones, and any answer a kill does not explain.
async fn small_pusher(
    base: String,
    client: usize,
    round: usize,
    acks: Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<(Key, Vec<u8>)>, Vec<String>) {
    let c = fresh_client();
    let repo = format!("small/c{client}");
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    for n in 0.. {
        let blobs: Vec<Vec<u8>> = (0..4)
            .map(|_| random_bytes(rand::thread_rng().gen_range(1000..40_000)))
            .collect();
        let mut outcome = Ok(0);
        for b in &blobs {
            let r = if rand::thread_rng().gen_bool(0.5) {
                session_upload(&c, &base, &repo, b).await
            } else {
                upload(&c, &base, &repo, b, false).await
            };
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
        }
        let manifest = image_manifest(&blobs[0], &[&blobs[1], &blobs[2], &blobs[3]]);
        let tag = format!("r{round}n{n}");
        if outcome.is_ok() {
            outcome = put_manifest(&c, &base, &repo, &tag, OCI_MANIFEST, &manifest).await;
        }
        match outcome {
            Ok(_) => {
                acked.push(((repo.clone(), tag), manifest));
                acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) if e.starts_with("HTTP ") => failures.push(format!("{repo}:{tag}: {e}")),
            // The kill.
            Err(_) => return (acked, failures),
        }
    }
    unreachable!()
}

/// Group commit under SIGKILL: sixteen clients push small images at once, so blob records,
/// upload sessions and manifests share commits (and shard-directory fsyncs share rounds).
/// Every image whose manifest PUT was answered 201 must pull after the restart, blobs byte
/// for byte, and fsck may find only what the GC removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_concurrent_small_image_pushes_loses_no_acknowledged_image() {
    const ROUNDS: usize = 8;
    const CLIENTS: usize = 16;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = gc_by_hand_config(dir.path(), &root);
    let mut acked: Vec<(Key, Vec<u8>)> = Vec::new();
    let mut failures = Vec::new();
    let mut kills = Vec::new();
    for round in 0..ROUNDS {
        let p = Process::spawn_with_config(&root, &config);
        let base = p.url("");
        let c = fresh_client();
        let when = format!("restart {round} (kills after {kills:?} acknowledged images)");
        for ((repo, tag), manifest) in &acked {
            assert_pulls(&c, &base, repo, tag, manifest, &when).await;
        }
        let acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| tokio::spawn(small_pusher(base.clone(), i, round, acks.clone())))
            .collect();
        // The kill comes after a random number of this round's images were acknowledged (an
        // observable point, not a delay: on a loaded machine a fixed delay could pass before
        // the first push finished), while the other clients are in the middle of theirs.
        let after = rand::thread_rng().gen_range(1..=CLIENTS);
        kills.push(after);
        while acks.load(std::sync::atomic::Ordering::SeqCst) < after
            && !tasks.iter().all(|t| t.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(p); // SIGKILL, then reap
        for t in tasks {
            let (a, f) = t.await.unwrap();
            acked.extend(a);
            failures.extend(f);
        }
        let (cfg, w) = (config.clone(), when.clone());
        tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, round % 2 == 0))
            .await
            .unwrap();
    }
    let p = Process::spawn_with_config(&root, &config);
    let (base, c) = (p.url(""), fresh_client());
    for ((repo, tag), manifest) in &acked {
        assert_pulls(&c, &base, repo, tag, manifest, "after the last kill").await;
    }
    assert!(p.stop().success());
    assert!(
        failures.is_empty(),
        "answers no kill explains: {failures:?}"
    );
    eprintln!(
        "crash (group commit): {ROUNDS} kills, {} images acknowledged by {CLIENTS} clients, {:.1?}",
        acked.len(),
        started.elapsed()
    );
    assert!(acked.len() >= ROUNDS, "the kills left room for work");
}
