//! The binary itself: started, stopped with SIGTERM, started again on the same root.

use crate::util::*;

#[tokio::test]
async fn data_survives_a_restart_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let layer = random_bytes(200_000);

    let p = Process::spawn(dir.path());
    let d = sha256(&layer);
    let (manifest, _) = push_image(&c, &p, "keep/me", "v1", &[&layer]).await;
    let status = p.stop();
    assert!(
        status.success(),
        "SIGTERM should stop dockyard cleanly, got {status}"
    );

    let p = Process::spawn(dir.path());
    let base = p.url("");
    let got = c
        .get(format!("{base}/v2/keep/me/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), manifest.as_slice());
    let got = c
        .get(format!("{base}/v2/keep/me/blobs/{d}"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), layer.as_slice());
    let tags: serde_json::Value = c
        .get(format!("{base}/v2/keep/me/tags/list"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert!(p.stop().success());
}

#[tokio::test]
async fn a_second_server_on_the_same_root_is_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::spawn(dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockyard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("dockyard: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(p.stop().success());
}
