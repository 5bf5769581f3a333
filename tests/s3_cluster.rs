//! Dockyard on the three-node Garage cluster of `.ci/garage.sh` (replication factor 3): the
//! database snapshots in the bucket and a takeover from them (`restore --from-bucket`), and a
//! Garage node killed while clients push and pull. Skipped loudly outside CI when the
//! cluster is not running; a failure in CI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dockyard::portability::snapshots::{self, Pointer};
use dockyard::store::s3::Bucket;

use crate::util::{self, Process, S3Env};

/// A config file for an S3-backed instance under `prefix`, with `extra` lines in
/// `[storage.s3]` and `gc` as the `[gc]` section.
fn config(dir: &Path, s3: &S3Env, prefix: &str, extra: &str, gc: &str) -> PathBuf {
    let toml = format!("{}\n[gc]\n{gc}\n", s3.storage_toml(dir, prefix, extra));
    util::write_config(dir, "registry.toml", &toml)
}

fn bucket_of(config: &Path) -> Bucket {
    let c = dockyard::Config::load(config).expect("config");
    let dockyard::config::Backend::S3(s3) = &c.backend else {
        panic!("not an s3 config")
    };
    Bucket::connect(s3).expect("bucket")
}

/// Waits (bounded) until `latest` names a snapshot whose transaction began at or after
/// `after` (Unix ms), and returns it.
async fn snapshot_since(bucket: &Bucket, after: u64, server: &Process) -> Pointer {
    let (bucket, output) = (bucket.clone(), server.output.clone());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(p) = snapshots::latest(&bucket).expect("read latest") {
                if p.taken_ms >= after {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot since {after} within 60 s:\n{}",
                output.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn restore_from_bucket(root: &Path, config: &Path) -> (bool, String, String) {
    util::dockyard(&[
        "restore".as_ref(),
        "--from-bucket".as_ref(),
        "--root".as_ref(),
        root.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_restores_every_image_up_to_the_last_snapshot() {
    let Some(s3) = util::require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = util::s3_prefix("takeover");
    let cfg = config(
        dir.path(),
        &s3,
        &prefix,
        "snapshot_interval = \"1s\"\nredirect = false",
        "interval = \"off\"\ngrace = \"1h\"",
    );
    let bucket = bucket_of(&cfg);
    let old_root = dir.path().join("old");
    let server = Process::spawn_with_config(&old_root, &cfg);
    let c = util::fresh_client();
    let mut images = Vec::new();
    for i in 0..4 {
        let big = util::random_bytes(9 << 20); // a multipart object
        let small = util::random_bytes(1000 + i);
        let repo = format!("team/app{}", i % 2);
        let tag = format!("v{i}");
        let (m, _) = util::push_image(&c, &server, &repo, &tag, &[&big, &small]).await;
        images.push((repo, tag, m));
    }
    let pushed = now_ms();
    let snap = snapshot_since(&bucket, pushed + 1, &server).await;
    assert!(snap.manifests >= 4, "{snap:?}");
    // The machine is lost: no clean shutdown (so no last snapshot), and its disk is gone.
    drop(server);
    std::fs::remove_dir_all(&old_root).unwrap();

    let new_root = dir.path().join("new");
    let (ok, out, err) = restore_from_bucket(&new_root, &cfg);
    assert!(ok, "restore --from-bucket failed:\n{out}\n{err}");
    assert!(out.contains(&snap.object), "{out}");
    assert!(new_root.join("dockyard.redb").is_file());
    // A second restore into the same root is refused without --force.
    let (again, _, err) = restore_from_bucket(&new_root, &cfg);
    assert!(!again && err.contains("--force"), "{err}");

    let server = Process::spawn_with_config(&new_root, &cfg);
    let base = server.url("");
    for (repo, tag, m) in &images {
        util::assert_pulls(&c, &base, repo, tag, m, "after the takeover").await;
    }
    let (ok, out, err) = {
        util::wait_for_admin_socket(&new_root);
        util::dockyard(&["fsck".as_ref(), "--root".as_ref(), new_root.as_os_str()])
    };
    assert!(ok, "fsck after the takeover:\n{out}\n{err}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_loses_what_was_pushed_after_the_snapshot_and_a_clean_stop_loses_nothing() {
    let Some(s3) = util::require_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prefix = util::s3_prefix("loss");
    // An interval no test waits for: the only snapshots are the one at start and the one a
    // clean stop takes.
    let cfg = config(
        dir.path(),
        &s3,
        &prefix,
        "snapshot_interval = \"1h\"",
        "interval = \"off\"\ngrace = \"2h\"",
    );
    let bucket = bucket_of(&cfg);
    let root1 = dir.path().join("one");
    let started = now_ms();
    let server = Process::spawn_with_config(&root1, &cfg);
    let first = snapshot_since(&bucket, started, &server).await;
    assert_eq!(first.manifests, 0, "{first:?}");
    let c = util::fresh_client();
    let layer = util::random_bytes(4096);
    util::push_image(&c, &server, "team/late", "v1", &[&layer]).await;
    // Killed: the push above is after the only snapshot.
    drop(server);
    let root2 = dir.path().join("two");
    let (ok, out, err) = restore_from_bucket(&root2, &cfg);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("have no row") && !out.contains(" 0 objects in the bucket have no row"),
        "the report names the objects pushed after the snapshot: {out}"
    );
    let server = Process::spawn_with_config(&root2, &cfg);
    let resp = c
        .get(server.url("/v2/team/late/manifests/v1"))
        .header("Accept", util::OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a push after the snapshot is lost");
    // Pushed again on the new machine, then a clean stop: its last snapshot has it.
    let (kept, _) = util::push_image(&c, &server, "team/late", "v2", &[&layer]).await;
    assert!(server.stop().success());
    let root3 = dir.path().join("three");
    let (ok, out, err) = restore_from_bucket(&root3, &cfg);
    assert!(ok, "{out}\n{err}");
    let server = Process::spawn_with_config(&root3, &cfg);
    util::assert_pulls(
        &c,
        &server.url(""),
        "team/late",
        "v2",
        &kept,
        "after a clean stop",
    )
    .await;
    server.stop();
    let kept = tokio::task::spawn_blocking(move || snapshots::count(&bucket).unwrap())
        .await
        .unwrap();
    assert!(
        (1..=snapshots::KEEP).contains(&kept),
        "{kept} snapshots: old ones are pruned"
    );
}

#[test]
fn config_check_refuses_a_grace_not_longer_than_the_snapshot_interval() {
    // No cluster needed: the config is refused before any connection.
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Env {
        endpoint: "http://127.0.0.1:9".into(),
        region: "garage".into(),
        bucket: "b".into(),
        access_key_id: "GK1".into(),
        secret_access_key: "secret".into(),
        nodes: None,
    };
    let cfg = config(
        dir.path(),
        &s3,
        "p",
        "snapshot_interval = \"10m\"",
        "grace = \"5m\"",
    );
    let (ok, _, err) = util::dockyard(&[
        "config".as_ref(),
        "check".as_ref(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("gc.grace") && err.contains("snapshot_interval") && err.lines().count() == 1,
        "{err}"
    );
    let (ok, _, err) = util::dockyard(&[
        "serve".as_ref(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--root".as_ref(),
        dir.path().join("root").as_os_str(),
        "--config".as_ref(),
        cfg.as_os_str(),
    ]);
    assert!(
        !ok && err.contains("gc.grace"),
        "serve starts anyway: {err}"
    );
}

/// Kills one Garage node for as long as it lives, and starts it again when dropped (even when
/// the test fails), so the shared cluster is whole for the tests after it.
struct NodeDown(u8);

fn garage_sh(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/garage.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run garage.sh");
    assert!(
        out.status.success(),
        "garage.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NodeDown {
    fn kill(n: u8) -> NodeDown {
        garage_sh(&["kill-node", &n.to_string()]);
        NodeDown(n)
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        garage_sh(&["start-node", &self.0.to_string()]);
    }
}

// The guard only keeps other tests (on other threads) off the cluster; this test's body is
// polled by `block_on` on its own thread, where nothing else waits for the lock.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread")]
async fn pushes_and_pulls_go_on_while_a_garage_node_is_down() {
    let Some(s3) = util::s3_env() else { return };
    let _alone = util::garage_alone();
    if s3.endpoint != "http://127.0.0.1:39010" && std::env::var("DOCKYARD_GARAGE_PORT").is_err() {
        // garage.sh's node numbers mean nothing for a cluster it did not start.
        assert!(!util::in_ci(), "CI runs .ci/garage.sh's cluster");
        eprintln!("\n!!!!! SKIPPED: the S3 endpoint is not .ci/garage.sh's node 1 !!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = util::s3_prefix("fault");
    for redirect in [false, true] {
        let sub = dir.path().join(format!("redirect-{redirect}"));
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = config(
            &sub,
            &s3,
            &format!("{prefix}/{redirect}"),
            &format!("redirect = {redirect}"),
            "interval = \"off\"",
        );
        let server = Process::spawn_with_config(&sub.join("root"), &cfg);
        let c = util::fresh_client();
        let base = server.url("");
        let mut images = Vec::new();
        let push = |round: &str| {
            let (c, server) = (&c, &server);
            let round = round.to_string();
            async move {
                let mut out = Vec::new();
                for i in 0..3 {
                    let big = util::random_bytes((6 << 20) + i * 1000);
                    let small = util::random_bytes(2000);
                    let (repo, tag) = (format!("fault/{round}"), format!("t{i}"));
                    let (m, _) = util::push_image(c, server, &repo, &tag, &[&big, &small]).await;
                    out.push((repo, tag, m));
                }
                out
            }
        };
        images.extend(push("before").await);
        {
            // Node 3 (not the endpoint's node 1) is gone: writes and reads reach a quorum of
            // two out of three replicas.
            let _down = NodeDown::kill(3);
            images.extend(push("during").await);
            for (repo, tag, m) in &images {
                util::assert_pulls(&c, &base, repo, tag, m, "with node 3 down").await;
            }
        }
        images.extend(push("after").await);
        for (repo, tag, m) in &images {
            util::assert_pulls(&c, &base, repo, tag, m, "node 3 back").await;
        }
        server.stop();
    }
}
