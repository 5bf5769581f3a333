//! Real clients against a registry with authentication, in Basic and in token mode:
//! `podman login` then push and pull, skopeo with `--creds`, and `docker login` then push.
//! alice may push to `alice/**` and only pull `shared/**`; her push there must fail with the
//! client showing the server's DENIED. (Where she may not even pull, a client's first request
//! is a `HEAD`, whose 403 has no body to show; clients then print the status alone.)

use std::path::Path;
use std::process::Command;

use dockyard::config::AuthMode;

use crate::util::*;

const PW: &str = "s3cret pass";

async fn registry(mode: AuthMode) -> TestRegistry {
    let r = TestRegistry::start_auth(mode, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "alice/**", "pull,push").await;
    r.grant("alice", "shared/**", "pull").await;
    r.add_user("bob", PW).await;
    r.grant("bob", "bob/**", "pull,push").await;
    r.grant("bob", "alice/**", "pull").await;
    r
}

async fn podman_logs_in_pushes_and_pulls(mode: AuthMode) {
    if !require_tool("podman") {
        return;
    }
    let r = registry(mode).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let p = Podman::new(w);
    let policy = p.policy();
    let authfile = w.join("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let authfile = authfile.to_str().unwrap();
    std::fs::write(w.join("rootfs.tar"), rootfs_tar(2, 20_000)).unwrap();
    let host = r.addr.to_string();
    let image = format!("{host}/alice/podman:v1");
    run_async(p.command(&["import", w.join("rootfs.tar").to_str().unwrap(), &image])).await;

    // Without logging in, the push is refused.
    let err = fails_async(p.command(&[
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "--signature-policy",
        &policy,
        &image,
    ]))
    .await;
    assert!(
        err.contains("authentication required") || err.contains("unauthorized"),
        "{err}"
    );
    let err = fails_async(p.command(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "-u",
        "alice",
        "-p",
        "wrong",
        &host,
    ]))
    .await;
    assert!(err.contains("invalid username/password"), "{err}");
    p.login(authfile, &host, "alice", PW).await;
    let pushed = p.push(authfile, &image).await;
    assert_eq!(
        pushed,
        r.served_digest_as("alice", PW, "alice/podman", "v1").await
    );
    run_async(p.command(&["rmi", &image])).await;
    p.pull(authfile, &image).await;
    let pulled = run_async(p.command(&["inspect", "--format", "{{.Digest}}", &image])).await;
    assert_eq!(pulled.trim(), pushed);

    // alice may not push where she may only pull: podman shows the server's DENIED.
    let theirs = format!("{host}/shared/podman:v1");
    run_async(p.command(&["tag", &image, &theirs])).await;
    let err = fails_async(p.command(&[
        "push",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "--signature-policy",
        &policy,
        &theirs,
    ]))
    .await;
    assert!(
        err.contains("requested access to the resource is denied"),
        "{err}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_push_pull_with_basic_auth() {
    podman_logs_in_pushes_and_pulls(AuthMode::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_push_pull_with_token_auth() {
    podman_logs_in_pushes_and_pulls(AuthMode::Token).await;
}

async fn skopeo_copies_with_creds(mode: AuthMode) {
    if !require_tool("skopeo") {
        return;
    }
    let r = registry(mode).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let p = Podman::new(w); // for its policy file
    let layout = w.join("layout");
    let want = oci_layout(&layout, "v1", &["amd64"]);
    let host = r.addr.to_string();
    let creds = format!("alice:{PW}");
    let skopeo = |args: &[&str]| {
        let mut c = Command::new("skopeo");
        c.arg("--policy")
            .arg(p.policy())
            .args(args)
            // Keep skopeo away from any login a person made on this machine.
            .env("REGISTRY_AUTH_FILE", w.join("none.json"));
        c
    };
    run_async(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{host}/alice/skopeo:v1"),
    ]))
    .await;
    assert_eq!(
        r.served_digest_as("alice", PW, "alice/skopeo", "v1").await,
        want
    );
    let inspected = run_async(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        "--format",
        "{{.Digest}}",
        &format!("docker://{host}/alice/skopeo:v1"),
    ]))
    .await;
    assert_eq!(inspected.trim(), want);
    let back = w.join("back");
    run_async(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("docker://{host}/alice/skopeo:v1"),
        &format!("oci:{}:v1", back.display()),
    ]))
    .await;
    assert_eq!(layout_digest(&back, "v1"), want);
    // bob may read alice's images but not write them.
    let err = fails_async(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("bob:{PW}"),
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{host}/alice/skopeo:v2"),
    ]))
    .await;
    assert!(
        err.contains("requested access to the resource is denied"),
        "{err}"
    );
    let err = fails_async(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:wrong",
        &format!("docker://{host}/alice/skopeo:v1"),
    ]))
    .await;
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_creds_in_basic_mode() {
    skopeo_copies_with_creds(AuthMode::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_with_creds_in_token_mode() {
    skopeo_copies_with_creds(AuthMode::Token).await;
}

async fn docker_logs_in_and_pushes(mode: AuthMode) {
    if !require_tool("docker") {
        return;
    }
    let Some(_host) = require_env("DOCKER_HOST") else {
        return;
    };
    let r = registry(mode).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tar = w.join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar(2, 20_000)).unwrap();
    let host = r.addr.to_string();
    let docker = |config: &Path, args: &[&str]| {
        let mut c = Command::new("docker");
        // A config of its own: the login is stored there, not in a shared one.
        c.env("DOCKER_CONFIG", config).args(args);
        c
    };
    let cfg = w.join("docker-config");
    let image = format!("{host}/alice/docker:v1");
    run_async(docker(&cfg, &["import", tar.to_str().unwrap(), &image])).await;
    let err = fails_async(docker(
        &cfg,
        &["login", "-u", "alice", "-p", "wrong", &host],
    ))
    .await;
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");
    run_async_with_stdin(
        docker(&cfg, &["login", "-u", "alice", "--password-stdin", &host]),
        PW,
    )
    .await;
    let out = run_async(docker(&cfg, &["push", &image])).await;
    let pushed = docker_push_digest(&out);
    assert_eq!(
        pushed,
        r.served_digest_as("alice", PW, "alice/docker", "v1").await
    );
    run_async(docker(&cfg, &["rmi", &image])).await;
    run_async(docker(&cfg, &["pull", &image])).await;

    let theirs = format!("{host}/shared/docker:v1");
    run_async(docker(&cfg, &["tag", &image, &theirs])).await;
    let mut push = docker(&cfg, &["push", &theirs]);
    let out = tokio::task::spawn_blocking(move || push.output().unwrap())
        .await
        .unwrap();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("requested access to the resource is denied"),
        "{shown}"
    );
    run_async(docker(&cfg, &["rmi", &image, &theirs])).await;
    run_async(docker(&cfg, &["logout", &host])).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_and_push_with_basic_auth() {
    docker_logs_in_and_pushes(AuthMode::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_and_push_with_token_auth() {
    docker_logs_in_and_pushes(AuthMode::Token).await;
}

/// `acl grant anonymous 'public/**' pull`, then skopeo and podman without any login: they
/// answer the Basic challenge with empty credentials, which must count as anonymous.
async fn anonymous_pulls_with_skopeo_and_podman(mode: AuthMode) {
    if !require_tool("skopeo") || !require_tool("podman") {
        return;
    }
    let r = registry(mode).await;
    r.grant("anonymous", "public/**", "pull").await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let p = Podman::new(w);
    let layout = w.join("layout");
    let want = oci_layout(&layout, "v1", &["amd64"]);
    let host = r.addr.to_string();
    let none = w.join("none.json");
    std::fs::write(&none, r#"{"auths":{}}"#).unwrap();
    let skopeo = |args: &[&str]| {
        let mut c = Command::new("skopeo");
        c.arg("--policy")
            .arg(p.policy())
            .args(args)
            .env("REGISTRY_AUTH_FILE", &none);
        c
    };
    // alice publishes; everything after is anonymous.
    r.grant("alice", "public/**", "pull,push").await;
    run_async(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("alice:{PW}"),
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{host}/public/img:v1"),
    ]))
    .await;
    let inspected = run_async(skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{host}/public/img:v1"),
    ]))
    .await;
    assert_eq!(inspected.trim(), want);
    let back = w.join("back");
    run_async(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/public/img:v1"),
        &format!("oci:{}:v1", back.display()),
    ]))
    .await;
    assert_eq!(layout_digest(&back, "v1"), want);
    // What anonymous may not pull stays closed, and what it may pull it may not overwrite.
    let err = fails_async(skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{host}/alice/img:v1"),
    ]))
    .await;
    assert!(
        err.contains("authentication required") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let err = fails_async(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{host}/public/img:v2"),
    ]))
    .await;
    assert!(
        err.contains("authentication required") || err.to_lowercase().contains("unauthorized"),
        "{err}"
    );

    let image = format!("{host}/public/img:v1");
    let authfile = none.to_str().unwrap();
    run_async(p.command(&[
        "pull",
        "--tls-verify=false",
        "--authfile",
        authfile,
        "--signature-policy",
        &p.policy(),
        &image,
    ]))
    .await;
    let pulled = run_async(p.command(&["inspect", "--format", "{{.Digest}}", &image])).await;
    assert_eq!(pulled.trim(), want);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_with_skopeo_and_podman_in_basic_mode() {
    anonymous_pulls_with_skopeo_and_podman(AuthMode::Basic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_pull_with_skopeo_and_podman_in_token_mode() {
    anonymous_pulls_with_skopeo_and_podman(AuthMode::Token).await;
}
