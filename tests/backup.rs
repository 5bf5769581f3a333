//! `dockyard backup` and `dockyard restore` as a person runs them: the real binary, through a
//! running server's control channel while clients push and delete, and on stopped roots.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    // Images whose manifest PUT was answered: each backup waits for new ones.
    let acked = Arc::new(AtomicUsize::new(0));

    // Two pushers, each pushing images with two fresh layers under fresh tags; one deleter
    // deleting every third image by digest (its blobs become garbage the GC takes at once).
    let mut load = Vec::new();
    for w in 0..2 {
        let (base, pushed, stop) = (base.clone(), pushed.clone(), stop.clone());
        let acked = acked.clone();
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
                acked.fetch_add(1, Ordering::SeqCst);
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
        // Four more images acknowledged since the last backup (an observable point, not a
        // delay: on a loaded machine 400 ms once passed before the first push was answered).
        let want = 4 * (round + 1);
        while acked.load(Ordering::SeqCst) < want {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
    // Every earlier blob is still there, unless the GC took it meanwhile (deleted images).
    assert_eq!(
        figure(&after, "already") + figure(&after, "removed"),
        figure(&quiet, "blobs"),
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

/// Pushes `n` images of two layers of `size` bytes into `repo` under tags `t0…`.
async fn seed_images(base: &str, pushed: &Pushed, repo: &str, n: usize, size: usize) {
    let c = fresh_client();
    for i in 0..n {
        let (l1, l2) = (random_bytes(size), random_bytes(size / 2 + 1));
        let (manifest, _) = push_image(&c, base, repo, &format!("t{i}"), &[&l1, &l2]).await;
        pushed
            .lock()
            .unwrap()
            .insert((repo.to_string(), format!("t{i}")), manifest);
    }
}

/// What `fsck` says of a root, accepting only leftovers the next GC removes.
fn fsck_only_leftovers(root: &Path) {
    let (ok, out, err) = dockyard(&["fsck".as_ref(), "--root".as_ref(), root.as_os_str()]);
    if ok {
        return;
    }
    let text = format!("{out}{err}");
    for line in text.lines().filter(|l| l.starts_with("  ")) {
        assert!(
            line.contains("the next gc removes it"),
            "an interrupted backup left more than leftovers: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_killed_midway_leaves_the_previous_backup_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // On another filesystem (tmpfs) the blobs are copied, not linked: the hard links of a
    // same-filesystem backup would be over too soon to interrupt.
    let other_fs =
        tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let dest = other_fs.path().join("backup");
    let pushed: Pushed = Arc::default();
    let p = Process::spawn(&root);
    seed_images(&p.url(""), &pushed, "first/app", 3, 20_000).await;
    assert!(p.stop().success());
    backup(&root, &dest);
    let before: Vec<u8> = std::fs::read(dest.join("dockyard.redb")).unwrap();

    // Enough new bytes that copying them takes a while.
    let p = Process::spawn(&root);
    seed_images(&p.url(""), &pushed, "second/app", 40, 3 << 20).await;
    assert!(p.stop().success());

    // Kills at fixed delays (early ones land before the new database exists), then kills a
    // moment after `dockyard.redb.new` appears, which land while the blobs are copied
    // however slow the machine is: with delays alone, a loaded machine once had every
    // kill land before the copy began.
    let mut midway = 0;
    let kills = [
        (true, 0u64),
        (true, 5),
        (true, 20),
        (true, 60),
        (false, 30),
        (false, 100),
        (false, 250),
    ];
    // The new database file this run made (a killed run may have left an older one).
    let new_db_path = dest.join("dockyard.redb.new");
    let inode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).ok().map(|m| m.ino())
    };
    for (after_new_db, delay_ms) in kills {
        let stale = inode(&new_db_path);
        let fresh = || inode(&new_db_path).is_some_and(|i| Some(i) != stale);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dockyard"))
            .args([
                "backup".as_ref(),
                dest.as_os_str(),
                "--root".as_ref(),
                root.as_os_str(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if after_new_db {
            while !fresh() && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        if status.success() {
            break; // finished before the kill: nothing to check at this delay or later
        }
        let new_db = fresh();
        let unchanged = std::fs::read(dest.join("dockyard.redb")).unwrap() == before;
        if new_db && unchanged {
            midway += 1;
        }
        // Whatever the instant, DEST is a whole backup: the previous one until the rename.
        if unchanged {
            fsck_only_leftovers(&dest);
            let served = check_serves(&dest, &pushed, &format!("killed at {delay_ms} ms")).await;
            assert_eq!(served, 3, "the previous backup's three tags");
        }
    }
    assert!(
        midway > 0,
        "no kill landed during a backup: make the copy longer"
    );
    let done = backup(&root, &dest);
    fsck_clean(&dest);
    assert_eq!(
        check_serves(&dest, &pushed, "after the kills").await,
        43,
        "{done}"
    );
}

#[tokio::test]
async fn restore_into_an_empty_root_verifies_every_blob() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let dest = dir.path().join("backup");
    let pushed: Pushed = Arc::default();
    let p = Process::spawn(&root);
    seed_images(&p.url(""), &pushed, "team/app", 3, 10_000).await;
    // Through the running server.
    backup(&root, &dest);
    assert!(p.stop().success());

    let fresh = dir.path().join("restored");
    let (ok, out, err) = dockyard(&[
        "restore".as_ref(),
        dest.as_os_str(),
        "--root".as_ref(),
        fresh.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("restore: 1 repositories, 3 manifests"),
        "{out}"
    );
    assert!(out.contains("fsck: consistent"), "{out}");
    assert_eq!(check_serves(&fresh, &pushed, "restored").await, 3);

    // A root that is not empty needs --force.
    let (ok, _, err) = dockyard(&[
        "restore".as_ref(),
        dest.as_os_str(),
        "--root".as_ref(),
        fresh.as_os_str(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    let (ok, out, err) = dockyard(&[
        "restore".as_ref(),
        dest.as_os_str(),
        "--force".as_ref(),
        "--root".as_ref(),
        fresh.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");

    // A corrupt blob in the backup stops the restore before the database is put in place.
    // (Replaced, not rewritten: the backup's files are hard links to the root's.)
    let victim = blob_files(&dest).into_iter().next().unwrap();
    let path = dest
        .join("blobs/sha256")
        .join(&victim[7..9])
        .join(&victim[7..]);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![b'x'; len]).unwrap();
    let other = dir.path().join("other");
    let (ok, _, err) = dockyard(&[
        "restore".as_ref(),
        dest.as_os_str(),
        "--root".as_ref(),
        other.as_os_str(),
    ]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("corrupt"), "{err}");
    assert!(!other.join("dockyard.redb").exists());
}

#[tokio::test]
async fn bad_destinations_are_refused_in_one_line_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let pushed: Pushed = Arc::default();
    let p = Process::spawn(&root);
    seed_images(&p.url(""), &pushed, "team/app", 1, 1000).await;
    let inside = root.join("backup");
    let foreign = dir.path().join("photos");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    for (dest, needle) in [
        (&inside, "inside the registry root"),
        (&foreign, "other than a Dockyard backup"),
        (&root, "inside the registry root"),
    ] {
        let before_root = blob_files(&root);
        let (ok, out, err) = dockyard(&[
            "backup".as_ref(),
            dest.as_os_str(),
            "--root".as_ref(),
            root.as_os_str(),
        ]);
        assert!(!ok, "{out}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert_eq!(blob_files(&root), before_root);
    }
    assert!(!inside.exists());
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cat.jpg")]);
    assert!(p.stop().success());
}
