//! The distribution API endpoint by endpoint, through reqwest against the real server. Every
//! error case also checks that the failed request changed nothing.

use std::time::Duration;

use reqwest::{Client, Method, Response};
use serde_json::{json, Value};

use crate::util::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// The spec's error-code table. "If the response body is in JSON format … the `code` field
/// MUST be one of the following", so every 4xx body must use one of these.
const SPEC_CODES: [&str; 14] = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

// ---------------------------------------------------------------------------------------------
// Helpers

/// A header that must be present, as a string.
fn hdr(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name} header: {:?}", resp.url(), resp.headers()))
        .to_str()
        .expect("ASCII header")
        .to_string()
}

fn has_hdr(resp: &Response, name: &str) -> bool {
    resp.headers().contains_key(name)
}

/// Asserts a spec error answer (status, JSON shape, a code from the spec's table) and returns
/// the body for a look at `detail`.
async fn expect_error(resp: Response, status: u16, code: &str) -> Value {
    let url = resp.url().to_string();
    let got = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("error body");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(got, status, "{url}: {text}");
    assert_eq!(headers["content-type"], "application/json", "{url}");
    assert_eq!(
        headers["docker-distribution-api-version"], "registry/2.0",
        "{url}"
    );
    let v: Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"));
    let e = &v["errors"][0];
    assert_eq!(e["code"], code, "{url}: {text}");
    assert!(e["message"].is_string(), "{url}: no message in {text}");
    assert!(
        SPEC_CODES.contains(&code),
        "{code} is not in the spec's table"
    );
    v
}

/// A HEAD error carries no body, only the status.
fn expect_head_status(resp: &Response, status: u16) {
    assert_eq!(resp.status().as_u16(), status, "HEAD {}", resp.url());
}

fn with_query(location: &str, query: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{query}")
}

/// Opens an upload session in `repo`; returns its Location (a path) and id.
async fn open_upload(c: &Client, r: &TestRegistry, repo: &str) -> (String, String) {
    let resp = c
        .post(r.url(&format!("/v2/{repo}/blobs/uploads/")))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        hdr(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    let location = hdr(&resp, "location");
    let id = hdr(&resp, "docker-upload-uuid");
    assert_eq!(location, format!("/v2/{repo}/blobs/uploads/{id}"));
    assert_eq!(hdr(&resp, "range"), "0-0");
    (location, id)
}

/// PATCHes one chunk, with a `Content-Range` starting at `start` when given.
async fn patch(
    c: &Client,
    r: &TestRegistry,
    location: &str,
    chunk: &[u8],
    start: Option<u64>,
) -> Response {
    let mut req = c
        .patch(r.url(location))
        .header("Content-Type", "application/octet-stream")
        .body(chunk.to_vec());
    if let Some(s) = start {
        let end = s + chunk.len() as u64 - 1;
        req = req.header("Content-Range", format!("{s}-{end}"));
    }
    req.send().await.unwrap()
}

/// The upload's `Range` as its status endpoint reports it.
async fn upload_range(c: &Client, r: &TestRegistry, location: &str) -> String {
    let resp = c.get(r.url(location)).send().await.unwrap();
    assert_eq!(resp.status(), 204, "upload status of {location}");
    assert_eq!(
        hdr(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(hdr(&resp, "location"), location);
    assert!(location.ends_with(&hdr(&resp, "docker-upload-uuid")));
    hdr(&resp, "range")
}

/// Closes an upload with `?digest=` and an optional last chunk.
async fn finish(
    c: &Client,
    r: &TestRegistry,
    location: &str,
    digest: &str,
    last: &[u8],
) -> Response {
    let mut req = c.put(r.url(&with_query(location, &format!("digest={digest}"))));
    if !last.is_empty() {
        req = req
            .header("Content-Type", "application/octet-stream")
            .body(last.to_vec());
    }
    req.send().await.unwrap()
}

/// Asserts the blob reads back from `repo` with the right headers.
async fn assert_blob(c: &Client, r: &TestRegistry, repo: &str, digest: &str, bytes: &[u8]) {
    let resp = c
        .get(r.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET blob {digest} from {repo}");
    assert_eq!(
        hdr(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(hdr(&resp, "docker-content-digest"), digest);
    assert_eq!(hdr(&resp, "content-length"), bytes.len().to_string());
    let body = resp.bytes().await.unwrap();
    assert!(body == bytes, "blob {digest} in {repo} has other bytes");
}

/// Asserts GET and HEAD of the blob both say it is not in `repo`.
async fn assert_no_blob(c: &Client, r: &TestRegistry, repo: &str, digest: &str) {
    let url = r.url(&format!("/v2/{repo}/blobs/{digest}"));
    expect_error(c.get(&url).send().await.unwrap(), 404, "BLOB_UNKNOWN").await;
    expect_head_status(&c.head(&url).send().await.unwrap(), 404);
}

/// Upload files still on disk: a failed or finished upload must leave none behind.
fn upload_files(r: &TestRegistry) -> usize {
    std::fs::read_dir(r.root.join("uploads"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn put_manifest(
    c: &Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    c.put(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// Pushes a manifest and asserts the spec's 201 answer.
async fn push_manifest(
    c: &Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let resp = put_manifest(c, r, repo, reference, media_type, body).await;
    let d = sha256(body);
    assert_eq!(
        resp.status(),
        201,
        "PUT {repo}:{reference}: {}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(hdr(&resp, "location"), format!("/v2/{repo}/manifests/{d}"));
    assert_eq!(
        hdr(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    d
}

/// The digest a tag points at, or `None` when the tag does not exist.
async fn tag_target(c: &Client, r: &TestRegistry, repo: &str, tag: &str) -> Option<String> {
    let resp = c
        .get(r.url(&format!("/v2/{repo}/manifests/{tag}")))
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        expect_error(resp, 404, "MANIFEST_UNKNOWN").await;
        return None;
    }
    assert_eq!(resp.status(), 200);
    Some(hdr(&resp, "docker-content-digest"))
}

/// Asserts the manifest reads back by `reference` with these bytes and this media type.
async fn assert_manifest(
    c: &Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) {
    let url = r.url(&format!("/v2/{repo}/manifests/{reference}"));
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "GET {repo}:{reference}");
    assert_eq!(hdr(&resp, "content-type"), media_type);
    assert_eq!(hdr(&resp, "docker-content-digest"), sha256(body));
    assert_eq!(hdr(&resp, "content-length"), body.len().to_string());
    assert!(
        resp.bytes().await.unwrap() == body,
        "{repo}:{reference} bytes differ"
    );
    let resp = c.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "HEAD {repo}:{reference}");
    assert_eq!(hdr(&resp, "content-type"), media_type);
    assert_eq!(hdr(&resp, "docker-content-digest"), sha256(body));
    assert_eq!(hdr(&resp, "content-length"), body.len().to_string());
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has a body");
}

async fn assert_no_manifest(c: &Client, r: &TestRegistry, repo: &str, reference: &str) {
    let url = r.url(&format!("/v2/{repo}/manifests/{reference}"));
    expect_error(c.get(&url).send().await.unwrap(), 404, "MANIFEST_UNKNOWN").await;
    expect_head_status(&c.head(&url).send().await.unwrap(), 404);
}

/// The repository's tags, or `None` when the repository is unknown (404 NAME_UNKNOWN).
async fn tags_of(c: &Client, r: &TestRegistry, repo: &str) -> Option<Vec<String>> {
    let resp = c
        .get(r.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        expect_error(resp, 404, "NAME_UNKNOWN").await;
        return None;
    }
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "content-type"), "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], repo);
    Some(strings(&v["tags"]))
}

async fn catalog(c: &Client, r: &TestRegistry) -> Vec<String> {
    let resp = c.get(r.url("/v2/_catalog")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !has_hdr(&resp, "link"),
        "an unpaged catalog has no next page"
    );
    let v: Value = resp.json().await.unwrap();
    strings(&v["repositories"])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

/// A fresh config blob (unique, so manifests over it differ).
fn config_bytes() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "nonce": hex::encode(random_bytes(8)),
    }))
    .unwrap()
}

/// Pushes a fresh config and `layers` to `repo`; returns the OCI manifest over them, unpushed.
async fn image_in(c: &Client, r: &TestRegistry, repo: &str, layers: &[&[u8]]) -> Vec<u8> {
    let config = config_bytes();
    push_blob(c, r, repo, &config).await;
    for l in layers {
        push_blob(c, r, repo, l).await;
    }
    image_manifest(&config, layers)
}

/// An index (OCI or Docker list) over `(media type, manifest bytes)` children.
fn index_of(media_type: &str, children: &[(&str, &[u8])]) -> Vec<u8> {
    let manifests: Vec<Value> = children
        .iter()
        .enumerate()
        .map(|(i, (mt, m))| {
            let mut d = descriptor(mt, m);
            d["platform"] = json!({"architecture": format!("arch{i}"), "os": "linux"});
            d
        })
        .collect();
    serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )
    .unwrap()
}

/// An artifact manifest: the empty config, one layer, an `artifactType`, a `subject` and
/// annotations. The empty config and the layer must already be in the repository.
fn artifact(
    artifact_type: Option<&str>,
    subject: &[u8],
    subject_type: &str,
    layer: &[u8],
    note: &str,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(EMPTY_CONFIG, b"{}"),
        "layers": [descriptor("application/vnd.example.data", layer)],
        "subject": descriptor(subject_type, subject),
        "annotations": {"org.example.note": note},
    });
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    serde_json::to_vec(&m).unwrap()
}

fn sha512(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

// ---------------------------------------------------------------------------------------------
// Base endpoint, unknown endpoints, unsupported methods

#[tokio::test]
async fn base_endpoint_answers_with_the_api_version() {
    let r = TestRegistry::start().await;
    let c = client();
    for path in ["/v2/", "/v2"] {
        let resp = c.get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            hdr(&resp, "docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(hdr(&resp, "content-type"), "application/json");
        assert_eq!(resp.text().await.unwrap(), "{}");
    }
    let resp = c.head(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        hdr(&resp, "docker-distribution-api-version"),
        "registry/2.0"
    );
    r.stop().await;
}

#[tokio::test]
async fn unknown_endpoints_are_404_with_a_json_error() {
    let r = TestRegistry::start().await;
    let c = client();
    // `/` is the web UI's (it redirects to `/ui/`, see tests/ui.rs).
    for path in [
        "/v1/",
        "/v3/",
        "/v2/a",
        "/v2/a/b",
        "/v2/a/whatever/x",
        "/v2/_catalog/x",
        "/v2/a/manifests",
        "/v2/manifests/latest",
        "/v2/a/manifests/latest/",
        "/v2/a/tags",
        "/v2/a/tags/list/x",
        "/v2/a/blobs",
        "/v2/a/blobs/uploads/x/y",
        "/v2/a/referrers",
    ] {
        expect_error(c.get(r.url(path)).send().await.unwrap(), 404, "UNSUPPORTED").await;
        expect_head_status(&c.head(r.url(path)).send().await.unwrap(), 404);
    }
    r.stop().await;
}

#[tokio::test]
async fn unsupported_methods_are_405_and_change_nothing() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (manifest, _) = push_image(&c, &r, "m", "v1", &[&layer]).await;
    let blob = random_bytes(64);
    let d = sha256(&blob);
    let (_, id) = open_upload(&c, &r, "m").await;
    let foo = Method::from_bytes(b"FOO").unwrap();
    let cases: Vec<(Method, String)> = vec![
        (Method::POST, "/v2/".into()),
        (Method::DELETE, "/v2/".into()),
        (Method::PUT, "/v2/_catalog".into()),
        (Method::DELETE, "/v2/_catalog".into()),
        (Method::POST, "/v2/m/tags/list".into()),
        (Method::DELETE, "/v2/m/tags/list".into()),
        (Method::POST, "/v2/m/manifests/latest".into()),
        (Method::PATCH, "/v2/m/manifests/latest".into()),
        (Method::POST, format!("/v2/m/blobs/{d}")),
        (Method::PUT, format!("/v2/m/blobs/{d}")),
        (Method::PATCH, format!("/v2/m/blobs/{d}")),
        (Method::GET, "/v2/m/blobs/uploads/".into()),
        (Method::PUT, "/v2/m/blobs/uploads/".into()),
        (Method::DELETE, "/v2/m/blobs/uploads/".into()),
        (Method::POST, format!("/v2/m/blobs/uploads/{id}")),
        (Method::POST, format!("/v2/m/referrers/{d}")),
        (Method::PUT, format!("/v2/m/referrers/{d}")),
        (Method::DELETE, format!("/v2/m/referrers/{d}")),
        (foo.clone(), "/v2/".into()),
        (foo, "/v2/m/manifests/v1".into()),
    ];
    for (method, path) in cases {
        // Bodies that would be valid for a neighbouring endpoint must not sneak through.
        let body = if path.contains("manifests") {
            manifest.clone()
        } else {
            blob.clone()
        };
        let resp = c
            .request(method.clone(), r.url(&path))
            .header("Content-Type", OCI_MANIFEST)
            .body(body)
            .send()
            .await
            .unwrap();
        let v = expect_error(resp, 405, "UNSUPPORTED").await;
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(method.as_str()),
            "{v}"
        );
    }
    assert_eq!(tag_target(&c, &r, "m", "latest").await, None);
    assert_eq!(tags_of(&c, &r, "m").await.unwrap(), ["v1"]);
    assert_no_blob(&c, &r, "m", &d).await;
    assert_eq!(
        upload_range(&c, &r, &format!("/v2/m/blobs/uploads/{id}")).await,
        "0-0"
    );
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Blob uploads

#[tokio::test]
async fn monolithic_post_with_digest_creates_the_blob() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(3000);
    let d = sha256(&bytes);
    let resp = c
        .post(r.url(&format!("/v2/mono/blobs/uploads/?digest={d}")))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let location = hdr(&resp, "location");
    assert_eq!(location, format!("/v2/mono/blobs/{d}"));
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    let resp = c.get(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "content-type"), "application/octet-stream");
    assert!(resp.bytes().await.unwrap() == bytes);
    assert_blob(&c, &r, "mono", &d, &bytes).await;
    // Go clients escape the colon in query values.
    let other = random_bytes(10);
    let escaped = sha256(&other).replace(':', "%3A");
    let resp = c
        .post(r.url(&format!("/v2/mono/blobs/uploads/?digest={escaped}")))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "mono", &sha256(&other), &other).await;
    // Pushing the same bytes again is harmless and still 201.
    assert_eq!(push_blob(&c, &r, "mono", &bytes).await, d);
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

#[tokio::test]
async fn monolithic_post_with_the_wrong_digest_stores_nothing() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(1000);
    let wrong = sha256(b"something else");
    let resp = c
        .post(r.url(&format!("/v2/mono/blobs/uploads/?digest={wrong}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let v = expect_error(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(v["errors"][0]["detail"]["digest"], wrong);
    assert_no_blob(&c, &r, "mono", &wrong).await;
    assert_no_blob(&c, &r, "mono", &sha256(&bytes)).await;
    assert_eq!(upload_files(&r), 0, "the failed upload's file is removed");
    r.stop().await;
}

#[tokio::test]
async fn post_then_a_single_put_with_the_whole_body() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(5000);
    let d = sha256(&bytes);
    let (location, _) = open_upload(&c, &r, "single").await;
    let resp = finish(&c, &r, &location, &d, &bytes).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "location"), format!("/v2/single/blobs/{d}"));
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    assert_blob(&c, &r, "single", &d, &bytes).await;
    // The session is closed once the blob is committed.
    expect_error(
        c.get(r.url(&location)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

#[tokio::test]
async fn chunked_upload_with_content_range_then_put_without_body() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(71_334);
    let d = sha256(&bytes);
    let (mut location, id) = open_upload(&c, &r, "chunked").await;
    let mut offset = 0usize;
    for size in [1000, 1, 70_000, 333] {
        let chunk = &bytes[offset..offset + size];
        let resp = patch(&c, &r, &location, chunk, Some(offset as u64)).await;
        assert_eq!(resp.status(), 202);
        offset += size;
        assert_eq!(hdr(&resp, "range"), format!("0-{}", offset - 1));
        assert_eq!(hdr(&resp, "docker-upload-uuid"), id);
        // Clients follow the Location of the last answer.
        location = hdr(&resp, "location");
        assert_eq!(
            upload_range(&c, &r, &location).await,
            format!("0-{}", offset - 1)
        );
    }
    let resp = finish(&c, &r, &location, &d.replace(':', "%3A"), b"").await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "location"), format!("/v2/chunked/blobs/{d}"));
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    assert_blob(&c, &r, "chunked", &d, &bytes).await;
    expect_error(
        c.get(r.url(&location)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    r.stop().await;
}

/// Descriptors of this process open on the upload file of session `id` (the test server
/// runs in this process).
fn open_upload_fds(id: &str) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let t = target.to_string_lossy();
            t.contains("uploads") && t.contains(id)
        })
        .count()
}

/// A chunked upload's file is opened once and kept open between its PATCHes (one
/// descriptor, not one per chunk), closed once the session has been idle for the body
/// timeout, and the session then goes on from where it was: the next chunk reopens the
/// file and the finished blob has the right bytes.
#[tokio::test]
async fn a_chunked_upload_keeps_its_file_open_between_patches_until_idle() {
    let r = TestRegistry::start_configured(|c| {
        c.limits.body_timeout = Duration::from_secs(1);
    })
    .await;
    let c = client();
    let bytes = random_bytes(3 * 100_000);
    let d = sha256(&bytes);
    let (mut location, id) = open_upload(&c, &r, "kept").await;
    assert_eq!(open_upload_fds(&id), 0);
    for (i, chunk) in bytes.chunks(100_000).enumerate() {
        let resp = patch(&c, &r, &location, chunk, Some(i as u64 * 100_000)).await;
        assert_eq!(resp.status(), 202);
        location = hdr(&resp, "location");
        if i < 2 {
            assert_eq!(open_upload_fds(&id), 1, "after chunk {i}");
        }
        if i == 1 {
            // Idle past the body timeout: the kept file is closed.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while open_upload_fds(&id) > 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the idle upload's file was never closed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(upload_range(&c, &r, &location).await, "0-199999");
        }
    }
    let resp = finish(&c, &r, &location, &d.replace(':', "%3A"), b"").await;
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "kept", &d, &bytes).await;
    assert_eq!(open_upload_fds(&id), 0);
    r.stop().await;
}

#[tokio::test]
async fn streamed_patches_without_content_range_append() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(300_000);
    let d = sha256(&bytes);
    let (location, _) = open_upload(&c, &r, "streamed").await;
    // Chunked transfer encoding: no Content-Length, no Content-Range.
    for part in [&bytes[..100_000], &bytes[100_000..250_000]] {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = part
            .chunks(7_777)
            .map(|p| Ok(bytes::Bytes::copy_from_slice(p)))
            .collect();
        let resp = c
            .patch(r.url(&location))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    assert_eq!(upload_range(&c, &r, &location).await, "0-249999");
    let resp = finish(&c, &r, &location, &d, &bytes[250_000..]).await;
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "streamed", &d, &bytes).await;
    r.stop().await;
}

#[tokio::test]
async fn out_of_order_chunks_are_416_and_leave_the_upload_unchanged() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(300);
    let (location, _) = open_upload(&c, &r, "order").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[..100], Some(0))
            .await
            .status(),
        202
    );
    // A gap, a replay of the first chunk, and an overlap.
    for (chunk, start) in [
        (&bytes[200..300], 200),
        (&bytes[..100], 0),
        (&bytes[50..150], 50),
    ] {
        let resp = patch(&c, &r, &location, chunk, Some(start)).await;
        assert_eq!(
            hdr(&resp, "range"),
            "0-99",
            "the 416 says where the upload stands"
        );
        expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
        assert_eq!(upload_range(&c, &r, &location).await, "0-99");
    }
    // The closing PUT's chunk is checked the same way.
    let resp = c
        .put(r.url(&with_query(
            &location,
            &format!("digest={}", sha256(&bytes)),
        )))
        .header("Content-Range", "150-299")
        .body(bytes[150..].to_vec())
        .send()
        .await
        .unwrap();
    expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");
    assert_no_blob(&c, &r, "order", &sha256(&bytes)).await;
    // The client resumes from where the server says it stands.
    assert_eq!(
        patch(&c, &r, &location, &bytes[100..200], Some(100))
            .await
            .status(),
        202
    );
    let resp = c
        .put(r.url(&with_query(
            &location,
            &format!("digest={}", sha256(&bytes)),
        )))
        .header("Content-Range", "200-299")
        .body(bytes[200..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "order", &sha256(&bytes), &bytes).await;
    r.stop().await;
}

#[tokio::test]
async fn concurrent_chunks_at_the_same_offset_are_applied_once() {
    let r = TestRegistry::start().await;
    let c = client();
    let (location, _) = open_upload(&c, &r, "race").await;
    let (a, b) = (random_bytes(200_000), random_bytes(200_000));
    let (ra, rb) = tokio::join!(
        patch(&c, &r, &location, &a, Some(0)),
        patch(&c, &r, &location, &b, Some(0))
    );
    let mut statuses = [ra.status().as_u16(), rb.status().as_u16()];
    statuses.sort();
    assert_eq!(
        statuses,
        [202, 416],
        "one chunk wins, the other is out of order"
    );
    assert_eq!(upload_range(&c, &r, &location).await, "0-199999");
    let winner = if ra.status() == 202 { &a } else { &b };
    let resp = finish(&c, &r, &location, &sha256(winner), b"").await;
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "race", &sha256(winner), winner).await;
    r.stop().await;
}

#[tokio::test]
async fn an_interrupted_request_body_changes_nothing() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(2000);
    let d = sha256(&bytes);
    // A chunk cut off mid-body is taken back.
    let (location, _) = open_upload(&c, &r, "cut").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[..100], Some(0))
            .await
            .status(),
        202
    );
    let headers = [
        ("Content-Range", "100-1099"),
        ("Content-Type", "application/octet-stream"),
    ];
    send_truncated(r.addr, "PATCH", &location, &headers, 1000, &bytes[100..600]).await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");
    // So is a closing PUT's.
    let close = with_query(&location, &format!("digest={d}"));
    send_truncated(r.addr, "PUT", &close, &[], 1900, &bytes[100..1000]).await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");
    assert_no_blob(&c, &r, "cut", &d).await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[100..1000], Some(100))
            .await
            .status(),
        202
    );
    assert_eq!(
        finish(&c, &r, &location, &d, &bytes[1000..]).await.status(),
        201
    );
    assert_blob(&c, &r, "cut", &d, &bytes).await;
    // A monolithic POST cut short leaves neither a file nor a blob.
    let other = random_bytes(2000);
    let post = format!("/v2/cut/blobs/uploads/?digest={}", sha256(&other));
    send_truncated(r.addr, "POST", &post, &[], 2000, &other[..1000]).await;
    assert_no_blob(&c, &r, "cut", &sha256(&other)).await;
    assert_eq!(upload_files(&r), 0);
    // A manifest cut short is not stored.
    let m = image_in(&c, &r, "cut", &[&bytes]).await;
    let headers = [("Content-Type", OCI_MANIFEST)];
    send_truncated(
        r.addr,
        "PUT",
        "/v2/cut/manifests/v1",
        &headers,
        m.len(),
        &m[..m.len() / 2],
    )
    .await;
    assert_no_manifest(&c, &r, "cut", "v1").await;
    assert_eq!(tags_of(&c, &r, "cut").await, None);
    r.stop().await;
}

/// Waits until `n` requests hold or wait for the lock of upload `id`: each holds a reference
/// to the session's cursor (besides the cursor table's own) from before it waits until it is
/// done, so the order of the requests is observed, not assumed from a pause.
async fn wait_for_lockers(r: &TestRegistry, id: &str, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = r
            .core
            .cursors
            .lock()
            .unwrap()
            .get(id)
            .map(|c| std::sync::Arc::strong_count(c) - 1)
            .unwrap_or(0);
        if held >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} requests never queued on upload {id} ({held} did)"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A request that passed the session check and then waited for the session's lock behind a
/// cancel (or a finishing PUT) went on to act on a session that no longer existed: a queued
/// PATCH answered 202 and left a new, orphaned upload file behind.
#[tokio::test]
async fn regression_a_chunk_queued_behind_a_cancel_revived_the_upload() {
    let r = TestRegistry::start().await;
    let c = client();
    let (location, id) = open_upload(&c, &r, "queued").await;
    // A slow chunk holds the session while a cancel and another chunk queue up behind it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let slow_body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let slow = tokio::spawn(
        c.patch(r.url(&location))
            .body(reqwest::Body::wrap_stream(slow_body))
            .send(),
    );
    tx.send(Ok(bytes::Bytes::from(random_bytes(100))))
        .await
        .unwrap();
    wait_for_lockers(&r, &id, 1).await;
    let cancel = tokio::spawn(c.delete(r.url(&location)).send());
    wait_for_lockers(&r, &id, 2).await;
    let queued = tokio::spawn(c.patch(r.url(&location)).body(b"late".to_vec()).send());
    wait_for_lockers(&r, &id, 3).await;
    drop(tx);
    assert_eq!(slow.await.unwrap().unwrap().status(), 202);
    assert_eq!(cancel.await.unwrap().unwrap().status(), 204);
    expect_error(queued.await.unwrap().unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    expect_error(
        c.get(r.url(&location)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_eq!(upload_files(&r), 0, "no upload file outlives its session");

    // The same behind a finishing PUT: a second PUT queued behind it finds no session.
    let bytes = random_bytes(100);
    let d = sha256(&bytes);
    let (location, id) = open_upload(&c, &r, "queued").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    let slow_body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let first = tokio::spawn(
        c.put(r.url(&with_query(&location, &format!("digest={d}"))))
            .body(reqwest::Body::wrap_stream(slow_body))
            .send(),
    );
    tx.send(Ok(bytes::Bytes::from(bytes.clone())))
        .await
        .unwrap();
    wait_for_lockers(&r, &id, 1).await;
    let second = tokio::spawn(
        c.put(r.url(&with_query(&location, &format!("digest={d}"))))
            .send(),
    );
    wait_for_lockers(&r, &id, 2).await;
    drop(tx);
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    expect_error(second.await.unwrap().unwrap(), 404, "BLOB_UPLOAD_UNKNOWN").await;
    assert_blob(&c, &r, "queued", &d, &bytes).await;
    assert_eq!(upload_files(&r), 0, "no upload file outlives its session");
    r.stop().await;
}

#[tokio::test]
async fn upload_status_reports_progress() {
    let r = TestRegistry::start().await;
    let c = client();
    let (location, id) = open_upload(&c, &r, "status").await;
    let resp = c.get(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(hdr(&resp, "location"), location);
    assert_eq!(hdr(&resp, "docker-upload-uuid"), id);
    assert_eq!(hdr(&resp, "range"), "0-0");
    // RFC 9110: a 204 carries no Content-Length.
    assert!(!has_hdr(&resp, "content-length"));
    assert!(resp.bytes().await.unwrap().is_empty());
    patch(&c, &r, &location, &random_bytes(10), Some(0)).await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-9");
    r.stop().await;
}

#[tokio::test]
async fn a_cancelled_upload_is_gone() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(1000);
    let d = sha256(&bytes);
    let (location, _) = open_upload(&c, &r, "cancel").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[..500], Some(0))
            .await
            .status(),
        202
    );
    assert_eq!(upload_files(&r), 1);
    let resp = c.delete(r.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(upload_files(&r), 0, "the upload's bytes are removed");
    expect_error(
        c.get(r.url(&location)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        patch(&c, &r, &location, &bytes[500..], Some(500)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        patch(&c, &r, &location, &bytes[500..], None).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        finish(&c, &r, &location, &d, &bytes[500..]).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        c.delete(r.url(&location)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    assert_no_blob(&c, &r, "cancel", &d).await;
    assert_eq!(
        upload_files(&r),
        0,
        "requests to a cancelled upload create no file"
    );
    r.stop().await;
}

#[tokio::test]
async fn an_upload_id_is_unknown_in_another_repository() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(20);
    let d = sha256(&bytes);
    let (location, id) = open_upload(&c, &r, "first").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[..10], Some(0))
            .await
            .status(),
        202
    );
    let other = format!("/v2/second/blobs/uploads/{id}");
    expect_error(
        c.get(r.url(&other)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        patch(&c, &r, &other, &bytes[10..], Some(10)).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        finish(&c, &r, &other, &d, &bytes[10..]).await,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    expect_error(
        c.delete(r.url(&other)).send().await.unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
    // The session in its own repository is untouched by all of that.
    assert_eq!(upload_range(&c, &r, &location).await, "0-9");
    assert_eq!(
        finish(&c, &r, &location, &d, &bytes[10..]).await.status(),
        201
    );
    assert_blob(&c, &r, "first", &d, &bytes).await;
    assert_no_blob(&c, &r, "second", &d).await;
    r.stop().await;
}

#[tokio::test]
async fn unknown_and_malformed_upload_ids_are_blob_upload_unknown() {
    let r = TestRegistry::start().await;
    let c = client();
    let d = sha256(b"x");
    for id in [
        "3f2a7c1e-8d4b-4a6f-9e0c-1b2d3e4f5a6b",
        "not-a-uuid",
        "12345",
    ] {
        let location = format!("/v2/ids/blobs/uploads/{id}");
        expect_error(
            c.get(r.url(&location)).send().await.unwrap(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        expect_error(
            patch(&c, &r, &location, b"x", Some(0)).await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        expect_error(
            finish(&c, &r, &location, &d, b"x").await,
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
        expect_error(
            c.delete(r.url(&location)).send().await.unwrap(),
            404,
            "BLOB_UPLOAD_UNKNOWN",
        )
        .await;
    }
    assert_no_blob(&c, &r, "ids", &d).await;
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

#[tokio::test]
async fn a_wrong_digest_on_put_is_digest_invalid_and_the_upload_can_still_finish() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(1000);
    let d = sha256(&bytes);
    let (location, _) = open_upload(&c, &r, "wrong").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes[..600], Some(0))
            .await
            .status(),
        202
    );
    for wrong in [sha256(b"other"), sha256(&bytes[..600]), sha512(b"other")] {
        let v = expect_error(
            finish(&c, &r, &location, &wrong, &bytes[600..]).await,
            400,
            "DIGEST_INVALID",
        )
        .await;
        assert_eq!(v["errors"][0]["detail"]["digest"], wrong);
        assert_no_blob(&c, &r, "wrong", &wrong).await;
        // The failed PUT's chunk was taken back: the upload is as it was before.
        assert_eq!(upload_range(&c, &r, &location).await, "0-599");
    }
    // Without a body, too.
    expect_error(
        finish(&c, &r, &location, &sha256(b"other"), b"").await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-599");
    assert_no_blob(&c, &r, "wrong", &d).await;
    let resp = finish(&c, &r, &location, &d, &bytes[600..]).await;
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "wrong", &d, &bytes).await;
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

#[tokio::test]
async fn invalid_digest_strings_are_digest_invalid() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(10);
    let upper = sha256(&bytes).to_uppercase().replace("SHA256", "sha256");
    let bad = [
        "sha256:abc".to_string(),
        upper,
        "md5:d41d8cd98f00b204e9800998ecf8427e".to_string(),
        "sha256".to_string(),
        "sha256:".to_string(),
        String::new(),
        "sha256:../../../../etc/passwd".to_string(),
        format!("sha512:{}", &sha256(&bytes)[7..]),
    ];
    let (location, _) = open_upload(&c, &r, "digests").await;
    assert_eq!(
        patch(&c, &r, &location, &bytes, Some(0)).await.status(),
        202
    );
    for b in &bad {
        let resp = c
            .post(r.url("/v2/digests/blobs/uploads/"))
            .query(&[("digest", b)])
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "DIGEST_INVALID").await;
        let resp = c
            .put(r.url(&location))
            .query(&[("digest", b)])
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "DIGEST_INVALID").await;
    }
    // A closing PUT without any digest.
    expect_error(
        c.put(r.url(&location)).send().await.unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    for path in [
        "/v2/digests/blobs/sha256:abc",
        "/v2/digests/manifests/sha256:abc",
        "/v2/digests/referrers/sha256:abc",
        "/v2/digests/blobs/latest",
    ] {
        expect_error(
            c.get(r.url(path)).send().await.unwrap(),
            400,
            "DIGEST_INVALID",
        )
        .await;
        expect_head_status(&c.head(r.url(path)).send().await.unwrap(), 400);
    }
    expect_error(
        c.delete(r.url("/v2/digests/blobs/sha256:abc"))
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    // A manifest PUT or DELETE with a malformed digest, as the conformance suite sends.
    let m = image_in(&c, &r, "digests", &[&random_bytes(5)]).await;
    let resp = put_manifest(&c, &r, "digests", "sha256:totallywrong", OCI_MANIFEST, &m).await;
    expect_error(resp, 400, "DIGEST_INVALID").await;
    let resp = c
        .delete(r.url("/v2/digests/manifests/sha256:totallywrong"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "DIGEST_INVALID").await;
    assert_eq!(tags_of(&c, &r, "digests").await, None);
    // None of that touched the session, and no blob appeared.
    assert_eq!(upload_range(&c, &r, &location).await, "0-9");
    assert_eq!(upload_files(&r), 1);
    assert_eq!(
        finish(&c, &r, &location, &sha256(&bytes), b"")
            .await
            .status(),
        201
    );
    assert_blob(&c, &r, "digests", &sha256(&bytes), &bytes).await;
    r.stop().await;
}

#[tokio::test]
async fn sha512_digests_upload_and_read_back() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(5000);
    let d = sha512(&bytes);
    let resp = c
        .post(r.url(&format!("/v2/big/blobs/uploads/?digest={d}")))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "location"), format!("/v2/big/blobs/{d}"));
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    assert_blob(&c, &r, "big", &d, &bytes).await;
    // The blob is known by the digest it was pushed as, not by every digest of its bytes.
    assert_no_blob(&c, &r, "big", &sha256(&bytes)).await;

    let other = random_bytes(70_000);
    let d2 = sha512(&other);
    let (location, _) = open_upload(&c, &r, "big").await;
    assert_eq!(
        patch(&c, &r, &location, &other[..40_000], Some(0))
            .await
            .status(),
        202
    );
    assert_eq!(
        finish(&c, &r, &location, &d2, &other[40_000..])
            .await
            .status(),
        201
    );
    assert_blob(&c, &r, "big", &d2, &other).await;
    r.stop().await;
}

#[tokio::test]
async fn zero_length_blobs() {
    let r = TestRegistry::start().await;
    let c = client();
    let empty = sha256(b"");
    let resp = c
        .post(r.url(&format!("/v2/zero/blobs/uploads/?digest={empty}")))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "zero", &empty, b"").await;
    let resp = c
        .head(r.url(&format!("/v2/zero/blobs/{empty}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "content-length"), "0");
    // No byte of an empty blob can be asked for.
    let resp = c
        .get(r.url(&format!("/v2/zero/blobs/{empty}")))
        .header("Range", "bytes=0-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);

    // Through a session that never received a byte.
    let (location, _) = open_upload(&c, &r, "zero2").await;
    assert_eq!(finish(&c, &r, &location, &empty, b"").await.status(), 201);
    assert_blob(&c, &r, "zero2", &empty, b"").await;
    // And sha512 of nothing.
    let (location, _) = open_upload(&c, &r, "zero3").await;
    assert_eq!(
        finish(&c, &r, &location, &sha512(b""), b"").await.status(),
        201
    );
    assert_blob(&c, &r, "zero3", &sha512(b""), b"").await;
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Blob reads and deletes

#[tokio::test]
async fn head_and_get_blob_carry_length_and_digest() {
    let r = TestRegistry::start().await;
    let c = client();
    // Larger than the server's read chunk, so the body is streamed in several pieces.
    let bytes = random_bytes(1024 * 1024 + 3);
    let d = push_blob(&c, &r, "read", &bytes).await;
    let url = r.url(&format!("/v2/read/blobs/{d}"));
    let resp = c.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "content-length"), bytes.len().to_string());
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    assert_eq!(hdr(&resp, "accept-ranges"), "bytes");
    assert_eq!(hdr(&resp, "etag"), format!("\"{d}\""));
    assert!(resp.bytes().await.unwrap().is_empty());
    assert_blob(&c, &r, "read", &d, &bytes).await;
    r.stop().await;
}

#[tokio::test]
async fn blob_range_requests() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(1000);
    let d = push_blob(&c, &r, "ranges", &bytes).await;
    let url = r.url(&format!("/v2/ranges/blobs/{d}"));
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, 999),
        ("bytes=-5", 995, 999),
        ("bytes=-5000", 0, 999),
        ("bytes=990-100000", 990, 999),
        ("bytes=999-999", 999, 999),
    ] {
        let resp = c.get(&url).header("Range", range).send().await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        assert_eq!(
            hdr(&resp, "content-range"),
            format!("bytes {start}-{end}/1000"),
            "{range}"
        );
        assert_eq!(hdr(&resp, "content-length"), (end - start + 1).to_string());
        assert_eq!(hdr(&resp, "docker-content-digest"), d);
        assert!(resp.bytes().await.unwrap() == bytes[start..=end], "{range}");
        let resp = c.head(&url).header("Range", range).send().await.unwrap();
        assert_eq!(resp.status(), 206, "HEAD {range}");
        assert_eq!(
            hdr(&resp, "content-range"),
            format!("bytes {start}-{end}/1000")
        );
    }
    for range in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=-0",
        "bytes=9-1",
        "bytes=x-1",
    ] {
        let resp = c.get(&url).header("Range", range).send().await.unwrap();
        expect_error(resp, 416, "SIZE_INVALID").await;
    }
    r.stop().await;
}

#[tokio::test]
async fn odd_range_headers_never_cause_a_server_error() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(100);
    let d = push_blob(&c, &r, "odd", &bytes).await;
    // One answer per case, checked in full: RFC 9110 §14 (a unit is case-insensitive; a
    // suffix longer than the blob is the whole blob; a range unit or syntax the server
    // ignores gets the plain 200; an unsatisfiable range is 416 with `bytes */size`).
    enum Want {
        Whole,
        Part(usize, usize),
        Unsatisfiable,
    }
    use Want::*;
    let odd = [
        ("", Whole),
        ("bytes", Whole),
        ("bytes=", Unsatisfiable),
        ("bytes=-", Unsatisfiable),
        ("bytes=--1", Unsatisfiable),
        ("bytes=1--2", Unsatisfiable),
        ("bytes= 1 - 2 ", Part(1, 2)),
        ("bytes=0-0", Part(0, 0)),
        ("bytes=18446744073709551615-", Unsatisfiable),
        ("bytes=-18446744073709551615", Part(0, 99)),
        ("bytes=99999999999999999999-1", Unsatisfiable),
        ("bytes=0-18446744073709551615", Part(0, 99)),
        ("BYTES=0-1", Part(0, 1)),
        ("Bytes=98-", Part(98, 99)),
        ("bytes=,", Whole),
        ("bytes=0-1,5-6", Whole),
        ("bytes=a-b", Unsatisfiable),
    ];
    for (range, want) in odd {
        let resp = c
            .get(r.url(&format!("/v2/odd/blobs/{d}")))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_range = resp
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        match want {
            Whole => {
                assert_eq!(status, 200, "Range {range:?}");
                assert_eq!(content_range, None, "Range {range:?}");
                assert_eq!(hdr(&resp, "content-length"), "100", "Range {range:?}");
                assert_eq!(hdr(&resp, "docker-content-digest"), d);
                assert!(resp.bytes().await.unwrap() == bytes, "Range {range:?}");
            }
            Part(a, b) => {
                assert_eq!(status, 206, "Range {range:?}");
                assert_eq!(
                    content_range.as_deref(),
                    Some(format!("bytes {a}-{b}/100").as_str()),
                    "Range {range:?}"
                );
                assert_eq!(
                    hdr(&resp, "content-length"),
                    (b - a + 1).to_string(),
                    "Range {range:?}"
                );
                assert_eq!(hdr(&resp, "docker-content-digest"), d);
                assert!(
                    resp.bytes().await.unwrap() == bytes[a..=b],
                    "Range {range:?}"
                );
            }
            Unsatisfiable => {
                assert_eq!(
                    content_range.as_deref(),
                    Some("bytes */100"),
                    "Range {range:?}"
                );
                expect_error(resp, 416, "SIZE_INVALID").await;
            }
        }
    }
    // Content-Range on a chunk is just as robust: anything but the right start is a 416.
    let (location, _) = open_upload(&c, &r, "odd").await;
    for cr in [
        "",
        "-",
        "0-",
        "-1",
        "bytes",
        "1-0",
        "99999999999999999999-1",
        "bytes */*",
        "0-99999999999999999999",
    ] {
        let resp = c
            .patch(r.url(&location))
            .header("Content-Range", cr)
            .body(b"x".to_vec())
            .send()
            .await
            .unwrap();
        expect_error(resp, 416, "BLOB_UPLOAD_INVALID").await;
    }
    assert_eq!(upload_range(&c, &r, &location).await, "0-0");
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

/// An unsatisfiable range was answered with `RANGE_INVALID`, a code outside the spec's table,
/// and without the `Content-Range: bytes */<size>` that tells the client the real length.
#[tokio::test]
async fn regression_unsatisfiable_range_used_a_code_outside_the_spec() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(100);
    let d = push_blob(&c, &r, "ranges", &bytes).await;
    let resp = c
        .get(r.url(&format!("/v2/ranges/blobs/{d}")))
        .header("Range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(hdr(&resp, "content-range"), "bytes */100");
    expect_error(resp, 416, "SIZE_INVALID").await;
    r.stop().await;
}

/// `Range: items=0-1` and multi-range requests were refused with 416. RFC 9110 says a server
/// MUST ignore a range unit it does not understand, and may ignore ranges it does not
/// support; either way the answer is the whole blob, never "not satisfiable".
#[tokio::test]
async fn regression_a_range_in_an_unknown_unit_was_refused_instead_of_ignored() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(100);
    let d = push_blob(&c, &r, "ranges", &bytes).await;
    for range in ["items=0-1", "bytes=0-1,5-6"] {
        let resp = c
            .get(r.url(&format!("/v2/ranges/blobs/{d}")))
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{range}");
        assert!(!has_hdr(&resp, "content-range"));
        assert_eq!(hdr(&resp, "content-length"), "100");
        assert!(resp.bytes().await.unwrap() == bytes);
    }
    r.stop().await;
}

#[tokio::test]
async fn blobs_over_the_size_limit_are_refused_and_leave_nothing() {
    let r = TestRegistry::start_configured(|c| c.max_blob_size = 1000).await;
    let c = client();
    push_blob(&c, &r, "limit", &random_bytes(1000)).await;
    let big = random_bytes(1001);
    let d = sha256(&big);
    let resp = c
        .post(r.url(&format!("/v2/limit/blobs/uploads/?digest={d}")))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "SIZE_INVALID").await;
    assert_no_blob(&c, &r, "limit", &d).await;
    assert_eq!(upload_files(&r), 0);
    // A chunk that crosses the limit is refused and taken back; the session carries on.
    let (location, _) = open_upload(&c, &r, "limit").await;
    assert_eq!(
        patch(&c, &r, &location, &big[..600], Some(0))
            .await
            .status(),
        202
    );
    expect_error(
        patch(&c, &r, &location, &big[600..], Some(600)).await,
        400,
        "SIZE_INVALID",
    )
    .await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-599");
    expect_error(
        finish(&c, &r, &location, &d, &big[600..]).await,
        400,
        "SIZE_INVALID",
    )
    .await;
    assert_eq!(upload_range(&c, &r, &location).await, "0-599");
    let fits = &big[..1000];
    assert_eq!(
        finish(&c, &r, &location, &sha256(fits), &fits[600..])
            .await
            .status(),
        201
    );
    assert_blob(&c, &r, "limit", &sha256(fits), fits).await;
    assert_no_blob(&c, &r, "limit", &d).await;
    r.stop().await;
}

#[tokio::test]
async fn blobs_are_readable_only_where_they_were_pushed() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(100);
    let d = push_blob(&c, &r, "owner", &bytes).await;
    assert_no_blob(&c, &r, "stranger", &d).await;
    assert_no_blob(&c, &r, "owner/sub", &d).await;
    expect_error(
        c.delete(r.url(&format!("/v2/stranger/blobs/{d}")))
            .send()
            .await
            .unwrap(),
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_blob(&c, &r, "owner", &d, &bytes).await;
    // Nor can a manifest in another repository use it.
    let config = config_bytes();
    push_blob(&c, &r, "stranger", &config).await;
    let m = image_manifest(&config, &[&bytes]);
    let v = expect_error(
        put_manifest(&c, &r, "stranger", "v1", OCI_MANIFEST, &m).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert_eq!(v["errors"][0]["detail"]["digest"], d);
    r.stop().await;
}

#[tokio::test]
async fn a_deleted_blob_is_gone_from_that_repository_only() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(100);
    let d = push_blob(&c, &r, "a", &bytes).await;
    push_blob(&c, &r, "b", &bytes).await;
    let resp = c
        .delete(r.url(&format!("/v2/a/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_no_blob(&c, &r, "a", &d).await;
    expect_error(
        c.delete(r.url(&format!("/v2/a/blobs/{d}")))
            .send()
            .await
            .unwrap(),
        404,
        "BLOB_UNKNOWN",
    )
    .await;
    assert_blob(&c, &r, "b", &d, &bytes).await;
    // A manifest can no longer use it there.
    let config = config_bytes();
    push_blob(&c, &r, "a", &config).await;
    let m = image_manifest(&config, &[&bytes]);
    expect_error(
        put_manifest(&c, &r, "a", "v1", OCI_MANIFEST, &m).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    // Pushing it again brings it back.
    push_blob(&c, &r, "a", &bytes).await;
    assert_blob(&c, &r, "a", &d, &bytes).await;
    push_manifest(&c, &r, "a", "v1", OCI_MANIFEST, &m).await;
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Cross-repository mounts

#[tokio::test]
async fn mount_from_a_repository_that_has_the_blob() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(2000);
    let d = push_blob(&c, &r, "source", &bytes).await;
    let resp = c
        .post(r.url(&format!("/v2/target/blobs/uploads/?mount={d}&from=source")))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "location"), format!("/v2/target/blobs/{d}"));
    assert_eq!(hdr(&resp, "docker-content-digest"), d);
    assert_blob(&c, &r, "target", &d, &bytes).await;
    assert_blob(&c, &r, "source", &d, &bytes).await;
    assert_eq!(upload_files(&r), 0);
    // A manifest in the target may now use it.
    let config = config_bytes();
    push_blob(&c, &r, "target", &config).await;
    push_manifest(
        &c,
        &r,
        "target",
        "v1",
        OCI_MANIFEST,
        &image_manifest(&config, &[&bytes]),
    )
    .await;
    // Mounting from the target on into a third repository works too.
    let resp = c
        .post(r.url(&format!(
            "/v2/third/nested/blobs/uploads/?mount={d}&from=target"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_blob(&c, &r, "third/nested", &d, &bytes).await;
    r.stop().await;
}

#[tokio::test]
async fn mount_falls_back_to_an_upload_when_the_source_lacks_the_blob() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(2000);
    let d = push_blob(&c, &r, "elsewhere", &bytes).await;
    for from in ["nobody", "empty/repo"] {
        let resp = c
            .post(r.url(&format!("/v2/target/blobs/uploads/?mount={d}&from={from}")))
            .header("Content-Length", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "from {from}");
        let location = hdr(&resp, "location");
        assert_eq!(
            location,
            format!(
                "/v2/target/blobs/uploads/{}",
                hdr(&resp, "docker-upload-uuid")
            )
        );
        assert_no_blob(&c, &r, "target", &d).await;
        // The fallback is a real session the client can push through.
        assert_eq!(finish(&c, &r, &location, &d, &bytes).await.status(), 201);
        assert_blob(&c, &r, "target", &d, &bytes).await;
        c.delete(r.url(&format!("/v2/target/blobs/{d}")))
            .send()
            .await
            .unwrap();
    }
    // A `from` that is not a repository name is refused outright.
    let resp = c
        .post(r.url(&format!(
            "/v2/target/blobs/uploads/?mount={d}&from=Bad..Name"
        )))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "NAME_INVALID").await;
    let resp = c
        .post(r.url("/v2/target/blobs/uploads/?mount=sha256:nope&from=elsewhere"))
        .send()
        .await
        .unwrap();
    expect_error(resp, 400, "DIGEST_INVALID").await;
    assert_no_blob(&c, &r, "target", &d).await;
    assert_eq!(upload_files(&r), 0);
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Manifests

#[tokio::test]
async fn manifest_put_by_tag_and_by_digest() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(500);
    let m = image_in(&c, &r, "img", &[&layer]).await;
    let d = push_manifest(&c, &r, "img", "v1", OCI_MANIFEST, &m).await;
    assert_manifest(&c, &r, "img", "v1", OCI_MANIFEST, &m).await;
    assert_manifest(&c, &r, "img", &d, OCI_MANIFEST, &m).await;
    assert_eq!(tags_of(&c, &r, "img").await.unwrap(), ["v1"]);

    // By digest: stored, readable by digest, and no tag is created.
    let m2 = image_in(&c, &r, "img", &[&layer]).await;
    let d2 = push_manifest(&c, &r, "img", &sha256(&m2), OCI_MANIFEST, &m2).await;
    assert_manifest(&c, &r, "img", &d2, OCI_MANIFEST, &m2).await;
    assert_eq!(tags_of(&c, &r, "img").await.unwrap(), ["v1"]);
    // Pushing identical bytes again is idempotent.
    push_manifest(&c, &r, "img", &d2, OCI_MANIFEST, &m2).await;
    push_manifest(&c, &r, "img", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(
        tag_target(&c, &r, "img", "v1").await.as_deref(),
        Some(d.as_str())
    );
    r.stop().await;
}

#[tokio::test]
async fn every_manifest_kind_round_trips_with_its_media_type() {
    let r = TestRegistry::start().await;
    let c = client();
    // OCI image, pretty-printed: the exact bytes must come back, not a re-serialization.
    let layer = random_bytes(300);
    let compact = image_in(&c, &r, "kinds", &[&layer]).await;
    let v: Value = serde_json::from_slice(&compact).unwrap();
    let oci = serde_json::to_vec_pretty(&v).unwrap();
    let oci_d = push_manifest(&c, &r, "kinds", "oci", OCI_MANIFEST, &oci).await;
    assert_manifest(&c, &r, "kinds", "oci", OCI_MANIFEST, &oci).await;

    // Docker schema 2.
    let config = config_bytes();
    let dlayer = random_bytes(400);
    push_blob(&c, &r, "kinds", &config).await;
    push_blob(&c, &r, "kinds", &dlayer).await;
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config),
        "layers": [descriptor(DOCKER_LAYER, &dlayer)],
    }))
    .unwrap();
    let docker_d = push_manifest(&c, &r, "kinds", "docker", DOCKER_MANIFEST, &docker).await;
    assert_manifest(&c, &r, "kinds", "docker", DOCKER_MANIFEST, &docker).await;
    assert_manifest(&c, &r, "kinds", &docker_d, DOCKER_MANIFEST, &docker).await;

    // OCI index and Docker manifest list over them.
    let index = index_of(
        OCI_INDEX,
        &[(OCI_MANIFEST, &oci), (DOCKER_MANIFEST, &docker)],
    );
    let index_d = push_manifest(&c, &r, "kinds", "index", OCI_INDEX, &index).await;
    assert_manifest(&c, &r, "kinds", "index", OCI_INDEX, &index).await;
    assert_manifest(&c, &r, "kinds", &index_d, OCI_INDEX, &index).await;
    let list = index_of(DOCKER_LIST, &[(DOCKER_MANIFEST, &docker)]);
    let list_d = push_manifest(&c, &r, "kinds", "list", DOCKER_LIST, &list).await;
    assert_manifest(&c, &r, "kinds", "list", DOCKER_LIST, &list).await;
    assert_manifest(&c, &r, "kinds", &list_d, DOCKER_LIST, &list).await;

    // Content-Type parameters are ignored; a body without mediaType takes the header's.
    let layer2 = random_bytes(10);
    let m = image_in(&c, &r, "kinds", &[&layer2]).await;
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let bare = serde_json::to_vec(&v).unwrap();
    push_manifest(
        &c,
        &r,
        "kinds",
        "bare",
        &format!("{OCI_MANIFEST}; charset=utf-8"),
        &bare,
    )
    .await;
    assert_manifest(&c, &r, "kinds", "bare", OCI_MANIFEST, &bare).await;

    // With neither Content-Type nor mediaType, a document with `manifests` is an OCI index.
    let mut v: Value =
        serde_json::from_slice(&index_of(OCI_INDEX, &[(OCI_MANIFEST, &oci)])).unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let untyped = serde_json::to_vec(&v).unwrap();
    let resp = c
        .put(r.url("/v2/kinds/manifests/untyped"))
        .body(untyped.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_manifest(&c, &r, "kinds", "untyped", OCI_INDEX, &untyped).await;

    // A layer with external `urls` (a Windows foreign layer) need not be in the registry.
    let config2 = config_bytes();
    push_blob(&c, &r, "kinds", &config2).await;
    let mut foreign = descriptor(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        b"never pushed",
    );
    foreign["urls"] = json!(["https://example.com/layer.tar.gz"]);
    let fm = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": descriptor(DOCKER_CONFIG, &config2),
        "layers": [foreign],
    }))
    .unwrap();
    push_manifest(&c, &r, "kinds", "foreign", DOCKER_MANIFEST, &fm).await;

    let mut tags = tags_of(&c, &r, "kinds").await.unwrap();
    tags.sort();
    assert_eq!(
        tags,
        ["bare", "docker", "foreign", "index", "list", "oci", "untyped"]
    );
    assert_ne!(oci_d, docker_d);
    r.stop().await;
}

#[tokio::test]
async fn a_manifest_with_a_missing_blob_is_refused_and_nothing_is_stored() {
    let r = TestRegistry::start().await;
    let c = client();
    let config = config_bytes();
    let layer = random_bytes(100);
    let missing = random_bytes(100);
    push_blob(&c, &r, "fresh", &config).await;
    push_blob(&c, &r, "fresh", &layer).await;
    let no_layer = image_manifest(&config, &[&layer, &missing]);
    let no_config = image_manifest(&config_bytes(), &[&layer]);
    let no_config_d = {
        let v: Value = serde_json::from_slice(&no_config).unwrap();
        v["config"]["digest"].as_str().unwrap().to_string()
    };
    for (m, absent) in [(&no_layer, sha256(&missing)), (&no_config, no_config_d)] {
        for reference in ["v1".to_string(), sha256(m)] {
            let v = expect_error(
                put_manifest(&c, &r, "fresh", &reference, OCI_MANIFEST, m).await,
                400,
                "MANIFEST_BLOB_UNKNOWN",
            )
            .await;
            assert_eq!(v["errors"][0]["detail"]["digest"], absent);
        }
        assert_no_manifest(&c, &r, "fresh", "v1").await;
        assert_no_manifest(&c, &r, "fresh", &sha256(m)).await;
    }
    assert_eq!(
        tags_of(&c, &r, "fresh").await,
        None,
        "the repository was never created"
    );
    assert!(catalog(&c, &r).await.is_empty());

    // In a repository that exists, a refused push leaves the tag where it was.
    let (_, good) = push_image(&c, &r, "fresh", "v1", &[&layer]).await;
    expect_error(
        put_manifest(&c, &r, "fresh", "v1", OCI_MANIFEST, &no_layer).await,
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert_eq!(tag_target(&c, &r, "fresh", "v1").await, Some(good));
    assert_no_manifest(&c, &r, "fresh", &sha256(&no_layer)).await;
    // Once the blob is there the same manifest is accepted.
    push_blob(&c, &r, "fresh", &missing).await;
    push_manifest(&c, &r, "fresh", "v1", OCI_MANIFEST, &no_layer).await;
    r.stop().await;
}

#[tokio::test]
async fn an_index_with_a_missing_child_is_manifest_blob_unknown() {
    // With the strict check; sparse indexes (the default) are tested in tests/sparse.rs.
    let r = TestRegistry::start_configured(|c| c.sparse_indexes = false).await;
    let c = client();
    let layer = random_bytes(100);
    let (present, _) = push_image(&c, &r, "idx", "child", &[&layer]).await;
    let absent = image_in(&c, &r, "idx", &[&layer]).await;
    // A child stored in another repository does not count either.
    let (elsewhere, _) = push_image(&c, &r, "other", "x", &[&layer]).await;
    for missing in [&absent, &elsewhere] {
        let index = index_of(
            OCI_INDEX,
            &[(OCI_MANIFEST, &present), (OCI_MANIFEST, missing)],
        );
        let v = expect_error(
            put_manifest(&c, &r, "idx", "multi", OCI_INDEX, &index).await,
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .await;
        assert_eq!(v["errors"][0]["detail"]["digest"], sha256(missing));
        assert_no_manifest(&c, &r, "idx", "multi").await;
        assert_no_manifest(&c, &r, "idx", &sha256(&index)).await;
        let list = index_of(DOCKER_LIST, &[(OCI_MANIFEST, missing)]);
        expect_error(
            put_manifest(&c, &r, "idx", "multi", DOCKER_LIST, &list).await,
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .await;
    }
    assert_eq!(tags_of(&c, &r, "idx").await.unwrap(), ["child"]);
    r.stop().await;
}

#[tokio::test]
async fn malformed_manifests_are_manifest_invalid_and_change_nothing() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (good, good_d) = push_image(&c, &r, "bad", "latest", &[&layer]).await;
    let g: Value = serde_json::from_slice(&good).unwrap();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = g.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let schema1 = serde_json::to_vec(&json!({
        "schemaVersion": 1, "name": "bad", "tag": "latest", "architecture": "amd64",
        "fsLayers": [{"blobSum": sha256(&layer)}], "history": [],
    }))
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"this is not json".to_vec(), OCI_MANIFEST),
        ("empty body", Vec::new(), OCI_MANIFEST),
        ("a JSON array", b"[]".to_vec(), OCI_MANIFEST),
        (
            "schema 1",
            schema1.clone(),
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        (
            "schema 1 as OCI",
            with(&|v| v["schemaVersion"] = json!(1)),
            OCI_MANIFEST,
        ),
        (
            "no schemaVersion",
            with(&|v| {
                v.as_object_mut().unwrap().remove("schemaVersion");
            }),
            OCI_MANIFEST,
        ),
        (
            "unknown mediaType",
            with(&|v| v["mediaType"] = json!("application/vnd.example.thing+json")),
            "application/vnd.example.thing+json",
        ),
        (
            "mediaType disagrees with Content-Type",
            with(&|v| v["annotations"] = json!({"k": "v"})),
            DOCKER_MANIFEST,
        ),
        (
            "image without config",
            with(&|v| {
                v.as_object_mut().unwrap().remove("config");
            }),
            OCI_MANIFEST,
        ),
        (
            "image with manifests",
            with(&|v| v["manifests"] = json!([])),
            OCI_MANIFEST,
        ),
        (
            "config digest malformed",
            with(&|v| v["config"]["digest"] = json!("sha256:abc")),
            OCI_MANIFEST,
        ),
        (
            "layer without digest",
            with(&|v| {
                v["layers"][0].as_object_mut().unwrap().remove("digest");
            }),
            OCI_MANIFEST,
        ),
        (
            "index with layers",
            serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []}),
            )
            .unwrap(),
            OCI_INDEX,
        ),
        (
            "index without manifests",
            serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX})).unwrap(),
            OCI_INDEX,
        ),
    ];
    for (what, body, media_type) in &cases {
        eprintln!("case: {what}");
        let resp = put_manifest(&c, &r, "bad", "latest", media_type, body).await;
        expect_error(resp, 400, "MANIFEST_INVALID").await;
        if !body.is_empty() {
            let resp = put_manifest(&c, &r, "bad", &sha256(body), media_type, body).await;
            expect_error(resp, 400, "MANIFEST_INVALID").await;
            assert_no_manifest(&c, &r, "bad", &sha256(body)).await;
        }
        let resp = put_manifest(&c, &r, "fresh", "latest", media_type, body).await;
        expect_error(resp, 400, "MANIFEST_INVALID").await;
    }
    assert_eq!(tag_target(&c, &r, "bad", "latest").await, Some(good_d));
    assert_eq!(tags_of(&c, &r, "bad").await.unwrap(), ["latest"]);
    assert_eq!(tags_of(&c, &r, "fresh").await, None);
    assert_eq!(catalog(&c, &r).await, ["bad"]);
    r.stop().await;
}

#[tokio::test]
async fn put_by_digest_with_the_wrong_digest_is_digest_invalid() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "dig", &[&layer]).await;
    let claimed = sha256(b"not the manifest");
    let v = expect_error(
        put_manifest(&c, &r, "dig", &claimed, OCI_MANIFEST, &m).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_eq!(v["errors"][0]["detail"]["digest"], claimed);
    let wrong512 = sha512(b"not the manifest");
    expect_error(
        put_manifest(&c, &r, "dig", &wrong512, OCI_MANIFEST, &m).await,
        400,
        "DIGEST_INVALID",
    )
    .await;
    assert_no_manifest(&c, &r, "dig", &claimed).await;
    assert_no_manifest(&c, &r, "dig", &sha256(&m)).await;
    assert_eq!(tags_of(&c, &r, "dig").await, None);

    // The right sha512 digest is accepted and the manifest is known by it.
    let d512 = sha512(&m);
    let resp = put_manifest(&c, &r, "dig", &d512, OCI_MANIFEST, &m).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "docker-content-digest"), d512);
    assert_eq!(hdr(&resp, "location"), format!("/v2/dig/manifests/{d512}"));
    let resp = c
        .get(r.url(&format!("/v2/dig/manifests/{d512}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "docker-content-digest"), d512);
    assert!(resp.bytes().await.unwrap() == m);
    r.stop().await;
}

#[tokio::test]
async fn invalid_tags_are_refused() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "tags", &[&layer]).await;
    let long = "a".repeat(129);
    for tag in ["-dash", ".dot", long.as_str(), "a%20b", "t%3Ax", "tag!"] {
        let resp = put_manifest(&c, &r, "tags", tag, OCI_MANIFEST, &m).await;
        expect_error(resp, 400, "MANIFEST_INVALID").await;
        let url = r.url(&format!("/v2/tags/manifests/{tag}"));
        expect_error(c.get(&url).send().await.unwrap(), 400, "MANIFEST_INVALID").await;
        expect_error(
            c.delete(&url).send().await.unwrap(),
            400,
            "MANIFEST_INVALID",
        )
        .await;
        // As an extra `?tag=`, it spoils the whole PUT: not even the path's tag is created.
        let resp = c
            .put(r.url("/v2/tags/manifests/good"))
            .query(&[("tag", "also"), ("tag", tag)])
            .header("Content-Type", OCI_MANIFEST)
            .body(m.clone())
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "MANIFEST_INVALID").await;
    }
    assert_eq!(tags_of(&c, &r, "tags").await, None);
    assert_no_manifest(&c, &r, "tags", &sha256(&m)).await;
    // The longest legal tag, and the other legal first characters.
    let max = "a".repeat(128);
    for tag in [max.as_str(), "_under", "9.0-rc_1", "UPPER"] {
        push_manifest(&c, &r, "tags", tag, OCI_MANIFEST, &m).await;
        assert_eq!(tag_target(&c, &r, "tags", tag).await, Some(sha256(&m)));
    }
    r.stop().await;
}

#[tokio::test]
async fn tag_query_parameters_create_every_tag() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "multi", &[&layer]).await;
    let d = sha256(&m);
    let resp = c
        .put(r.url(&format!("/v2/multi/manifests/{d}?tag=a&tag=b")))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let oci_tags: Vec<&str> = resp
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(oci_tags, ["a", "b"]);
    assert_eq!(tags_of(&c, &r, "multi").await.unwrap(), ["a", "b"]);
    // With a tag in the path, the parameters add to it.
    let resp = c
        .put(r.url("/v2/multi/manifests/c?tag=d&tag=a"))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        tags_of(&c, &r, "multi").await.unwrap(),
        ["a", "b", "c", "d"]
    );
    for t in ["a", "b", "c", "d"] {
        assert_eq!(
            tag_target(&c, &r, "multi", t).await.as_deref(),
            Some(d.as_str())
        );
    }
    r.stop().await;
}

#[tokio::test]
async fn retagging_moves_the_tag() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (m1, d1) = push_image(&c, &r, "move", "latest", &[&layer]).await;
    let (m2, d2) = push_image(&c, &r, "move", "latest", &[&layer]).await;
    assert_eq!(tag_target(&c, &r, "move", "latest").await, Some(d2.clone()));
    assert_manifest(&c, &r, "move", "latest", OCI_MANIFEST, &m2).await;
    assert_manifest(&c, &r, "move", &d1, OCI_MANIFEST, &m1).await;
    assert_eq!(tags_of(&c, &r, "move").await.unwrap(), ["latest"]);
    // And back, by re-pushing the first manifest's bytes.
    push_manifest(&c, &r, "move", "latest", OCI_MANIFEST, &m1).await;
    assert_eq!(tag_target(&c, &r, "move", "latest").await, Some(d1));
    r.stop().await;
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_manifest() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "deltag", &[&layer]).await;
    let d = push_manifest(&c, &r, "deltag", "v1", OCI_MANIFEST, &m).await;
    push_manifest(&c, &r, "deltag", "v2", OCI_MANIFEST, &m).await;
    let resp = c
        .delete(r.url("/v2/deltag/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_no_manifest(&c, &r, "deltag", "v1").await;
    assert_manifest(&c, &r, "deltag", "v2", OCI_MANIFEST, &m).await;
    assert_manifest(&c, &r, "deltag", &d, OCI_MANIFEST, &m).await;
    assert_eq!(tags_of(&c, &r, "deltag").await.unwrap(), ["v2"]);
    expect_error(
        c.delete(r.url("/v2/deltag/manifests/v1"))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(
        c.delete(r.url("/v2/nosuchrepo/manifests/v1"))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // Without tags the repository still exists, with an empty list.
    assert_eq!(
        c.delete(r.url("/v2/deltag/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        tags_of(&c, &r, "deltag").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(catalog(&c, &r).await, ["deltag"]);
    assert_manifest(&c, &r, "deltag", &d, OCI_MANIFEST, &m).await;
    r.stop().await;
}

#[tokio::test]
async fn deleting_a_manifest_removes_its_tags() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "delm", &[&layer]).await;
    let d = push_manifest(&c, &r, "delm", "v1", OCI_MANIFEST, &m).await;
    push_manifest(&c, &r, "delm", "v2", OCI_MANIFEST, &m).await;
    let (other, other_d) = push_image(&c, &r, "delm", "other", &[&layer]).await;
    // The same bytes in another repository are a separate manifest.
    push_blob(&c, &r, "elsewhere", &layer).await;
    let config_d = serde_json::from_slice::<Value>(&m).unwrap()["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mount = format!("/v2/elsewhere/blobs/uploads/?mount={config_d}&from=delm");
    assert_eq!(c.post(r.url(&mount)).send().await.unwrap().status(), 201);
    push_manifest(&c, &r, "elsewhere", "v1", OCI_MANIFEST, &m).await;

    let resp = c
        .delete(r.url(&format!("/v2/delm/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    for reference in ["v1", "v2", d.as_str()] {
        assert_no_manifest(&c, &r, "delm", reference).await;
    }
    expect_error(
        c.delete(r.url(&format!("/v2/delm/manifests/{d}")))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_eq!(tags_of(&c, &r, "delm").await.unwrap(), ["other"]);
    assert_manifest(&c, &r, "delm", "other", OCI_MANIFEST, &other).await;
    assert_manifest(&c, &r, "elsewhere", "v1", OCI_MANIFEST, &m).await;
    // Deleting the last manifest removes the repository.
    assert_eq!(
        c.delete(r.url(&format!("/v2/delm/manifests/{other_d}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(tags_of(&c, &r, "delm").await, None);
    assert_eq!(catalog(&c, &r).await, ["elsewhere"]);
    expect_error(
        c.delete(r.url(&format!("/v2/nosuchrepo/manifests/{d}")))
            .send()
            .await
            .unwrap(),
        404,
        "MANIFEST_UNKNOWN",
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn a_manifest_listed_by_an_index_cannot_be_deleted() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (tagged, tagged_d) = push_image(&c, &r, "guard", "amd64", &[&layer]).await;
    let untagged = image_in(&c, &r, "guard", &[&layer]).await;
    let untagged_d =
        push_manifest(&c, &r, "guard", &sha256(&untagged), OCI_MANIFEST, &untagged).await;
    let index = index_of(
        OCI_INDEX,
        &[(OCI_MANIFEST, &tagged), (OCI_MANIFEST, &untagged)],
    );
    let index_d = push_manifest(&c, &r, "guard", "multi", OCI_INDEX, &index).await;

    for d in [&untagged_d, &tagged_d] {
        let resp = c
            .delete(r.url(&format!("/v2/guard/manifests/{d}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 409, "DENIED").await;
    }
    assert_manifest(&c, &r, "guard", &untagged_d, OCI_MANIFEST, &untagged).await;
    assert_manifest(&c, &r, "guard", "amd64", OCI_MANIFEST, &tagged).await;
    assert_eq!(tags_of(&c, &r, "guard").await.unwrap(), ["amd64", "multi"]);
    // Deleting the index's tag is not enough: the index itself still lists them.
    assert_eq!(
        c.delete(r.url("/v2/guard/manifests/multi"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    expect_error(
        c.delete(r.url(&format!("/v2/guard/manifests/{untagged_d}")))
            .send()
            .await
            .unwrap(),
        409,
        "DENIED",
    )
    .await;
    assert_eq!(
        c.delete(r.url(&format!("/v2/guard/manifests/{index_d}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    for d in [&untagged_d, &tagged_d] {
        assert_eq!(
            c.delete(r.url(&format!("/v2/guard/manifests/{d}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        assert_no_manifest(&c, &r, "guard", d).await;
    }
    assert_eq!(tags_of(&c, &r, "guard").await, None);
    r.stop().await;
}

/// A manifest padded with an annotation to exactly `size` bytes.
fn manifest_of_size(base: &[u8], size: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(base).unwrap();
    v["annotations"] = json!({"pad": ""});
    let overhead = serde_json::to_vec(&v).unwrap().len();
    v["annotations"]["pad"] = json!("x".repeat(size - overhead));
    let out = serde_json::to_vec(&v).unwrap();
    assert_eq!(out.len(), size);
    out
}

#[tokio::test]
async fn manifests_up_to_4_mib_are_accepted_and_larger_ones_are_413() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let base = image_in(&c, &r, "size", &[&layer]).await;
    let limit = 4 * 1024 * 1024;
    let at_limit = manifest_of_size(&base, limit);
    push_manifest(&c, &r, "size", "big", OCI_MANIFEST, &at_limit).await;
    assert_manifest(&c, &r, "size", "big", OCI_MANIFEST, &at_limit).await;
    let over = manifest_of_size(&base, limit + 1);
    let resp = put_manifest(&c, &r, "size", "big", OCI_MANIFEST, &over).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        tag_target(&c, &r, "size", "big").await,
        Some(sha256(&at_limit))
    );
    assert_no_manifest(&c, &r, "size", &sha256(&over)).await;
    r.stop().await;
}

#[tokio::test]
async fn the_manifest_size_limit_is_configurable() {
    let r = TestRegistry::start_configured(|c| c.max_manifest_size = 2048).await;
    let c = client();
    let layer = random_bytes(100);
    let base = image_in(&c, &r, "size", &[&layer]).await;
    push_manifest(
        &c,
        &r,
        "size",
        "ok",
        OCI_MANIFEST,
        &manifest_of_size(&base, 2048),
    )
    .await;
    for size in [2049, 100_000] {
        let over = manifest_of_size(&base, size);
        let resp = put_manifest(&c, &r, "size", "over", OCI_MANIFEST, &over).await;
        expect_error(resp, 413, "MANIFEST_INVALID").await;
        assert_no_manifest(&c, &r, "size", "over").await;
        assert_no_manifest(&c, &r, "size", &sha256(&over)).await;
    }
    assert_eq!(tags_of(&c, &r, "size").await.unwrap(), ["ok"]);
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Artifacts and referrers

/// Pushes the empty config and a layer an artifact needs; returns the layer.
async fn artifact_blobs(c: &Client, r: &TestRegistry, repo: &str) -> Vec<u8> {
    push_blob(c, r, repo, b"{}").await;
    let layer = random_bytes(64);
    push_blob(c, r, repo, &layer).await;
    layer
}

async fn referrers(
    c: &Client,
    r: &TestRegistry,
    repo: &str,
    subject: &str,
    filter: Option<&str>,
) -> (Vec<Value>, bool) {
    let mut req = c.get(r.url(&format!("/v2/{repo}/referrers/{subject}")));
    if let Some(f) = filter {
        req = req.query(&[("artifactType", f)]);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hdr(&resp, "content-type"), OCI_INDEX);
    let filtered = match resp.headers().get("oci-filters-applied") {
        Some(v) => {
            assert_eq!(v, "artifactType");
            true
        }
        None => false,
    };
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    (
        v["manifests"].as_array().expect("manifests array").clone(),
        filtered,
    )
}

#[tokio::test]
async fn a_manifest_with_a_subject_is_listed_as_a_referrer() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (subject, subject_d) = push_image(&c, &r, "art", "v1", &[&layer]).await;
    let data = artifact_blobs(&c, &r, "art").await;
    let sbom = artifact(
        Some("application/vnd.example.sbom.v1"),
        &subject,
        OCI_MANIFEST,
        &data,
        "sbom",
    );
    let resp = put_manifest(&c, &r, "art", &sha256(&sbom), OCI_MANIFEST, &sbom).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "oci-subject"), subject_d);
    assert_manifest(&c, &r, "art", &sha256(&sbom), OCI_MANIFEST, &sbom).await;

    let (list, filtered) = referrers(&c, &r, "art", &subject_d, None).await;
    assert!(!filtered);
    assert_eq!(
        list,
        [json!({
            "mediaType": OCI_MANIFEST,
            "digest": sha256(&sbom),
            "size": sbom.len(),
            "artifactType": "application/vnd.example.sbom.v1",
            "annotations": {"org.example.note": "sbom"},
        })]
    );
    // Only the subject's own repository lists it.
    assert!(referrers(&c, &r, "other", &subject_d, None)
        .await
        .0
        .is_empty());
    // A manifest without a subject gets no OCI-Subject header and is nobody's referrer.
    let plain = image_in(&c, &r, "art", &[&layer]).await;
    let resp = put_manifest(&c, &r, "art", "plain", OCI_MANIFEST, &plain).await;
    assert_eq!(resp.status(), 201);
    assert!(!has_hdr(&resp, "oci-subject"));
    assert_eq!(referrers(&c, &r, "art", &subject_d, None).await.0.len(), 1);
    // Deleting the referrer takes it off the list.
    let resp = c
        .delete(r.url(&format!("/v2/art/manifests/{}", sha256(&sbom))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert!(referrers(&c, &r, "art", &subject_d, None)
        .await
        .0
        .is_empty());
    r.stop().await;
}

#[tokio::test]
async fn referrers_filter_by_artifact_type() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (subject, subject_d) = push_image(&c, &r, "filt", "v1", &[&layer]).await;
    let data = artifact_blobs(&c, &r, "filt").await;
    let sbom = artifact(
        Some("application/vnd.example.sbom.v1"),
        &subject,
        OCI_MANIFEST,
        &data,
        "a",
    );
    let sig = artifact(
        Some("application/vnd.example.sig.v1"),
        &subject,
        OCI_MANIFEST,
        &data,
        "b",
    );
    let sig2 = artifact(
        Some("application/vnd.example.sig.v1"),
        &subject,
        OCI_MANIFEST,
        &data,
        "c",
    );
    for m in [&sbom, &sig, &sig2] {
        push_manifest(&c, &r, "filt", &sha256(m), OCI_MANIFEST, m).await;
    }
    let digests = |list: &[Value]| {
        let mut v: Vec<String> = list
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let (all, filtered) = referrers(&c, &r, "filt", &subject_d, None).await;
    assert!(!filtered);
    let mut expected = vec![sha256(&sbom), sha256(&sig), sha256(&sig2)];
    expected.sort();
    assert_eq!(digests(&all), expected);

    let (sigs, filtered) = referrers(
        &c,
        &r,
        "filt",
        &subject_d,
        Some("application/vnd.example.sig.v1"),
    )
    .await;
    assert!(filtered, "OCI-Filters-Applied: artifactType");
    let mut expected = vec![sha256(&sig), sha256(&sig2)];
    expected.sort();
    assert_eq!(digests(&sigs), expected);
    assert!(sigs
        .iter()
        .all(|d| d["artifactType"] == "application/vnd.example.sig.v1"));

    let (none, filtered) = referrers(
        &c,
        &r,
        "filt",
        &subject_d,
        Some("application/vnd.example.none"),
    )
    .await;
    assert!(filtered);
    assert!(none.is_empty());
    r.stop().await;
}

#[tokio::test]
async fn referrers_of_an_unknown_digest_are_an_empty_index() {
    let r = TestRegistry::start().await;
    let c = client();
    let nothing = sha256(b"no such manifest");
    assert!(referrers(&c, &r, "nosuchrepo", &nothing, None)
        .await
        .0
        .is_empty());
    push_image(&c, &r, "known", "v1", &[&random_bytes(10)]).await;
    assert!(referrers(&c, &r, "known", &nothing, None)
        .await
        .0
        .is_empty());
    assert!(referrers(&c, &r, "known", &sha512(b"x"), None)
        .await
        .0
        .is_empty());
    expect_error(
        c.get(r.url("/v2/known/referrers/sha256:abc"))
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    expect_error(
        c.get(r.url("/v2/known/referrers/latest"))
            .send()
            .await
            .unwrap(),
        400,
        "DIGEST_INVALID",
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn a_referrer_may_be_pushed_before_its_subject() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let subject = image_in(&c, &r, "early", &[&layer]).await;
    let subject_d = sha256(&subject);
    let data = artifact_blobs(&c, &r, "early").await;
    let sig = artifact(
        Some("application/vnd.example.sig.v1"),
        &subject,
        OCI_MANIFEST,
        &data,
        "early",
    );
    let resp = put_manifest(&c, &r, "early", "sig", OCI_MANIFEST, &sig).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "oci-subject"), subject_d);
    assert_no_manifest(&c, &r, "early", &subject_d).await;
    let (list, _) = referrers(&c, &r, "early", &subject_d, None).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sha256(&sig));
    push_manifest(&c, &r, "early", "v1", OCI_MANIFEST, &subject).await;
    let (list, _) = referrers(&c, &r, "early", &subject_d, None).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sha256(&sig));
    r.stop().await;
}

#[tokio::test]
async fn referrer_artifact_type_falls_back_to_the_config_media_type() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (subject, subject_d) = push_image(&c, &r, "fallback", "v1", &[&layer]).await;
    let data = artifact_blobs(&c, &r, "fallback").await;
    // An image manifest without artifactType is listed with its config's media type.
    let untyped = artifact(None, &subject, OCI_MANIFEST, &data, "untyped");
    push_manifest(
        &c,
        &r,
        "fallback",
        &sha256(&untyped),
        OCI_MANIFEST,
        &untyped,
    )
    .await;
    // An index without artifactType is listed without one.
    let mut index: Value =
        serde_json::from_slice(&index_of(OCI_INDEX, &[(OCI_MANIFEST, &subject)])).unwrap();
    index["subject"] = descriptor(OCI_MANIFEST, &subject);
    index["annotations"] = json!({"org.example.note": "index"});
    let index = serde_json::to_vec(&index).unwrap();
    let resp = put_manifest(&c, &r, "fallback", &sha256(&index), OCI_INDEX, &index).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(hdr(&resp, "oci-subject"), subject_d);

    let (list, _) = referrers(&c, &r, "fallback", &subject_d, None).await;
    assert_eq!(list.len(), 2);
    let find = |d: &str| {
        list.iter()
            .find(|e| e["digest"] == d)
            .unwrap_or_else(|| panic!("{d} not listed"))
            .clone()
    };
    let u = find(&sha256(&untyped));
    assert_eq!(u["artifactType"], EMPTY_CONFIG);
    assert_eq!(u["annotations"]["org.example.note"], "untyped");
    let i = find(&sha256(&index));
    assert_eq!(i["mediaType"], OCI_INDEX);
    assert_eq!(i["size"], index.len());
    assert!(i.get("artifactType").is_none(), "{i}");
    assert_eq!(i["annotations"]["org.example.note"], "index");
    let (filtered, _) = referrers(&c, &r, "fallback", &subject_d, Some(EMPTY_CONFIG)).await;
    assert_eq!(filtered.len(), 1);
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Tags list and catalog

#[tokio::test]
async fn tags_are_listed_in_order() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "sorted", &[&layer]).await;
    let tags = ["v2", "latest", "1.0", "v10", "_x", "a", "0", "v1.0-rc"];
    for t in tags {
        push_manifest(&c, &r, "sorted", t, OCI_MANIFEST, &m).await;
    }
    let mut expected: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    expected.sort();
    assert_eq!(tags_of(&c, &r, "sorted").await.unwrap(), expected);
    r.stop().await;
}

/// Follows `Link: <…>; rel="next"` from `first`, checking each page is at most `n` long;
/// returns every item and the Link headers seen.
async fn walk_pages(
    c: &Client,
    r: &TestRegistry,
    first: &str,
    key: &str,
    n: usize,
) -> (Vec<String>, Vec<String>) {
    let (mut items, mut links) = (Vec::new(), Vec::new());
    let mut next = Some(first.to_string());
    while let Some(path) = next.take() {
        let resp = c.get(r.url(&path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let link = resp
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_string());
        let v: Value = resp.json().await.unwrap();
        let page = strings(&v[key]);
        assert!(page.len() <= n, "{path}: {page:?}");
        if let Some(l) = link {
            assert_eq!(page.len(), n, "a page with a next link is full");
            let target = l
                .strip_prefix('<')
                .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                .unwrap_or_else(|| panic!("Link {l:?} is not <…>; rel=\"next\""));
            next = Some(target.to_string());
            links.push(l);
        }
        items.extend(page);
        assert!(links.len() <= 100, "pagination does not end");
    }
    (items, links)
}

#[tokio::test]
async fn tags_list_paginates_with_n_last_and_link() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let m = image_in(&c, &r, "pages", &[&layer]).await;
    let tags: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    for t in tags.iter().rev() {
        push_manifest(&c, &r, "pages", t, OCI_MANIFEST, &m).await;
    }
    let (items, links) = walk_pages(&c, &r, "/v2/pages/tags/list?n=5", "tags", 5).await;
    assert_eq!(items, tags);
    assert_eq!(
        links,
        [
            "</v2/pages/tags/list?n=5&last=t04>; rel=\"next\"",
            "</v2/pages/tags/list?n=5&last=t09>; rel=\"next\"",
        ]
    );
    // A page that reaches the end exactly has no Link.
    for n in [12, 13, 1000] {
        let (items, links) =
            walk_pages(&c, &r, &format!("/v2/pages/tags/list?n={n}"), "tags", n).await;
        assert_eq!(items, tags);
        assert!(links.is_empty(), "n={n}");
    }
    let (items, links) = walk_pages(&c, &r, "/v2/pages/tags/list?n=3&last=t08", "tags", 3).await;
    assert_eq!(items, ["t09", "t10", "t11"]);
    assert!(links.is_empty());
    // `last` alone returns everything after it; `last` need not be an existing tag.
    let (items, _) = walk_pages(&c, &r, "/v2/pages/tags/list?last=t05", "tags", 100).await;
    assert_eq!(items, tags[6..]);
    let (items, _) = walk_pages(&c, &r, "/v2/pages/tags/list?last=t055", "tags", 100).await;
    assert_eq!(items, tags[6..]);
    let (items, _) = walk_pages(&c, &r, "/v2/pages/tags/list?last=zzz", "tags", 100).await;
    assert!(items.is_empty());
    // n=0: "MUST return an empty list, and MUST NOT include a Link header".
    let (items, links) = walk_pages(&c, &r, "/v2/pages/tags/list?n=0", "tags", 0).await;
    assert!(items.is_empty() && links.is_empty());
    for bad in ["n=abc", "n=-1"] {
        let resp = c
            .get(r.url(&format!("/v2/pages/tags/list?{bad}")))
            .send()
            .await
            .unwrap();
        expect_error(resp, 400, "UNSUPPORTED").await;
    }
    r.stop().await;
}

#[tokio::test]
async fn tags_list_of_an_unknown_repository_is_name_unknown() {
    let r = TestRegistry::start().await;
    let c = client();
    expect_error(
        c.get(r.url("/v2/nothing/tags/list")).send().await.unwrap(),
        404,
        "NAME_UNKNOWN",
    )
    .await;
    // Blobs alone do not make a repository.
    push_blob(&c, &r, "blobsonly", &random_bytes(10)).await;
    expect_error(
        c.get(r.url("/v2/blobsonly/tags/list?n=10"))
            .send()
            .await
            .unwrap(),
        404,
        "NAME_UNKNOWN",
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn repositories_whose_names_share_a_prefix_stay_apart() {
    let r = TestRegistry::start().await;
    let c = client();
    // The same manifest bytes under names that sort next to each other.
    let layer = random_bytes(100);
    let config = config_bytes();
    let m = image_manifest(&config, &[&layer]);
    let d = sha256(&m);
    let names = ["p", "p/q", "p-q", "pq", "p/q/r"];
    for n in names {
        push_blob(&c, &r, n, &config).await;
        push_blob(&c, &r, n, &layer).await;
        push_manifest(
            &c,
            &r,
            n,
            &format!("tag-of-{}", n.replace('/', "_")),
            OCI_MANIFEST,
            &m,
        )
        .await;
        push_manifest(&c, &r, n, "shared", OCI_MANIFEST, &m).await;
    }
    for n in names {
        let own = format!("tag-of-{}", n.replace('/', "_"));
        assert_eq!(
            tags_of(&c, &r, n).await.unwrap(),
            ["shared".to_string(), own]
        );
    }
    // Deleting the manifest in one repository removes that repository's tags only.
    assert_eq!(
        c.delete(r.url(&format!("/v2/p/manifests/{d}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(tags_of(&c, &r, "p").await, None);
    for n in &names[1..] {
        assert_eq!(
            tag_target(&c, &r, n, "shared").await,
            Some(d.clone()),
            "{n}"
        );
        assert_eq!(tags_of(&c, &r, n).await.unwrap().len(), 2, "{n}");
    }
    // Referrers are per repository too.
    push_blob(&c, &r, "p/q", b"{}").await;
    push_blob(&c, &r, "p/q", &layer).await;
    let sig = artifact(
        Some("application/vnd.example.sig.v1"),
        &m,
        OCI_MANIFEST,
        &layer,
        "pq",
    );
    push_manifest(&c, &r, "p/q", &sha256(&sig), OCI_MANIFEST, &sig).await;
    assert_eq!(referrers(&c, &r, "p/q", &d, None).await.0.len(), 1);
    for n in ["p", "p-q", "pq", "p/q/r"] {
        assert!(referrers(&c, &r, n, &d, None).await.0.is_empty(), "{n}");
    }
    r.stop().await;
}

#[tokio::test]
async fn catalog_lists_nested_names_in_order_and_paginates() {
    let r = TestRegistry::start().await;
    let c = client();
    assert!(catalog(&c, &r).await.is_empty());
    let layer = random_bytes(100);
    let names = [
        "b",
        "a/b/c",
        "a",
        "a/b",
        "a-b",
        "a.b",
        "z/y/x/w/v",
        "library/alpine",
    ];
    for n in names {
        push_image(&c, &r, n, "latest", &[&layer]).await;
    }
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(catalog(&c, &r).await, expected);
    let (items, links) = walk_pages(&c, &r, "/v2/_catalog?n=3", "repositories", 3).await;
    assert_eq!(items, expected);
    assert_eq!(
        links,
        [
            "</v2/_catalog?n=3&last=a.b>; rel=\"next\"",
            "</v2/_catalog?n=3&last=b>; rel=\"next\""
        ]
    );
    // A name in `last` is escaped in the Link.
    let (items, links) = walk_pages(&c, &r, "/v2/_catalog?n=4", "repositories", 4).await;
    assert_eq!(items, expected);
    assert_eq!(links, ["</v2/_catalog?n=4&last=a%2Fb>; rel=\"next\""]);
    let (items, links) = walk_pages(&c, &r, "/v2/_catalog?n=8", "repositories", 8).await;
    assert_eq!(items, expected);
    assert!(links.is_empty());
    let (items, _) = walk_pages(&c, &r, "/v2/_catalog?last=a%2Fb", "repositories", 100).await;
    let after: Vec<String> = expected
        .iter()
        .filter(|n| n.as_str() > "a/b")
        .cloned()
        .collect();
    assert_eq!(items, after);
    let (items, links) = walk_pages(&c, &r, "/v2/_catalog?n=0", "repositories", 0).await;
    assert!(items.is_empty() && links.is_empty());
    expect_error(
        c.get(r.url("/v2/_catalog?n=x")).send().await.unwrap(),
        400,
        "UNSUPPORTED",
    )
    .await;
    r.stop().await;
}

#[tokio::test]
async fn a_repository_leaves_the_catalog_with_its_last_manifest() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(100);
    let (_, d1) = push_image(&c, &r, "going/away", "v1", &[&layer]).await;
    let (_, d2) = push_image(&c, &r, "going/away", "v2", &[&layer]).await;
    push_image(&c, &r, "staying", "v1", &[&layer]).await;
    assert_eq!(catalog(&c, &r).await, ["going/away", "staying"]);
    assert_eq!(
        c.delete(r.url(&format!("/v2/going/away/manifests/{d1}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(catalog(&c, &r).await, ["going/away", "staying"]);
    // Untagging is not deleting: the repository still holds a manifest.
    assert_eq!(
        c.delete(r.url("/v2/going/away/manifests/v2"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(catalog(&c, &r).await, ["going/away", "staying"]);
    assert_eq!(
        c.delete(r.url(&format!("/v2/going/away/manifests/{d2}")))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(catalog(&c, &r).await, ["staying"]);
    assert_eq!(tags_of(&c, &r, "going/away").await, None);
    // Its blobs are still linked, so pushing again brings it back.
    push_image(&c, &r, "going/away", "v3", &[&layer]).await;
    assert_eq!(catalog(&c, &r).await, ["going/away", "staying"]);
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Repository names

#[tokio::test]
async fn nested_names_work_on_every_endpoint() {
    let r = TestRegistry::start().await;
    let c = client();
    for name in [
        "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
        "my-app.v2/sub__name/x--y/z_z",
        // Names made of the endpoint words themselves.
        "library/blobs/uploads",
        "manifests/tags/list",
        "v2/referrers/blobs",
    ] {
        let layer = random_bytes(1000);
        let d = sha256(&layer);
        let (location, _) = open_upload(&c, &r, name).await;
        assert_eq!(
            patch(&c, &r, &location, &layer[..500], Some(0))
                .await
                .status(),
            202
        );
        assert_eq!(upload_range(&c, &r, &location).await, "0-499");
        assert_eq!(
            finish(&c, &r, &location, &d, &layer[500..]).await.status(),
            201
        );
        assert_blob(&c, &r, name, &d, &layer).await;
        let m = image_in(&c, &r, name, &[&layer]).await;
        let md = push_manifest(&c, &r, name, "v1", OCI_MANIFEST, &m).await;
        assert_manifest(&c, &r, name, "v1", OCI_MANIFEST, &m).await;
        assert_eq!(tags_of(&c, &r, name).await.unwrap(), ["v1"]);
        assert!(referrers(&c, &r, name, &md, None).await.0.is_empty());
        let resp = c
            .post(r.url(&format!(
                "/v2/{name}/x/blobs/uploads/?mount={d}&from={name}"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "mount into {name}/x");
        assert_blob(&c, &r, &format!("{name}/x"), &d, &layer).await;
        assert_eq!(
            c.delete(r.url(&format!("/v2/{name}/manifests/v1")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        assert_eq!(
            c.delete(r.url(&format!("/v2/{name}/blobs/{d}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        assert_no_blob(&c, &r, name, &d).await;
    }
    let listed = catalog(&c, &r).await;
    assert!(
        listed.contains(&"a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p".to_string()),
        "{listed:?}"
    );
    assert!(
        listed.contains(&"library/blobs/uploads".to_string()),
        "{listed:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn invalid_names_are_refused_and_never_a_server_error() {
    let r = TestRegistry::start().await;
    let c = client();
    let d = sha256(b"x");
    // 257 characters: over the 255 a name may have.
    let long = vec!["a"; 129].join("/");
    let bad_names = [
        "Upper",
        "a/B",
        "-a",
        "a-",
        "a__-b",
        "a..b",
        "a._b",
        "a%2Fb",
        "a%20b",
        "a:b",
        long.as_str(),
    ];
    for name in bad_names {
        for (method, path) in [
            (Method::GET, format!("/v2/{name}/tags/list")),
            (Method::GET, format!("/v2/{name}/manifests/latest")),
            (Method::PUT, format!("/v2/{name}/manifests/latest")),
            (Method::DELETE, format!("/v2/{name}/manifests/{d}")),
            (Method::GET, format!("/v2/{name}/blobs/{d}")),
            (Method::DELETE, format!("/v2/{name}/blobs/{d}")),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (
                Method::POST,
                format!("/v2/{name}/blobs/uploads/?digest={d}"),
            ),
            (Method::GET, format!("/v2/{name}/referrers/{d}")),
        ] {
            let resp = c
                .request(method, r.url(&path))
                .body(b"x".to_vec())
                .send()
                .await
                .unwrap();
            expect_error(resp, 400, "NAME_INVALID").await;
        }
    }
    // Paths an HTTP client would normalize, sent exactly as written.
    let raw: &[(&str, &str, u16, &str)] = &[
        ("GET", "/v2/../etc/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a/../../b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/%2e%2e/b/manifests/latest", 400, "NAME_INVALID"),
        ("GET", "/v2/a/%2E%2E/tags/list", 400, "NAME_INVALID"),
        (
            "POST",
            "/v2/a/%2e%2e/%2e%2e/x/blobs/uploads/",
            400,
            "NAME_INVALID",
        ),
        ("GET", "/v2/./a/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a/./tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2//a/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a//tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a//b/tags/list", 400, "NAME_INVALID"),
        ("POST", "/v2/a//blobs/uploads/", 400, "NAME_INVALID"),
        ("GET", "/v2/a/%2F/tags/list", 400, "NAME_INVALID"),
        ("GET", "/v2/a/tags/list/", 404, "UNSUPPORTED"),
        ("GET", "/v2/a/manifests/latest/", 404, "UNSUPPORTED"),
        ("GET", "/v2/a/b/", 404, "UNSUPPORTED"),
        (
            "GET",
            "/v2/a/manifests/..%2f..%2fdockyard.redb",
            400,
            "MANIFEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/blobs/sha256:..%2f..%2f..%2fdockyard.redb",
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/a/blobs/uploads/..%2f..%2fdockyard.redb",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        (
            "GET",
            "/v2/a/blobs/uploads/../../../dockyard.redb",
            404,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            "/v2/a/blobs/uploads/..",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
    ];
    for (method, target, status, code) in raw {
        let resp = raw_request(r.addr, method, target).await;
        let body = String::from_utf8_lossy(&resp.body);
        assert_eq!(resp.status, *status, "{method} {target}: {body}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{method} {target}"
        );
        let v: Value =
            serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
        assert_eq!(v["errors"][0]["code"], *code, "{method} {target}");
    }
    // None of it created anything.
    assert!(catalog(&c, &r).await.is_empty());
    assert_eq!(upload_files(&r), 0);
    assert!(r.root.join("dockyard.redb").is_file());
    r.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Reference counts, read from the database after the server has stopped

mod refcounts {
    use redb::ReadableDatabase;

    use dockyard::db::schema::{decode, BlobRecord, ManifestRecord, BLOBS, MANIFESTS, REPOS};

    use super::*;

    /// The counts in a stopped registry's database.
    struct Counts {
        db: redb::Database,
    }

    impl Counts {
        async fn of(r: TestRegistry) -> Counts {
            let path = r.root.join("dockyard.redb");
            r.stop().await;
            let db = redb::Database::open(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
            Counts { db }
        }

        fn blob(&self, digest: &str) -> Option<u64> {
            let tx = self.db.begin_read().unwrap();
            let t = tx.open_table(BLOBS).unwrap();
            let v = t.get(digest).unwrap()?;
            Some(decode::<BlobRecord>(v.value()).unwrap().refcount)
        }

        fn manifest(&self, repo: &str, digest: &str) -> Option<u64> {
            let tx = self.db.begin_read().unwrap();
            let t = tx.open_table(MANIFESTS).unwrap();
            let v = t.get((repo, digest)).unwrap()?;
            Some(decode::<ManifestRecord>(v.value()).unwrap().refcount)
        }

        fn manifests_in(&self, repo: &str) -> Option<u64> {
            let tx = self.db.begin_read().unwrap();
            let t = tx.open_table(REPOS).unwrap();
            let v = t.get(repo).unwrap()?;
            Some(v.value())
        }
    }

    fn config_digest(manifest: &[u8]) -> String {
        let v: Value = serde_json::from_slice(manifest).unwrap();
        v["config"]["digest"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn reference_counts_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();

        // Two repositories share a layer; each has its own config.
        let r = TestRegistry::start_at(root).await;
        let c = client();
        let shared = random_bytes(1000);
        let only_a = random_bytes(1000);
        let (ma, da) = push_image(&c, &r, "a", "v1", &[&shared, &only_a]).await;
        let (mb, db) = push_image(&c, &r, "b", "v1", &[&shared]).await;
        // A second tag on the same manifest, and an untagged sibling in `a`.
        push_manifest(&c, &r, "a", "v2", OCI_MANIFEST, &ma).await;
        let sibling = image_in(&c, &r, "a", &[&shared]).await;
        let ds = push_manifest(&c, &r, "a", &sha256(&sibling), OCI_MANIFEST, &sibling).await;
        // An index over both, tagged.
        let index = index_of(OCI_INDEX, &[(OCI_MANIFEST, &ma), (OCI_MANIFEST, &sibling)]);
        let di = push_manifest(&c, &r, "a", "multi", OCI_INDEX, &index).await;
        // Refused pushes and deletes count nothing.
        let missing = image_manifest(&config_bytes(), &[&shared]);
        expect_error(
            put_manifest(&c, &r, "a", "bad", OCI_MANIFEST, &missing).await,
            400,
            "MANIFEST_BLOB_UNKNOWN",
        )
        .await;
        expect_error(
            c.delete(r.url(&format!("/v2/a/manifests/{ds}")))
                .send()
                .await
                .unwrap(),
            409,
            "DENIED",
        )
        .await;
        // Re-pushing identical bytes counts nothing twice.
        push_manifest(&c, &r, "a", "v1", OCI_MANIFEST, &ma).await;
        push_manifest(&c, &r, "a", "multi", OCI_INDEX, &index).await;
        drop(c);

        let counts = Counts::of(r).await;
        // `shared` is listed by a@v1, the sibling in a, and b@v1.
        assert_eq!(counts.blob(&sha256(&shared)), Some(3));
        assert_eq!(counts.blob(&sha256(&only_a)), Some(1));
        assert_eq!(counts.blob(&config_digest(&ma)), Some(1));
        assert_eq!(counts.blob(&config_digest(&mb)), Some(1));
        assert_eq!(counts.blob(&config_digest(&missing)), None);
        // a@v1: tags v1 and v2, plus the index.
        assert_eq!(counts.manifest("a", &da), Some(3));
        assert_eq!(
            counts.manifest("a", &ds),
            Some(1),
            "listed by the index only"
        );
        assert_eq!(counts.manifest("a", &di), Some(1), "tagged once");
        assert_eq!(counts.manifest("b", &db), Some(1));
        assert_eq!(counts.manifests_in("a"), Some(3));
        assert_eq!(counts.manifests_in("b"), Some(1));
        drop(counts);

        let r = TestRegistry::start_at(root).await;
        let c = client();
        // Deleting b's manifest releases its layer and config.
        assert_eq!(
            c.delete(r.url(&format!("/v2/b/manifests/{db}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        // Untagging and moving tags adjust the manifest counts.
        assert_eq!(
            c.delete(r.url("/v2/a/manifests/v2"))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        push_manifest(&c, &r, "a", "v1", OCI_MANIFEST, &sibling).await;
        drop(c);

        let counts = Counts::of(r).await;
        assert_eq!(counts.blob(&sha256(&shared)), Some(2));
        assert_eq!(counts.blob(&config_digest(&mb)), Some(0));
        assert_eq!(counts.manifest("b", &db), None);
        assert_eq!(counts.manifests_in("b"), None);
        assert_eq!(
            counts.manifest("a", &da),
            Some(1),
            "only the index lists it now"
        );
        assert_eq!(
            counts.manifest("a", &ds),
            Some(2),
            "the index and the tag v1"
        );
        drop(counts);

        // Deleting the index releases its children, which can then go too.
        let r = TestRegistry::start_at(root).await;
        let c = client();
        assert_eq!(
            c.delete(r.url(&format!("/v2/a/manifests/{di}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        assert_eq!(
            c.delete(r.url(&format!("/v2/a/manifests/{da}")))
                .send()
                .await
                .unwrap()
                .status(),
            202
        );
        drop(c);

        let counts = Counts::of(r).await;
        assert_eq!(counts.manifest("a", &di), None);
        assert_eq!(counts.manifest("a", &da), None);
        assert_eq!(counts.manifest("a", &ds), Some(1), "the tag v1 only");
        assert_eq!(counts.blob(&sha256(&shared)), Some(1));
        assert_eq!(counts.blob(&sha256(&only_a)), Some(0));
        assert_eq!(counts.blob(&config_digest(&ma)), Some(0));
        assert_eq!(counts.manifests_in("a"), Some(1));
    }
}
