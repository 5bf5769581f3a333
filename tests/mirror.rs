//! The pull-through mirror (`[[mirror]]`), against real upstreams on loopback: CNCF
//! Distribution 2.8 (`tests/util/upstream.rs`, whose access log counts what the upstream was
//! asked for) and a second Dockyard with token auth. Clients are reqwest and skopeo here;
//! ctr, dockerd and podman are in their own tests.

use std::process::Command;
use std::time::{Duration, Instant};

use dockyard::gc::fsck::{self, FsckOptions};

use crate::util::upstream::Distribution;
use crate::util::*;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A mirror registry whose `[[mirror]]`/`[mirror_cache]` tables are `toml`.
async fn start_mirror(toml: &str) -> TestRegistry {
    let parsed = dockyard::Config::from_toml(toml).expect("mirror config");
    TestRegistry::start_configured(|c| {
        c.mirrors = parsed.mirrors;
        c.mirror_cache = parsed.mirror_cache;
    })
    .await
}

fn mirror_table(prefix: &str, upstream: &str, extra: &str) -> String {
    format!("[[mirror]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{extra}\n")
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = c
        .get(url)
        .header("Accept", ACCEPT)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

/// Waits (bounded) until `repo@digest` is stored: a fetched manifest is committed by the
/// last of its blobs' fetches, just after that blob's last byte was served.
async fn wait_stored(r: &TestRegistry, repo: &str, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (n, d) = (repo.to_string(), digest.to_string());
        let found = r
            .core
            .db
            .read(move |tx| {
                dockyard::db::manifests::get(
                    tx,
                    &dockyard::oci::RepoName::parse(&n).unwrap(),
                    &dockyard::oci::Reference::parse(&d).unwrap(),
                    false,
                )
            })
            .await
            .expect("read");
        if found.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{repo}@{digest} was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_fsck_clean(r: &TestRegistry) {
    let core = r.core.clone();
    let report = tokio::task::spawn_blocking(move || {
        fsck::check(
            &core,
            &FsckOptions {
                verify_hashes: true,
                ..Default::default()
            },
        )
    })
    .await
    .expect("fsck task")
    .expect("fsck");
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}

fn skopeo(args: &[String]) -> Command {
    let mut c = Command::new("skopeo");
    c.args(args);
    c
}

fn layer_digests(manifest: &[u8]) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn path_prefix_pulls_from_distribution_are_byte_identical_and_survive_it_going_down() {
    if !require_tool("docker-registry") || !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let (l1, l2) = (random_bytes(3 << 20), random_bytes(1 << 20));
    let (manifest, digest) = up.push_image(&c, "library/app", "v1", &[&l1, &l2]).await;
    let r = start_mirror(&mirror_table("up", &up.url(""), "")).await;

    // Manifest by tag: the upstream's bytes, under the upstream's digest.
    let (status, headers, body) = get(&c, &r.url("/v2/up/library/app/manifests/v1")).await;
    assert_eq!(status, 200);
    assert_eq!(body, manifest);
    assert_eq!(headers["docker-content-digest"], digest.as_str());
    // Every blob, identical.
    for (d, bytes) in layer_digests(&manifest).iter().skip(1).zip([&l1, &l2]) {
        let (status, _, body) = get(&c, &r.url(&format!("/v2/up/library/app/blobs/{d}"))).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(&body, bytes, "{d}");
    }
    wait_stored(&r, "up/library/app", &digest).await;
    // skopeo, path prefix: the same digest as the upstream's.
    let out = dir.path().join("layout");
    run_async(skopeo(&[
        "copy".into(),
        "--preserve-digests".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/up/library/app:v1", r.addr),
        format!("oci:{}:v1", out.display()),
    ]))
    .await;
    assert_eq!(layout_digest(&out, "v1"), digest);
    // Each blob went upstream once, the manifest by tag once (then within its ttl).
    for d in layer_digests(&manifest) {
        assert_eq!(up.blob_gets(&d), 1, "upstream GETs of {d}");
    }
    assert_eq!(up.requests("GET", "/v2/library/app/manifests/v1"), 1);

    // The link goes down: what was pulled still pulls, by tag and by digest.
    up.stop();
    let (status, _, body) = get(&c, &r.url("/v2/up/library/app/manifests/v1")).await;
    assert_eq!((status, &body), (200, &manifest));
    let (status, _, body) = get(
        &c,
        &r.url(&format!("/v2/up/library/app/manifests/{digest}")),
    )
    .await;
    assert_eq!((status, &body), (200, &manifest));
    let out2 = dir.path().join("layout2");
    run_async(skopeo(&[
        "copy".into(),
        "--preserve-digests".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{}/up/library/app@{digest}", r.addr),
        format!("oci:{}:offline", out2.display()),
    ]))
    .await;
    assert_eq!(layout_digest(&out2, "offline"), digest);
    // Never pulled: a clear error naming the upstream.
    let resp = c
        .get(r.url("/v2/up/library/other/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("not cached") && text.contains(&up.addr),
        "{text}"
    );
    assert_fsck_clean(&r).await;
}
