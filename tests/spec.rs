//! Optional parts of the spec that real tools rely on: a mount without `from`, a chunk whose
//! `Content-Range` must match its body, and RFC 6750 `error` parameters in Bearer challenges.

use dockyard::config::AuthMode;
use futures_util::stream;

use crate::util::*;

const PW: &str = "correct horse";

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn mount(c: &reqwest::Client, r: &TestRegistry, to: &str, digest: &str) -> reqwest::Response {
    c.post(r.url(&format!("/v2/{to}/blobs/uploads/?mount={digest}")))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap()
}

async fn head_blob(c: &reqwest::Client, r: &TestRegistry, repo: &str, digest: &str) -> u16 {
    c.head(r.url(&format!("/v2/{repo}/blobs/{digest}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// What a mount answer tells the client: the status, whether it names the blob, and
/// whether it opened an upload session (and in which repository).
fn shape(resp: &reqwest::Response, to: &str) -> (u16, bool, bool) {
    let location = header(resp, "location").unwrap_or_default();
    (
        resp.status().as_u16(),
        header(resp, "docker-content-digest").is_some(),
        location.starts_with(&format!("/v2/{to}/blobs/uploads/"))
            && header(resp, "docker-upload-uuid").is_some(),
    )
}

#[tokio::test]
async fn a_mount_without_from_takes_the_blob_from_any_repository_that_holds_it() {
    let r = TestRegistry::start().await;
    let c = client();
    let layer = random_bytes(3000);
    let d = sha256(&layer);
    push_image(&c, &r, "source/app", "v1", &[&layer]).await;
    let resp = mount(&c, &r, "target", &d).await;
    assert_eq!(shape(&resp, "target"), (201, true, false));
    assert_eq!(
        header(&resp, "location").as_deref(),
        Some(format!("/v2/target/blobs/{d}").as_str())
    );
    assert_eq!(head_blob(&c, &r, "target", &d).await, 200);
    // A digest nobody holds: the spec's fallback, an upload session.
    let unknown = sha256(&random_bytes(10));
    let resp = mount(&c, &r, "target", &unknown).await;
    assert_eq!(shape(&resp, "target"), (202, false, true));
    assert_eq!(head_blob(&c, &r, "target", &unknown).await, 404);
    // A bad digest is refused as in any mount.
    let resp = mount(&c, &r, "target", "sha256:nope").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    r.stop().await;
}

#[tokio::test]
async fn a_mount_without_from_looks_only_where_the_caller_may_pull_and_reveals_nothing() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    r.add_user("bob", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("bob", "bob/**", "pull,push").await;
    let (alice, bob) = (client_as("alice", PW), client_as("bob", PW));
    let secret = random_bytes(3000);
    let d = sha256(&secret);
    push_image(&bob, &r, "bob/private", "v1", &[&secret]).await;

    // alice cannot pull bob/private: the answer is the one for a digest nobody holds.
    let unknown = sha256(&random_bytes(10));
    let refused = mount(&alice, &r, "alice/app", &d).await;
    let nobody = mount(&alice, &r, "alice/app", &unknown).await;
    assert_eq!(shape(&refused, "alice/app"), (202, false, true));
    assert_eq!(shape(&nobody, "alice/app"), (202, false, true));
    let body = |resp: reqwest::Response| async move { resp.text().await.unwrap() };
    assert_eq!(body(refused).await, body(nobody).await);
    assert_eq!(head_blob(&alice, &r, "alice/app", &d).await, 404);

    // Once she may pull it, the same request mounts it.
    r.grant("alice", "bob/private", "pull").await;
    let resp = mount(&alice, &r, "alice/app", &d).await;
    assert_eq!(shape(&resp, "alice/app"), (201, true, false));
    assert_eq!(head_blob(&alice, &r, "alice/app", &d).await, 200);

    // Anonymous may pull public/*: a blob there mounts for bob, who has no grant on it.
    let shared = random_bytes(2000);
    let ds = sha256(&shared);
    r.grant("anonymous", "public/*", "pull").await;
    r.grant("alice", "public/*", "push").await;
    push_image(&alice, &r, "public/base", "v1", &[&shared]).await;
    let resp = mount(&bob, &r, "bob/app", &ds).await;
    assert_eq!(shape(&resp, "bob/app"), (201, true, false));
    // Without push on the target, nothing at all.
    assert_eq!(mount(&bob, &r, "alice/x", &ds).await.status(), 403);
    r.stop().await;
}

/// A PATCH whose body is sent chunked (no Content-Length), so only the bytes that arrive
/// can contradict the `Content-Range`.
async fn patch_streamed(
    c: &reqwest::Client,
    r: &TestRegistry,
    location: &str,
    range: &str,
    body: &[u8],
) -> reqwest::Response {
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64).map(|p| Ok(p.to_vec())).collect();
    c.patch(r.url(location))
        .header("Content-Range", range)
        .body(reqwest::Body::wrap_stream(stream::iter(parts)))
        .send()
        .await
        .unwrap()
}

async fn upload_range(c: &reqwest::Client, r: &TestRegistry, location: &str) -> String {
    let resp = c.get(r.url(location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    header(&resp, "range").unwrap()
}

#[tokio::test]
async fn a_chunk_whose_content_range_disagrees_with_its_body_is_416_and_changes_nothing() {
    let r = TestRegistry::start().await;
    let c = client();
    let bytes = random_bytes(1000);
    let d = sha256(&bytes);
    let resp = c
        .post(r.url("/v2/ranges/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(&resp, "location").unwrap();
    let ok = patch_streamed(&c, &r, &location, "0-99", &bytes[..100]).await;
    assert_eq!(ok.status(), 202);
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");

    // The body is shorter, or longer, than the range says (streamed: found as it arrives).
    for (range, body) in [
        ("100-299", &bytes[100..200]),
        ("100-199", &bytes[100..300]),
        ("100-199", &bytes[100..101]),
    ] {
        let resp = patch_streamed(&c, &r, &location, range, body).await;
        assert_eq!(resp.status(), 416, "{range} with {} bytes", body.len());
        assert_eq!(header(&resp, "range").as_deref(), Some("0-99"));
        assert_eq!(error_code(resp).await, "BLOB_UPLOAD_INVALID");
        assert_eq!(upload_range(&c, &r, &location).await, "0-99", "{range}");
    }
    // Content-Length disagrees with the range: refused before a byte is read.
    let resp = c
        .patch(r.url(&location))
        .header("Content-Range", "100-199")
        .body(bytes[100..250].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_INVALID");
    // A complete length smaller than the range's end is no range at all.
    let resp = c
        .patch(r.url(&location))
        .header("Content-Range", "bytes 100-199/150")
        .body(bytes[100..200].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");

    // The closing PUT's chunk is held to the same rule.
    let close = format!("{location}?digest={d}");
    let resp = c
        .put(r.url(&close))
        .header("Content-Range", "100-999")
        .body(reqwest::Body::wrap_stream(stream::iter(vec![Ok::<
            _,
            std::io::Error,
        >(
            bytes[100..900].to_vec(),
        )])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(upload_range(&c, &r, &location).await, "0-99");
    assert_eq!(head_blob(&c, &r, "ranges", &d).await, 404);

    // Honest chunks, with and without a complete length, finish the blob intact.
    let resp = patch_streamed(&c, &r, &location, "bytes 100-499/1000", &bytes[100..500]).await;
    assert_eq!(resp.status(), 202);
    let resp = c
        .put(r.url(&close))
        .header("Content-Range", "bytes=500-999")
        .body(bytes[500..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let got = c
        .get(r.url(&format!("/v2/ranges/blobs/{d}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), bytes.as_slice());
    r.stop().await;
}

async fn token(r: &TestRegistry, c: &reqwest::Client, scope: &str) -> String {
    let resp = c
        .get(r.url("/token"))
        .query(&[("service", "dockyard"), ("scope", scope)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["token"].as_str().unwrap().to_string()
}

async fn challenge_of(resp: reqwest::Response) -> (u16, Option<String>, String) {
    let status = resp.status().as_u16();
    let challenge = header(&resp, "www-authenticate");
    let body = resp.text().await.unwrap();
    (status, challenge, body)
}

#[tokio::test]
async fn bearer_challenges_say_invalid_token_or_insufficient_scope() {
    let r = TestRegistry::start_auth(AuthMode::Token, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("alice", "shared/*", "pull").await;
    let alice = client_as("alice", PW);
    let realm = format!("http://{}/token", r.addr);
    let upload = |c: reqwest::Client, repo: &'static str| {
        let url = r.url(&format!("/v2/{repo}/blobs/uploads/"));
        async move { c.post(url).send().await.unwrap() }
    };

    // No token at all: a plain challenge, no error (RFC 6750 §3.1).
    let (s, ch, _) = challenge_of(upload(client(), "alice/app").await).await;
    assert_eq!(s, 401);
    assert_eq!(
        ch.unwrap(),
        format!(
            r#"Bearer realm="{realm}",service="dockyard",scope="repository:alice/app:pull,push""#
        )
    );
    // A token that is not one of ours.
    let (s, ch, body) =
        challenge_of(upload(client_with("Bearer garbage"), "alice/app").await).await;
    assert_eq!(s, 401);
    assert_eq!(
        ch.unwrap(),
        format!(r#"Bearer realm="{realm}",service="dockyard",error="invalid_token""#)
    );
    assert!(body.contains("UNAUTHORIZED"), "{body}");
    // A valid token without the scope her grants would give: insufficient_scope, with the
    // scope to ask for, so the client fetches a new token.
    let t = token(&r, &alice, "repository:alice/app:pull").await;
    let bearer = client_with(&format!("Bearer {t}"));
    let (s, ch, _) = challenge_of(upload(bearer.clone(), "alice/app").await).await;
    assert_eq!(s, 401);
    assert_eq!(
        ch.unwrap(),
        format!(
            r#"Bearer realm="{realm}",service="dockyard",scope="repository:alice/app:pull,push",error="insufficient_scope""#
        )
    );
    let (s, ch, _) = challenge_of(
        bearer
            .head(r.url("/v2/alice/other/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(ch
        .unwrap()
        .ends_with(r#"scope="repository:alice/other:pull",error="insufficient_scope""#));
    // The new token works.
    let t = token(&r, &alice, "repository:alice/app:pull,push").await;
    assert_eq!(
        upload(client_with(&format!("Bearer {t}")), "alice/app")
            .await
            .status(),
        202
    );
    // A user whom the grants refuse is denied, token or not.
    let t = token(&r, &alice, "repository:shared/app:pull,push").await;
    let resp = upload(client_with(&format!("Bearer {t}")), "shared/app").await;
    assert_eq!(resp.status(), 403);
    assert!(header(&resp, "www-authenticate").is_none());
    assert_eq!(error_code(resp).await, "DENIED");
    // An anonymous token lacking a scope: a login is what helps, so the plain challenge.
    let t = token(&r, &client(), "repository:alice/app:pull").await;
    let (s, ch, body) = challenge_of(
        client_with(&format!("Bearer {t}"))
            .get(r.url("/v2/alice/app/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(
        ch.unwrap(),
        format!(r#"Bearer realm="{realm}",service="dockyard",scope="repository:alice/app:pull""#)
    );
    assert!(body.contains("authentication required"), "{body}");
    r.stop().await;
}
