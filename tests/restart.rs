//! The binary itself: started, stopped with SIGTERM, started again on the same root.

use crate::util::*;

#[tokio::test]
async fn data_survives_a_restart_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    let layer = random_bytes(200_000);

    let p = Process::spawn(dir.path());
    // Push through the child process by pointing the helpers at its address.
    let base = p.url("");
    let d = sha256(&layer);
    let resp = c
        .post(format!("{base}/v2/keep/me/blobs/uploads/?digest={d}"))
        .body(layer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let dc = sha256(&config);
    let resp = c
        .post(format!("{base}/v2/keep/me/blobs/uploads/?digest={dc}"))
        .body(config.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let manifest = image_manifest(&config, &[&layer]);
    let resp = c
        .put(format!("{base}/v2/keep/me/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
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
