//! `[[policy]]` through the real server: retention in the GC pass (dry run first), immutable
//! tags (with reqwest, skopeo and docker), and quotas (exact figures, deletes free quota,
//! concurrent pushes cannot overshoot).

use std::collections::BTreeSet;
use std::process::Command;

use dockyard::gc::fsck::{self, FsckOptions};
use dockyard::gc::{self, GcOptions};
use dockyard::oci::{RepoName, Tag};

use crate::util::*;

const DAY_MS: u64 = 86_400_000;

/// A registry with the given `[[policy]]` tables; keep the directory as long as the server.
async fn start(policy_toml: &str) -> (TestRegistry, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = dockyard::Config::from_toml(policy_toml).expect("policy config");
    config.root = dir.path().to_path_buf();
    (TestRegistry::start_with(config).await, dir)
}

async fn tags_of(r: &TestRegistry, repo: &str) -> BTreeSet<String> {
    let v: serde_json::Value = client()
        .get(r.url(&format!("/v2/{repo}/tags/list")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

async fn assert_fsck_clean(r: &TestRegistry) {
    let report = r.fsck(false).await;
    assert!(report.clean(), "fsck: {report}");
}

/// The tag names of a report's `repo:tag digest (rule)` lines.
fn expired_names(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_newest_recent_and_named_tags_and_dry_run_matches() {
    let (r, _dir) = start(
        r#"
[[policy]]
pattern = "ci/**"
keep_last = 5
keep_within = "10d"
keep_tags = ["latest", "release-*"]
"#,
    )
    .await;
    let c = client();
    let now = dockyard::db::now_ms();
    let repo = RepoName::parse("ci/app").unwrap();
    // t00 pushed now … t29 pushed 29 days ago, each its own image; latest and release-1
    // point at the oldest and are older still; other/app has no policy.
    for i in 0..30u64 {
        let layer = random_bytes(300);
        push_image(&c, &r, "ci/app", &format!("t{i:02}"), &[&layer]).await;
    }
    let old = client()
        .get(r.url("/v2/ci/app/manifests/t29"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    put_manifest(&c, &r, "ci/app", "latest", &old).await;
    put_manifest(&c, &r, "ci/app", "release-1", &old).await;
    push_image(&c, &r, "other/app", "ancient", &[&random_bytes(10)]).await;
    // A minute's margin, so t10 is within 10 days when the pass looks.
    let times: Vec<(String, u64)> = (0..30u64)
        .map(|i| (format!("t{i:02}"), now - i * DAY_MS + 60_000))
        .chain([
            ("latest".to_string(), now - 100 * DAY_MS),
            ("release-1".to_string(), now - 100 * DAY_MS),
        ])
        .collect();
    let rn = repo.clone();
    r.core
        .db
        .write(move |tx| {
            for (t, ms) in &times {
                let tag = Tag::parse(t).unwrap();
                assert!(dockyard::db::manifests::set_tag_pushed(tx, &rn, &tag, *ms)?);
            }
            let other = RepoName::parse("other/app").unwrap();
            let tag = Tag::parse("ancient").unwrap();
            dockyard::db::manifests::set_tag_pushed(tx, &other, &tag, 1)?;
            Ok(())
        })
        .await
        .unwrap();

    // Newest 5 are t00..t04, within 10 days t00..t10: t11..t29 go, 19 tags.
    let want: BTreeSet<String> = (11..30).map(|i| format!("ci/app:t{i:02}")).collect();
    let dry = r
        .admin(dockyard::admin::Command::Gc { dry_run: true })
        .await
        .unwrap();
    let listed: BTreeSet<String> = dry
        .lines()
        .filter_map(|l| l.trim().strip_prefix("would delete tag "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(listed, want, "dry run lists tag by tag:\n{dry}");
    assert!(
        dry.contains("keep_last = 5") && dry.contains("keep_within = 10days"),
        "with the rule: {dry}"
    );
    assert_eq!(
        tags_of(&r, "ci/app").await.len(),
        32,
        "a dry run deletes nothing"
    );

    let core = r.core.clone();
    let report = tokio::task::spawn_blocking(move || gc::run_once(&core, &GcOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        expired_names(&report.expired_tags),
        want,
        "the real run deletes what the dry run listed"
    );
    let kept = tags_of(&r, "ci/app").await;
    let want_kept: BTreeSet<String> = (0..11)
        .map(|i| format!("t{i:02}"))
        .chain(["latest".into(), "release-1".into()])
        .collect();
    assert_eq!(kept, want_kept);
    assert_eq!(
        tags_of(&r, "other/app").await.len(),
        1,
        "no policy, no retention"
    );
    assert_fsck_clean(&r).await;
    for t in &kept {
        let resp = c
            .get(r.url(&format!("/v2/ci/app/manifests/{t}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{t}");
        let m: serde_json::Value = resp.json().await.unwrap();
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let resp = c
            .get(r.url(&format!("/v2/ci/app/blobs/{layer}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{t}'s layer pulls");
    }
    // A second pass has nothing left to expire.
    let core = r.core.clone();
    let again = tokio::task::spawn_blocking(move || gc::run_once(&core, &GcOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert!(again.expired_tags.is_empty(), "{again}");
    r.stop().await;
}

const IMMUTABLE: &str = r#"
[[policy]]
pattern = "**"
immutable_tags = ["v*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tags_never_move_nor_go_and_other_tags_move_freely() {
    let (r, _dir) = start(IMMUTABLE).await;
    let c = client();
    let (a, a_digest) = push_image(&c, &r, "app", "v1.0", &[&random_bytes(100)]).await;
    let (b, b_digest) = push_image(&c, &r, "app", "latest", &[&random_bytes(100)]).await;

    let refused = |resp: reqwest::Response| async move {
        assert_eq!(resp.status(), 409);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        let msg = v["errors"][0]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("immutable") && msg.contains("app:v1.0"),
            "{msg}"
        );
        msg
    };
    let put = |tag: &str, body: &[u8]| {
        c.put(r.url(&format!("/v2/app/manifests/{tag}")))
            .header("Content-Type", OCI_MANIFEST)
            .body(body.to_vec())
            .send()
    };
    let msg = refused(put("v1.0", &b).await.unwrap()).await;
    assert!(msg.contains(&a_digest), "names where it stays: {msg}");
    // The same manifest again is no move.
    assert_eq!(put("v1.0", &a).await.unwrap().status(), 201);
    // ?tag= on a push by digest is checked too.
    let resp = c
        .put(r.url(&format!("/v2/app/manifests/{b_digest}?tag=v1.0")))
        .header("Content-Type", OCI_MANIFEST)
        .body(b.clone())
        .send()
        .await
        .unwrap();
    refused(resp).await;
    let delete = |reference: String| {
        c.delete(r.url(&format!("/v2/app/manifests/{reference}")))
            .send()
    };
    refused(delete("v1.0".into()).await.unwrap()).await;
    refused(delete(a_digest.clone()).await.unwrap()).await;
    assert_eq!(
        served_manifest(&r, "app", "v1.0").await.0,
        a_digest,
        "nothing changed"
    );

    // Other tags move and go freely.
    assert_eq!(put("latest", &a).await.unwrap().status(), 201);
    assert_eq!(put("latest", &b).await.unwrap().status(), 201);
    assert_eq!(delete("latest".into()).await.unwrap().status(), 202);
    assert_eq!(delete(b_digest).await.unwrap().status(), 202);
    assert_fsck_clean(&r).await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_tags_refuse_skopeo_and_docker_with_the_message() {
    let (r, _dir) = start(IMMUTABLE).await;
    let host = r.addr.to_string();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut ran = false;
    if require_tool("skopeo") {
        ran = true;
        let policy = w.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let copy = |layout: &std::path::Path, tag: &str| {
            let mut cmd = Command::new("skopeo");
            cmd.arg("--policy")
                .arg(&policy)
                .args(["copy", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:v1", layout.display()))
                .arg(format!("docker://{host}/skopeo/app:{tag}"));
            cmd
        };
        let first = w.join("first");
        oci_layout(&first, "v1", &["amd64"]);
        let second = w.join("second");
        oci_layout(&second, "v1", &["amd64"]);
        run_async(copy(&first, "v1.0")).await;
        let mut cmd = copy(&second, "v1.0");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "skopeo moved an immutable tag");
        assert!(
            stderr.contains("is immutable"),
            "skopeo shows the message: {stderr}"
        );
        let second = w.join("second");
        run_async(copy(&second, "dev")).await;
    }
    if require_tool("docker") && require_env("DOCKER_HOST").is_some() {
        ran = true;
        let docker = |args: &[&str]| {
            let mut c = Command::new("docker");
            c.args(args);
            c
        };
        let image = format!("{host}/docker/app:v1.0");
        for (i, name) in ["one", "two"].iter().enumerate() {
            let tar = w.join(format!("{name}.tar"));
            std::fs::write(&tar, rootfs_tar(1, 1000)).unwrap();
            run_async(docker(&["import", tar.to_str().unwrap(), &image])).await;
            let out = tokio::task::spawn_blocking({
                let image = image.clone();
                move || docker(&["push", &image]).output().unwrap()
            })
            .await
            .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if i == 0 {
                assert!(out.status.success(), "first push: {text}");
            } else {
                assert!(
                    !out.status.success(),
                    "docker moved an immutable tag: {text}"
                );
                assert!(text.contains("is immutable"), "docker shows it: {text}");
            }
        }
        let _ = docker(&["rmi", &image]).output();
    }
    assert!(
        ran || std::env::var("CI").as_deref() != Ok("true"),
        "no client ran"
    );
    r.stop().await;
}

/// Pushes config + one layer of `size` random bytes (blobs only) and returns the manifest.
async fn blobs_for(c: &reqwest::Client, r: &TestRegistry, repo: &str, size: usize) -> Vec<u8> {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random_bytes(size);
    push_blob(c, r, repo, &config).await;
    push_blob(c, r, repo, &layer).await;
    image_manifest(&config, &[&layer])
}

async fn put_status(
    c: &reqwest::Client,
    r: &TestRegistry,
    repo: &str,
    tag: &str,
    m: &[u8],
) -> (u16, serde_json::Value) {
    let resp = c
        .put(r.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(m.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_refuses_with_figures_fits_frees_and_concurrent_pushes_cannot_overshoot() {
    // The config blob (37 bytes) is shared by every image: counted once.
    let (r, _dir) = start(
        r#"
[[policy]]
pattern = "team/**"
quota = 10000
[[policy]]
pattern = "big/**"
quota = "1MiB"
"#,
    )
    .await;
    let c = client();
    let m1 = blobs_for(&c, &r, "team/a", 4000).await;
    assert_eq!(put_status(&c, &r, "team/a", "1", &m1).await.0, 201);
    let m2 = blobs_for(&c, &r, "team/b", 4000).await;
    assert_eq!(put_status(&c, &r, "team/b", "1", &m2).await.0, 201);
    // 8037 used; 4000 more does not fit.
    let m3 = blobs_for(&c, &r, "team/a", 4000).await;
    let (status, body) = put_status(&c, &r, "team/a", "2", &m3).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("8037 bytes used")
            && msg.contains("10000 bytes quota")
            && msg.contains("4000 bytes pushed")
            && msg.contains("team/**"),
        "{msg}"
    );
    assert_eq!(body["errors"][0]["detail"]["used"], 8037);
    // Re-tagging what is counted adds nothing; a small push fits.
    assert_eq!(put_status(&c, &r, "team/a", "again", &m1).await.0, 201);
    let small = blobs_for(&c, &r, "team/a", 1000).await;
    assert_eq!(put_status(&c, &r, "team/a", "small", &small).await.0, 201);
    let du = r
        .admin(dockyard::admin::Command::Du { json: false })
        .await
        .unwrap();
    assert!(
        du.contains("quota team/**: ") && du.contains("of 9.8 KiB"),
        "du shows the quota: {du}"
    );
    // Deleting frees quota.
    let d1 = sha256(&m1);
    let resp = c
        .delete(r.url(&format!("/v2/team/a/manifests/{d1}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(put_status(&c, &r, "team/a", "2", &m3).await.0, 201);
    assert_fsck_clean(&r).await;

    // 8 concurrent pushes of 300 KiB under a 1 MiB quota: exactly 3 fit, whatever the order.
    let mut manifests = Vec::new();
    for i in 0..8 {
        manifests.push(blobs_for(&c, &r, &format!("big/r{i}"), 300 << 10).await);
    }
    let mut tasks = Vec::new();
    for (i, m) in manifests.into_iter().enumerate() {
        let (c, url) = (c.clone(), r.url(&format!("/v2/big/r{i}/manifests/t")));
        tasks.push(tokio::spawn(async move {
            c.put(url)
                .header("Content-Type", OCI_MANIFEST)
                .body(m)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|s| **s == 201).count();
    let denied = statuses.iter().filter(|s| **s == 403).count();
    assert_eq!((ok, denied), (3, 5), "{statuses:?}");
    let du = r
        .admin(dockyard::admin::Command::Du { json: false })
        .await
        .unwrap();
    assert!(
        du.contains("quota big/**: 900.0 KiB used of 1.0 MiB"),
        "{du}"
    );
    r.stop().await;
}

/// The per-(repository, blob) counts a quota reads are audited: a lost row or a stray one is
/// reported (the quota would count wrong) and `fsck --repair` rebuilds them from the manifests.
#[tokio::test]
async fn quota_counts_damaged_are_found_and_repaired_by_fsck() {
    use dockyard::db::schema::BLOB_USES;
    use redb::ReadableTable;
    let (r, _dir) = start("[[policy]]\npattern = \"team/**\"\nquota = 100000\n").await;
    let c = client();
    let layer = random_bytes(4000);
    push_image(&c, &r, "team/a", "v1", &[&layer]).await;
    push_image(&c, &r, "team/a", "v2", &[&layer]).await;
    let du = || async {
        r.admin(dockyard::admin::Command::Du { json: false })
            .await
            .unwrap()
            .lines()
            .find(|l| l.starts_with("quota team/**"))
            .unwrap()
            .to_string()
    };
    let before = du().await;
    let layer_digest = sha256(&layer);
    let (shared, d2) = (layer_digest.clone(), layer_digest.clone());
    let n = r
        .core
        .db
        .write_blocking(move |tx| {
            let mut t = tx.open_table(BLOB_USES)?;
            let n = t.get(("team/a", shared.as_str()))?.unwrap().value();
            t.remove(("team/a", shared.as_str()))?;
            t.insert(("team/b", "sha256:00"), 1)?;
            Ok(n)
        })
        .unwrap();
    assert_eq!(n, 2, "two manifests list the shared layer");
    assert_ne!(du().await, before, "the damage changes what the quota sees");
    let report = r.fsck(false).await;
    assert_eq!(
        report.kinds(),
        [fsck::Kind::BlobUses, fsck::Kind::BlobUses],
        "{report}"
    );
    assert!(report.to_string().contains(&d2), "{report}");
    let core = r.core.clone();
    let repaired = tokio::task::spawn_blocking(move || {
        fsck::check(
            &core,
            &FsckOptions {
                repair: true,
                ..Default::default()
            },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(repaired.repaired.len(), 2, "{repaired}");
    assert_fsck_clean(&r).await;
    assert_eq!(du().await, before);
    r.stop().await;
}
