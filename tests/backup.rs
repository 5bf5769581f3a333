//! `dockyard backup` and `dockyard restore` as a person runs them: the real binary, through a
//! running server's control channel while clients push and delete, and on stopped roots.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::util::*;

/// `(repo, tag)` → the manifest bytes pushed under it.
type Pushed = Arc<Mutex<BTreeMap<(String, String), Vec<u8>>>>;

fn config_for(dir: &Path, root: &Path) -> std::path::PathBuf {
    write_config(
        dir,
        "registry.toml",
        &format!(
            "[storage]\nroot = {:?}\n[gc]\ninterval = \"1s\"\ngrace = \"0s\"\npush_window = \"2s\"\n",
            root.display().to_string()
        ),
    )
}

/// A number from a backup summary: `field` is the word after it ("copied", "linked", …).
fn figure(summary: &str, field: &str) -> u64 {
    let words: Vec<&str> = summary.split_whitespace().collect();
    let i = words
        .iter()
        .position(|w| w.trim_end_matches([',', ';', ':']) == field)
        .unwrap_or_else(|| panic!("no {field} in {summary}"));
    words[i - 1]
        .parse()
        .unwrap_or_else(|_| panic!("no number before {field} in {summary}"))
}

fn backup(root: &Path, dest: &Path) -> String {
    let (ok, out, err) = dockyard(&[
        "backup".as_ref(),
        dest.as_os_str(),
        "--root".as_ref(),
        root.as_os_str(),
    ]);
    assert!(ok, "backup failed: {err}{out}");
    assert!(out.starts_with("backup: "), "{out}");
    out
}

fn fsck_clean(root: &Path) {
    let (ok, out, err) = dockyard(&[
        "fsck".as_ref(),
        "--verify-hashes".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
    ]);
    assert!(ok, "fsck of {} failed: {out}{err}", root.display());
}

/// Every (repo, tag) the registry at `base` lists.
async fn listed_tags(c: &reqwest::Client, base: &str) -> Vec<(String, String)> {
    let cat: serde_json::Value = c
        .get(format!("{base}/v2/_catalog"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for repo in cat["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        let tags: serde_json::Value = c
            .get(format!("{base}/v2/{repo}/tags/list"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for t in tags["tags"].as_array().into_iter().flatten() {
            out.push((repo.to_string(), t.as_str().unwrap().to_string()));
        }
    }
    out
}

/// Serves `root`, pulls every tag it lists (each must be one the test pushed, byte for byte),
/// and one of them with skopeo too. Returns how many tags it listed.
async fn check_serves(root: &Path, pushed: &Pushed, what: &str) -> usize {
    let c = fresh_client();
    let p = Process::spawn(root);
    let base = p.url("");
    let tags = listed_tags(&c, &base).await;
    for (repo, tag) in &tags {
        let bytes = pushed
            .lock()
            .unwrap()
            .get(&(repo.clone(), tag.clone()))
            .cloned()
            .unwrap_or_else(|| panic!("{what}: {repo}:{tag} was never pushed"));
        assert_pulls(&c, &base, repo, tag, &bytes, what).await;
    }
    if let Some((repo, tag)) = tags.first() {
        if require_tool("skopeo") {
            let out = tempfile::tempdir().unwrap();
            let target = out.path().join("img");
            run(std::process::Command::new("skopeo").args([
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{}/{repo}:{tag}", p.addr),
                &format!("dir:{}", target.display()),
            ]));
            let got = std::fs::read(target.join("manifest.json")).unwrap();
            let want = pushed.lock().unwrap()[&(repo.clone(), tag.clone())].clone();
            assert_eq!(got, want, "{what}: skopeo pulled other manifest bytes");
        }
    }
    assert!(p.stop().success());
    tags.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_taken_under_pushes_deletes_and_gc_serve_and_are_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let dest = dir.path().join("backup");
    let config = config_for(dir.path(), &root);
    let server = Process::spawn_with_config(&root, &config);
    let base = server.url("");
    let pushed: Pushed = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    // Two pushers, each pushing images with two fresh layers under fresh tags; one deleter
    // deleting every third image by digest (its blobs become garbage the GC takes at once).
    let mut load = Vec::new();
    for w in 0..2 {
        let (base, pushed, stop) = (base.clone(), pushed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = fresh_client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let repo = format!("load/w{w}");
                let tag = format!("t{i}");
                let (l1, l2) = (random_bytes(3000), random_bytes(5000));
                let config =
                    serde_json::to_vec(&serde_json::json!({"os": "linux", "n": tag})).unwrap();
                for b in [&l1, &l2, &config] {
                    push_blob(&c, base.as_str(), &repo, b).await;
                }
                let manifest = image_manifest(&config, &[&l1, &l2]);
                // Recorded before the PUT: a backup may hold the tag as soon as it commits
                // (and may hold it after the delete below, if taken before it).
                pushed
                    .lock()
                    .unwrap()
                    .insert((repo.clone(), tag.clone()), manifest.clone());
                put_manifest(&c, base.as_str(), &repo, &tag, &manifest).await;
                if i % 3 == 2 {
                    let resp = c
                        .delete(format!("{base}/v2/{repo}/manifests/{}", sha256(&manifest)))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 202);
                }
                i += 1;
            }
            i
        }));
    }

    let mut summaries = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let (r, d) = (root.clone(), dest.clone());
        let out = tokio::task::spawn_blocking(move || backup(&r, &d))
            .await
            .unwrap();
        summaries.push(out.clone());
        // Each backup is a root of its own: consistent, hashes verified, and it serves.
        fsck_clean(&dest);
        let n = check_serves(&dest, &pushed, &format!("backup {round}")).await;
        assert!(n > 0, "backup {round} holds no tags: {out}");
        assert!(
            dest.join(".dockyard-backup").is_file(),
            "the marker names the backup"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut images = 0;
    for l in load {
        images += l.await.unwrap();
    }
    assert!(images > 10, "the load pushed only {images} images");
    // Later backups under load found most blobs already there.
    assert!(figure(&summaries[2], "already") > 0, "{}", summaries[2]);

    // Counted exactly, with the load stopped: a backup of an unchanged root places nothing,
    // and after three more images (two layers and a config each) it places nine blobs.
    backup(&root, &dest);
    let quiet = backup(&root, &dest);
    assert_eq!(figure(&quiet, "copied"), 0, "{quiet}");
    assert_eq!(figure(&quiet, "linked"), 0, "{quiet}");
    let c = fresh_client();
    for i in 0..3 {
        let (l1, l2) = (random_bytes(7000), random_bytes(9000));
        let (manifest, _) = push_image(
            &c,
            base.as_str(),
            "quiet/one",
            &format!("q{i}"),
            &[&l1, &l2],
        )
        .await;
        pushed
            .lock()
            .unwrap()
            .insert(("quiet/one".to_string(), format!("q{i}")), manifest);
    }
    let after = backup(&root, &dest);
    assert_eq!(
        figure(&after, "copied") + figure(&after, "linked"),
        9,
        "only the new blobs are placed: {after}"
    );
    assert_eq!(
        figure(&after, "already"),
        figure(&quiet, "already"),
        "every earlier blob is kept: {after} / {quiet}"
    );
    // A blob the new snapshot no longer references leaves DEST: delete one image, let the
    // GC take its blobs (grace 0, push window 2 s), back up again.
    let m = pushed.lock().unwrap()[&("quiet/one".to_string(), "q0".to_string())].clone();
    let resp = c
        .delete(format!("{base}/v2/quiet/one/manifests/{}", sha256(&m)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    pushed
        .lock()
        .unwrap()
        .remove(&("quiet/one".to_string(), "q0".to_string()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let removed = loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let out = backup(&root, &dest);
        let n = figure(&out, "removed");
        if n >= 3 || std::time::Instant::now() > deadline {
            break n;
        }
    };
    assert!(
        removed >= 3,
        "the deleted image's three blobs leave the backup"
    );
    fsck_clean(&dest);
    check_serves(&dest, &pushed, "final backup").await;
    let log = server.output();
    let status = server.stop();
    assert!(status.success(), "{status}: {log}");
    fsck_clean(&root);
}
