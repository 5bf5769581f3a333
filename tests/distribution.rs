//! `dockyard import-distribution`: a real CNCF Distribution 2.8 store (Debian's
//! `docker-registry`), filled by skopeo and by hand, then stopped and moved into Dockyard.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

struct Distribution {
    child: std::process::Child,
    addr: String,
}

impl Distribution {
    fn start(dir: &Path) -> Distribution {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Distribution { child, addr }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The digest `repo:tag` resolves to at `base`.
async fn digest_of(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> String {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Accept", ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{base} {repo}:{tag}");
    sha256(&resp.bytes().await.unwrap())
}

fn skopeo_copy(from: &str, to: &str) {
    run(Command::new("skopeo").args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--src-tls-verify=false",
        from,
        to,
    ]));
}

fn import_distribution(root: &Path, path: &Path) -> (bool, String, String) {
    dockyard(&[
        "import-distribution".as_ref(),
        path.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
    ])
}

#[tokio::test]
async fn a_distribution_store_moves_in_with_every_digest_unchanged() {
    if !require_tool("docker-registry") || !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let c = fresh_client();
    let dist = Distribution::start(dir.path());
    let dbase = format!("http://{}", dist.addr);

    // A single-platform image under three tags, a two-platform index, an artifact whose
    // subject is the image, and an image deleted (with its tag) before the move.
    let single = dir.path().join("single");
    oci_layout(&single, "v1", &["amd64"]);
    for tag in ["v1", "stable", "latest"] {
        skopeo_copy(
            &format!("oci:{}:v1", single.display()),
            &format!("docker://{}/app/single:{tag}", dist.addr),
        );
    }
    let multi = dir.path().join("multi");
    oci_layout(&multi, "v1", &["amd64", "arm64"]);
    skopeo_copy(
        &format!("oci:{}:v1", multi.display()),
        &format!("docker://{}/team/app/multi:v1", dist.addr),
    );
    let subject = digest_of(&c, &dbase, "app/single", "v1").await;
    let empty = b"{}".to_vec();
    let payload = random_bytes(500);
    push_blob_in_two_steps(&c, dbase.as_str(), "app/single", &empty).await;
    push_blob_in_two_steps(&c, dbase.as_str(), "app/single", &payload).await;
    let artifact = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(&empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.example.sig", "digest": sha256(&payload), "size": 500}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
    }))
    .unwrap();
    put_manifest(&c, dbase.as_str(), "app/single", "sig", &artifact).await;
    let (layer, config) = (random_bytes(800), b"{\"os\":\"linux\"}".to_vec());
    push_blob_in_two_steps(&c, dbase.as_str(), "app/gone", &layer).await;
    push_blob_in_two_steps(&c, dbase.as_str(), "app/gone", &config).await;
    let gone_manifest = image_manifest(&config, &[&layer]);
    put_manifest(&c, dbase.as_str(), "app/gone", "v1", &gone_manifest).await;
    let gone = sha256(&gone_manifest);
    let resp = c
        .delete(format!("{dbase}/v2/app/gone/manifests/{gone}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let tags = [
        ("app/single", "v1"),
        ("app/single", "stable"),
        ("app/single", "latest"),
        ("app/single", "sig"),
        ("team/app/multi", "v1"),
    ];
    let mut want = Vec::new();
    for (repo, tag) in tags {
        want.push(digest_of(&c, &dbase, repo, tag).await);
    }
    drop(dist);
    let store = dir.path().join("data");
    let before = tree(&store);

    let root = dir.path().join("dockyard");
    let (ok, out, err) = import_distribution(&root, &store);
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("import-distribution: 2 repositories, 5 manifests, 5 tags"),
        "{out}"
    );
    assert!(out.contains("0 not imported"), "{out}");
    assert_eq!(tree(&store), before, "PATH is only read");
    let (ok, out2, err) = dockyard(&[
        "fsck".as_ref(),
        "--verify-hashes".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
    ]);
    assert!(ok, "{out2}{err}");
    let p = Process::spawn(&root);
    let base = p.url("");
    for ((repo, tag), digest) in tags.iter().zip(&want) {
        assert_eq!(
            &digest_of(&c, &base, repo, tag).await,
            digest,
            "{repo}:{tag}"
        );
    }
    let resp = c
        .get(format!("{base}/v2/app/gone/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the deleted image stays deleted");
    let referrers: serde_json::Value = c
        .get(format!("{base}/v2/app/single/referrers/{subject}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(referrers["manifests"][0]["digest"], sha256(&artifact));
    assert!(p.stop().success());

    // Again: resumable, nothing stored twice.
    let (ok, out, err) = import_distribution(&root, &store);
    assert!(ok, "{out}{err}");
    assert!(out.contains(" 0 stored"), "{out}");

    // A store with a layer file missing: the image is reported, the rest imported.
    let broken = dir.path().join("broken");
    run(Command::new("cp").args([
        "-a",
        &store.display().to_string(),
        &broken.display().to_string(),
    ]));
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(single.join("blobs/sha256").join(&subject[7..])).unwrap(),
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    std::fs::remove_file(
        broken
            .join("docker/registry/v2/blobs/sha256")
            .join(&layer[7..9])
            .join(&layer[7..])
            .join("data"),
    )
    .unwrap();
    let other = dir.path().join("other");
    let (ok, out, err) = import_distribution(&other, &broken);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!(
            "not imported: app/single@{subject}: blob {layer} is missing"
        )),
        "{out}"
    );
    assert!(
        out.contains("not imported: app/single:v1: points at"),
        "{out}"
    );
    let (ok, out2, err) = dockyard(&["fsck".as_ref(), "--root".as_ref(), other.as_os_str()]);
    assert!(ok, "{out2}{err}");
    let p = Process::spawn(&other);
    let base = p.url("");
    assert_eq!(digest_of(&c, &base, "team/app/multi", "v1").await, want[4]);
    assert_eq!(digest_of(&c, &base, "app/single", "sig").await, want[3]);
    assert!(p.stop().success());

    // Not a Distribution store: one line, nothing changed.
    let (ok, _, err) = import_distribution(&other, dir.path().join("single").as_path());
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a Distribution filesystem store"), "{err}");
}

/// Every file under `dir` with its size and modification time.
fn tree(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.push((
                    e.path().display().to_string(),
                    m.len(),
                    m.modified().unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}
