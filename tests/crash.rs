//! SIGKILL at random moments of pushes, deletes and GC passes; restart on the same root.
//! Every tag whose PUT was acknowledged (and not since deleted) must pull byte for byte, and
//! fsck may find only what the next GC pass removes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::util::*;

const ITERATIONS: usize = 30;
const REPOS: [&str; 3] = ["crash/a", "crash/b", "crash/c/deep"];
const TAGS: [&str; 4] = ["t0", "t1", "t2", "t3"];

type Key = (String, String);

/// An acknowledged push: the manifest under the tag and, for an index, its children.
#[derive(Clone, Debug, PartialEq)]
struct Pushed {
    manifest: Vec<u8>,
    children: Vec<Vec<u8>>,
}

/// What a request in flight does to its tag if it takes effect.
#[derive(Clone, Debug)]
enum Effect {
    /// A push whose manifest PUT has not been sent: nothing yet.
    None,
    Put(Pushed),
    Delete,
}

/// What the tags must hold, and the requests in flight (their effect unknown at a kill).
#[derive(Default)]
struct Model {
    tags: HashMap<Key, Pushed>,
    in_flight: HashMap<Key, Effect>,
    /// Answers that no kill explains (a 5xx, a 404 for a tag the model holds …).
    failures: Vec<String>,
    acknowledged: usize,
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
                self.tags.insert(key.clone(), p);
                self.acknowledged += 1;
            }
            (Ok(202), Effect::Delete) => {
                self.tags.remove(key);
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

/// A monolithic upload from a slow client: 16 chunks 15 ms apart, so that kills land while
/// the bytes are still arriving (an upload file without a session: a leftover).
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

/// Uploads an image's blobs (a config, two layers of a pool every push shares, one layer of
/// its own) and returns its manifest.
async fn image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pool: &[Vec<u8>],
) -> Result<Vec<u8>, String> {
    let (shared, check): (Vec<Vec<u8>>, bool) = {
        let mut rng = rand::thread_rng();
        (
            pool.choose_multiple(&mut rng, 2).cloned().collect(),
            rng.gen(),
        )
    };
    let slow = rand::thread_rng().gen_bool(0.3);
    let own = random_bytes(if slow {
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
    if slow {
        slow_upload(c, base, repo, &own).await?;
    } else {
        upload(c, base, repo, &own, check).await?;
    }
    Ok(image_manifest(&config, &[&shared[0], &shared[1], &own]))
}

/// Builds an image, or an index over two images pushed by digest (untagged until the index
/// lands), and says what its tag will hold.
async fn build(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pool: &[Vec<u8>],
    index: bool,
) -> Result<(Pushed, &'static str), String> {
    if !index {
        let m = image(c, base, repo, pool).await?;
        return Ok((
            Pushed {
                manifest: m,
                children: vec![],
            },
            OCI_MANIFEST,
        ));
    }
    let mut children = Vec::new();
    for _ in 0..2 {
        let m = image(c, base, repo, pool).await?;
        match put_manifest(c, base, repo, &sha256(&m), OCI_MANIFEST, &m).await? {
            201 => children.push(m),
            s => return Err(format!("HTTP {s} for an index child")),
        }
    }
    let refs: Vec<serde_json::Value> = children
        .iter()
        .map(|m| descriptor(OCI_MANIFEST, m))
        .collect();
    let idx = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": refs,
    }))
    .unwrap();
    Ok((
        Pushed {
            manifest: idx,
            children,
        },
        OCI_INDEX,
    ))
}

/// Pushes to random free tags (images and indexes, often over an older push) until the
/// connection fails: the kill.
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
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let outcome = match build(&c, &base, &key.0, &pool, index).await {
            Ok((pushed, media_type)) => {
                model
                    .lock()
                    .unwrap()
                    .in_flight
                    .insert(key.clone(), Effect::Put(pushed.clone()));
                put_manifest(&c, &base, &key.0, &key.1, media_type, &pushed.manifest).await
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

/// Deletes acknowledged tags (by tag or by digest) until the connection fails.
async fn deleter(model: Shared, base: String) {
    let c = fresh_client();
    loop {
        let pause = if model.lock().unwrap().tags.len() > 12 {
            5
        } else {
            40
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let picked = {
            let mut m = model.lock().unwrap();
            let mut keys: Vec<Key> = m
                .tags
                .keys()
                .filter(|k| !m.in_flight.contains_key(*k))
                .cloned()
                .collect();
            keys.sort();
            let key = keys.choose(&mut rand::thread_rng()).cloned();
            key.map(|k| {
                m.in_flight.insert(k.clone(), Effect::Delete);
                let digest = sha256(&m.tags[&k].manifest);
                (k, digest)
            })
        };
        let Some((key, digest)) = picked else {
            continue;
        };
        // By digest, the manifest goes with every tag on it; by tag, only the tag (the
        // manifest stays, untagged, for the GC).
        let reference = if rand::thread_rng().gen_bool(0.5) {
            digest
        } else {
            key.1.clone()
        };
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

/// After a restart: settles the requests that were in flight at the kill (each tag holds
/// what it held before or what the request would have made it), then pulls every tag.
async fn verify(model: &Shared, base: &str, when: &str) {
    let c = fresh_client();
    let uncertain: Vec<(Key, Effect)> = model.lock().unwrap().in_flight.drain().collect();
    for (key, effect) in uncertain {
        let resp = c
            .get(format!("{base}/v2/{}/manifests/{}", key.0, key.1))
            .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .unwrap();
        let seen = match resp.status().as_u16() {
            404 => None,
            200 => Some(resp.bytes().await.unwrap().to_vec()),
            s => panic!("{when}: GET {key:?}: HTTP {s}"),
        };
        let mut m = model.lock().unwrap();
        let before = m.tags.get(&key).map(|p| p.manifest.clone());
        if seen == before {
            continue;
        }
        match effect {
            Effect::Put(p) if seen.as_deref() == Some(p.manifest.as_slice()) => {
                m.tags.insert(key, p);
            }
            Effect::Delete if seen.is_none() => {
                m.tags.remove(&key);
            }
            e => panic!(
                "{when}: {key:?} holds {:?} after a kill during {e:?}; acknowledged {:?}",
                seen.map(|s| sha256(&s)),
                before.map(|b| sha256(&b))
            ),
        }
    }
    let tags: Vec<(Key, Pushed)> = model.lock().unwrap().tags.clone().into_iter().collect();
    for ((repo, tag), pushed) in tags {
        assert_pulls(&c, base, &repo, &tag, &pushed.manifest, when).await;
        for child in &pushed.children {
            assert_pulls(&c, base, &repo, &sha256(child), child, when).await;
        }
    }
}

fn cli(args: &[&str], config: &Path) -> (bool, String, String) {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(OsStr::new("--config"));
    all.push(config.as_os_str());
    dockyard(&all)
}

/// fsck finds only what GC removes (returns how many); after a GC pass, nothing.
fn fsck_then_gc_then_clean(config: &Path, when: &str, gc: bool) -> usize {
    let (ok, _, err) = cli(&["fsck"], config);
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
        let (ok, _, err) = cli(&["gc"], config);
        assert!(ok, "{when}: gc: {err}");
        let (ok, out, err) = cli(&["fsck"], config);
        assert!(ok, "{when}: fsck after gc: {out}{err}");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pushes_deletes_and_gc_loses_nothing_acknowledged() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // GC every 50 ms with zero grace, untagged manifests collected as soon as the push
    // window allows: the kills land in passes as often as in pushes.
    let storage = format!("[storage]\nroot = {:?}\n", root.display().to_string());
    let chaos = write_config(
        dir.path(),
        "chaos.toml",
        &format!(
            "{storage}[gc]\ninterval = \"50ms\"\ngrace = \"0s\"\npush_window = \"3s\"\nuntagged = \"0s\"\n"
        ),
    );
    // For the stopped instance: no lease, so every leftover of the kill is one.
    let stopped = write_config(
        dir.path(),
        "stopped.toml",
        &format!(
            "{storage}[gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"0s\"\nuntagged = \"0s\"\n"
        ),
    );
    let pool: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|_| random_bytes(20_000)).collect());
    let model: Shared = Arc::default();
    let mut kills = Vec::new();
    let mut leftovers = 0;
    for i in 0..ITERATIONS {
        let when = format!("restart {i} (kills after {kills:?} ms)");
        if i > 0 {
            // Right after the kill, before any GC: only leftovers. Every other time the
            // stopped instance is collected and checked clean; otherwise the restarted
            // server's timer collects them, and fsck through it is clean after a pass.
            let (cfg, w) = (stopped.clone(), when.clone());
            leftovers +=
                tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, i % 2 == 0))
                    .await
                    .unwrap();
        }
        let p = Process::spawn_with_config(&root, &chaos);
        let base = p.url("");
        verify(&model, &base, &when).await;
        if i % 2 == 1 {
            // Through the restarted server: what its timer has not collected yet (a file
            // that just outgrew the lease) may be reported, but only as GC's to remove.
            let (cfg, w) = (chaos.clone(), when.clone());
            tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, true))
                .await
                .unwrap();
        }
        let tasks = vec![
            tokio::spawn(pusher(model.clone(), base.clone(), pool.clone())),
            tokio::spawn(pusher(model.clone(), base.clone(), pool.clone())),
            tokio::spawn(deleter(model.clone(), base.clone())),
        ];
        let delay = rand::thread_rng().gen_range(20..400);
        kills.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        drop(p); // SIGKILL, then reap
                 // Whatever each task was doing is now in flight for good (see `verify`).
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    }
    let when = format!("after the last kill (kills after {kills:?} ms)");
    let (cfg, w) = (stopped.clone(), when.clone());
    leftovers += tokio::task::spawn_blocking(move || fsck_then_gc_then_clean(&cfg, &w, true))
        .await
        .unwrap();
    let p = Process::spawn_with_config(&root, &chaos);
    verify(&model, &p.url(""), &when).await;
    assert!(p.stop().success());
    let m = model.lock().unwrap();
    assert!(
        m.failures.is_empty(),
        "answers no kill explains: {:?}",
        m.failures
    );
    eprintln!(
        "crash: {ITERATIONS} kills, {} pushes acknowledged, {} tags at the end, {leftovers} \
         leftovers found by fsck and removed by gc, {:.1?}",
        m.acknowledged,
        m.tags.len(),
        started.elapsed()
    );
    assert!(m.acknowledged >= ITERATIONS, "the kills left room for work");
    assert!(
        leftovers > 0,
        "the kills left debris for fsck and gc to find"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}
