//! Blobs on S3 (`[storage] backend = "s3"`), against the three-node Garage cluster that
//! `.ci/garage.sh start` runs on loopback (replication factor 3). Every test uses its own key
//! prefix in the shared bucket. Without the cluster these tests say loudly that they are
//! skipped (and fail in CI): see `util::require_s3`.

use std::path::Path;
use std::time::Duration;

use dockyard::gc::{GcOptions, Stage};
use dockyard::oci::Digest;
use object_store::ObjectStoreExt;

use crate::interop::oci_client_round_trip;
use crate::interop_cli::*;
use crate::util::*;

/// A `Config` for `root` with blobs in the Garage bucket under a fresh prefix; `extra` lines
/// go into `[storage.s3]`, `gc` lines into `[gc]`.
fn s3_config(s3: &S3Env, root: &Path, prefix: &str, extra: &str, gc: &str) -> dockyard::Config {
    let toml = format!(
        "{}\n[gc]\ninterval = \"off\"\n{gc}\n",
        s3.storage_toml(root, prefix, extra)
    );
    let mut c = dockyard::Config::from_toml(&toml).expect("s3 config");
    c.root = root.to_path_buf();
    c
}

async fn start_s3(s3: &S3Env, dir: &Path, test: &str, extra: &str) -> TestRegistry {
    TestRegistry::start_with(s3_config(s3, dir, &s3_prefix(test), extra, "")).await
}

async fn gc(r: &TestRegistry, opts: GcOptions) -> dockyard::gc::GcReport {
    let core = r.core.clone();
    tokio::task::spawn_blocking(move || dockyard::gc::run_once(&core, &opts))
        .await
        .expect("gc task")
        .expect("gc pass")
}

/// The objects under the registry's prefix, by digest.
async fn objects(r: &TestRegistry) -> Vec<(Digest, u64)> {
    let core = r.core.clone();
    tokio::task::spawn_blocking(move || core.store.list_blobs())
        .await
        .expect("list task")
        .expect("list the bucket")
        .into_iter()
        .map(|(d, size, _)| (d, size))
        .collect()
}

/// Every client of the matrix pushes and pulls through one S3-backed registry. Clients that
/// are missing here are skipped loudly by their own checks (a failure in CI).
async fn client_matrix(redirect: bool) {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("redirect = {redirect}");
    let r = start_s3(&s3, dir.path(), "matrix", &extra).await;
    oci_client_round_trip(&r, false).await;
    oci_client_round_trip(&r, true).await;
    if require_tool("skopeo") {
        skopeo_round_trip(&r).await;
    }
    if require_tool("podman") {
        podman_round_trip(&r).await;
    }
    if require_tool("docker") && require_env("DOCKER_HOST").is_some() {
        docker_round_trip(&r).await;
    }
    if require_tool("ctr") && require_env("CONTAINERD_ADDRESS").is_some() {
        ctr_round_trip(&r).await;
    }
    if require_oras() {
        oras_round_trip(&r).await;
    }
    // The bytes are in the bucket, none under the root, and every row has its object.
    assert!(
        blob_files(&r.root).is_empty(),
        "no blob files on disk with the S3 backend"
    );
    let stored = objects(&r).await;
    assert!(!stored.is_empty());
    let report = r.fsck(true).await;
    assert!(report.clean(), "{report}");
    assert_eq!(report.blobs, stored.len() as u64, "{report}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_matrix_with_redirect() {
    client_matrix(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_matrix_streaming_through() {
    client_matrix(false).await;
}

/// A blob of several parts pushed in PATCHes smaller than a part, then read whole and in
/// ranges, redirected and streamed; HEAD answers from the row alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_chunks_make_a_multipart_object_and_ranges_read_it() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = s3_prefix("chunks");
    let r =
        TestRegistry::start_with(s3_config(&s3, dir.path(), &prefix, "redirect = false", "")).await;
    let c = client();
    // Two and a half parts (8 MiB each), in 700 KiB PATCHes.
    let blob = random_bytes(20 << 20 | 12345);
    let digest = sha256(&blob);
    let resp = c
        .post(r.url("/v2/big/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut location = resp.headers()["location"].to_str().unwrap().to_string();
    let mut offset = 0usize;
    for chunk in blob.chunks(700 << 10) {
        let resp = c
            .patch(r.url(&location))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "PATCH at {offset}");
        location = resp.headers()["location"].to_str().unwrap().to_string();
        offset += chunk.len();
    }
    // Nothing of the upload on disk: two parts are in the bucket, the tail in memory; only
    // the journal naming the multipart upload is under uploads/.
    let on_disk: Vec<String> = std::fs::read_dir(dir.path().join("uploads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk.len(), 1, "{on_disk:?}");
    assert!(on_disk[0].ends_with(".multipart"), "{on_disk:?}");
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = c
        .put(r.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let stored = objects(&r).await;
    assert_eq!(
        stored,
        vec![(digest.parse().unwrap(), blob.len() as u64)],
        "one object, of the blob's size"
    );

    let get = |range: Option<&str>| {
        let mut req = c.get(r.url(&format!("/v2/big/blobs/{digest}")));
        if let Some(range) = range {
            req = req.header("range", range);
        }
        req.send()
    };
    let whole = get(None).await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(sha256(&whole.bytes().await.unwrap()), digest);
    for (range, want) in [
        ("bytes=0-99", &blob[..100]),
        ("bytes=8388600-8388700", &blob[8388600..=8388700]),
        ("bytes=-5000", &blob[blob.len() - 5000..]),
    ] {
        let resp = get(Some(range)).await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(&resp.bytes().await.unwrap()[..], want, "{range}");
    }
    let resp = get(Some("bytes=999999999-")).await.unwrap();
    assert_eq!(resp.status(), 416);
    r.stop().await;

    // The same root and prefix, redirected: a 307 to a presigned URL of the endpoint, which
    // the client follows with its Range (Garage answers it).
    let r =
        TestRegistry::start_with(s3_config(&s3, dir.path(), &prefix, "redirect = true", "")).await;
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_follow
        .get(r.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307);
    let to = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(&s3.endpoint), "{to} is the object store's");
    assert!(to.contains("X-Amz-Signature="), "{to} is presigned");
    let resp = client()
        .get(r.url(&format!("/v2/big/blobs/{digest}")))
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        206,
        "the redirect is followed with the Range"
    );
    assert_eq!(&resp.bytes().await.unwrap()[..], &blob[100..200]);
    let whole = client()
        .get(r.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&whole.bytes().await.unwrap()), digest);

    // HEAD never touches the bucket: with the object deleted behind the registry's back, it
    // still answers from the row (and fsck names the missing object).
    let (core, d) = (r.core.clone(), digest.parse::<Digest>().unwrap());
    tokio::task::spawn_blocking(move || core.store.remove_blob(&d))
        .await
        .unwrap()
        .unwrap();
    let resp = client()
        .head(r.url(&format!("/v2/big/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        blob.len().to_string()
    );
    let report = r.fsck(false).await;
    assert_eq!(
        report.kinds(),
        vec![dockyard::gc::fsck::Kind::RowWithoutFile],
        "{report}"
    );
    r.stop().await;
}

/// The journal of the one multipart upload under `root/uploads/`, and its text.
fn journal_of(root: &Path) -> (std::path::PathBuf, String) {
    let j = std::fs::read_dir(root.join("uploads"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".multipart"))
        .expect("a journaled multipart upload");
    let text = std::fs::read_to_string(&j).unwrap();
    (j, text)
}

async fn multipart_alive(r: &TestRegistry, journal_text: &str) -> bool {
    let (bucket, text) = (
        r.core.store.bucket().unwrap().clone(),
        journal_text.to_string(),
    );
    dockyard::store::s3::io(async move { bucket.multipart_alive(&text).await })
        .await
        .unwrap()
}

/// Starts an upload session and PATCHes `body` into it; returns its location.
async fn patched(r: &TestRegistry, body: &[u8]) -> String {
    let c = client();
    let resp = c
        .post(r.url("/v2/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = c
        .patch(r.url(&location))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    location
}

/// An upload cancelled half-way, after its first part went to the bucket, aborts its
/// multipart upload and leaves nothing: no journal, no object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_upload_aborts_its_multipart_upload() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let r = start_s3(&s3, dir.path(), "cancel", "").await;
    let c = client();
    let location = patched(&r, &random_bytes(10 << 20)).await;
    let (_, text) = journal_of(dir.path());
    assert!(multipart_alive(&r, &text).await);
    let resp = c.delete(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!multipart_alive(&r, &text).await, "the cancel aborted it");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "uploads/ holds {left:?}");
    assert!(objects(&r).await.is_empty());
    let report = r.fsck(false).await;
    assert!(report.clean(), "{report}");
    r.stop().await;
}

/// A restart loses an S3 session's state (its tail was in memory): the next PATCH says
/// BLOB_UPLOAD_UNKNOWN, and when the session expires the GC aborts its multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lost_in_a_restart_is_refused_and_its_expiry_aborts_the_multipart_upload() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = s3_prefix("restart");
    let config = s3_config(&s3, dir.path(), &prefix, "", "");
    let r = TestRegistry::start_with(config.clone()).await;
    let location = patched(&r, &random_bytes(9 << 20)).await;
    let (journal, text) = journal_of(dir.path());
    r.stop().await;
    let mut config = config;
    config.upload_expiry = Duration::ZERO;
    let r = TestRegistry::start_with(config).await;
    let resp = client()
        .patch(r.url(&location))
        .body(random_bytes(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    assert!(multipart_alive(&r, &text).await);
    let report = gc(&r, GcOptions::default()).await;
    assert_eq!(report.uploads, 1, "{report}");
    assert!(!journal.exists());
    assert!(!multipart_alive(&r, &text).await, "the expiry aborted it");
    assert!(r.fsck(false).await.clean());
    r.stop().await;
}

/// SIGKILL while a blob is being copied into the bucket (its multipart upload journaled):
/// the acknowledged image survives, fsck names the cut-off upload as the GC's, the next GC
/// aborts the multipart upload (it takes no more parts) and everything is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_loses_nothing_acknowledged_and_gc_aborts_the_multipart_upload() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let prefix = s3_prefix("kill-upload");
    let toml = format!(
        "{}\n[gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"0s\"\n",
        // Grace zero: snapshots off (a grace must outlast the snapshot interval).
        s3.storage_toml(
            dir.path(),
            &prefix,
            "redirect = false\nsnapshot_interval = \"off\""
        )
    );
    let config = write_config(dir.path(), "registry.toml", &toml);
    let server = Process::spawn_with_config(&root, &config);
    let c = client();
    let layer = random_bytes(300_000);
    let (manifest, _) = push_image(&c, &server, "app", "v1", &[&layer]).await;

    // A 48 MiB monolithic push: six parts, copied into the bucket after the body is in.
    let big = random_bytes(48 << 20);
    let d = sha256(&big);
    let url = server.url(&format!("/v2/app/blobs/uploads/?digest={d}"));
    let push = tokio::spawn(async move { client().post(url).body(big).send().await });
    let uploads = root.join("uploads");
    let journal = loop {
        let found = std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().ends_with(".multipart"));
        if let Some(j) = found {
            // Written then fsynced: wait until it names the upload id too.
            if std::fs::read_to_string(&j).is_ok_and(|t| t.lines().count() == 2) {
                break j;
            }
        }
        assert!(
            !push.is_finished(),
            "the push ended before its multipart upload was seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.signal("KILL");
    drop(server);
    assert!(
        push.await.unwrap().is_err(),
        "the killed push was not acknowledged"
    );
    let journal_text = std::fs::read_to_string(&journal).unwrap();

    let r = TestRegistry::start_with(s3_config(
        &s3,
        &root,
        &prefix,
        "redirect = false\nsnapshot_interval = \"off\"",
        "grace = \"0s\"\npush_window = \"0s\"",
    ))
    .await;
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after SIGKILL").await;
    let report = r.fsck(false).await;
    assert!(!report.clean(), "fsck sees the cut-off upload");
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.remedy == dockyard::gc::fsck::Remedy::Gc),
        "everything left is the GC's to clean: {report}"
    );
    assert!(
        report.to_string().contains("multipart"),
        "fsck explains the multipart upload: {report}"
    );
    let bucket = r.core.store.bucket().unwrap().clone();
    let text = journal_text.clone();
    assert!(
        dockyard::store::s3::io(async move { bucket.multipart_alive(&text).await })
            .await
            .unwrap(),
        "before the GC the multipart upload still takes parts"
    );
    let report = gc(&r, GcOptions::default()).await;
    assert!(report.stray_files >= 1, "{report}");
    assert!(!journal.exists(), "the GC removed the journal");
    let bucket = r.core.store.bucket().unwrap().clone();
    assert!(
        !dockyard::store::s3::io(async move { bucket.multipart_alive(&journal_text).await })
            .await
            .unwrap(),
        "the GC aborted the multipart upload"
    );
    let report = r.fsck(true).await;
    assert!(report.clean(), "{report}");
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after the GC").await;
    r.stop().await;
}

/// A GC pass that dies between committing a blob's row removal and deleting its object
/// (the hook panics there, as a crash would stop it): nothing referenced is lost, fsck names
/// the object without a row as the GC's, and the next pass deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gc_pass_cut_after_the_row_leaves_an_object_the_next_pass_deletes() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(
        &s3,
        dir.path(),
        &s3_prefix("cut-gc"),
        "snapshot_interval = \"off\"",
        "grace = \"0s\"\npush_window = \"0s\"",
    );
    let r = TestRegistry::start_with(config).await;
    let c = client();
    let (manifest, _) = push_image(&c, &r, "app", "v1", &[&random_bytes(10_000)]).await;
    let garbage = random_bytes(20_000);
    let g = push_blob(&c, &r, "app", &garbage).await;
    assert_eq!(objects(&r).await.len(), 3);
    let hook: dockyard::gc::Hook = std::sync::Arc::new(|stage, _digest: &str| {
        if stage == Stage::BlobRowRemoved {
            panic!("cut: the pass stops after the row's removal is committed");
        }
    });
    let core = r.core.clone();
    let cut = tokio::task::spawn_blocking(move || {
        dockyard::gc::run_once(
            &core,
            &GcOptions {
                hook: Some(hook),
                ..Default::default()
            },
        )
    })
    .await;
    assert!(cut.is_err(), "the pass was cut");
    assert!(
        objects(&r).await.iter().any(|(d, _)| d.to_string() == g),
        "the object outlived its row"
    );
    let report = r.fsck(false).await;
    assert_eq!(
        report.kinds(),
        vec![dockyard::gc::fsck::Kind::FileWithoutRow],
        "{report}"
    );
    assert!(report
        .problems
        .iter()
        .all(|p| p.remedy == dockyard::gc::fsck::Remedy::Gc));
    let report = gc(&r, GcOptions::default()).await;
    assert_eq!(report.stray_files, 1, "{report}");
    // Asked by key, not by listing: Garage filters deleted objects out on each node before it
    // merges a listing's replies, so a listing can still name an object for a moment after
    // its DELETE was answered (a replica that has not applied it yet). GC and fsck re-check
    // every listed discrepancy by key for the same reason.
    let core = r.core.clone();
    let gd: Digest = g.parse().unwrap();
    let kept = tokio::task::spawn_blocking(move || core.store.has_blob(&gd))
        .await
        .unwrap()
        .unwrap();
    assert!(!kept, "the next pass deleted the object");
    assert!(r.fsck(true).await.clean());
    assert_pulls(&c, &r.url(""), "app", "v1", &manifest, "after the GC").await;
    r.stop().await;
}

/// `migrate-storage --to s3` moves a filesystem root's blobs into the bucket; the root then
/// serves byte-identical pulls from S3, and no blob file is left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_storage_moves_every_blob_and_pulls_stay_byte_identical() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let r = TestRegistry::start_at(&root).await;
    let c = client();
    let big = random_bytes(17 << 20);
    let small = random_bytes(4000);
    let (m1, _) = push_image(&c, &r, "one", "v1", &[&big, &small]).await;
    let (m2, _) = push_image(&c, &r, "two/deep", "latest", &[&small]).await;
    r.stop().await;
    let before = blob_files(&root);
    assert_eq!(before.len(), 4, "two configs, two layers");

    let prefix = s3_prefix("migrate");
    let config = write_config(
        dir.path(),
        "registry.toml",
        &s3.storage_toml(dir.path(), &prefix, "redirect = false"),
    );
    let (root_s, config_s) = (root.to_string_lossy(), config.to_string_lossy());
    let (ok, out, err) = dockyard(&[
        "migrate-storage",
        "--to",
        "s3",
        "--config",
        &config_s,
        "--root",
        &root_s,
        "--delete-local",
    ]);
    assert!(ok, "migrate-storage failed:\n{out}\n{err}");
    assert!(out.contains("4 blobs: 4 uploaded"), "{out}");
    assert!(
        blob_files(&root).is_empty(),
        "--delete-local removed the files"
    );
    // Run again: everything is already there, verified, nothing uploaded.
    let (ok, out, err) = dockyard(&[
        "migrate-storage",
        "--to",
        "s3",
        "--config",
        &config_s,
        "--root",
        &root_s,
    ]);
    assert!(ok && out.contains("0 uploaded"), "{out}\n{err}");

    let r = TestRegistry::start_with(s3_config(&s3, &root, &prefix, "redirect = true", "")).await;
    assert_pulls(&c, &r.url(""), "one", "v1", &m1, "migrated, redirected").await;
    assert_pulls(
        &c,
        &r.url(""),
        "two/deep",
        "latest",
        &m2,
        "migrated, redirected",
    )
    .await;
    let stored: std::collections::BTreeSet<String> = objects(&r)
        .await
        .iter()
        .map(|(d, _)| d.to_string())
        .collect();
    assert_eq!(stored, before, "every blob is an object");
    let report = r.fsck(true).await;
    assert!(report.clean(), "{report}");
    // `export` downloads the objects into an OCI layout.
    let layout = dir.path().join("layout");
    r.admin(dockyard::admin::Command::Export {
        refs: vec!["one:v1".to_string()],
        to: layout.clone(),
    })
    .await
    .expect("export from the bucket");
    for d in before.iter().filter(|d| m1_blobs(&m1).contains(d)) {
        let file = layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert_eq!(&sha256(&std::fs::read(&file).unwrap()), d, "exported {d}");
    }
    r.stop().await;
}

/// The config and layer digests an image manifest lists.
fn m1_blobs(manifest: &[u8]) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    std::iter::once(&m["config"])
        .chain(m["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

/// A PATCH whose body is shorter than its Content-Range is refused whole (416) and the
/// session stays where it was; a finishing PUT with the wrong digest cancels the upload, as
/// Distribution does (the S3 sink cannot take bytes back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misdescribed_chunk_is_refused_whole_and_a_wrong_digest_cancels() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let r = start_s3(&s3, dir.path(), "refused", "").await;
    let c = client();
    let first = random_bytes(9 << 20);
    let location = patched(&r, &first).await;
    let offset = first.len();
    // Declares 2000 bytes, sends 1000 (no Content-Length check: chunked body).
    let short = futures_util::stream::iter([Ok::<_, std::io::Error>(random_bytes(1000))]);
    let resp = c
        .patch(r.url(&location))
        .header("content-range", format!("{offset}-{}", offset + 1999))
        .body(reqwest::Body::wrap_stream(short))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    let resp = c.get(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["range"].to_str().unwrap(),
        format!("0-{}", offset - 1),
        "the session is where it was"
    );
    let rest = random_bytes(5000);
    let resp = c
        .patch(r.url(&location))
        .header(
            "content-range",
            format!("{offset}-{}", offset + rest.len() - 1),
        )
        .body(rest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let whole = [first, rest].concat();
    let digest = sha256(&whole);
    let sep = if location.contains('?') { '&' } else { '?' };
    let wrong = sha256(b"not these bytes");
    let resp = c
        .put(r.url(&format!("{location}{sep}digest={wrong}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = c
        .put(r.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the upload was cancelled");
    assert!(objects(&r).await.is_empty());
    let report = gc(&r, GcOptions::default()).await;
    assert_eq!(report.stray_files, 0, "{report}");
    assert!(
        std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .next()
            .is_none(),
        "no journal left"
    );
    r.stop().await;
}

/// Aborts the multipart upload a journal's text names behind the registry's back, as a store
/// that lost it would (through a copy of the journal, which `abort_journaled` removes).
async fn abort_behind_the_back(r: &TestRegistry, dir: &Path, journal_text: &str) {
    let copy = dir.join("behind-the-back.multipart");
    std::fs::write(&copy, journal_text).unwrap();
    let bucket = r.core.store.bucket().unwrap().clone();
    dockyard::store::s3::io(async move { bucket.abort_journaled(&copy).await })
        .await
        .unwrap();
    assert!(!multipart_alive(r, journal_text).await);
}

/// A part the store refuses (its multipart upload is gone) fails the request that sent it
/// with the spec's error body (BLOB_UPLOAD_UNKNOWN: the client starts again); the session
/// stays where it was, nothing is committed, and the finish that cannot complete cancels the
/// upload and leaves no journal and no object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_the_store_refuses_fails_its_request_and_commits_nothing() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let r = start_s3(&s3, dir.path(), "part-refused", "").await;
    let c = client();
    // Two parts sent, 4 MiB of tail held.
    let first = random_bytes(20 << 20);
    let location = patched(&r, &first).await;
    let (journal, text) = journal_of(dir.path());
    abort_behind_the_back(&r, dir.path(), &text).await;
    // 4 MiB more make the third part, sent once the whole body is in: the store refuses it.
    let more = random_bytes(4 << 20);
    let resp = c.patch(r.url(&location)).body(more).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    let resp = c.get(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["range"].to_str().unwrap(),
        format!("0-{}", first.len() - 1),
        "the session is where it was"
    );
    // The session holds `first` (the refused chunk taken back), which the store can no
    // longer complete.
    let digest = sha256(&first);
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = c
        .put(r.url(&format!("{location}{sep}digest={digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the multipart upload cannot complete");
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    let resp = c
        .head(r.url(&format!("/v2/app/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "nothing committed");
    assert!(objects(&r).await.is_empty(), "no object under blobs/");
    assert!(!journal.exists(), "the failed finish forgot the upload");
    let report = r.fsck(false).await;
    assert!(report.clean(), "{report}");
    r.stop().await;
}

/// A crash after a finishing PUT completed the session's temporary object
/// (`uploads/<session>`) and before it was copied and deleted: the journal still names it,
/// and when the session expires the GC deletes the object with the journal (the multipart
/// upload itself is already gone: completed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gc_deletes_a_temporary_object_completed_before_a_crash() {
    let Some(s3) = require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = s3_prefix("temp-object");
    let config = s3_config(&s3, dir.path(), &prefix, "", "");
    let r = TestRegistry::start_with(config.clone()).await;
    patched(&r, &random_bytes(9 << 20)).await;
    let (journal, text) = journal_of(dir.path());
    let key = object_store::path::Path::from(text.lines().next().unwrap());
    let store = r.core.store.bucket().unwrap().object_store();
    // The state the crash leaves: the upload completed (no longer takes parts), its object
    // there.
    abort_behind_the_back(&r, dir.path(), &text).await;
    let (s, k) = (store.clone(), key.clone());
    dockyard::store::s3::io(async move {
        s.put(&k, random_bytes(9 << 20).into()).await.unwrap();
    })
    .await;
    r.stop().await;

    let mut config = config;
    config.upload_expiry = Duration::ZERO;
    let r = TestRegistry::start_with(config).await;
    let report = gc(&r, GcOptions::default()).await;
    assert_eq!(report.uploads, 1, "{report}");
    assert!(!journal.exists(), "the GC removed the journal");
    let (s, k) = (store.clone(), key.clone());
    let head = dockyard::store::s3::io(async move { s.head(&k).await }).await;
    assert!(
        matches!(head, Err(object_store::Error::NotFound { .. })),
        "the temporary object is gone: {head:?}"
    );
    assert!(r.fsck(false).await.clean());
    r.stop().await;
}
