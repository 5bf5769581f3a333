//! The pull-through mirror (`[[mirror]]`), against real upstreams on loopback: CNCF
//! Distribution 2.8 (`tests/util/upstream.rs`, whose access log counts what the upstream was
//! asked for) and a second Dockyard with token auth. Clients are reqwest and skopeo here;
//! ctr, dockerd and podman are in their own tests.

use std::process::Command;
use std::time::{Duration, Instant};

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

/// Waits up to `within` until the blob `digest` (`sha256:…`) is in place under `blobs/`: a
/// fetch renames its upload file there once the bytes are whole and checked.
async fn wait_blob_file(r: &TestRegistry, digest: &str, within: Duration, what: &str) {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let deadline = Instant::now() + within;
    while !blob_files(&r.root).iter().any(|f| f.contains(hex)) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let report = r.fsck(true).await;
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

/// A mirror with auth on, serving the same upstream three ways: path prefix, `?ns=`, and as
/// the default mirror for unprefixed names.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ns_and_default_forms_pushes_denied_and_grants_on_the_stored_name() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let layer = random_bytes(300_000);
    let (manifest, digest) = up.push_image(&c, "library/app", "v1", &[&layer]).await;
    let parsed = dockyard::Config::from_toml(&mirror_table(
        "docker.io",
        &up.url(""),
        "default = true\nnamespaces = [\"docker.io\", \"registry-1.docker.io\"]",
    ))
    .unwrap();
    let r = TestRegistry::start_configured(|cfg| {
        cfg.mirrors = parsed.mirrors;
        cfg.auth.mode = dockyard::config::AuthMode::Basic;
        cfg.auth.bcrypt_cost = 4;
    })
    .await;
    r.add_user("alice", "pw-alice").await;
    r.add_user("bob", "pw-bob").await;
    r.grant("alice", "docker.io/**", "pull").await;
    r.grant("alice", "library/**", "pull,push").await;
    r.grant("bob", "library/**", "pull,push").await;
    let alice = client_as("alice", "pw-alice");
    let bob = client_as("bob", "pw-bob");

    // containerd's hosts.toml form: unprefixed name, ?ns= names the upstream.
    for url in [
        "/v2/library/app/manifests/v1?ns=docker.io",
        "/v2/library/app/manifests/v1?ns=registry-1.docker.io",
        "/v2/docker.io/library/app/manifests/v1",
        // dockerd's registry-mirrors form: unprefixed, not stored here → the default mirror.
        "/v2/library/app/manifests/v1",
    ] {
        let (status, headers, body) = get(&alice, &r.url(url)).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(body, manifest, "{url}");
        assert_eq!(headers["docker-content-digest"], digest.as_str());
    }
    let d = sha256(&layer);
    let (status, _, body) = get(
        &alice,
        &r.url(&format!("/v2/library/app/blobs/{d}?ns=docker.io")),
    )
    .await;
    assert_eq!((status, body == layer), (200, true));
    wait_stored(&r, "docker.io/library/app", &digest).await;
    // Grants apply to the stored name: bob may pull library/** but not docker.io/**, so the
    // explicit mirrored forms are refused to him, and for him the unprefixed name is only
    // the local one (not stored: unknown); anonymous is asked to log in.
    for url in [
        "/v2/library/app/manifests/v1?ns=docker.io",
        "/v2/docker.io/library/app/manifests/v1",
    ] {
        let (status, _, _) = get(&bob, &r.url(url)).await;
        assert_eq!(status, 403, "bob {url}");
    }
    let resp = bob
        .get(r.url("/v2/library/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(resp).await, "MANIFEST_UNKNOWN");
    for url in [
        "/v2/library/app/manifests/v1?ns=docker.io",
        "/v2/docker.io/library/app/manifests/v1",
        "/v2/library/app/manifests/v1",
    ] {
        let (status, _, _) = get(&client(), &r.url(url)).await;
        assert_eq!(status, 401, "anonymous {url}");
    }
    // Pushes into a mirror are refused with DENIED, before anything is stored.
    let resp = alice
        .post(r.url("/v2/docker.io/library/app/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = alice
        .put(r.url("/v2/library/app/manifests/v2?ns=docker.io"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "DENIED");
    // A name pushed here is served from here, not from the default mirror; the push's blob
    // checks never went upstream.
    let own = random_bytes(1000);
    let (own_manifest, _) = push_image(&bob, &r, "library/own", "v1", &[&own]).await;
    let (status, _, body) = get(&bob, &r.url("/v2/library/own/manifests/v1")).await;
    assert_eq!((status, body), (200, own_manifest));
    assert_eq!(up.requests("GET", "/v2/library/own/manifests/v1"), 0);
    // alice may pull docker.io/**, yet her push's blob check (a HEAD on a name not stored
    // here) is answered locally: a push never depends on the upstream.
    let fresh = random_bytes(1000);
    let resp = alice
        .head(r.url(&format!("/v2/library/mine/blobs/{}", sha256(&fresh))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    push_image(&alice, &r, "library/mine", "v1", &[&fresh]).await;
    assert_eq!(
        up.requests(
            "HEAD",
            &format!("/v2/library/mine/blobs/{}", sha256(&fresh))
        ),
        0
    );
    assert_fsck_clean(&r).await;
}

/// The upstream is a second Dockyard with token auth: the mirror follows its Bearer
/// challenge with the configured credentials and reuses the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_auth_upstream_is_followed_with_configured_credentials() {
    let up = TestRegistry::start_auth(dockyard::config::AuthMode::Token, |_| {}).await;
    up.add_user("pusher", "push-pw").await;
    up.add_user("mirror", "s3cret-mirror-pw").await;
    up.grant("pusher", "**", "pull,push").await;
    up.grant("mirror", "team/**", "pull").await;
    let pusher = token_client(&up, "pusher", "push-pw", "repository:team/app:pull,push").await;
    let layer = random_bytes(200_000);
    let (manifest, digest) = push_image(&pusher, &up, "team/app", "v1", &[&layer]).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret-mirror-pw\n").unwrap();
    let r = start_mirror(&mirror_table(
        "up",
        &up.url(""),
        &format!(
            "username = \"mirror\"\npassword_file = \"{}\"",
            pw.display()
        ),
    ))
    .await;
    let c = client();
    let (status, headers, body) = get(&c, &r.url("/v2/up/team/app/manifests/v1")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, manifest);
    assert_eq!(headers["docker-content-digest"], digest.as_str());
    let d = sha256(&layer);
    let (status, _, body) = get(&c, &r.url(&format!("/v2/up/team/app/blobs/{d}"))).await;
    assert_eq!((status, body == layer), (200, true));
    wait_stored(&r, "up/team/app", &digest).await;
    // One token for the repository's scope, reused for the manifest and every blob.
    let metrics = c
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dockyard_mirror_upstream_requests_total{kind=\"token\"} 1\n"),
        "{metrics}"
    );
    // Outside its grants the upstream refuses the mirror's user: a clear error, no secret.
    let resp = c
        .get(r.url("/v2/up/other/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error() || resp.status().is_server_error());
    let text = resp.text().await.unwrap();
    assert!(!text.contains("s3cret"), "{text}");
}

/// A Bearer token from the registry's own token endpoint, as a client for `scope`.
async fn token_client(r: &TestRegistry, user: &str, pw: &str, scope: &str) -> reqwest::Client {
    let resp = client_as(user, pw)
        .get(r.url(&format!("/token?service=dockyard&scope={scope}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    client_with(&format!("Bearer {}", v["token"].as_str().unwrap()))
}

/// The upstream serves bytes that do not match the digest (its blob file overwritten):
/// the mirror refuses them and stores nothing; a corrupt manifest is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_serving_wrong_bytes_is_refused_and_nothing_is_stored() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let layer = random_bytes(3 << 20);
    let _ = up.push_image(&c, "lib/bad", "v1", &[&layer]).await;
    let d = sha256(&layer);
    let mut wrong = layer.clone();
    wrong[100] ^= 0xff;
    std::fs::write(up.blob_file(&d), &wrong).unwrap();
    let r = start_mirror(&mirror_table("up", &up.url(""), "")).await;
    let (status, _, manifest) = get(&c, &r.url("/v2/up/lib/bad/manifests/v1")).await;
    assert_eq!(status, 200);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    // The body is cut short of its length: the client never gets the whole (wrong) blob.
    // The next request fetches again (nothing was kept) and is refused again.
    for _ in 0..2 {
        let resp = c
            .get(r.url(&format!("/v2/up/lib/bad/blobs/{d}")))
            .send()
            .await
            .unwrap();
        let body = resp.bytes().await;
        assert!(
            body.as_ref().map_or(true, |b| b.len() < layer.len()),
            "the mirror served every byte of a blob whose digest is wrong"
        );
    }
    // Nothing stored: no blob file, no row, no upload file left.
    let hex = d.strip_prefix("sha256:").unwrap();
    assert!(!blob_files(&r.root).iter().any(|f| f.contains(hex)));
    // The manifest's answer started the fetch of its (good) config, whose upload file is
    // there until it lands: wait for it, then nothing may be left in uploads/.
    wait_blob_file(
        &r,
        &config,
        Duration::from_secs(30),
        "the config never landed",
    )
    .await;
    assert_eq!(
        std::fs::read_dir(r.root.join("uploads")).unwrap().count(),
        0
    );
    assert!(up.blob_gets(&d) >= 2);
    // A manifest whose bytes do not match its digest (by tag: the upstream's
    // Docker-Content-Digest; by digest: the reference): refused, not stored.
    let (_, digest) = up.push_image(&c, "lib/worse", "v1", &[b"x"]).await;
    let manifest_blob = up.blob_file(&digest);
    let mut bad = std::fs::read(&manifest_blob).unwrap();
    let i = bad.iter().position(|b| *b == b'{').unwrap();
    bad.insert(i + 1, b' ');
    std::fs::write(&manifest_blob, &bad).unwrap();
    for reference in ["v1", digest.as_str()] {
        let (status, _, body) = get(
            &c,
            &r.url(&format!("/v2/up/lib/worse/manifests/{reference}")),
        )
        .await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 502, "{reference}: {text}");
        assert!(text.contains("refused"), "{text}");
    }
    assert_fsck_clean(&r).await;
}

/// 50 clients pull one image nobody pulled before, at once: each gets it whole, and the
/// upstream saw each blob (and the manifest) requested once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_herd_of_fifty_cold_pulls_fetches_each_blob_once() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let layers = [
        random_bytes(4 << 20),
        random_bytes(2 << 20),
        random_bytes(100_000),
    ];
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let (manifest, digest) = up.push_image(&c, "herd/app", "v1", &refs).await;
    let r = start_mirror(&mirror_table("up", &up.url(""), "")).await;
    let base = r.url("/v2/up/herd/app");
    let pulls = (0..50).map(|_| {
        let (base, layers, manifest) = (base.clone(), layers.clone(), manifest.clone());
        async move {
            let c = fresh_client();
            let (status, _, body) = get(&c, &format!("{base}/manifests/v1")).await;
            assert_eq!((status, &body), (200, &manifest));
            for (d, l) in layer_digests(&manifest).iter().skip(1).zip(&layers) {
                let (status, _, body) = get(&c, &format!("{base}/blobs/{d}")).await;
                assert_eq!(status, 200);
                assert!(body == *l, "blob {d} differs");
            }
        }
    });
    futures_util::future::join_all(pulls).await;
    wait_stored(&r, "up/herd/app", &digest).await;
    for d in layer_digests(&manifest) {
        assert_eq!(up.blob_gets(&d), 1, "upstream GETs of {d}");
    }
    assert_eq!(up.requests("GET", "/v2/herd/app/manifests/v1"), 1);
    assert_fsck_clean(&r).await;
}

/// A client that goes away halfway through a blob's first fetch: the fetch goes on, the blob
/// is stored whole (never half), and the next pull gets it from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_leaving_halfway_through_a_first_fetch_leaves_nothing_half_stored() {
    if !require_tool("docker-registry") {
        return;
    }
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let layer = random_bytes(24 << 20);
    let (manifest, digest) = up.push_image(&c, "lib/big", "v1", &[&layer]).await;
    let r = start_mirror(&mirror_table("up", &up.url(""), "")).await;
    let d = sha256(&layer);
    // By digest, without the manifest GET (which would start the fetch by itself).
    let resp = fresh_client()
        .get(r.url(&format!("/v2/up/lib/big/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = 0;
    while got < (1 << 20) {
        got += body
            .next()
            .await
            .expect("some bytes")
            .expect("a chunk")
            .len();
    }
    drop(body);
    // Whatever is stored is whole: the blob's row appears only with all its bytes.
    wait_blob_file(&r, &d, Duration::from_secs(60), "the fetch never finished").await;
    let (status, _, body) = get(&c, &r.url(&format!("/v2/up/lib/big/blobs/{d}"))).await;
    assert_eq!(status, 200);
    assert!(body == layer, "the cached blob is not the upstream's");
    assert_eq!(up.blob_gets(&d), 1);
    let (status, _, body) = get(&c, &r.url("/v2/up/lib/big/manifests/v1")).await;
    assert_eq!((status, body), (200, manifest));
    wait_stored(&r, "up/lib/big", &digest).await;
    assert_eq!(
        std::fs::read_dir(r.root.join("uploads")).unwrap().count(),
        0
    );
    assert_fsck_clean(&r).await;
}

/// The first client of a blob gets the upstream's chunks from memory; one that stops
/// reading falls behind what the fetch keeps there (a few MiB), and after the fetch has
/// ended and the blob is in place it reads the rest from disk: the whole blob, identical,
/// still from one upstream GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_client_that_falls_behind_the_fetch_reads_the_rest_from_disk() {
    if !require_tool("docker-registry") {
        return;
    }
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    // Larger than the socket buffers plus what a fetch keeps in memory, so the stalled
    // client's position is far behind the fetch's end.
    let layer = random_bytes(32 << 20);
    let (_, digest) = up.push_image(&c, "lib/slow", "v1", &[&layer]).await;
    let r = start_mirror(&mirror_table("up", &up.url(""), "")).await;
    let d = sha256(&layer);
    let resp = fresh_client()
        .get(r.url(&format!("/v2/up/lib/slow/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < (1 << 20) {
        got.extend_from_slice(&body.next().await.expect("some bytes").expect("a chunk"));
    }
    // Stalled until the fetch has stored the blob (it does not wait for readers).
    wait_blob_file(&r, &d, Duration::from_secs(60), "the fetch never finished").await;
    while let Some(chunk) = body.next().await {
        got.extend_from_slice(&chunk.expect("a chunk"));
    }
    assert_eq!(got.len(), layer.len());
    assert!(
        got == layer,
        "the slow client's blob differs from the upstream's"
    );
    assert_eq!(up.blob_gets(&d), 1);
    let (status, _, _) = get(&c, &r.url("/v2/up/lib/slow/manifests/v1")).await;
    assert_eq!(status, 200);
    wait_stored(&r, "up/lib/slow", &digest).await;
    assert_fsck_clean(&r).await;
}

/// Offline and back: with the upstream down, cached tags are served (stale, counted) across
/// a restart of the mirror; once it is back, a tag moved upstream is picked up (ttl 0: every
/// tag request re-checks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_across_a_restart_then_a_moved_tag_is_picked_up_after_ttl() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let l1 = random_bytes(100_000);
    let (m1, d1) = up.push_image(&c, "lib/app", "v1", &[&l1]).await;
    let toml = mirror_table("up", &up.url(""), "ttl = \"0s\"");
    let parsed = dockyard::Config::from_toml(&toml).unwrap();
    let root = dir.path().join("mirror");
    let config = dockyard::Config {
        root: root.clone(),
        mirrors: parsed.mirrors.clone(),
        ..Default::default()
    };
    let r = TestRegistry::start_with(config.clone()).await;
    let (status, _, body) = get(&c, &r.url("/v2/up/lib/app/manifests/v1")).await;
    assert_eq!((status, &body), (200, &m1));
    let (status, _, _) = get(&c, &r.url(&format!("/v2/up/lib/app/blobs/{}", sha256(&l1)))).await;
    assert_eq!(status, 200);
    wait_stored(&r, "up/lib/app", &d1).await;
    up.stop();
    let (status, _, body) = get(&c, &r.url("/v2/up/lib/app/manifests/v1")).await;
    assert_eq!((status, &body), (200, &m1));
    let metrics = c
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("dockyard_mirror_stale_serves_total 1\n"),
        "{metrics}"
    );
    r.stop().await;
    // Restarted, still offline: by tag and by digest, from the cache.
    let r = TestRegistry::start_with(config.clone()).await;
    for reference in ["v1", d1.as_str()] {
        let (status, _, body) =
            get(&c, &r.url(&format!("/v2/up/lib/app/manifests/{reference}"))).await;
        assert_eq!((status, &body), (200, &m1), "{reference}");
    }
    let (status, _, body) = get(&c, &r.url(&format!("/v2/up/lib/app/blobs/{}", sha256(&l1)))).await;
    assert_eq!((status, body == l1), (200, true));
    // Back online, and the tag moved upstream.
    up.resume();
    let l2 = random_bytes(100_000);
    let (m2, d2) = up.push_image(&c, "lib/app", "v1", &[&l2]).await;
    let (status, headers, body) = get(&c, &r.url("/v2/up/lib/app/manifests/v1")).await;
    assert_eq!((status, &body), (200, &m2));
    assert_eq!(headers["docker-content-digest"], d2.as_str());
    let (status, _, _) = get(&c, &r.url(&format!("/v2/up/lib/app/blobs/{}", sha256(&l2)))).await;
    assert_eq!(status, 200);
    wait_stored(&r, "up/lib/app", &d2).await;
    // The old manifest is still there by digest.
    let (status, _, body) = get(&c, &r.url(&format!("/v2/up/lib/app/manifests/{d1}"))).await;
    assert_eq!((status, body), (200, m1));
    assert_fsck_clean(&r).await;
    r.stop().await;
}

/// Past `[mirror_cache] max_size`, the GC evicts the least recently pulled cached
/// repository; pushed repositories stay whatever their size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_takes_the_least_recently_pulled_cached_repository_and_never_a_pushed_one() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let (zl, al) = (random_bytes(2 << 20), random_bytes(2 << 20));
    let (zm, zd) = up.push_image(&c, "lib/z", "v1", &[&zl]).await;
    let (am, ad) = up.push_image(&c, "lib/a", "v1", &[&al]).await;
    let parsed = dockyard::Config::from_toml(&format!(
        "{}[mirror_cache]\nmax_size = \"3MiB\"\n",
        mirror_table("up", &up.url(""), "")
    ))
    .unwrap();
    let r = TestRegistry::start_configured(|cfg| {
        cfg.mirrors = parsed.mirrors;
        cfg.mirror_cache = parsed.mirror_cache;
        cfg.gc.grace = Duration::ZERO;
        cfg.gc.push_window = Duration::ZERO;
        cfg.gc.interval = None;
    })
    .await;
    let own = random_bytes(5 << 20);
    push_image(&c, &r, "local/own", "v1", &[&own]).await;
    // z is pulled first, a a second later (pull times are whole seconds).
    for (repo, m, d, l) in [("z", &zm, &zd, &zl), ("a", &am, &ad, &al)] {
        let (status, _, _) = get(&c, &r.url(&format!("/v2/up/lib/{repo}/manifests/v1"))).await;
        assert_eq!(status, 200);
        let (status, _, body) = get(
            &c,
            &r.url(&format!("/v2/up/lib/{repo}/blobs/{}", sha256(l))),
        )
        .await;
        assert_eq!((status, body == *l), (200, true));
        wait_stored(&r, &format!("up/lib/{repo}"), d).await;
        let _ = m;
        wait_pull_recorded(&r, &format!("up/lib/{repo}")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let core = r.core.clone();
    let report = tokio::task::spawn_blocking(move || {
        dockyard::gc::run_once(&core, &dockyard::gc::GcOptions::default())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.evicted, vec!["up/lib/z".to_string()], "{report}");
    let files = blob_files(&r.root);
    let has = |b: &[u8]| {
        files
            .iter()
            .any(|f| f.contains(sha256(b).strip_prefix("sha256:").unwrap()))
    };
    assert!(!has(&zl), "the evicted layer's bytes are gone");
    assert!(
        has(&al) && has(&own),
        "the recent cached layer and the pushed one stay"
    );
    let (status, _, _) = get(&c, &r.url("/v2/local/own/manifests/v1")).await;
    assert_eq!(status, 200);
    assert_fsck_clean(&r).await;
    // Evicted content is fetched again on the next pull.
    let (status, _, body) = get(&c, &r.url("/v2/up/lib/z/manifests/v1")).await;
    assert_eq!((status, body), (200, zm));
}

async fn wait_pull_recorded(r: &TestRegistry, repo: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = repo.to_string();
        let at = r
            .core
            .db
            .read(move |tx| dockyard::db::pulls::last(tx, &n))
            .await
            .unwrap();
        if at.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "no pull recorded for {repo}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `dockyard mirror pull` through the running binary seeds the cache (one platform of an
/// index, kept sparse), `mirror list` shows it, and it pulls with the upstream gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mirror_pull_seeds_one_platform_and_mirror_list_shows_the_cache() {
    if !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut up = Distribution::start(&dir.path().join("upstream"));
    let c = client();
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let l = random_bytes(200_000);
        let (m, d) = up
            .push_image(&c, "lib/multi", &format!("only-{arch}"), &[&l])
            .await;
        children.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": m.len(),
            "platform": {"os": "linux", "architecture": arch},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children,
    }))
    .unwrap();
    let resp = c
        .put(up.url("/v2/lib/multi/manifests/v1"))
        .header("Content-Type", OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let root = dir.path().join("mirror");
    let config = write_config(
        dir.path(),
        "registry.toml",
        &mirror_table("docker.io", &up.url(""), ""),
    );
    let server = Process::spawn_with_config(&root, &config);
    wait_for_admin_socket(&root);
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--root".into(),
            root.display().to_string(),
            "-c".into(),
            config.display().to_string(),
        ]);
        v
    };
    let (ok, out, err) = dockyard(&args(&[
        "mirror",
        "pull",
        "docker.io/lib/multi:v1",
        "--platform",
        "linux/arm64",
    ]));
    assert!(ok, "{out}{err}");
    assert!(out.contains("docker.io/lib/multi@"), "{out}");
    let (ok, out, err) = dockyard(&args(&["mirror", "list"]));
    assert!(ok, "{err}");
    assert!(out.contains("docker.io/lib/multi"), "{out}");
    let (ok, _, err) = dockyard(&args(&["mirror", "pull", "lib/multi:v1"]));
    assert!(!ok && err.contains("not under a mirror prefix"), "{err}");
    // Offline: the seeded platform pulls, the other was never fetched.
    up.stop();
    let (status, _, body) = get(&c, &server.url("/v2/docker.io/lib/multi/manifests/v1")).await;
    assert_eq!((status, body), (200, index));
    let arm = children[1]["digest"].as_str().unwrap();
    let amd = children[0]["digest"].as_str().unwrap();
    let (status, _, _) = get(
        &c,
        &server.url(&format!("/v2/docker.io/lib/multi/manifests/{arm}")),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _, _) = get(
        &c,
        &server.url(&format!("/v2/docker.io/lib/multi/manifests/{amd}")),
    )
    .await;
    assert_eq!(status, 502);
    server.stop();
}

/// The binary mirroring a token-auth upstream, logging at debug: neither the password, nor
/// its Basic encoding, nor a token appears in what it prints, even when the upstream refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_credentials_and_tokens_never_reach_the_log() {
    use base64::Engine;
    let up = TestRegistry::start_auth(dockyard::config::AuthMode::Token, |_| {}).await;
    up.add_user("pusher", "push-pw").await;
    up.add_user("mirror", "never-log-this-pw").await;
    up.grant("pusher", "**", "pull,push").await;
    up.grant("mirror", "team/**", "pull").await;
    let pusher = token_client(&up, "pusher", "push-pw", "repository:team/app:pull,push").await;
    let layer = random_bytes(50_000);
    let (manifest, digest) = push_image(&pusher, &up, "team/app", "v1", &[&layer]).await;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "never-log-this-pw\n").unwrap();
    let config = write_config(
        dir.path(),
        "registry.toml",
        &mirror_table(
            "up",
            &up.url(""),
            &format!(
                "username = \"mirror\"\npassword_file = \"{}\"",
                pw.display()
            ),
        ),
    );
    let server =
        Process::spawn_with_config_env(&dir.path().join("root"), &config, &[("RUST_LOG", "debug")]);
    let c = client();
    let (status, _, body) = get(&c, &server.url("/v2/up/team/app/manifests/v1")).await;
    assert_eq!((status, &body), (200, &manifest));
    let (status, _, body) = get(
        &c,
        &server.url(&format!("/v2/up/team/app/blobs/{}", sha256(&layer))),
    )
    .await;
    assert_eq!((status, body == layer), (200, true));
    let _ = digest;
    // Refused upstream (no grant on other/**): logged as a failure, without the secret.
    let (status, _, _) = get(&c, &server.url("/v2/up/other/app/manifests/v1")).await;
    assert!(status >= 400);
    let basic = base64::engine::general_purpose::STANDARD.encode("mirror:never-log-this-pw");
    // The refusal is logged (waited for: the output is read from the pipes by threads).
    server.wait_for_line("mirror: upstream failed");
    let out = server.output();
    for secret in [
        "never-log-this-pw",
        basic.as_str(),
        "Bearer ey",
        "token\":\"ey",
    ] {
        assert!(!out.contains(secret), "{secret:?} in the log:\n{out}");
    }
    server.stop();
}

/// An HTTPS upstream with a private CA (`ca_file`) and HTTP Basic auth: the mirror trusts the
/// CA it was given (and only with it), answers the Basic challenge, and needs no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_upstream_with_a_private_ca_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let tls = dockyard::config::TlsFiles {
        cert: cert.clone(),
        key,
    };
    let up = TestRegistry::start_configured(|c| {
        c.tls = Some(tls);
        c.auth.mode = dockyard::config::AuthMode::Basic;
        c.auth.bcrypt_cost = 4;
    })
    .await;
    up.add_user("mirror", "basic-pw").await;
    up.grant("mirror", "**", "pull,push").await;
    install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        basic("mirror", "basic-pw").parse().unwrap(),
    );
    let pusher = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .default_headers(headers)
        .build()
        .unwrap();
    let base = format!("https://{}", up.addr);
    let layer = random_bytes(100_000);
    let (manifest, digest) = push_image(&pusher, base.as_str(), "team/tls", "v1", &[&layer]).await;
    let pw = dir.path().join("password");
    std::fs::write(&pw, "basic-pw").unwrap();
    let creds = format!(
        "username = \"mirror\"\npassword_file = \"{}\"",
        pw.display()
    );
    let r = start_mirror(&mirror_table(
        "up",
        &base,
        &format!("{creds}\nca_file = \"{}\"", cert.display()),
    ))
    .await;
    let c = client();
    let (status, _, body) = get(&c, &r.url("/v2/up/team/tls/manifests/v1")).await;
    assert_eq!(
        (status, &body),
        (200, &manifest),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, body) = get(
        &c,
        &r.url(&format!("/v2/up/team/tls/blobs/{}", sha256(&layer))),
    )
    .await;
    assert_eq!((status, body == layer), (200, true));
    wait_stored(&r, "up/team/tls", &digest).await;
    let metrics = c
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("kind=\"token\""), "{metrics}");
    assert!(
        metrics.contains("dockyard_mirror_lookups_total{kind=\"miss\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dockyard_mirror_upstream_received_bytes_total"),
        "{metrics}"
    );
    // Without the CA, the same upstream is refused at the TLS handshake: a clear 502.
    let untrusting = start_mirror(&mirror_table("up", &base, &creds)).await;
    let (status, _, body) = get(&c, &untrusting.url("/v2/up/team/tls/manifests/v1")).await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
}
