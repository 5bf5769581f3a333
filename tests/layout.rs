//! `dockyard export` and `dockyard import`: OCI image layouts read by skopeo, written by
//! skopeo, and round trips between roots, indexes included.

use std::path::Path;
use std::process::Command;

use crate::util::*;

fn cli(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    dockyard(args)
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn import(root: &Path, layout: &Path, repo: Option<&str>) -> (bool, String, String) {
    let mut args = vec![
        os("import"),
        layout.as_os_str(),
        os("--root"),
        root.as_os_str(),
    ];
    if let Some(r) = repo {
        args.extend([os("--repo"), os(r)]);
    }
    cli(&args)
}

/// GETs a manifest and returns its bytes (asserting 200).
async fn manifest_bytes(c: &reqwest::Client, base: &str, repo: &str, reference: &str) -> Vec<u8> {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{repo}:{reference}");
    resp.bytes().await.unwrap().to_vec()
}

/// Every manifest of an index, and the index itself, pulls byte for byte from `base`.
async fn assert_index_pulls(c: &reqwest::Client, base: &str, repo: &str, tag: &str, index: &[u8]) {
    assert_eq!(
        manifest_bytes(c, base, repo, tag).await,
        index,
        "{repo}:{tag}"
    );
    let v: serde_json::Value = serde_json::from_slice(index).unwrap();
    for m in v["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        let bytes = manifest_bytes(c, base, repo, d).await;
        assert_pulls(c, base, repo, d, &bytes, "child").await;
    }
}

#[tokio::test]
async fn export_import_round_trip_with_indexes_and_skopeo() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let c = fresh_client();

    // A two-platform index from a hand-written layout, imported into a running server.
    let source = dir.path().join("source-layout");
    let index_digest = oci_layout(&source, "v1", &["amd64", "arm64"]);
    let p = Process::spawn(&root);
    let base = p.url("");
    // The control channel comes up just after the API: wait for it, so the import goes
    // through the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !root.join("admin.sock").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (ok, out, err) = import(&root, &source, Some("multi/app"));
    assert!(ok, "{out}{err}");
    assert!(
        out.starts_with("import: 1 images, 3 manifests, 4 blobs"),
        "{out}"
    );
    let index = manifest_bytes(&c, &base, "multi/app", "v1").await;
    assert_eq!(sha256(&index), index_digest);
    let (single, single_digest) = push_image(
        &c,
        base.as_str(),
        "single/app",
        "v1",
        &[&random_bytes(3000)],
    )
    .await;
    push_image(
        &c,
        base.as_str(),
        "single/app",
        "v2",
        &[&random_bytes(3000)],
    )
    .await;

    // Export one tag: skopeo finds it by its tag and reads the same digest.
    let one = dir.path().join("one");
    let (ok, out, err) = cli(&[
        os("export"),
        os("single/app:v1"),
        os("--to"),
        one.as_os_str(),
        os("--root"),
        root.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert_eq!(layout_digest(&one, "v1"), single_digest);
    if require_tool("skopeo") {
        let out_dir = dir.path().join("skopeo-dir");
        run(Command::new("skopeo").args([
            "copy",
            &format!("oci:{}:v1", one.display()),
            &format!("dir:{}", out_dir.display()),
        ]));
        assert_eq!(
            std::fs::read(out_dir.join("manifest.json")).unwrap(),
            single
        );
        // A layout skopeo wrote, imported under another name.
        let sk = dir.path().join("skopeo-layout");
        run(Command::new("skopeo").args([
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/single/app:v2", p.addr),
            &format!("oci:{}:v2", sk.display()),
        ]));
        let (ok, out, err) = import(&root, &sk, Some("from/skopeo"));
        assert!(ok, "{out}{err}");
        // skopeo re-compresses layers it writes, so the manifest is skopeo's, not ours.
        let d = layout_digest(&sk, "v2");
        let want = std::fs::read(sk.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_pulls(&c, &base, "from/skopeo", "v2", &want, "skopeo layout").await;
    }

    // umoci unpacks an exported image (a real gzipped root filesystem).
    if require_tool("umoci") {
        let src = dir.path().join("umoci-src");
        oci_layout(&src, "v1", &["amd64"]);
        let (ok, out, err) = import(&root, &src, Some("fs/app"));
        assert!(ok, "{out}{err}");
        let out_layout = dir.path().join("for-umoci");
        let (ok, out, err) = cli(&[
            os("export"),
            os("fs/app:v1"),
            os("--to"),
            out_layout.as_os_str(),
            os("--root"),
            root.as_os_str(),
        ]);
        assert!(ok, "{out}{err}");
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci").args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:v1", out_layout.display()),
            &bundle.display().to_string(),
        ]));
        assert!(bundle.join("rootfs/data/file0.bin").is_file());
    }

    // Two whole repositories into one layout, then into a fresh root by their annotations.
    let both = dir.path().join("both");
    let (ok, out, err) = cli(&[
        os("export"),
        os("multi/app"),
        os("single/app"),
        os("--to"),
        both.as_os_str(),
        os("--root"),
        root.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("export: 3 images, 5 manifests"), "{out}");
    assert_eq!(layout_digest(&both, "multi/app:v1"), index_digest);
    let v2 = manifest_bytes(&c, &base, "single/app", "v2").await;
    assert!(p.stop().success());

    let fresh = dir.path().join("fresh");
    let (ok, out, err) = import(&fresh, &both, None);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&[
        os("fsck"),
        os("--verify-hashes"),
        os("--root"),
        fresh.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    let q = Process::spawn(&fresh);
    let base = q.url("");
    assert_index_pulls(&c, &base, "multi/app", "v1", &index).await;
    assert_pulls(&c, &base, "single/app", "v1", &single, "round trip").await;
    assert_pulls(&c, &base, "single/app", "v2", &v2, "round trip").await;
    assert!(q.stop().success());

    // Importing the same layout again changes nothing and fails nothing.
    let (ok, out, err) = import(&fresh, &both, None);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("0 linked, 0 copied, 6 already there") || out.contains("already there"),
        "{out}"
    );
}

#[tokio::test]
async fn bad_layouts_are_refused_in_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let layout = dir.path().join("layout");
    oci_layout(&layout, "v1", &["amd64"]);
    // Corrupt the layer: same size, other bytes.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&m[7..])).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let path = layout.join("blobs/sha256").join(&layer[7..]);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![0u8; len]).unwrap();

    let (ok, _, err) = import(&root, &layout, Some("bad/app"));
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&layer) && err.contains("hash"), "{err}");
    // An export into the root itself is refused.
    let (ok, _, err) = cli(&[
        os("export"),
        os("bad/app"),
        os("--to"),
        root.join("blobs").as_os_str(),
        os("--root"),
        root.as_os_str(),
    ]);
    assert!(!ok);
    assert!(err.contains("inside the registry root"), "{err}");
    let (ok, _, err) = import(&root, dir.path(), Some("bad/app"));
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not an OCI image layout"), "{err}");
    // Nothing stored, nothing left behind.
    assert!(blob_files(&root).is_empty(), "{:?}", blob_files(&root));
    assert_eq!(std::fs::read_dir(root.join("uploads")).unwrap().count(), 0);
    let (ok, out, err) = cli(&[os("fsck"), os("--root"), root.as_os_str()]);
    assert!(ok && out.contains("0 manifests"), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oras_artifact_survives_export_and_import() {
    let python = std::env::var("ORAS_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has_oras = Command::new(&python)
        .args(["-c", "import oras.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_oras {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the oras Python SDK is required in CI (ORAS_PYTHON={python})");
        }
        eprintln!("\n!!!!! SKIPPED: the `oras` Python package is not importable by {python}; `pip install oras` to run this test !!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let artifact = random_bytes(50_000);
    std::fs::write(w.join("artifact.bin"), &artifact).unwrap();
    let push = r#"
import sys, oras.client
c = oras.client.OrasClient(hostname=sys.argv[1], insecure=True)
print(c.push(files=["artifact.bin"], target=sys.argv[1] + "/oras/artifact:v1").headers["Docker-Content-Digest"])
"#;
    let pull = r#"
import sys, oras.client
c = oras.client.OrasClient(hostname=sys.argv[1], insecure=True)
c.pull(target=sys.argv[1] + "/oras/artifact:v1", outdir=sys.argv[2])
"#;
    let root = dir.path().join("data");
    let p = Process::spawn(&root);
    let pushed = run(Command::new(&python)
        .current_dir(w)
        .args(["-c", push, &p.addr.to_string()]));
    let digest = pushed.trim().lines().last().unwrap().to_string();
    assert!(p.stop().success());

    // The export names the artifact by its tag; its manifest is there byte for byte.
    let layout = w.join("layout");
    let (ok, out, err) = cli(&[
        os("export"),
        os("oras/artifact:v1"),
        os("--to"),
        layout.as_os_str(),
        os("--root"),
        root.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert_eq!(layout_digest(&layout, "v1"), digest);
    let body = std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    assert_eq!(sha256(&body), digest);

    // Imported into a fresh root, oras pulls the same file from it.
    let fresh = w.join("fresh");
    let (ok, out, err) = import(&fresh, &layout, None);
    assert!(ok, "{out}{err}");
    let q = Process::spawn(&fresh);
    let out_dir = w.join("out");
    run(Command::new(&python)
        .current_dir(w)
        .args(["-c", pull, &q.addr.to_string()])
        .arg(&out_dir));
    assert_eq!(
        std::fs::read(out_dir.join("artifact.bin")).unwrap(),
        artifact
    );
    assert!(q.stop().success());
}
