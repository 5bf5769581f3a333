//! Garbage collection through the real server: exact counts through deletes in every order,
//! untagged manifests, the two push/GC races pinned at the exact interleaving, a stress run
//! of concurrent pushes against a GC loop, expired uploads and leftovers, and the timer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockyard::config::Untagged;
use dockyard::gc::fsck::{self, FsckOptions, FsckReport};
use dockyard::gc::{self, GcOptions, GcReport, Hook, Stage};
use rand::seq::SliceRandom;
use rand::Rng;

use crate::util::*;

/// A registry whose GC never runs by itself and keeps nothing for time's sake: grace and
/// push window zero, untagged manifests kept; `tweak` changes that.
async fn start(tweak: impl FnOnce(&mut dockyard::config::GcConfig)) -> TestRegistry {
    TestRegistry::start_gc_by_hand(|c| tweak(&mut c.gc)).await
}

async fn gc_with(r: &TestRegistry, opts: GcOptions) -> GcReport {
    r.gc_pass(opts).await
}

async fn run_gc(r: &TestRegistry) -> GcReport {
    gc_with(r, GcOptions::default()).await
}

async fn fsck_of(core: &dockyard::Core) -> FsckReport {
    let core = core.clone();
    tokio::task::spawn_blocking(move || fsck::check(&core, &FsckOptions::default()))
        .await
        .expect("fsck task")
        .expect("fsck")
}

async fn assert_clean(r: &TestRegistry, step: &str) {
    let report = fsck_of(&r.core).await;
    assert!(report.clean(), "{step}: fsck: {report}");
}

/// Config and layer digests a manifest lists.
fn blobs_of(manifest: &[u8]) -> BTreeSet<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).expect("json");
    let mut out = BTreeSet::new();
    if let Some(c) = m["config"]["digest"].as_str() {
        out.insert(c.to_string());
    }
    for l in m["layers"].as_array().into_iter().flatten() {
        out.insert(l["digest"].as_str().expect("digest").to_string());
    }
    out
}

fn union(manifests: &[&[u8]]) -> BTreeSet<String> {
    manifests.iter().flat_map(|m| blobs_of(m)).collect()
}

async fn put_manifest(
    c: &reqwest::Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> u16 {
    c.put(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("put manifest")
        .status()
        .as_u16()
}

async fn delete(c: &reqwest::Client, r: &TestRegistry, repo: &str, reference: &str) -> u16 {
    c.delete(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .expect("delete")
        .status()
        .as_u16()
}

fn index_of(children: &[&[u8]]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|m| descriptor(OCI_MANIFEST, m))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    }))
    .expect("json")
}

/// After each step: fsck agrees with the stored counts, then a pass frees exactly the files
/// no live manifest lists, and fsck still agrees.
async fn step(r: &TestRegistry, what: &str, live: &[&[u8]], freed: u64) {
    assert_clean(r, what).await;
    let report = run_gc(r).await;
    assert_eq!(report.blobs, freed, "{what}: {report}");
    assert_eq!(
        blob_files(&r.root),
        union(live),
        "{what}: blob files on disk"
    );
    assert_clean(r, what).await;
}

#[tokio::test]
async fn counts_stay_exact_through_deletes_in_any_order_and_gc_frees_exactly_the_unreferenced() {
    let r = start(|_| {}).await;
    let c = client();
    let (l1, l2, l3) = (random_bytes(3000), random_bytes(4000), random_bytes(5000));
    let (m1, d1) = push_image(&c, &r, "team/app", "one", &[&l1, &l2]).await;
    let (m2, d2) = push_image(&c, &r, "team/app", "two", &[&l1]).await;
    let (m3, d3) = push_image(&c, &r, "other", "one", &[&l1, &l3]).await;
    let index = index_of(&[&m1, &m2]);
    let di = sha256(&index);
    assert_eq!(
        put_manifest(&c, &r, "team/app", "multi", OCI_INDEX, &index).await,
        201
    );
    // A mount links l1 into a third repository without counting it.
    let mount = c
        .post(r.url(&format!(
            "/v2/third/blobs/uploads/?mount={}&from=other",
            sha256(&l1)
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(mount.status(), 201);
    step(&r, "pushed", &[&m1, &m2, &m3], 0).await;

    assert_eq!(delete(&c, &r, "team/app", "one").await, 202);
    step(
        &r,
        "tag one deleted; the index still lists m1",
        &[&m1, &m2, &m3],
        0,
    )
    .await;
    assert_eq!(
        delete(&c, &r, "team/app", &d1).await,
        409,
        "a manifest an index lists cannot go"
    );
    assert_eq!(delete(&c, &r, "team/app", "multi").await, 202);
    step(&r, "index untagged (kept)", &[&m1, &m2, &m3], 0).await;
    assert_eq!(delete(&c, &r, "team/app", &di).await, 202);
    step(&r, "index deleted; m1 untagged (kept)", &[&m1, &m2, &m3], 0).await;
    assert_eq!(delete(&c, &r, "team/app", &d1).await, 202);
    step(&r, "m1 deleted: its config and l2 go", &[&m2, &m3], 2).await;
    assert_eq!(delete(&c, &r, "other", &d3).await, 202);
    step(&r, "m3 deleted: its config and l3 go", &[&m2], 2).await;
    assert_eq!(delete(&c, &r, "team/app", "two").await, 202);
    step(&r, "m2 untagged (kept)", &[&m2], 0).await;
    assert_eq!(delete(&c, &r, "team/app", &d2).await, 202);
    step(&r, "m2 deleted: l1 goes, with its mount", &[], 2).await;

    // Nothing is readable any more, from any repository it was linked into.
    for repo in ["team/app", "other", "third"] {
        let resp = c
            .head(r.url(&format!("/v2/{repo}/blobs/{}", sha256(&l1))))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{repo}");
    }
    // The same content pushed again is a new blob, counted from zero.
    let (m4, _) = push_image(&c, &r, "team/app", "again", &[&l1]).await;
    step(&r, "pushed again", &[&m4], 0).await;
    r.stop().await;
}

#[tokio::test]
async fn untagged_manifests_go_after_their_index_and_referrers_after_their_subject() {
    let r = start(|g| g.untagged = Untagged::After(Duration::ZERO)).await;
    let c = client();
    let (subject, ds) = push_image(&c, &r, "app", "t", &[&random_bytes(2000)]).await;
    // A signature-like referrer, pushed by digest: untagged, but its subject lives.
    let empty = b"{}".to_vec();
    let sig = random_bytes(300);
    push_blob(&c, &r, "app", &empty).await;
    push_blob(&c, &r, "app", &sig).await;
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(&empty), "size": 2},
        "layers": [descriptor("application/octet-stream", &sig)],
        "subject": {"mediaType": OCI_MANIFEST, "digest": ds, "size": subject.len()},
    }))
    .unwrap();
    let dr = sha256(&referrer);
    assert_eq!(
        put_manifest(&c, &r, "app", &dr, OCI_MANIFEST, &referrer).await,
        201
    );
    // An index over two children pushed by digest (untagged themselves).
    let (a, b) = (random_bytes(1000), random_bytes(1000));
    let mut children = Vec::new();
    for layer in [&a, &b] {
        let config =
            serde_json::to_vec(&serde_json::json!({"os": "linux", "n": sha256(layer)})).unwrap();
        push_blob(&c, &r, "app", &config).await;
        push_blob(&c, &r, "app", layer).await;
        let m = image_manifest(&config, &[layer]);
        assert_eq!(
            put_manifest(&c, &r, "app", &sha256(&m), OCI_MANIFEST, &m).await,
            201
        );
        children.push(m);
    }
    let index = index_of(&[&children[0], &children[1]]);
    assert_eq!(
        put_manifest(&c, &r, "app", "i", OCI_INDEX, &index).await,
        201
    );

    let report = run_gc(&r).await;
    assert_eq!(
        (report.manifests, report.blobs),
        (0, 0),
        "children of a live index and referrers of a live subject stay: {report}"
    );
    let all = union(&[&subject, &referrer, &children[0], &children[1]]);
    assert_eq!(blob_files(&r.root), all);
    assert_clean(&r, "nothing collectable").await;

    assert_eq!(delete(&c, &r, "app", "i").await, 202);
    let report = run_gc(&r).await;
    assert_eq!(
        report.manifests, 3,
        "the index, then its two children: {report}"
    );
    assert_eq!(blob_files(&r.root), union(&[&subject, &referrer]));
    assert_clean(&r, "index collected").await;
    let resp = c
        .get(r.url(&format!("/v2/app/referrers/{ds}")))
        .send()
        .await
        .unwrap();
    let listing: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(listing["manifests"][0]["digest"], dr.as_str());

    assert_eq!(delete(&c, &r, "app", "t").await, 202);
    let report = run_gc(&r).await;
    assert_eq!(
        report.manifests, 2,
        "the subject, then its referrer: {report}"
    );
    assert!(blob_files(&r.root).is_empty());
    assert_clean(&r, "all collected").await;
    r.stop().await;
}

/// Records the first request a hook started, for the test to await after the pass.
type Pending = Arc<Mutex<Option<tokio::task::JoinHandle<reqwest::StatusCode>>>>;

/// A hook that, the first time the pass reaches `at`, starts `request` and checks that it
/// is still waiting 300 ms later: the pass holds the blob's lock there.
fn start_and_check_it_waits(at: Stage, request: reqwest::RequestBuilder) -> (Hook, Pending) {
    let pending: Pending = Arc::new(Mutex::new(None));
    let (p, handle) = (pending.clone(), tokio::runtime::Handle::current());
    let request = Mutex::new(Some(request));
    let hook: Hook = Arc::new(move |stage, _| {
        if stage != at {
            return;
        }
        let Some(req) = request.lock().unwrap().take() else {
            return;
        };
        let task = handle.spawn(async move { req.send().await.expect("request").status() });
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !task.is_finished(),
            "the request completed while the GC held the blob between row and file"
        );
        *p.lock().unwrap() = Some(task);
    });
    (hook, pending)
}

async fn finish(pending: &Pending) -> reqwest::StatusCode {
    let task = pending.lock().unwrap().take().expect("the hook ran");
    task.await.expect("request task")
}

/// Race (a): the pass has chosen an old unreferenced blob; a client HEADs it, sees it, and
/// PUTs a manifest naming it without uploading it. The sighting must keep the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_a_blob_checked_after_gc_chose_it_is_kept_and_the_manifest_put_succeeds() {
    let r = start(|g| g.push_window = Duration::from_secs(60)).await;
    let c = client();
    let layer = random_bytes(5000);
    let d = seed_blob(&r.core, &["app"], &layer).await;
    let (url, cc, handle) = (
        r.url(&format!("/v2/app/blobs/{d}")),
        c.clone(),
        tokio::runtime::Handle::current(),
    );
    let hook: Hook = Arc::new(move |stage, _| {
        if stage == Stage::BlobChosen {
            let status = handle.block_on(cc.head(&url).send()).unwrap().status();
            assert_eq!(status, 200, "the blob is there when the client looks");
        }
    });
    let report = gc_with(
        &r,
        GcOptions {
            hook: Some(hook),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((report.blobs, report.kept_seen), (0, 1), "{report}");
    // The client goes on as if the blob exists: config, then the manifest.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    push_blob(&c, &r, "app", &config).await;
    let manifest = image_manifest(&config, &[&layer]);
    assert_eq!(
        put_manifest(&c, &r, "app", "v1", OCI_MANIFEST, &manifest).await,
        201
    );
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after race a").await;
    // And a later pass, with the lease long gone for nobody (60 s), still keeps it: counted.
    assert_eq!(run_gc(&r).await.blobs, 0);
    assert_clean(&r, "race a").await;
    r.stop().await;
}

/// Race (a), the other order: the client's HEAD arrives while the pass is between removing
/// the row and unlinking the file. It waits for the pass, then finds nothing, uploads, and
/// its push succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_checked_while_gc_deletes_it_is_reported_missing_and_the_push_uploads_it() {
    let r = start(|g| g.push_window = Duration::from_secs(60)).await;
    let c = client();
    let layer = random_bytes(5000);
    let d = seed_blob(&r.core, &["app"], &layer).await;
    let (hook, pending) = start_and_check_it_waits(
        Stage::BlobRowRemoved,
        c.head(r.url(&format!("/v2/app/blobs/{d}"))),
    );
    let report = gc_with(
        &r,
        GcOptions {
            hook: Some(hook),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.blobs, 1, "{report}");
    assert_eq!(finish(&pending).await, 404);
    let (manifest, _) = push_image(&c, &r, "app", "v1", &[&layer]).await;
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after the HEAD").await;
    assert_clean(&r, "head during delete").await;
    r.stop().await;
}

/// Race (b), the regression the lock exists for: the pass has committed the row's removal
/// and is about to unlink the file, when a push of the same bytes finishes. Without the
/// lock the push sees the file, drops its upload, re-inserts the row, and the pass then
/// unlinks the file under it: a row (and soon a manifest) whose blob is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_an_upload_of_a_blob_gc_is_unlinking_waits_and_keeps_its_bytes() {
    let r = start(|g| g.push_window = Duration::from_secs(60)).await;
    let c = client();
    let layer = random_bytes(50_000);
    let d = seed_blob(&r.core, &["app"], &layer).await;
    let (hook, pending) = start_and_check_it_waits(
        Stage::BlobRowRemoved,
        c.post(r.url(&format!("/v2/app/blobs/uploads/?digest={d}")))
            .body(layer.clone()),
    );
    let report = gc_with(
        &r,
        GcOptions {
            hook: Some(hook),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.blobs, 1, "{report}");
    assert_eq!(finish(&pending).await, 201);
    assert!(
        blob_files(&r.root).contains(&d),
        "the pushed blob's file is there"
    );
    assert_clean(&r, "upload during unlink").await;
    let config = br#"{"os":"linux"}"#.to_vec();
    push_blob(&c, &r, "app", &config).await;
    let manifest = image_manifest(&config, &[&layer]);
    assert_eq!(
        put_manifest(&c, &r, "app", "v1", OCI_MANIFEST, &manifest).await,
        201
    );
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after race b").await;
    r.stop().await;
}

/// How a stress pusher gets each blob in: the three ways a client can, each racing the GC
/// differently.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// HEAD, upload only on 404 (race a).
    Check,
    /// Cross-repository mount from the seed repository, upload on 202.
    Mount,
    /// Upload whatever is there (race b).
    Blind,
}

/// Whether the blob was already there (`Some(true)`), had to be uploaded (`Some(false)`),
/// or was uploaded without asking (`None`).
async fn put_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    bytes: &[u8],
    way: Way,
) -> Option<bool> {
    let d = sha256(bytes);
    match way {
        Way::Check => {
            let resp = c
                .head(format!("{base}/v2/{repo}/blobs/{d}"))
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                return Some(true);
            }
            assert_eq!(resp.status(), 404);
        }
        Way::Mount => {
            let resp = c
                .post(format!(
                    "{base}/v2/{repo}/blobs/uploads/?mount={d}&from=seed"
                ))
                .send()
                .await
                .unwrap();
            if resp.status() == 201 {
                return Some(true);
            }
            assert_eq!(resp.status(), 202);
        }
        Way::Blind => {}
    }
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "upload {d}");
    (!matches!(way, Way::Blind)).then_some(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_sharing_layers_never_fail_while_gc_runs_in_a_loop_with_zero_grace() {
    const PUSHERS: usize = 6;
    const IMAGES: usize = 8;
    // Zero grace: anything unreferenced and unseen goes at once. A short push window keeps
    // what a push has seen until its manifest lands, and lets the GC take layers whose count
    // fell to zero (deleted images) while other pushers may still reuse them.
    const PUSH_WINDOW: Duration = Duration::from_secs(2);
    let r = start(|g| g.push_window = PUSH_WINDOW).await;
    let started = Instant::now();
    let repos: Vec<String> = (0..PUSHERS).map(|i| format!("race/r{i}")).collect();
    let mut linked: Vec<String> = repos.clone();
    linked.push("seed".into());
    // A seeder keeps adding garbage that every pusher can see and no client has touched;
    // pushers build images from the newest of it, so the GC and the pushers meet on each
    // blob: sometimes the GC takes it first, sometimes a client sees it first.
    let pool: Arc<Mutex<Vec<Arc<Vec<u8>>>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let seeder = {
        let (core, pool, stop) = (r.core.clone(), pool.clone(), stop.clone());
        tokio::spawn(async move {
            let linked: Vec<&str> = linked.iter().map(String::as_str).collect();
            while !stop.load(Ordering::Relaxed) {
                let bytes = random_bytes(rand::thread_rng().gen_range(1000..20_000));
                seed_blob(&core, &linked, &bytes).await;
                pool.lock().unwrap().push(Arc::new(bytes));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    while pool.lock().unwrap().len() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (passes, freed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let gc_loop = {
        let (core, stop, passes, freed) =
            (r.core.clone(), stop.clone(), passes.clone(), freed.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let report = gc::run_once(&core, &GcOptions::default()).expect("gc pass");
                passes.fetch_add(1, Ordering::Relaxed);
                freed.fetch_add(report.blobs, Ordering::Relaxed);
            }
        })
    };
    let (found, missing) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let late = Arc::new(AtomicU64::new(0));
    let base = r.url("");
    let mut pushers = Vec::new();
    for repo in repos.clone() {
        let (pool, base, found, missing, late) = (
            pool.clone(),
            base.clone(),
            found.clone(),
            missing.clone(),
            late.clone(),
        );
        pushers.push(tokio::spawn(async move {
            let c = client();
            let mut tagged = Vec::new();
            let mut dropped = Vec::new();
            for n in 0..IMAGES {
                // Before the first check: every sighting of this push is younger than this.
                let began = Instant::now();
                let (layers, ways) = {
                    let mut rng = rand::thread_rng();
                    let newest: Vec<Arc<Vec<u8>>> = {
                        let p = pool.lock().unwrap();
                        p[p.len().saturating_sub(8)..].to_vec()
                    };
                    let mut layers: Vec<Arc<Vec<u8>>> =
                        newest.choose_multiple(&mut rng, 3).cloned().collect();
                    // An image deleted again at once always has a layer of its own, which
                    // nobody else uses: its count falls to zero for good.
                    if n % 3 == 2 || rng.gen_bool(0.3) {
                        layers.push(Arc::new(random_bytes(3000)));
                    }
                    let ways: Vec<Way> = layers
                        .iter()
                        .map(|_| {
                            *[Way::Check, Way::Mount, Way::Blind]
                                .choose(&mut rng)
                                .unwrap()
                        })
                        .collect();
                    (layers, ways)
                };
                let config = serde_json::to_vec(&serde_json::json!({
                    "os": "linux", "repo": repo, "n": n, "nonce": hex::encode(random_bytes(8)),
                }))
                .unwrap();
                put_blob(&c, &base, &repo, &config, Way::Blind).await;
                for (l, w) in layers.iter().zip(&ways) {
                    let there = put_blob(&c, &base, &repo, l, *w).await;
                    match there {
                        Some(true) => found.fetch_add(1, Ordering::Relaxed),
                        Some(false) => missing.fetch_add(1, Ordering::Relaxed),
                        None => 0,
                    };
                }
                let refs: Vec<&[u8]> = layers.iter().map(|l| l.as_slice()).collect();
                let manifest = image_manifest(&config, &refs);
                let tag = format!("v{n}");
                let resp = c
                    .put(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest.clone())
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                if status != 201
                    && began.elapsed() > PUSH_WINDOW
                    && body.contains("MANIFEST_BLOB_UNKNOWN")
                {
                    // A push slower than the window may lose a blob it saw: the contract,
                    // not a failure (a busy machine). Within the window it must not.
                    late.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                assert_eq!(status, 201, "push {repo}:{tag} ({ways:?}): {body}");
                // Some images are deleted again at once: their layers drop back to zero
                // while other pushers are using them.
                if n % 3 == 2 {
                    let d = sha256(&manifest);
                    let resp = c
                        .delete(format!("{base}/v2/{repo}/manifests/{d}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                    dropped.push(sha256(layers.last().unwrap()));
                } else {
                    tagged.push((repo.clone(), tag, manifest));
                }
            }
            (tagged, dropped)
        }));
    }
    let mut tagged = Vec::new();
    let mut dropped = Vec::new();
    for p in pushers {
        let (t, d) = p.await.expect("a push failed");
        tagged.extend(t);
        dropped.extend(d);
    }
    // The reference-count path: every layer whose count fell to zero with its image is
    // collected once the window has passed, while the GC loop keeps running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let files = blob_files(&r.root);
        let left: Vec<&String> = dropped.iter().filter(|d| files.contains(*d)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "layers of deleted images never collected: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    seeder.await.expect("seeder");
    gc_loop.await.expect("gc loop");
    let (passes, freed) = (
        passes.load(Ordering::Relaxed),
        freed.load(Ordering::Relaxed),
    );
    let (found, missing) = (
        found.load(Ordering::Relaxed),
        missing.load(Ordering::Relaxed),
    );
    let late = late.load(Ordering::Relaxed);
    eprintln!(
        "stress: {} pushes in {:.1?}; {passes} gc passes freed {freed} blobs, among them the \
         {} layers of deleted images; pushers found {found} seeded layers still there and \
         {missing} already collected; {late} pushes slower than the window refused",
        PUSHERS * IMAGES,
        started.elapsed(),
        dropped.len(),
    );
    assert!(!dropped.is_empty(), "images were deleted");
    assert!(
        found + missing > 0,
        "pushers checked blobs the GC was racing for"
    );
    // Nothing a surviving manifest names is missing.
    let files = blob_files(&r.root);
    for (repo, tag, manifest) in &tagged {
        for d in blobs_of(manifest) {
            assert!(files.contains(&d), "{repo}:{tag} lost blob {d}");
        }
    }
    assert!(
        passes >= 2 && freed > 0,
        "the GC raced: {passes} passes, {freed} freed"
    );
    assert_clean(&r, "after the stress run").await;
    let c = fresh_client();
    for (repo, tag, manifest) in &tagged {
        assert_pulls(&c, &base, repo, tag, manifest, "after the stress run").await;
    }
    r.stop().await;
}

#[tokio::test]
async fn expired_uploads_and_crash_leftovers_are_removed_rows_first() {
    let r = TestRegistry::start_configured(|c| {
        c.gc.interval = None;
        c.gc.grace = Duration::ZERO;
        c.gc.push_window = Duration::ZERO;
        c.upload_expiry = Duration::ZERO;
    })
    .await;
    let c = client();
    let resp = c
        .post(r.url("/v2/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = c
        .patch(r.url(&location))
        .body(random_bytes(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // What a crash leaves: an upload file without a session, a blob file without a row.
    std::fs::write(r.root.join("uploads").join(uuid_like()), random_bytes(700)).unwrap();
    let stray = random_bytes(900);
    let ds = sha256(&stray);
    let shard = r.root.join("blobs/sha256").join(&ds[7..9]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(&ds[7..]), &stray).unwrap();
    let before = fsck_of(&r.core).await;
    let mut kinds = before.kinds();
    kinds.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(
        kinds,
        vec![fsck::Kind::FileWithoutRow, fsck::Kind::StrayUpload],
        "{before}"
    );
    assert!(before.problems.iter().all(|p| p.remedy == fsck::Remedy::Gc));

    let dry = gc_with(
        &r,
        GcOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((dry.uploads, dry.stray_files), (1, 2), "{dry}");
    assert_eq!(
        std::fs::read_dir(r.root.join("uploads")).unwrap().count(),
        2
    );
    let id = location.rsplit('/').next().unwrap().to_string();
    assert!(r.core.cursors.lock().unwrap().contains_key(&id));
    let report = run_gc(&r).await;
    assert_eq!((report.uploads, report.stray_files), (1, 2), "{report}");
    assert!(
        !r.core.cursors.lock().unwrap().contains_key(&id),
        "regression: an expired session's hash state stayed in memory"
    );
    assert_eq!(report.upload_bytes, 1000);
    assert_eq!(report.stray_bytes, 1600);
    assert_eq!(
        std::fs::read_dir(r.root.join("uploads")).unwrap().count(),
        0
    );
    assert!(blob_files(&r.root).is_empty());
    let resp = c
        .patch(r.url(&location))
        .body(random_bytes(10))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    assert_clean(&r, "after collecting uploads").await;
    r.stop().await;
}

fn uuid_like() -> String {
    let h = hex::encode(random_bytes(16));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[tokio::test]
async fn the_server_collects_by_itself_every_interval_and_stops_on_shutdown() {
    let r = TestRegistry::start_configured(|c| {
        c.gc.interval = Some(Duration::from_millis(100));
        c.gc.grace = Duration::ZERO;
        c.gc.push_window = Duration::ZERO;
    })
    .await;
    let d = seed_blob(&r.core, &["app"], &random_bytes(1234)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while blob_files(&r.root).contains(&d) {
        assert!(Instant::now() < deadline, "the timer never collected {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), r.stop())
        .await
        .expect("serve returns after shutdown, timer included");
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

/// One pass at a time: a `gc` through the control channel waits for the pass in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_through_the_socket_waits_for_the_pass_in_progress() {
    let r = start(|_| {}).await;
    seed_blob(&r.core, &["app"], &random_bytes(100)).await;
    let sock = dockyard::admin::socket_path(&r.root);
    while !sock.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first pass holds its turn for 500 ms once it has chosen the blob.
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<Instant>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let hook: Hook = Arc::new(move |stage, _| {
        if stage == Stage::BlobChosen {
            if let Some(tx) = entered_tx.lock().unwrap().take() {
                let _ = tx.send(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let first = gc_with(
        &r,
        GcOptions {
            hook: Some(hook),
            ..Default::default()
        },
    );
    let second = async {
        let entered = tokio::task::spawn_blocking(move || entered_rx.recv().expect("first pass"))
            .await
            .unwrap();
        let answer =
            dockyard::admin::call(&r.root, &dockyard::admin::Command::Gc { dry_run: false })
                .await
                .expect("admin call")
                .expect("a server answers");
        (answer, entered.elapsed())
    };
    let (first, (answer, waited)) = tokio::join!(first, second);
    assert_eq!(first.blobs, 1, "{first}");
    assert!(
        waited >= Duration::from_millis(450),
        "the socket's pass answered {waited:?} into the first pass"
    );
    assert!(
        matches!(&answer, dockyard::admin::Outcome::Ok(s) if s.starts_with("gc: freed 0 blobs")),
        "{answer:?}"
    );
    r.stop().await;
}
