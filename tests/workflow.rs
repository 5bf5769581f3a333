//! The everyday workflow the README promises, with real engines: build an image, push it,
//! remove it, pull it back and run it, with auth off, Basic and token, for docker and for
//! podman. The image is `FROM scratch` with Debian's static busybox (`busybox-static`, which
//! `.ci/run` installs), so nothing is fetched from anywhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use dockyard::config::AuthMode;

use crate::util::*;

const PW: &str = "workflow pass";
const BUSYBOX: &str = "/bin/busybox";

/// The registry under test: auth off (`None`), or in `mode` with alice owning `team/**`.
async fn registry(mode: Option<AuthMode>) -> TestRegistry {
    let Some(mode) = mode else {
        return TestRegistry::start().await;
    };
    let r = TestRegistry::start_auth(mode, |_| {}).await;
    r.add_user("alice", PW).await;
    r.grant("alice", "team/**", "pull,push").await;
    r
}

/// Whether the static busybox is there (a loud skip outside CI, a failure in CI).
fn require_busybox() -> bool {
    if Path::new(BUSYBOX).is_file() {
        return true;
    }
    if in_ci() {
        panic!("{BUSYBOX} is required in CI (.ci/run installs busybox-static)");
    }
    eprintln!(
        "\n!!!!! SKIPPED: {BUSYBOX} is missing; install busybox-static to run this test !!!!!\n"
    );
    false
}

/// A build context whose image prints `message` when run.
fn context(dir: &Path, message: &str) -> PathBuf {
    let ctx = dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(BUSYBOX, ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("message"), format!("{message}\n")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY message /message\n\
         CMD [\"/bin/busybox\", \"cat\", \"/message\"]\n",
    )
    .unwrap();
    ctx
}

fn mode_name(mode: Option<AuthMode>) -> &'static str {
    match mode {
        None => "auth off",
        Some(AuthMode::Basic) => "basic",
        Some(AuthMode::Token) => "token",
        Some(AuthMode::None) => "none",
    }
}

async fn docker_workflow(mode: Option<AuthMode>) {
    if !require_tool("docker") || !require_busybox() {
        return;
    }
    if require_env("DOCKER_HOST").is_none() {
        return;
    }
    let r = registry(mode).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let message = format!("hello from team/app, docker, {}", mode_name(mode));
    let ctx = context(w, &message);
    let host = r.addr.to_string();
    let image = format!("{host}/team/app:1");
    // A client config of its own: the login is stored there, not in a shared one.
    let cfg = w.join("docker-config");
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", &cfg).args(args);
        c
    };
    // No build cache: the three docker tests run at once and build the same first layer, and
    // one test's `rmi` would remove the cached intermediate image another build is using
    // ("unknown parent image ID").
    run_async(docker(&[
        "build",
        "--no-cache",
        "-t",
        &image,
        ctx.to_str().unwrap(),
    ]))
    .await;
    if mode.is_some() {
        run_async_with_stdin(
            docker(&["login", "-u", "alice", "--password-stdin", &host]),
            PW,
        )
        .await;
    }
    let out = run_async(docker(&["push", &image])).await;
    let pushed = docker_push_digest(&out);
    assert_eq!(
        pushed,
        r.served_digest_as("alice", PW, "team/app", "1").await
    );
    run_async(docker(&["rmi", &image])).await;
    run_async(docker(&["pull", &image])).await;
    let printed = run_async(docker(&["run", "--rm", "--network", "none", &image])).await;
    assert_eq!(printed.trim(), message);
    run_async(docker(&["rmi", &image])).await;
    if mode.is_some() {
        run_async(docker(&["logout", &host])).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_push_pull_run_with_auth_off() {
    docker_workflow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_push_pull_run_with_basic_auth() {
    docker_workflow(Some(AuthMode::Basic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_build_push_pull_run_with_token_auth() {
    docker_workflow(Some(AuthMode::Token)).await;
}

async fn podman_workflow(mode: Option<AuthMode>) {
    if !require_tool("podman") || !require_tool("runc") || !require_busybox() {
        return;
    }
    let r = registry(mode).await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let p = Podman::new(w);
    let message = format!("hello from team/app, podman, {}", mode_name(mode));
    let ctx = context(w, &message);
    let host = r.addr.to_string();
    let image = format!("{host}/team/app:1");
    let authfile = w.join("auth.json");
    std::fs::write(&authfile, r#"{"auths":{}}"#).unwrap();
    let authfile = authfile.to_str().unwrap();
    run_async(p.command(&["build", "-t", &image, ctx.to_str().unwrap()])).await;
    if mode.is_some() {
        p.login(authfile, &host, "alice", PW).await;
    }
    let pushed = p.push(authfile, &image).await;
    assert_eq!(
        pushed,
        r.served_digest_as("alice", PW, "team/app", "1").await
    );
    run_async(p.command(&["rmi", &image])).await;
    p.pull(authfile, &image).await;
    // runc, and rlimits within this machine's hard limits: podman's defaults (nofile
    // 1048576) are refused here, and crun refuses the hybrid cgroup layout of this VM.
    let printed = run_async(p.command(&[
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &image,
    ]))
    .await;
    assert_eq!(printed.trim(), message);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_build_push_pull_run_with_auth_off() {
    podman_workflow(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_build_push_pull_run_with_basic_auth() {
    podman_workflow(Some(AuthMode::Basic)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_build_push_pull_run_with_token_auth() {
    podman_workflow(Some(AuthMode::Token)).await;
}
