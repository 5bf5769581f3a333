//! Users, grants and authentication through the real server: Basic and token modes, 401 and
//! 403 with their challenges, per-user namespaces, changes that apply on the next request,
//! the catalog, mounts, tokens (narrowed, expired, tampered) and throttling.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use dockyard::admin::Command;
use dockyard::auth::users::Secret;
use dockyard::config::AuthMode;

use crate::util::*;

const PW: &str = "correct horse";

async fn status(resp: reqwest::Response) -> (u16, Option<String>, String) {
    let s = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap_or_default();
    (s, challenge, body)
}

fn code_of(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert!(v["errors"][0]["message"].is_string(), "{v}");
    v["errors"][0]["code"].as_str().unwrap().to_string()
}

async fn head_manifest(c: &reqwest::Client, r: &TestRegistry, repo: &str, tag: &str) -> u16 {
    c.head(r.url(&format!("/v2/{repo}/manifests/{tag}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn start_upload(c: &reqwest::Client, r: &TestRegistry, repo: &str) -> reqwest::Response {
    c.post(r.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .unwrap()
}

async fn catalog(c: &reqwest::Client, r: &TestRegistry, query: &str) -> Vec<String> {
    let resp = c
        .get(r.url(&format!("/v2/_catalog{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn basic_mode_lets_anonymous_pull_what_it_may_and_challenges_the_rest() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "public/**", "pull,push").await;
    r.grant("anonymous", "public/**", "pull").await;
    let alice = client_as("alice", PW);
    push_image(&alice, &r, "public/app", "v1", &[b"layer"]).await;

    let anon = client();
    assert_eq!(head_manifest(&anon, &r, "public/app", "v1").await, 200);
    let (s, challenge, body) = status(start_upload(&anon, &r, "public/app").await).await;
    assert_eq!(s, 401);
    assert_eq!(code_of(&body), "UNAUTHORIZED");
    assert_eq!(challenge.as_deref(), Some(r#"Basic realm="dockyard""#));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["detail"][0]["Action"], "push");

    // The base endpoint is how clients test credentials: anonymous is asked for them.
    let (s, challenge, _) = status(anon.get(r.url("/v2/")).send().await.unwrap()).await;
    assert_eq!((s, challenge.is_some()), (401, true));
    assert_eq!(alice.get(r.url("/v2/")).send().await.unwrap().status(), 200);
    let wrong = client_as("alice", "wrong");
    let (s, challenge, body) = status(wrong.get(r.url("/v2/")).send().await.unwrap()).await;
    assert_eq!((s, challenge.is_some()), (401, true));
    assert_eq!(code_of(&body), "UNAUTHORIZED");
    // Wrong credentials are refused even where anonymous callers may read.
    assert_eq!(head_manifest(&wrong, &r, "public/app", "v1").await, 401);
    assert_eq!(
        head_manifest(&client_as("nobody", PW), &r, "public/app", "v1").await,
        401
    );
    let (s, _, _) = status(
        client_with("Digest whatever")
            .get(r.url("/v2/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    // Anonymous may not see what is not granted, and is asked to log in.
    assert_eq!(head_manifest(&anon, &r, "private/x", "v1").await, 401);
    r.stop().await;
}

/// containers/image (skopeo, podman, buildah) answers a Basic challenge with an empty user
/// and password when it has no login: that is anonymous, never a failed login.
#[tokio::test]
async fn empty_basic_credentials_are_anonymous_and_never_throttled() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |a| {
        a.max_failures = 2;
        a.failure_window = Duration::from_secs(60);
    })
    .await;
    r.add_user("alice", PW).await;
    r.grant("alice", "**", "pull,push").await;
    r.grant("anonymous", "public/**", "pull").await;
    let alice = client_as("alice", PW);
    push_image(&alice, &r, "public/app", "v1", &[b"layer"]).await;
    push_image(&alice, &r, "private/app", "v1", &[b"layer"]).await;

    let empty = client_as("", "");
    for _ in 0..5 {
        assert_eq!(head_manifest(&empty, &r, "public/app", "v1").await, 200);
        // What anonymous may not do is asked for credentials, as with no header at all.
        let (s, challenge, body) = status(
            empty
                .get(r.url("/v2/private/app/manifests/v1"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (s, challenge.as_deref()),
            (401, Some(r#"Basic realm="dockyard""#))
        );
        assert!(body.contains("authentication required"), "{body}");
        let (s, _, _) = status(start_upload(&empty, &r, "public/app").await).await;
        assert_eq!(s, 401);
    }
    // None of that counted as a failed login from this address: alice still gets in.
    assert_eq!(alice.get(r.url("/v2/")).send().await.unwrap().status(), 200);
    assert_eq!(head_manifest(&alice, &r, "private/app", "v1").await, 200);
    // An empty user name with a password is a login, and a wrong one.
    let (s, _, body) = status(
        client_as("", "guess")
            .get(r.url("/v2/public/app/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert!(body.contains("incorrect username or password"), "{body}");
    r.stop().await;
}

#[tokio::test]
async fn users_own_their_namespaces_and_a_refused_push_changes_nothing() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    r.add_user("bob", PW).await;
    r.add_user("root", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("bob", "bob/**", "pull,push,delete").await;
    r.grant("root", "**", "admin").await;
    let (alice, bob, root) = (
        client_as("alice", PW),
        client_as("bob", PW),
        client_as("root", PW),
    );
    let (_, digest) = push_image(&alice, &r, "alice/app", "v1", &[b"a"]).await;
    push_image(&bob, &r, "bob/app", "v1", &[b"b"]).await;
    push_image(&alice, &r, "alice", "top", &[b"c"]).await; // `alice/**` includes `alice`

    // A known user without the permission is denied, not asked to log in again.
    let (s, challenge, body) = status(start_upload(&alice, &r, "bob/app").await).await;
    assert_eq!((s, challenge), (403, None));
    assert_eq!(code_of(&body), "DENIED");
    let manifest = image_manifest(b"cfg", &[]);
    let resp = alice
        .put(r.url("/v2/bob/new/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(head_manifest(&bob, &r, "alice/app", "v1").await, 403);
    assert_eq!(
        alice
            .get(r.url("/v2/bob/app/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // alice may push but not delete in her namespace; bob may delete in his.
    let resp = alice
        .delete(r.url(&format!("/v2/alice/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(head_manifest(&alice, &r, "alice/app", "v1").await, 200);
    let resp = bob
        .delete(r.url("/v2/bob/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // Nothing was created by the refused requests.
    assert_eq!(
        catalog(&root, &r, "").await,
        vec!["alice", "alice/app", "bob/app"]
    );
    // admin may do everything everywhere.
    assert_eq!(head_manifest(&root, &r, "alice/app", "v1").await, 200);
    let resp = root
        .delete(r.url(&format!("/v2/alice/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    r.stop().await;
}

#[tokio::test]
async fn revoke_passwd_and_del_take_effect_on_the_next_request() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "team/*", "pull,push").await;
    let alice = client_as("alice", PW);
    push_image(&alice, &r, "team/web", "v1", &[b"x"]).await;
    assert_eq!(head_manifest(&alice, &r, "team/web", "v1").await, 200);

    r.admin(Command::AclRevoke {
        subject: "alice".into(),
        pattern: "team/*".into(),
    })
    .await
    .unwrap();
    assert_eq!(head_manifest(&alice, &r, "team/web", "v1").await, 403);
    r.grant("alice", "team/*", "pull").await;
    assert_eq!(head_manifest(&alice, &r, "team/web", "v1").await, 200);
    assert_eq!(start_upload(&alice, &r, "team/web").await.status(), 403);

    // The credential cache holds the old password's verification; it must not outlive it.
    r.admin(Command::UserPasswd {
        name: "alice".into(),
        password: Secret::new("new password"),
    })
    .await
    .unwrap();
    assert_eq!(head_manifest(&alice, &r, "team/web", "v1").await, 401);
    let renewed = client_as("alice", "new password");
    assert_eq!(head_manifest(&renewed, &r, "team/web", "v1").await, 200);

    let out = r
        .admin(Command::UserDel {
            name: "alice".into(),
        })
        .await
        .unwrap();
    assert!(out.contains("deleted user alice"), "{out}");
    assert_eq!(head_manifest(&renewed, &r, "team/web", "v1").await, 401);
    // Re-adding the name does not bring back the old grants.
    r.add_user("alice", PW).await;
    assert_eq!(head_manifest(&alice, &r, "team/web", "v1").await, 403);
    r.stop().await;
}

#[tokio::test]
async fn the_catalog_lists_only_what_the_caller_may_pull() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("root", PW).await;
    r.add_user("alice", PW).await;
    r.grant("root", "**", "admin").await;
    r.grant("alice", "a/**", "pull").await;
    r.grant("anonymous", "public/*", "pull").await;
    let root = client_as("root", PW);
    for repo in ["a/one", "a/two", "b/secret", "public/z", "public/deep/no"] {
        push_image(&root, &r, repo, "v1", &[repo.as_bytes()]).await;
    }
    assert_eq!(
        catalog(&client_as("alice", PW), &r, "").await,
        vec!["a/one", "a/two", "public/z"]
    );
    assert_eq!(catalog(&client(), &r, "").await, vec!["public/z"]);
    assert_eq!(catalog(&root, &r, "").await.len(), 5);
    // Pages count only visible names, and the Link header follows them.
    let resp = client_as("alice", PW)
        .get(r.url("/v2/_catalog?n=2"))
        .send()
        .await
        .unwrap();
    let link = resp.headers()["link"].to_str().unwrap().to_string();
    assert!(link.contains("last=a%2Ftwo"), "{link}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["a/one", "a/two"]));
    assert_eq!(
        catalog(&client_as("alice", PW), &r, "?n=2&last=a%2Ftwo").await,
        vec!["public/z"]
    );
    // Wrong credentials are not treated as anonymous.
    let resp = client_as("alice", "nope")
        .get(r.url("/v2/_catalog"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    r.stop().await;
}

#[tokio::test]
async fn a_mount_needs_pull_on_the_source_and_otherwise_starts_a_plain_upload() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    r.add_user("bob", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("bob", "bob/**", "pull,push").await;
    let bob = client_as("bob", PW);
    let secret = b"bob's secret layer".to_vec();
    let d = push_blob(&bob, &r, "bob/private", &secret).await;
    let alice = client_as("alice", PW);
    let mount = |c: &reqwest::Client, to: &str| {
        c.post(r.url(&format!(
            "/v2/{to}/blobs/uploads/?mount={d}&from=bob/private"
        )))
        .send()
    };
    // Without pull on the source: the same 202 as for a blob that does not exist.
    let resp = mount(&alice, "alice/app").await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("location").is_some());
    let resp = alice
        .head(r.url(&format!("/v2/alice/app/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "nothing was mounted");
    // Without push on the target: denied outright.
    assert_eq!(mount(&bob, "alice/app").await.unwrap().status(), 403);
    // With both: mounted.
    r.grant("alice", "bob/private", "pull").await;
    assert_eq!(mount(&alice, "alice/app").await.unwrap().status(), 201);
    r.stop().await;
}

fn claims_of(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).expect("JWT-shaped token");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn get_token(r: &TestRegistry, c: &reqwest::Client, scope: &str) -> reqwest::Response {
    c.get(r.url("/token"))
        .query(&[("service", "dockyard"), ("scope", scope)])
        .send()
        .await
        .unwrap()
}

async fn token_for(r: &TestRegistry, c: &reqwest::Client, scope: &str) -> String {
    let resp = get_token(r, c, scope).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert!(v["issued_at"].is_string());
    v["token"].as_str().unwrap().to_string()
}

fn bearer(token: &str) -> reqwest::Client {
    client_with(&format!("Bearer {token}"))
}

#[tokio::test]
async fn token_mode_challenges_with_its_own_token_service_and_narrows_scopes() {
    let r = TestRegistry::start_auth(AuthMode::Token, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("alice", "shared/*", "pull").await;
    r.grant("anonymous", "public/*", "pull").await;

    let (s, challenge, body) = status(client().get(r.url("/v2/")).send().await.unwrap()).await;
    assert_eq!(s, 401);
    assert_eq!(code_of(&body), "UNAUTHORIZED");
    let realm = format!("http://{}/token", r.addr);
    assert_eq!(
        challenge.as_deref(),
        Some(format!(r#"Bearer realm="{realm}",service="dockyard""#).as_str())
    );
    let (s, challenge, _) = status(start_upload(&client(), &r, "alice/app").await).await;
    assert_eq!(s, 401);
    assert_eq!(
        challenge.as_deref(),
        Some(
            format!(r#"Bearer realm="{realm}",service="dockyard",scope="repository:alice/app:pull,push""#)
                .as_str()
        )
    );

    // alice asks for pull and push on shared/app: she gets pull only.
    let alice = client_as("alice", PW);
    let t = token_for(&r, &alice, "repository:shared/app:pull,push").await;
    let c = claims_of(&t);
    assert_eq!(c["sub"], "alice");
    assert_eq!(
        c["access"],
        serde_json::json!([{"type": "repository", "name": "shared/app", "actions": ["pull"]}])
    );
    // Using it to push: the grants would not allow it either, so DENIED.
    let (s, _, body) = status(start_upload(&bearer(&t), &r, "shared/app").await).await;
    assert_eq!((s, code_of(&body).as_str()), (403, "DENIED"));

    // A token for her own namespace works for exactly its scope.
    let t = token_for(&r, &alice, "repository:alice/app:pull,push").await;
    push_image(&bearer(&t), &r, "alice/app", "v1", &[b"l"]).await;
    let t = token_for(&r, &alice, "repository:alice/app:pull").await;
    assert_eq!(head_manifest(&bearer(&t), &r, "alice/app", "v1").await, 200);
    // Her grants allow push but this token does not carry it: a new token is needed.
    let (s, challenge, _) = status(start_upload(&bearer(&t), &r, "alice/app").await).await;
    assert_eq!(s, 401);
    assert!(challenge
        .unwrap()
        .contains(r#"scope="repository:alice/app:pull,push""#));
    // A token is for the repositories it names only.
    assert_eq!(
        head_manifest(&bearer(&t), &r, "alice/other", "v1").await,
        401
    );

    // Anonymous tokens carry anonymous grants; wrong credentials get no token.
    let t = token_for(
        &r,
        &client(),
        "repository:public/x:pull repository:alice/app:pull",
    )
    .await;
    let c = claims_of(&t);
    assert_eq!(c["sub"], "");
    assert_eq!(c["access"].as_array().unwrap().len(), 1);
    assert_eq!(c["access"][0]["name"], "public/x");
    // Empty Basic credentials (what containers/image sends without a login) are anonymous.
    let t = token_for(
        &r,
        &client_as("", ""),
        "repository:public/x:pull repository:alice/app:pull",
    )
    .await;
    let c = claims_of(&t);
    assert_eq!(c["sub"], "");
    assert_eq!(c["access"].as_array().unwrap().len(), 1);
    let (s, challenge, _) =
        status(get_token(&r, &client_as("alice", "bad"), "repository:alice/app:pull").await).await;
    assert_eq!(s, 401);
    assert!(challenge.unwrap().starts_with("Basic "));

    // OAuth2 password grant (POST).
    let resp = client()
        .post(r.url("/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=password&service=dockyard&client_id=test&username=alice&password=correct+horse&scope=repository%3Aalice%2Fapp%3Apull")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["scope"], "repository:alice/app:pull");
    let t = v["access_token"].as_str().unwrap();
    assert_eq!(head_manifest(&bearer(t), &r, "alice/app", "v1").await, 200);
    let resp = client()
        .post(r.url("/token"))
        .body("grant_type=password&username=alice&password=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Basic credentials are accepted on the API in token mode too (handy for curl).
    assert_eq!(head_manifest(&alice, &r, "alice/app", "v1").await, 200);
    r.stop().await;
}

#[tokio::test]
async fn expired_tampered_and_foreign_tokens_are_refused() {
    let r = TestRegistry::start_auth(AuthMode::Token, |a| {
        a.token_lifetime = Duration::from_secs(1);
    })
    .await;
    r.add_user("alice", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    let alice = client_as("alice", PW);
    let scope = "repository:alice/app:pull,push";
    let t = token_for(&r, &alice, scope).await;
    push_image(&bearer(&t), &r, "alice/app", "v1", &[b"x"]).await;

    // Widen the claims and keep the signature: refused.
    let parts: Vec<&str> = t.split('.').collect();
    let mut c = claims_of(&t);
    c["access"][0]["name"] = "other/app".into();
    c["exp"] = (c["exp"].as_u64().unwrap() + 3600).into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    let (s, challenge, body) = status(
        bearer(&forged)
            .head(r.url("/v2/alice/app/manifests/v1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, challenge.is_some(), body.is_empty()), (401, true, true));
    assert_eq!(
        start_upload(&bearer(&forged), &r, "other/app")
            .await
            .status(),
        401
    );
    assert_eq!(
        head_manifest(&bearer("garbage"), &r, "alice/app", "v1").await,
        401
    );

    // A token from another registry (another key) is worthless here.
    let other = TestRegistry::start_auth(AuthMode::Token, |_| {}).await;
    other.add_user("alice", PW).await;
    other.grant("alice", "**", "admin").await;
    let foreign = token_for(&other, &client_as("alice", PW), scope).await;
    assert_eq!(
        head_manifest(&bearer(&foreign), &r, "alice/app", "v1").await,
        401
    );
    other.stop().await;

    // Expiry: the token lives one second.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, challenge, body) = status(start_upload(&bearer(&t), &r, "alice/app").await).await;
    assert_eq!(s, 401);
    assert!(challenge.unwrap().starts_with("Bearer "));
    assert!(body.contains("expired"), "{body}");
    r.stop().await;
}

#[tokio::test]
async fn a_revoke_applies_to_tokens_already_issued() {
    let r = TestRegistry::start_auth(AuthMode::Token, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    let t = token_for(
        &r,
        &client_as("alice", PW),
        "repository:alice/app:pull,push",
    )
    .await;
    push_image(&bearer(&t), &r, "alice/app", "v1", &[b"x"]).await;
    r.admin(Command::AclRevoke {
        subject: "alice".into(),
        pattern: "alice/**".into(),
    })
    .await
    .unwrap();
    assert_eq!(head_manifest(&bearer(&t), &r, "alice/app", "v1").await, 403);
    r.admin(Command::UserDel {
        name: "alice".into(),
    })
    .await
    .unwrap();
    assert_eq!(head_manifest(&bearer(&t), &r, "alice/app", "v1").await, 401);
    r.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_user_and_per_address() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |a| {
        a.max_failures = 3;
        a.failure_window = Duration::from_secs(60);
    })
    .await;
    r.add_user("alice", PW).await;
    r.add_user("bob", PW).await;
    r.grant("alice", "**", "pull").await;
    r.grant("bob", "**", "pull").await;
    // bob logs in before the attack: his verified credentials stay fast and valid.
    let bob = client_as("bob", PW);
    assert_eq!(bob.get(r.url("/v2/")).send().await.unwrap().status(), 200);

    let wrong = client_as("alice", "guess");
    for _ in 0..3 {
        assert_eq!(wrong.get(r.url("/v2/")).send().await.unwrap().status(), 401);
    }
    // Now even the right password is refused, before bcrypt runs, with a time to wait.
    let resp = client_as("alice", PW)
        .get(r.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(code_of(&resp.text().await.unwrap()), "TOOMANYREQUESTS");
    // One user's failures do not lock out the address (an office behind one proxy): the
    // address counts only its first attempt at each user and every unknown user. Its
    // first try at alice, then carol and dave, reach the limit; erin is refused.
    for (user, status) in [("carol", 401), ("dave", 401), ("erin", 429)] {
        let resp = client_as(user, "guess")
            .get(r.url("/v2/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{user}");
    }
    assert_eq!(bob.get(r.url("/v2/")).send().await.unwrap().status(), 200);
    r.stop().await;
}

#[tokio::test]
async fn auth_off_keeps_everything_open() {
    let r = TestRegistry::start().await;
    push_image(&client(), &r, "any/thing", "v1", &[b"x"]).await;
    assert_eq!(catalog(&client(), &r, "").await, vec!["any/thing"]);
    assert_eq!(
        client_as("who", "ever")
            .get(r.url("/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client().get(r.url("/token")).send().await.unwrap().status(),
        404
    );
    r.stop().await;
}

#[tokio::test]
async fn refusals_are_one_line_and_change_nothing() {
    let r = TestRegistry::start_auth(AuthMode::Basic, |_| {}).await;
    r.add_user("alice", PW).await;
    let add = |name: &str, pw: &str| Command::UserAdd {
        name: name.into(),
        password: Secret::new(pw),
    };
    let grant = |s: &str, p: &str, a: &str| Command::AclGrant {
        subject: s.into(),
        pattern: p.into(),
        actions: a.into(),
    };
    let cases = [
        (add("alice", "x"), "user \"alice\" exists"),
        (add("bob", ""), "empty password"),
        (add("anonymous", "x"), "reserved"),
        (add("bad:name", "x"), "invalid user name"),
        (
            Command::UserDel {
                name: "nobody".into(),
            },
            "unknown user \"nobody\"",
        ),
        (
            Command::UserPasswd {
                name: "nobody".into(),
                password: Secret::new("x"),
            },
            "unknown user",
        ),
        (grant("alice", "a/***", "pull"), "bad pattern \"a/***\""),
        (grant("alice", "a/**", "pul"), "bad action \"pul\""),
        (grant("nobody", "a/**", "pull"), "unknown user \"nobody\""),
        (
            Command::AclRevoke {
                subject: "alice".into(),
                pattern: "never/granted".into(),
            },
            "no grant",
        ),
    ];
    for (command, want) in cases {
        let e = r.admin(command.clone()).await.unwrap_err();
        assert!(e.contains(want), "{command:?}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    assert_eq!(r.admin(Command::UserList).await.unwrap(), "alice");
    assert_eq!(
        r.admin(Command::AclList { subject: None }).await.unwrap(),
        ""
    );
    r.grant("alice", "a/**", "pull").await;
    let out = r.admin(grant("alice", "a/**", "push")).await.unwrap();
    assert!(out.ends_with("pull,push"), "grants add up: {out}");
    r.grant("anonymous", "**", "pull").await;
    let listed = r.admin(Command::AclList { subject: None }).await.unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    let mine = r
        .admin(Command::AclList {
            subject: Some("alice".into()),
        })
        .await
        .unwrap();
    assert!(mine.starts_with("alice") && mine.contains("a/**") && !mine.contains("anonymous"));
    r.stop().await;
}

#[tokio::test]
async fn the_server_log_never_shows_a_password() {
    // Debug of a command is what the admin socket logs; the password must not be in it.
    let c = Command::UserAdd {
        name: "alice".into(),
        password: Secret::new("hunter2-secret"),
    };
    assert!(!format!("{c:?}").contains("hunter2-secret"));
    let c = Command::UserImportHtpasswd {
        htpasswd: Secret::new("alice:$2y$05$abc"),
    };
    assert!(!format!("{c:?}").contains("$2y$"));
}
