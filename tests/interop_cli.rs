//! Real command-line clients against the running registry: skopeo, podman, docker (through a
//! `dockerd` that `.ci/daemons.sh` starts), containerd's `ctr`, and oras (its Python SDK).
//! Each pushes an image built here from random bytes (no internet) and pulls it back, and the
//! digests on both sides and the registry's must agree.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn write_policy(dir: &Path) -> String {
    let p = dir.join("policy.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_an_oci_layout_in_and_out_and_converts_to_schema2() {
    if !require_tool("skopeo") {
        return;
    }
    let r = TestRegistry::start().await;
    skopeo_round_trip(&r).await;
    r.stop().await;
}

/// The round trip of [`skopeo_copies_an_oci_layout_in_and_out_and_converts_to_schema2`] against any registry (the S3 backend's tests reuse it);
/// the caller has checked the client is there.
pub async fn skopeo_round_trip(r: &TestRegistry) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let policy = write_policy(w);
    let layout = w.join("layout");
    let want = oci_layout(&layout, "v1", &["amd64"]);
    let host = r.addr.to_string();
    let skopeo = |args: &[&str]| {
        let mut c = Command::new("skopeo");
        c.arg("--policy").arg(&policy).args(args);
        c
    };

    let digestfile = w.join("pushed.digest");
    run_async(skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{host}/skopeo/image:v1"),
    ]))
    .await;
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let (served, media_type, _) = served_manifest(r, "skopeo/image", "v1").await;
    assert_eq!(pushed.trim(), want, "skopeo kept the layout's manifest");
    assert_eq!(served, want);
    assert_eq!(media_type, OCI_MANIFEST);

    let back = w.join("back");
    run_async(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{host}/skopeo/image:v1"),
        &format!("oci:{}:v1", back.display()),
    ]))
    .await;
    assert_eq!(
        layout_digest(&back, "v1"),
        want,
        "pulled back byte-identical"
    );

    // OCI → Docker schema2 into another repository: skopeo mounts the blobs across repos.
    let v2file = w.join("v2s2.digest");
    run_async(skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        "--digestfile",
        v2file.to_str().unwrap(),
        &format!("docker://{host}/skopeo/image:v1"),
        &format!("docker://{host}/skopeo/converted:v1"),
    ]))
    .await;
    let (served, media_type, body) = served_manifest(r, "skopeo/converted", "v1").await;
    assert_eq!(std::fs::read_to_string(&v2file).unwrap().trim(), served);
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let resp = client()
        .head(r.url(&format!("/v2/skopeo/converted/blobs/{layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the mounted layer reads from the target repository"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_a_multi_arch_index_with_all() {
    if !require_tool("skopeo") {
        return;
    }
    let r = TestRegistry::start().await;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let policy = write_policy(w);
    let layout = w.join("layout");
    let want = oci_layout(&layout, "multi", &["amd64", "arm64"]);
    let host = r.addr.to_string();
    run_async({
        let mut c = Command::new("skopeo");
        c.args([
            "--policy",
            &policy,
            "copy",
            "--all",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{host}/skopeo/multi:latest"));
        c
    })
    .await;
    let (served, media_type, body) = served_manifest(&r, "skopeo/multi", "latest").await;
    assert_eq!(served, want);
    assert_eq!(media_type, OCI_INDEX);
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let (child, _, _) = served_manifest(&r, "skopeo/multi", d).await;
        assert_eq!(child, d);
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pushes_and_pulls() {
    if !require_tool("podman") {
        return;
    }
    let r = TestRegistry::start().await;
    podman_round_trip(&r).await;
    r.stop().await;
}

/// The round trip of [`podman_pushes_and_pulls`] against any registry (the S3 backend's tests reuse it);
/// the caller has checked the client is there.
pub async fn podman_round_trip(r: &TestRegistry) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let p = Podman::new(w);
    let policy = p.policy();
    std::fs::write(w.join("rootfs.tar"), rootfs_tar(3, 30_000)).unwrap();
    let podman = |args: &[&str]| p.command(args);
    let image = format!("{}/podman/image:v1", r.addr);
    run_async(podman(&[
        "import",
        w.join("rootfs.tar").to_str().unwrap(),
        &image,
    ]))
    .await;
    // What the client holds before the push: the image id (its config digest) and the
    // layers' diff ids, to compare with what it holds after pulling the image back.
    let identity = "{{.Id}} {{.RootFS.Layers}}";
    let before = run_async(podman(&["image", "inspect", "--format", identity, &image])).await;
    let digestfile = w.join("digest");
    run_async(podman(&[
        "push",
        "--tls-verify=false",
        "--signature-policy",
        &policy,
        "--digestfile",
        digestfile.to_str().unwrap(),
        &image,
    ]))
    .await;
    let pushed = std::fs::read_to_string(&digestfile)
        .unwrap()
        .trim()
        .to_string();
    let (served, _, _) = served_manifest(r, "podman/image", "v1").await;
    assert_eq!(pushed, served);
    run_async(podman(&["rmi", &image])).await;
    run_async(podman(&[
        "pull",
        "--tls-verify=false",
        "--signature-policy",
        &policy,
        &image,
    ]))
    .await;
    let pulled = run_async(podman(&["inspect", "--format", "{{.Digest}}", &image])).await;
    assert_eq!(
        pulled.trim(),
        pushed,
        "podman pulled the manifest it pushed"
    );
    let after = run_async(podman(&["image", "inspect", "--format", identity, &image])).await;
    assert_eq!(
        after, before,
        "podman pulled the config and layers it pushed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_pulls_through_a_real_engine() {
    if !require_tool("docker") {
        return;
    }
    let Some(_host) = require_env("DOCKER_HOST") else {
        return;
    };
    let r = TestRegistry::start().await;
    docker_round_trip(&r).await;
    r.stop().await;
}

/// The round trip of [`docker_pushes_and_pulls_through_a_real_engine`] against any registry (the S3 backend's tests reuse it);
/// the caller has checked the client is there.
pub async fn docker_round_trip(r: &TestRegistry) {
    let work = tempfile::tempdir().unwrap();
    let tar = work.path().join("rootfs.tar");
    std::fs::write(&tar, rootfs_tar(3, 30_000)).unwrap();
    let image = format!("{}/docker/image:v1", r.addr);
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.args(args);
        c
    };
    run_async(docker(&["import", tar.to_str().unwrap(), &image])).await;
    // The image id (config digest) and layer diff ids the engine holds before the push, to
    // compare with what it holds after pulling the image back.
    let identity = "{{.Id}} {{json .RootFS.Layers}}";
    let before = run_async(docker(&["image", "inspect", "--format", identity, &image])).await;
    let out = run_async(docker(&["push", &image])).await;
    let pushed = out
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
        .to_string();
    let (served, media_type, _) = served_manifest(r, "docker/image", "v1").await;
    assert_eq!(pushed, served);
    assert_eq!(
        media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    run_async(docker(&["rmi", &image])).await;
    run_async(docker(&["pull", &image])).await;
    let repo_digest = run_async(docker(&[
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &image,
    ]))
    .await;
    assert_eq!(
        repo_digest.trim().rsplit('@').next(),
        Some(pushed.as_str()),
        "docker pulled the manifest it pushed"
    );
    let after = run_async(docker(&["image", "inspect", "--format", identity, &image])).await;
    assert_eq!(
        after, before,
        "docker pulled the config and layers it pushed"
    );
    run_async(docker(&["rmi", &image])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pushes_and_pulls_through_containerd() {
    if !require_tool("ctr") {
        return;
    }
    let Some(_addr) = require_env("CONTAINERD_ADDRESS") else {
        return;
    };
    let r = TestRegistry::start().await;
    ctr_round_trip(&r).await;
    r.stop().await;
}

/// The round trip of [`ctr_pushes_and_pulls_through_containerd`] against any registry (the S3 backend's tests reuse it);
/// the caller has checked the client is there.
pub async fn ctr_round_trip(r: &TestRegistry) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let want = oci_layout(&layout, "v1", &["amd64"]);
    let archive = work.path().join("layout.tar");
    run_async({
        let mut c = Command::new("tar");
        c.arg("-C").arg(&layout).arg("-cf").arg(&archive).args([
            "oci-layout",
            "index.json",
            "blobs",
        ]);
        c
    })
    .await;
    let base = format!("{}/ctr/image", r.addr);
    let image = format!("{base}:v1");
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.args(args);
        c
    };
    let _ = ctr(&["images", "rm", &image]).output();
    run_async(ctr(&[
        "images",
        "import",
        "--base-name",
        &base,
        archive.to_str().unwrap(),
    ]))
    .await;
    run_async(ctr(&["images", "push", "--plain-http", &image])).await;
    let (served, _, _) = served_manifest(r, "ctr/image", "v1").await;
    assert_eq!(served, want);
    run_async(ctr(&["images", "rm", &image])).await;
    run_async(ctr(&["images", "pull", "--plain-http", &image])).await;
    let listed = run_async(ctr(&["images", "ls", &format!("name=={image}")])).await;
    assert!(
        listed.contains(&want),
        "ctr lists the pulled image with its digest:\n{listed}"
    );
    run_async(ctr(&["images", "rm", &image])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_and_pulls_an_artifact() {
    if !require_oras() {
        return;
    }
    let r = TestRegistry::start().await;
    oras_round_trip(&r).await;
    r.stop().await;
}

/// Whether the oras Python SDK is importable by `$ORAS_PYTHON` (default python3): a loud
/// skip outside CI, a failure in it.
pub fn require_oras() -> bool {
    let python = oras_python();
    let has_oras = Command::new(&python)
        .args(["-c", "import oras.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_oras {
        if crate::util::in_ci() {
            panic!("the oras Python SDK is required in CI (ORAS_PYTHON={python})");
        }
        eprintln!("\n!!!!! SKIPPED: the `oras` Python package is not importable by {python}; `pip install oras` to run this test !!!!!\n");
    }
    has_oras
}

fn oras_python() -> String {
    std::env::var("ORAS_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// The round trip of [`oras_pushes_and_pulls_an_artifact`] against any registry (the S3 backend's tests reuse it);
/// the caller has checked the client is there.
pub async fn oras_round_trip(r: &TestRegistry) {
    let python = oras_python();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let artifact = random_bytes(50_000);
    std::fs::write(w.join("artifact.bin"), &artifact).unwrap();
    let script = r#"
import os, sys, oras.client
host, out = sys.argv[1], sys.argv[2]
ref = f"{host}/oras/artifact:v1"
c = oras.client.OrasClient(hostname=host, insecure=True)
resp = c.push(files=["artifact.bin"], target=ref)
c.pull(target=ref, outdir=out)
print(resp.headers["Docker-Content-Digest"])
"#;
    let out_dir = w.join("out");
    let printed = run_async({
        let mut c = Command::new(&python);
        c.current_dir(w)
            .args(["-c", script, &r.addr.to_string()])
            .arg(&out_dir);
        c
    })
    .await;
    let (served, media_type, _) = served_manifest(r, "oras/artifact", "v1").await;
    assert_eq!(printed.trim().lines().last(), Some(served.as_str()));
    assert_eq!(media_type, OCI_MANIFEST);
    assert_eq!(
        std::fs::read(out_dir.join("artifact.bin")).unwrap(),
        artifact
    );
}
