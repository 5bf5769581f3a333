//! `dockyard gc`, `fsck` and `du` as a person runs them: the real binary, through a running
//! server's control channel and directly on a stopped instance.

use std::path::Path;

use dockyard::db::schema::{decode, encode, BlobRecord, BLOBS};
use redb::ReadableTable;

use crate::util::*;

async fn push(c: &reqwest::Client, base: &str, repo: &str, tag: &str, layers: &[&[u8]]) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({"os": "linux", "repo": repo})).unwrap();
    for b in layers.iter().copied().chain([config.as_slice()]) {
        push_blob(c, base, repo, b).await;
    }
    let manifest = image_manifest(&config, layers);
    put_manifest(c, base, repo, tag, &manifest).await;
    manifest
}

fn blob_path(root: &Path, digest: &str) -> std::path::PathBuf {
    root.join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..])
}

/// Rewrites one blob row in place on a stopped instance.
async fn edit_blob_row(
    config: &Path,
    digest: &str,
    mut edit: impl FnMut(Option<BlobRecord>) -> Option<BlobRecord> + Send + 'static,
) {
    let core = dockyard::Core::open(dockyard::Config::load(config).unwrap()).unwrap();
    let d = digest.to_string();
    core.db
        .write(move |tx| {
            let mut t = tx.open_table(BLOBS)?;
            let old = t
                .get(d.as_str())?
                .map(|v| decode::<BlobRecord>(v.value()))
                .transpose()?;
            match edit(old) {
                Some(rec) => t.insert(d.as_str(), encode(&rec).as_slice())?,
                None => t.remove(d.as_str())?,
            };
            Ok(())
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn gc_fsck_and_du_through_a_running_server_and_on_a_stopped_instance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = gc_by_hand_config(dir.path(), &root);
    let c = fresh_client();
    let (l1, l2, l3) = (random_bytes(4000), random_bytes(5000), random_bytes(6000));

    // --- through a running server: the CLI cannot open the database, so success means the
    // command went through the control channel.
    let p = Process::spawn_with_config(&root, &config);
    let base = p.url("");
    let ma = push(&c, &base, "team/a", "v1", &[&l1, &l2]).await;
    let mb = push(&c, &base, "team/b", "v1", &[&l1, &l3]).await;
    let resp = c
        .delete(format!("{base}/v2/team/b/manifests/{}", sha256(&mb)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let before = blob_files(&root);

    let (ok, out, err) = dockyard_with_config(&["du"], &config);
    assert!(ok, "du: {err}");
    assert!(
        out.contains("REPOSITORY") && out.contains("team/a") && out.contains("team/b"),
        "{out}"
    );
    assert!(
        out.contains("shared by several repositories: 1 blobs"),
        "{out}"
    );
    assert!(
        out.contains("gc would reclaim now") && out.contains("2 blobs"),
        "{out}"
    );

    let (ok, out, err) = dockyard_with_config(&["gc", "--dry-run"], &config);
    assert!(ok, "gc --dry-run: {err}");
    assert!(out.starts_with("gc: would free 2 blobs"), "{out}");
    assert_eq!(blob_files(&root), before, "a dry run deletes nothing");

    let (ok, out, err) = dockyard_with_config(&["gc"], &config);
    assert!(ok, "gc: {err}");
    assert!(out.starts_with("gc: freed 2 blobs"), "{out}");
    assert_eq!(blob_files(&root).len(), before.len() - 2);

    let (ok, out, err) = dockyard_with_config(&["fsck", "--verify-hashes"], &config);
    assert!(ok, "fsck: {err}");
    assert!(out.starts_with("fsck: consistent"), "{out}");

    // A referenced blob's file lost behind the server's back: a problem for a person, which
    // --repair must not paper over by dropping the row.
    let lost = sha256(&l2);
    let saved = std::fs::read(blob_path(&root, &lost)).unwrap();
    std::fs::remove_file(blob_path(&root, &lost)).unwrap();
    let (ok, _, err) = dockyard_with_config(&["fsck", "--repair"], &config);
    assert!(!ok, "a lost referenced file is not repairable");
    assert!(
        err.contains(&lost) && err.contains("needs a person"),
        "{err}"
    );
    std::fs::write(blob_path(&root, &lost), &saved).unwrap();
    let (ok, _, err) = dockyard_with_config(&["fsck"], &config);
    assert!(
        ok,
        "the row was kept, so putting the file back makes it whole: {err}"
    );
    assert!(p.stop().success());

    // --- on a stopped instance: damage counts, lose a named blob's row, leave a stray file.
    let shared = sha256(&l1);
    edit_blob_row(&config, &shared, |r| {
        r.map(|mut r| {
            r.refcount = 7;
            r
        })
    })
    .await;
    edit_blob_row(&config, &lost, |_| None).await;
    let stray = random_bytes(100);
    let ds = sha256(&stray);
    std::fs::create_dir_all(blob_path(&root, &ds).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&root, &ds), &stray).unwrap();

    let (ok, out, err) = dockyard_with_config(&["fsck"], &config);
    assert!(!ok, "fsck exits non-zero on problems: {out}");
    assert!(err.starts_with("dockyard: fsck: 3 problems"), "{err}");
    assert!(err.contains("counts 7 references"), "{err}");
    assert!(
        err.contains(&format!(
            "blob {lost} is listed by 1 manifests and its file exists"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("blob file {ds} has no row")), "{err}");

    let (ok, out, err) = dockyard_with_config(&["fsck", "--repair"], &config);
    assert!(ok, "repair fixes all three: {err}");
    assert!(out.contains("repaired 3"), "{out}");
    let (ok, out, err) = dockyard_with_config(&["fsck"], &config);
    assert!(ok && out.starts_with("fsck: consistent"), "{out}{err}");
    assert!(!blob_path(&root, &ds).exists(), "the stray file is gone");

    // Bit rot: found by --verify-hashes, reported, never dropped (not even by --repair).
    let victim = blob_path(&root, &shared);
    let good = std::fs::read(&victim).unwrap();
    let mut rotten = good.clone();
    rotten[100] ^= 0x40;
    std::fs::write(&victim, &rotten).unwrap();
    let (ok, _, _) = dockyard_with_config(&["fsck"], &config);
    assert!(
        ok,
        "without --verify-hashes sizes match and nothing is noticed"
    );
    let (ok, _, err) = dockyard_with_config(&["fsck", "--verify-hashes", "--repair"], &config);
    assert!(!ok);
    assert!(err.contains(&format!("blob {shared} is corrupt")), "{err}");
    assert!(victim.exists(), "a corrupt blob is reported, not deleted");
    let (ok, out, _) = dockyard_with_config(&["gc"], &config);
    assert!(ok && out.starts_with("gc: freed 0 blobs"), "{out}");
    std::fs::write(&victim, &good).unwrap();

    // Whole again: served byte for byte.
    let p = Process::spawn_with_config(&root, &config);
    assert_pulls(&c, &p.url(""), "team/a", "v1", &ma, "after the repairs").await;
    let (ok, out, err) = dockyard_with_config(&["fsck", "--verify-hashes"], &config);
    assert!(ok && out.starts_with("fsck: consistent"), "{out}{err}");
    assert!(p.stop().success());
}

/// The GC never deletes a blob that a manifest names, even when the blob's row is lost (a
/// damaged database, or a row removed by hand): not a pass on the stopped files, not one
/// through a running server, not with zero grace. fsck --repair then restores the row from
/// the file, and the image pulls byte for byte.
#[tokio::test]
async fn gc_keeps_a_blob_a_manifest_names_even_when_its_row_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = gc_by_hand_config(dir.path(), &root);
    let c = fresh_client();
    let (l1, l2) = (random_bytes(4000), random_bytes(5000));
    let p = Process::spawn_with_config(&root, &config);
    let manifest = push(&c, &p.url(""), "keep/me", "v1", &[&l1, &l2]).await;
    assert!(p.stop().success());

    let lost = sha256(&l2);
    edit_blob_row(&config, &lost, |_| None).await;
    // Old enough for any grace: the file is as old as a leftover could be.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(blob_path(&root, &lost))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let (ok, out, err) = dockyard_with_config(&["gc"], &config);
    assert!(ok, "gc on the stopped files: {err}");
    assert!(out.starts_with("gc: freed 0 blobs"), "{out}");
    assert_eq!(std::fs::read(blob_path(&root, &lost)).unwrap(), l2);

    let p = Process::spawn_with_config(&root, &config);
    let (ok, out, err) = dockyard_with_config(&["gc"], &config);
    assert!(ok, "gc through the server: {err}");
    assert!(out.starts_with("gc: freed 0 blobs"), "{out}");
    assert_eq!(std::fs::read(blob_path(&root, &lost)).unwrap(), l2);
    let (ok, _, err) = dockyard_with_config(&["fsck"], &config);
    assert!(!ok && err.contains(&lost), "fsck names the lost row: {err}");
    let (ok, out, err) = dockyard_with_config(&["fsck", "--repair"], &config);
    assert!(ok, "--repair restores the row from the file: {out}{err}");
    let (ok, out, err) = dockyard_with_config(&["fsck"], &config);
    assert!(ok, "{out}{err}");
    assert_pulls(
        &c,
        &p.url(""),
        "keep/me",
        "v1",
        &manifest,
        "after the repair",
    )
    .await;
    assert!(p.stop().success());
}

/// A new user deletes an image and runs `dockyard gc` with the default grace: nothing is
/// freed yet, and the report says what is kept, how big it is, and from when a pass frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_says_what_it_keeps_and_when_it_becomes_collectable() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "registry.toml",
        &format!(
            "[storage]\nroot = {:?}\n[gc]\ninterval = \"off\"\n",
            root.display().to_string()
        ),
    );
    let c = fresh_client();
    let p = Process::spawn_with_config(&root, &config);
    let base = p.url("");
    let (l1, l2) = (random_bytes(3000), random_bytes(5000));
    let m = push(&c, &base, "team/a", "v1", &[&l1, &l2]).await;
    let resp = c
        .delete(format!("{base}/v2/team/a/manifests/{}", sha256(&m)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    for args in [&["gc", "--dry-run"][..], &["gc"]] {
        let (ok, out, err) = dockyard_with_config(args, &config);
        assert!(ok, "{args:?}: {err}");
        let out = out.trim();
        assert!(
            out.starts_with("gc: would free 0 blobs") || out.starts_with("gc: freed 0 blobs"),
            "{out}"
        );
        // Config and two layers, uploaded (so also seen) just now: the hour of grace runs.
        assert!(
            out.contains("kept 3 unreferenced blobs (")
                && out.contains("3 within the grace period"),
            "{args:?}: {out}"
        );
        assert!(out.contains("), collectable "), "{out}");
        assert!(out.contains("(in 59m") || out.contains("(in 1h"), "{out}");
    }
    assert!(p.stop().success());
}
