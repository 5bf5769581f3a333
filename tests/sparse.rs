//! Sparse image indexes: an index whose children are not (yet) in the repository is stored
//! byte for byte, counts the children that are present, protects a child pushed later as if
//! it had come first, and releases only what it counted; fsck and the GC stay exact.
//! `[storage] sparse_indexes = false` restores the strict check.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dockyard::config::Untagged;
use dockyard::gc::fsck::{self, FsckOptions};
use dockyard::gc::{GcOptions, GcReport};

use crate::util::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Zero grace and push window, untagged manifests collected at once, no timer.
async fn start(sparse: bool) -> TestRegistry {
    TestRegistry::start_gc_by_hand(|c| {
        c.sparse_indexes = sparse;
        c.gc.untagged = Untagged::After(Duration::ZERO);
    })
    .await
}

async fn run_gc(r: &TestRegistry) -> GcReport {
    r.gc_pass(GcOptions::default()).await
}

async fn assert_clean(r: &TestRegistry, step: &str) {
    let core = r.core.clone();
    let report = tokio::task::spawn_blocking(move || fsck::check(&core, &FsckOptions::default()))
        .await
        .expect("fsck task")
        .expect("fsck");
    assert!(report.clean(), "{step}: fsck: {report}");
}

async fn put(
    c: &reqwest::Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> (u16, String) {
    let resp = c
        .put(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("put manifest");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

async fn delete(c: &reqwest::Client, r: &TestRegistry, repo: &str, reference: &str) -> u16 {
    c.delete(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .expect("delete")
        .status()
        .as_u16()
}

/// The manifest served for `reference`, with its Content-Type, or None on 404.
async fn get(
    c: &reqwest::Client,
    r: &TestRegistry,
    repo: &str,
    reference: &str,
) -> Option<(String, Vec<u8>)> {
    let resp = c
        .get(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header(
            "Accept",
            format!("{OCI_INDEX}, {OCI_MANIFEST}, {DOCKER_LIST}"),
        )
        .send()
        .await
        .expect("get manifest");
    if resp.status() == 404 {
        return None;
    }
    assert_eq!(resp.status(), 200, "GET {repo}:{reference}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    Some((ct, resp.bytes().await.unwrap().to_vec()))
}

async fn tags(c: &reqwest::Client, r: &TestRegistry, repo: &str) -> Vec<String> {
    let resp = c
        .get(r.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap();
    if resp.status() == 404 {
        return vec![];
    }
    let v: serde_json::Value = resp.json().await.unwrap();
    v["tags"]
        .as_array()
        .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// An image whose config and layer are pushed; the manifest itself is returned unpushed.
async fn image(c: &reqwest::Client, r: &TestRegistry, repo: &str, arch: &str) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
        "nonce": hex::encode(random_bytes(8)),
    }))
    .unwrap();
    let layer = random_bytes(2000);
    push_blob(c, r, repo, &config).await;
    push_blob(c, r, repo, &layer).await;
    image_manifest(&config, &[&layer])
}

fn index_of(media_type: &str, child_type: &str, children: &[(&str, &[u8])]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = children
        .iter()
        .map(|(arch, m)| {
            let mut d = descriptor(child_type, m);
            d["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
            d
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests}),
    )
    .unwrap()
}

/// Config and layer digests of manifests.
fn blobs_of(manifests: &[&[u8]]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in manifests {
        let v: serde_json::Value = serde_json::from_slice(m).unwrap();
        out.insert(v["config"]["digest"].as_str().unwrap().to_string());
        for l in v["layers"].as_array().unwrap() {
            out.insert(l["digest"].as_str().unwrap().to_string());
        }
    }
    out
}

#[tokio::test]
async fn a_sparse_index_is_served_and_a_child_pushed_later_is_protected_as_if_first() {
    let r = start(true).await;
    let c = client();
    let amd = image(&c, &r, "app", "amd64").await;
    let arm = image(&c, &r, "app", "arm64").await;
    let (amd_d, arm_d) = (sha256(&amd), sha256(&arm));
    assert_eq!(put(&c, &r, "app", &amd_d, OCI_MANIFEST, &amd).await.0, 201);
    let index = index_of(OCI_INDEX, OCI_MANIFEST, &[("amd64", &amd), ("arm64", &arm)]);
    let index_d = sha256(&index);
    let (status, body) = put(&c, &r, "app", "multi", OCI_INDEX, &index).await;
    assert_eq!(status, 201, "{body}");

    // Served byte for byte by tag and by digest, listed in tags.
    for reference in ["multi", index_d.as_str()] {
        assert_eq!(
            get(&c, &r, "app", reference).await,
            Some((OCI_INDEX.to_string(), index.clone())),
            "{reference}"
        );
    }
    assert_eq!(get(&c, &r, "app", &arm_d).await, None);
    assert_eq!(tags(&c, &r, "app").await, ["multi"]);
    assert_clean(&r, "sparse index pushed").await;

    // The present child is counted: it cannot be deleted, and no GC pass takes it.
    assert_eq!(delete(&c, &r, "app", &amd_d).await, 409);
    let report = run_gc(&r).await;
    assert_eq!((report.manifests, report.blobs), (0, 2), "{report}");
    // (The two blobs freed are arm64's config and layer: no manifest holds them yet.)
    assert_eq!(blob_files(&r.root), blobs_of(&[&amd]));

    // The missing child comes later: it is protected by the index exactly like the first.
    let arm = image(&c, &r, "app", "arm64-again").await;
    let index2 = index_of(OCI_INDEX, OCI_MANIFEST, &[("amd64", &amd), ("arm64", &arm)]);
    let index2_d = sha256(&index2);
    assert_eq!(
        put(&c, &r, "app", "multi2", OCI_INDEX, &index2).await.0,
        201
    );
    let arm_d = sha256(&arm);
    assert_eq!(put(&c, &r, "app", &arm_d, OCI_MANIFEST, &arm).await.0, 201);
    assert_clean(&r, "late child pushed").await;
    assert_eq!(delete(&c, &r, "app", &arm_d).await, 409);
    let report = run_gc(&r).await;
    assert_eq!((report.manifests, report.blobs), (0, 0), "{report}");
    assert_eq!(blob_files(&r.root), blobs_of(&[&amd, &arm]));
    assert_eq!(
        get(&c, &r, "app", &arm_d).await,
        Some((OCI_MANIFEST.to_string(), arm.clone()))
    );

    // The first index is deleted while one of its children is still absent: it releases
    // only amd64, which multi2 still holds.
    assert_eq!(delete(&c, &r, "app", &index_d).await, 202);
    assert_clean(&r, "first index deleted").await;
    assert_eq!(tags(&c, &r, "app").await, ["multi2"]);
    assert_eq!(delete(&c, &r, "app", &amd_d).await, 409);
    assert_eq!(delete(&c, &r, "app", &arm_d).await, 409);

    // Untagging the second index leaves it for the untagged rule: the pass takes it, then
    // both children, then every blob.
    assert_eq!(delete(&c, &r, "app", "multi2").await, 202);
    assert_clean(&r, "second index untagged").await;
    let report = run_gc(&r).await;
    assert_eq!((report.manifests, report.blobs), (3, 4), "{report}");
    assert!(blob_files(&r.root).is_empty());
    assert_eq!(get(&c, &r, "app", &index2_d).await, None);
    assert_clean(&r, "all collected").await;
    r.stop().await;
}

#[tokio::test]
async fn deleting_a_sparse_index_in_every_order_releases_only_what_it_counted() {
    let r = start(true).await;
    let c = client();
    // Orders: (children present, children pushed later) × (index deleted before or after
    // the children are pushed), and a Docker list alongside an OCI index.
    for (n, (list_type, child_type)) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)]
        .into_iter()
        .enumerate()
    {
        let repo = format!("order{n}");
        let a = image(&c, &r, &repo, "amd64").await;
        let b = image(&c, &r, &repo, "arm64").await;
        let (a_d, b_d) = (sha256(&a), sha256(&b));
        // Not even one child present.
        let index = index_of(list_type, child_type, &[("amd64", &a), ("arm64", &b)]);
        let index_d = sha256(&index);
        assert_eq!(put(&c, &r, &repo, &index_d, list_type, &index).await.0, 201);
        assert_eq!(put(&c, &r, &repo, "a", OCI_MANIFEST, &a).await.0, 201);
        assert_clean(&r, "child a pushed under a tag after its index").await;
        // a is held by its tag and the index: untagging it leaves the index's reference.
        assert_eq!(delete(&c, &r, &repo, "a").await, 202);
        assert_eq!(delete(&c, &r, &repo, &a_d).await, 409);
        // The index is deleted before b ever comes: b, pushed now, is not held by anything.
        assert_eq!(delete(&c, &r, &repo, &index_d).await, 202);
        assert_clean(&r, "index deleted with b absent").await;
        assert_eq!(put(&c, &r, &repo, &b_d, OCI_MANIFEST, &b).await.0, 201);
        assert_clean(&r, "b pushed after its index went").await;
        assert_eq!(delete(&c, &r, &repo, &b_d).await, 202);
        assert_eq!(delete(&c, &r, &repo, &a_d).await, 202);
        assert_clean(&r, "both children deleted").await;
        let report = run_gc(&r).await;
        assert_eq!(report.blobs, 4, "{report}");
        assert!(blob_files(&r.root).is_empty(), "{repo}");
        assert_eq!(tags(&c, &r, &repo).await, Vec::<String>::new());
    }
    // The same index pushed into two repositories counts separately in each.
    let a = image(&c, &r, "one", "amd64").await;
    push_blob(&c, &r, "two", &random_bytes(1)).await;
    let index = index_of(OCI_INDEX, OCI_MANIFEST, &[("amd64", &a)]);
    assert_eq!(put(&c, &r, "one", "i", OCI_INDEX, &index).await.0, 201);
    assert_eq!(put(&c, &r, "two", "i", OCI_INDEX, &index).await.0, 201);
    assert_eq!(
        put(&c, &r, "one", &sha256(&a), OCI_MANIFEST, &a).await.0,
        201
    );
    assert_clean(&r, "one index in two repositories").await;
    assert_eq!(delete(&c, &r, "two", "i").await, 202);
    assert_eq!(delete(&c, &r, "one", &sha256(&a)).await, 409);
    assert_clean(&r, "the other repository's index untagged").await;
    r.stop().await;
}

#[tokio::test]
async fn sparse_indexes_false_refuses_an_index_with_a_missing_child() {
    let r = start(false).await;
    let c = client();
    let a = image(&c, &r, "strict", "amd64").await;
    let index = index_of(OCI_INDEX, OCI_MANIFEST, &[("amd64", &a)]);
    let resp = c
        .put(r.url("/v2/strict/manifests/i"))
        .header("Content-Type", OCI_INDEX)
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(get(&c, &r, "strict", "i").await, None);
    assert_eq!(
        put(&c, &r, "strict", &sha256(&a), OCI_MANIFEST, &a).await.0,
        201
    );
    assert_eq!(put(&c, &r, "strict", "i", OCI_INDEX, &index).await.0, 201);
    assert_clean(&r, "strict").await;
    r.stop().await;
}

/// skopeo copies only the index of a two-platform OCI layout (`--multi-arch index-only`),
/// then one platform by digest; the index pulls by tag and digest before and after.
// Multi-threaded: the skopeo runs block the test's thread, not the server's workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_an_index_only_copy_and_a_platform_later() {
    if !require_tool("skopeo") {
        return;
    }
    let r = start(true).await;
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let index_d = oci_layout(&layout, "multi", &["amd64", "arm64"]);
    let dest = format!("docker://{}/mirror/app", r.addr);
    let copy = |src: String, dst: String, extra: &[&str]| {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--dest-tls-verify=false"])
            .args(extra)
            .arg(src)
            .arg(dst);
        run(&mut cmd)
    };
    copy(
        format!("oci:{}:multi", layout.display()),
        format!("{dest}:multi"),
        &["--multi-arch", "index-only"],
    );
    let (ct, body) = get(&c, &r, "mirror/app", "multi")
        .await
        .expect("index by tag");
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(sha256(&body), index_d);
    assert!(get(&c, &r, "mirror/app", &index_d).await.is_some());
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let children: Vec<(String, String)> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_string(),
                m["platform"]["architecture"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(children.len(), 2);
    for (d, _) in &children {
        assert_eq!(get(&c, &r, "mirror/app", d).await, None, "{d} not copied");
    }
    assert_clean(&r, "index only").await;

    // One platform later, as a mirror fetches what its edge pulls (under a tag, which is
    // then deleted: the index alone holds it).
    let (child, arch) = &children[1];
    copy(
        format!("oci:{}:multi", layout.display()),
        format!("{dest}:{arch}"),
        &["--override-arch", arch, "--override-os", "linux"],
    );
    assert!(get(&c, &r, "mirror/app", child).await.is_some());
    assert_eq!(delete(&c, &r, "mirror/app", arch).await, 202);
    assert_eq!(delete(&c, &r, "mirror/app", child).await, 409);
    assert_clean(&r, "one platform").await;
    // skopeo pulls that platform through the index, by tag and by the index's digest.
    for reference in [":multi".to_string(), format!("@{index_d}")] {
        let out = dir.path().join(format!("pulled{}", reference.len()));
        let pulled = copy_from(&format!("{dest}{reference}"), &out, arch);
        assert_eq!(&pulled, child, "{reference}");
    }

    // Delete the index, then the child; a pass leaves nothing.
    assert_eq!(delete(&c, &r, "mirror/app", "multi").await, 202);
    assert_eq!(delete(&c, &r, "mirror/app", &index_d).await, 202);
    assert_eq!(delete(&c, &r, "mirror/app", child).await, 202);
    run_gc(&r).await;
    assert!(blob_files(&r.root).is_empty());
    assert_clean(&r, "all deleted").await;
    r.stop().await;
}

/// `skopeo copy`s the `arch` image of `src` into a `dir:` at `out`; returns its manifest's digest.
fn copy_from(src: &str, out: &Path, arch: &str) -> String {
    run(Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--override-arch",
        arch,
        "--override-os",
        "linux",
        src,
        &format!("dir:{}", out.display()),
    ]));
    sha256(&std::fs::read(out.join("manifest.json")).unwrap())
}

/// A copy of `tests/fixtures/schema1`: written by the release before sparse indexes (schema
/// version 1: `fixture/app` with `amd64`, `arm64` and the index `multi` over them).
fn schema1_copy(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema1");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    };
    copy(&src.join("dockyard.redb"), &dir.join("dockyard.redb"));
    for shard in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let rel = f.strip_prefix(&src).unwrap();
            copy(&f, &dir.join(rel));
        }
    }
}

#[tokio::test]
async fn a_schema_1_database_is_migrated_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    schema1_copy(dir.path());
    let r = TestRegistry::start_with(dockyard::Config {
        root: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await;
    let c = client();
    assert_clean(&r, "migrated").await;
    let version = r
        .core
        .db
        .read_blocking(|tx| {
            Ok(tx
                .open_table(dockyard::db::schema::META)?
                .get("schema_version")?
                .map(|v| v.value()))
        })
        .unwrap();
    assert_eq!(version, Some(dockyard::db::schema::SCHEMA_VERSION));
    let (ct, index) = get(&c, &r, "fixture/app", "multi").await.expect("index");
    assert_eq!(ct, OCI_INDEX);
    let v: serde_json::Value = serde_json::from_slice(&index).unwrap();
    for child in v["manifests"].as_array().unwrap() {
        let d = child["digest"].as_str().unwrap();
        let (_, body) = get(&c, &r, "fixture/app", d).await.expect("child");
        assert_pulls(&c, &r.url(""), "fixture/app", d, &body, "migrated child").await;
        // The old index still holds its children.
        assert_eq!(delete(&c, &r, "fixture/app", d).await, 409);
    }
    // A sparse index and a late child work on the migrated database.
    let late = image(&c, &r, "fixture/app", "s390x").await;
    let sparse = index_of(OCI_INDEX, OCI_MANIFEST, &[("s390x", &late)]);
    assert_eq!(
        put(&c, &r, "fixture/app", "sparse", OCI_INDEX, &sparse)
            .await
            .0,
        201
    );
    assert_eq!(
        put(&c, &r, "fixture/app", &sha256(&late), OCI_MANIFEST, &late)
            .await
            .0,
        201
    );
    assert_eq!(delete(&c, &r, "fixture/app", &sha256(&late)).await, 409);
    assert_clean(&r, "sparse on the migrated database").await;
    r.stop().await;
}
