//! The pull-through mirror as real clients use it (issue 10): containerd's `ctr` with a
//! `hosts.toml` naming Dockyard as the mirror of an upstream host (the `?ns=` form), a
//! `dockerd` started with `--registry-mirror` (the unprefixed `default = true` form), and
//! podman with a `registries.conf` `[[registry.mirror]]` (the path-prefix form). The upstream
//! is a real CNCF Distribution 2.8 on loopback, seeded here with a two-platform image; every
//! client must end up with the upstream's digest.
//!
//! The name each client asks for is one that only the mirror can serve: `docker.io` (no
//! internet here) or `registry.corp.invalid` (a name that cannot resolve), so a client that
//! silently fell back to the upstream would fail rather than pass.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::upstream::Distribution;
use crate::util::*;

/// The name a site's clients use for its private upstream registry: unresolvable on purpose.
const CORP: &str = "registry.corp.invalid";

/// Pushes the two-platform image of an OCI layout written by `oci_layout` to the upstream's
/// `repo:tag`, children by digest first, and returns the digest the upstream serves.
async fn seed(upstream: &Distribution, work: &Path, repo: &str, tag: &str) -> String {
    let base = upstream.url("");
    let layout = work.join(format!("layout-{}", repo.replace('/', "-")));
    let want = oci_layout(&layout, tag, &["amd64", "arm64"]);
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let c = client();
    let index_bytes = blob(&want);
    let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
    for child in index["manifests"].as_array().unwrap() {
        let digest = child["digest"].as_str().unwrap();
        let manifest_bytes = blob(digest);
        let m: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let mut blobs = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            blobs.push(l["digest"].as_str().unwrap().to_string());
        }
        for d in blobs {
            upload(&c, &base, repo, &d, blob(&d)).await;
        }
        put(&c, &base, repo, digest, OCI_MANIFEST, manifest_bytes).await;
    }
    put(&c, &base, repo, tag, OCI_INDEX, index_bytes).await;
    let served = digest_at(&base, repo, tag).await;
    assert_eq!(served, want, "the upstream serves the layout's index");
    served
}

/// Distribution answers a `POST ?digest=` with a session (no monolithic upload): POST, then
/// PUT the bytes with `?digest=`, as docker does.
async fn upload(c: &reqwest::Client, base: &str, repo: &str, digest: &str, bytes: Vec<u8>) {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "POST upload upstream");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = c
        .put(format!("{location}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "PUT blob upstream");
}

async fn put(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Vec<u8>,
) {
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", media_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "PUT {repo}:{reference} upstream: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// The digest `repo:reference` resolves to at `base` (a HEAD, as clients resolve a tag).
async fn digest_at(base: &str, repo: &str, reference: &str) -> String {
    let resp = client()
        .head(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.list.v2+json, \
             application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "HEAD {base}/v2/{repo}/manifests/{reference}"
    );
    resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string()
}

/// A Dockyard whose two mirrors both lead to `upstream`: `docker.io` (the default mirror,
/// for dockerd's unprefixed names and containerd's `ns=docker.io`) and `corp` (selected by
/// `ns=registry.corp.invalid`, or by its path prefix). Logs at info, so a failure shows what
/// the clients asked for.
fn start_mirror(dir: &Path, upstream: &Distribution) -> Process {
    let root = dir.join("mirror-root");
    let config = write_config(
        dir,
        "mirror.toml",
        &format!(
            r#"
[[mirror]]
prefix = "docker.io"
upstream = "{up}"
default = true

[[mirror]]
prefix = "corp"
upstream = "{up}"
namespaces = ["{CORP}"]
"#,
            up = upstream.url("")
        ),
    );
    Process::spawn_with_config(&root, &config)
}

fn tools(names: &[&str]) -> bool {
    names.iter().all(|t| require_tool(t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_pulls_through_a_hosts_toml_mirror_with_ns() {
    if !tools(&["docker-registry", "ctr"]) {
        return;
    }
    let Some(_addr) = require_env("CONTAINERD_ADDRESS") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let upstream = Distribution::start(&w.join("upstream"));
    let corp_digest = seed(&upstream, w, "team/app", "v1").await;
    // A repository name no other test uses: the containerd namespace is shared.
    let hub_repo = format!("library/mirrored-{}", hex::encode(random_bytes(4)));
    let hub_digest = seed(&upstream, w, &hub_repo, "3").await;
    let mirror = start_mirror(w, &upstream);

    // containerd's per-host configuration: each upstream host's hosts.toml names Dockyard as
    // a pull/resolve mirror, tried before the host itself (which cannot be reached here).
    let hosts = w.join("certs.d");
    for (host, server) in [
        ("docker.io", "https://registry-1.docker.io".to_string()),
        (CORP, format!("https://{CORP}")),
    ] {
        std::fs::create_dir_all(hosts.join(host)).unwrap();
        std::fs::write(
            hosts.join(host).join("hosts.toml"),
            format!(
                "server = \"{server}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                mirror.addr
            ),
        )
        .unwrap();
    }
    let ctr = |args: &[&str]| {
        let mut c = Command::new("ctr");
        c.args(args);
        c
    };
    for (image, want) in [
        (format!("{CORP}/team/app:v1"), &corp_digest),
        (format!("docker.io/{hub_repo}:3"), &hub_digest),
    ] {
        let _ = ctr(&["images", "rm", &image]).output();
        let out = run_async(ctr(&[
            "images",
            "pull",
            "--hosts-dir",
            hosts.to_str().unwrap(),
            &image,
        ]))
        .await;
        let listed = run_async(ctr(&["images", "ls", &format!("name=={image}")])).await;
        assert!(
            listed.contains(want.as_str()),
            "ctr holds {image} at the upstream's digest {want}:\n{listed}\npull said:\n{out}\nmirror:\n{}",
            mirror.output()
        );
        run_async(ctr(&["images", "rm", &image])).await;
    }
    // The mirror now serves both by their prefixes, with the upstream's digests.
    let prefixed = mirror.url("");
    assert_eq!(
        digest_at(&prefixed, "corp/team/app", "v1").await,
        corp_digest
    );
    assert_eq!(
        digest_at(&prefixed, &format!("docker.io/{hub_repo}"), "3").await,
        hub_digest
    );
    mirror.stop();
}

/// A second dockerd owned by this test, configured with `registry-mirrors`: its own data
/// and exec roots, pid file and socket, the shared containerd under a namespace of its own
/// (images are pulled by dockerd itself; containerd would only run containers), no bridge
/// and no iptables. Stopped with SIGTERM (bounded), killed on drop.
struct MirroredDockerd {
    child: Option<Child>,
    dir: PathBuf,
}

impl MirroredDockerd {
    fn start(dir: &Path, containerd: &str, mirror: &str) -> MirroredDockerd {
        let dir = dir.join("dockerd");
        std::fs::create_dir_all(dir.join("client")).unwrap();
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&serde_json::json!({
                "registry-mirrors": [mirror],
                "bridge": "none", "iptables": false, "ip6tables": false, "ip-forward": false,
                "ip-masq": false, "ipv6": false, "userland-proxy": false,
                "storage-driver": "vfs",
                "exec-opts": ["native.cgroupdriver=cgroupfs"],
                "shutdown-timeout": 3, "log-level": "info",
                "features": { "buildkit": false },
            }))
            .unwrap(),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("/usr/sbin/dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--containerd")
            .arg(containerd)
            .args([
                "--containerd-namespace",
                "dockyard-mirror-test",
                "--containerd-plugins-namespace",
                "dockyard-mirror-test-plugins",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut d = MirroredDockerd {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker(&["version"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                break;
            }
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited ({status}):\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within 60 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", self.dir.join("client"))
            .arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args);
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// SIGTERM and wait up to 30 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }
}

impl Drop for MirroredDockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_with_registry_mirror_pulls_docker_hub_names_from_the_default_mirror() {
    if !tools(&["docker-registry", "docker", "dockerd"]) {
        return;
    }
    let Some(containerd) = require_env("CONTAINERD_ADDRESS") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let upstream = Distribution::start(&w.join("upstream"));
    let want = seed(&upstream, w, "library/mirrored", "3").await;
    let mirror = start_mirror(w, &upstream);
    let mut dockerd = MirroredDockerd::start(w, &containerd, &mirror.url(""));

    // `mirrored:3` is docker.io/library/mirrored:3: dockerd asks its mirror for
    // /v2/library/mirrored/..., which only the default mirror can answer (no internet).
    let pulled = dockerd.docker(&["pull", "mirrored:3"]).output().unwrap();
    assert!(
        pulled.status.success(),
        "docker pull through the mirror failed:\n{}{}\nmirror:\n{}\ndockerd:\n{}",
        String::from_utf8_lossy(&pulled.stdout),
        String::from_utf8_lossy(&pulled.stderr),
        mirror.output(),
        dockerd.log()
    );
    let repo_digest = run_async(dockerd.docker(&[
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        "mirrored:3",
    ]))
    .await;
    assert_eq!(
        repo_digest.trim().rsplit('@').next(),
        Some(want.as_str()),
        "dockerd holds the upstream's digest"
    );
    // The engine unpacked the amd64 image: its layer is the one the upstream's amd64
    // manifest names (diff ids come from the config the mirror served).
    let layers = run_async(dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RootFS.Layers}}",
        "mirrored:3",
    ]))
    .await;
    assert!(layers.contains("sha256:"), "{layers}");
    assert_eq!(
        digest_at(&mirror.url(""), "docker.io/library/mirrored", "3").await,
        want,
        "the mirror serves the same image under its prefix"
    );
    dockerd.stop();
    mirror.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_through_a_registries_conf_mirror() {
    if !tools(&["docker-registry", "podman"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let upstream = Distribution::start(&w.join("upstream"));
    let want = seed(&upstream, w, "team/app", "v1").await;
    let mirror = start_mirror(w, &upstream);
    let podman_dir = w.join("podman");
    let p = Podman::new(&podman_dir);
    // The site's registries.conf: pulls of registry.corp.invalid/... go to Dockyard's
    // `corp` prefix first (plain HTTP), and the real location is never reachable here.
    std::fs::write(
        podman_dir.join("registries.conf"),
        format!(
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n\n\
             [[registry]]\nlocation = \"{CORP}\"\n\n\
             [[registry.mirror]]\nlocation = \"{}/corp\"\ninsecure = true\n",
            mirror.addr
        ),
    )
    .unwrap();
    let image = format!("{CORP}/team/app:v1");
    let policy = p.policy();
    let pulled = p
        .command(&["pull", "--signature-policy", &policy, &image])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "podman pull through the mirror failed:\n{}{}\nmirror:\n{}",
        String::from_utf8_lossy(&pulled.stdout),
        String::from_utf8_lossy(&pulled.stderr),
        mirror.output()
    );
    // Pulled by tag from an index, podman records the index's digest among the image's
    // digests (and the amd64 manifest's): the upstream's index digest must be there.
    let digests = run_async(p.command(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &image,
    ]))
    .await;
    assert!(
        digests.contains(&format!("{CORP}/team/app@{want}")),
        "podman holds the upstream's digest {want}: {digests}"
    );
    mirror.stop();
}
