//! Running it for real, through the binary: TLS with reload, metrics, health, access logs,
//! a full disk, graceful shutdown, the banner and the command line's own help.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::util::*;

fn write_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("registry.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\nroot = \"{}\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

/// A self-signed certificate for 127.0.0.1 and localhost: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

fn tls_client(ca_pem: &str) -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_to_curl_skopeo_and_podman_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    // containers/image reads CA roots as *.crt files from --cert-dir.
    std::fs::write(certs.join("ca.crt"), &cert).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[server.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n",
            dir.path().display()
        ),
    );
    let p = Process::spawn_args(&["serve", "--config", &config]);
    let base = format!("https://{}", p.addr);
    assert!(
        p.output().contains("listening on https://"),
        "{}",
        p.output()
    );

    // reqwest trusting only our certificate; plain HTTP to the TLS port fails.
    let c = tls_client(&cert);
    let resp = c.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(client().get(p.url("/v2/")).send().await.is_err());

    if require_tool("curl") {
        let ca = dir.path().join("cert.pem");
        let out = run_async({
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--fail", "--cacert"])
                .arg(&ca)
                .arg(format!("{base}/v2/"));
            cmd
        })
        .await;
        assert_eq!(out.trim(), "{}");
    }
    let host = p.addr.to_string();
    if require_tool("skopeo") {
        let layout = dir.path().join("layout");
        let want = oci_layout(&layout, "v1", &["amd64"]);
        let policy = dir.path().join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        run_async({
            let mut cmd = Command::new("skopeo");
            cmd.arg("--policy")
                .arg(&policy)
                .args(["copy", "--dest-cert-dir"])
                .arg(&certs)
                .arg(format!("oci:{}:v1", layout.display()))
                .arg(format!("docker://{host}/tls/skopeo:v1"));
            cmd
        })
        .await;
        let back = dir.path().join("back");
        run_async({
            let mut cmd = Command::new("skopeo");
            cmd.arg("--policy")
                .arg(&policy)
                .args(["copy", "--src-cert-dir"])
                .arg(&certs)
                .arg(format!("docker://{host}/tls/skopeo:v1"))
                .arg(format!("oci:{}:v1", back.display()));
            cmd
        })
        .await;
        assert_eq!(layout_digest(&back, "v1"), want);
    }
    if require_tool("podman") {
        let w = dir.path().join("podman");
        let podman = Podman::new(&w);
        let policy = podman.policy();
        std::fs::write(w.join("rootfs.tar"), rootfs_tar(2, 10_000)).unwrap();
        let image = format!("{host}/tls/podman:v1");
        let certs = certs.to_string_lossy().into_owned();
        let tar = w.join("rootfs.tar").to_string_lossy().into_owned();
        run_async(podman.command(&["import", &tar, &image])).await;
        // No --tls-verify=false: podman verifies our certificate against --cert-dir.
        let tls = ["--cert-dir", &certs, "--signature-policy", &policy];
        run_async(podman.command(&[&["push"][..], &tls, &[&image]].concat())).await;
        run_async(podman.command(&["rmi", &image])).await;
        run_async(podman.command(&[&["pull"][..], &tls, &[&image]].concat())).await;
    }

    // Reload: a new certificate for new handshakes; the pooled connection survives.
    let keep = tls_client(&cert);
    // Reading the body to its end is what returns the connection to reqwest's pool.
    let first = keep.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(first.text().await.unwrap(), "{}");
    let (cert2, key2) = self_signed();
    std::fs::write(dir.path().join("cert.pem"), &cert2).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key2).unwrap();
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tls_client(&cert2)
            .get(format!("{base}/v2/"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served after SIGHUP:\n{}",
            p.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.output().contains("TLS certificate reloaded"));
    assert!(
        tls_client(&cert)
            .get(format!("{base}/v2/"))
            .send()
            .await
            .is_err(),
        "a new connection no longer sees the old certificate"
    );
    assert_eq!(
        keep.get(format!("{base}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the connection opened before the reload still works"
    );
    // A broken pair keeps the current certificate.
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    p.signal("HUP");
    p.wait_for_line("TLS reload failed");
    assert!(tls_client(&cert2)
        .get(format!("{base}/v2/"))
        .send()
        .await
        .is_ok());
    assert!(p.stop().success());
}

#[tokio::test]
async fn metrics_count_requests_bytes_and_stored_blobs() {
    let r = TestRegistry::start().await;
    let c = client();
    push_image(&c, &r, "metrics/demo", "v1", &[&random_bytes(1000)]).await;
    assert_eq!(
        c.get(r.url("/v2/metrics/demo/manifests/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = c.get(r.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.unwrap();
    for want in [
        "dockyard_http_requests_total{route=\"manifest\",method=\"PUT\",status=\"201\"} 1",
        "dockyard_http_requests_total{route=\"manifest\",method=\"GET\",status=\"404\"} 1",
        "dockyard_http_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 2",
        "dockyard_http_request_duration_seconds_count{route=\"upload\"} 2",
        "dockyard_blobs_stored 2",
        "dockyard_uploads_in_progress 0",
        "# TYPE dockyard_gc_runs_total counter",
        "# TYPE dockyard_auth_failures_total counter",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let received: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("dockyard_http_received_bytes_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(received >= 1000, "received {received}");
    r.stop().await;
}

#[tokio::test]
async fn metrics_move_to_their_own_listener_or_switch_off() {
    let dir = tempfile::tempdir().unwrap();
    // Port 0 and the logged address: binding a port here and passing it on would race.
    let config = write_config(dir.path(), "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let p = Process::spawn_args(&["serve", "--config", &config]);
    let c = client();
    assert_eq!(c.get(p.url("/metrics")).send().await.unwrap().status(), 404);
    let line = p.wait_for_line("metrics on ");
    let metrics_url = line
        .split("metrics on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let text = c
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("dockyard_http_requests_total"), "{text}");
    assert!(p.stop().success());

    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[metrics]\nenabled = false\n");
    let p = Process::spawn_args(&["serve", "--config", &config]);
    assert_eq!(c.get(p.url("/metrics")).send().await.unwrap().status(), 404);
    assert!(p.stop().success());
}

#[tokio::test]
async fn health_and_readiness() {
    let r = TestRegistry::start().await;
    let c = client();
    let resp = c.get(r.url("/healthz")).send().await.unwrap();
    assert_eq!(
        (resp.status().as_u16(), resp.text().await.unwrap()),
        (200, "ok\n".to_string())
    );
    let resp = c.get(r.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    r.stop().await;

    // Free space below min_free: not ready, uploads refused, pulls still served.
    let dir = tempfile::tempdir().unwrap();
    let normal = TestRegistry::start_at(dir.path()).await;
    let (_, digest) = push_image(&c, &normal, "full/disk", "v1", &[&random_bytes(100)]).await;
    normal.stop().await;
    let full = TestRegistry::start_with(dockyard::Config {
        root: dir.path().to_path_buf(),
        min_free: u64::MAX,
        ..Default::default()
    })
    .await;
    let resp = c.get(full.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("below min_free"));
    let resp = c
        .post(full.url("/v2/full/disk/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 507);
    assert_eq!(error_code(resp).await, "DENIED");
    let resp = c
        .get(full.url(&format!("/v2/full/disk/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "pulls keep working on a full disk");
    full.stop().await;
}

/// Every request that would write upload bytes is refused below `min_free` (507, the spec's
/// error body) before it writes any: a PATCH and a closing PUT with a body leave their
/// session's file as it was (and the session usable), a monolithic POST leaves no session
/// and no file. A closing PUT without a body writes nothing, so it is still allowed.
#[tokio::test]
async fn below_min_free_no_upload_byte_is_accepted() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // A session with 100 bytes in it, made while there is room.
    let normal = TestRegistry::start_at(&root).await;
    let resp = c
        .post(normal.url("/v2/full/up/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let first = random_bytes(100);
    let resp = c
        .patch(normal.url(&location))
        .header("Content-Type", "application/octet-stream")
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    normal.stop().await;

    let uploads = |root: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(root.join("uploads"))
            .unwrap()
            .flatten()
            .map(|e| {
                let len = e.metadata().unwrap().len();
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect();
        v.sort();
        v
    };
    let before = uploads(&root);
    assert_eq!(before.len(), 1, "one session file: {before:?}");
    assert_eq!(before[0].1, 100);
    let blobs_before = blob_files(&root);

    let full = TestRegistry::start_with(dockyard::Config {
        root: root.clone(),
        min_free: u64::MAX,
        ..Default::default()
    })
    .await;
    let more = random_bytes(50);
    let whole: Vec<u8> = first.iter().chain(&more).copied().collect();
    let sep = if location.contains('?') { '&' } else { '?' };
    let refused = [
        (
            "PATCH",
            c.patch(full.url(&location))
                .header("Content-Type", "application/octet-stream")
                .body(more.clone()),
        ),
        (
            "PUT with a body",
            c.put(full.url(&format!("{location}{sep}digest={}", sha256(&whole))))
                .header("Content-Type", "application/octet-stream")
                .body(more.clone()),
        ),
        (
            "monolithic POST",
            c.post(full.url(&format!(
                "/v2/full/up/blobs/uploads/?digest={}",
                sha256(&more)
            )))
            .header("Content-Type", "application/octet-stream")
            .body(more.clone()),
        ),
        ("empty POST", c.post(full.url("/v2/full/up/blobs/uploads/"))),
    ];
    for (what, req) in refused {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 507, "{what}");
        assert_eq!(error_code(resp).await, "DENIED", "{what}");
        assert_eq!(uploads(&root), before, "{what} changed the upload files");
        assert_eq!(blob_files(&root), blobs_before, "{what} stored a blob");
    }
    // The session survived the refusals as it was.
    let resp = c.get(full.url(&location)).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["range"], "0-99");
    // Closing it without a body writes nothing and is allowed.
    let resp = c
        .put(full.url(&format!("{location}{sep}digest={}", sha256(&first))))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(uploads(&root).is_empty());
    assert!(blob_files(&root).contains(&sha256(&first)));
    full.stop().await;
}

#[tokio::test]
async fn a_write_that_fills_the_disk_fails_cleanly_and_leaves_the_registry_consistent() {
    // A real full filesystem needs a mount we make: a 16 MiB tmpfs (root only, as in CI).
    let is_root = unsafe_geteuid() == 0;
    if !is_root {
        if crate::util::in_ci() {
            panic!("CI runs as root; the full-disk test must run there");
        }
        eprintln!("\n!!!!! SKIPPED: the full-disk test mounts a tmpfs and needs root !!!!!\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&mnt));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            // Lazy, so a descriptor the runtime has not closed yet cannot leak the mount.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let r = TestRegistry::start_with(dockyard::Config {
        root: mnt.clone(),
        min_free: 0,
        ..Default::default()
    })
    .await;
    let c = client();
    let big = random_bytes(24 << 20);
    let resp = c
        .post(r.url(&format!(
            "/v2/full/blob/blobs/uploads/?digest={}",
            sha256(&big)
        )))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 507, "ENOSPC answers 507");
    assert_eq!(error_code(resp).await, "DENIED");
    let leftovers: Vec<_> = std::fs::read_dir(mnt.join("uploads")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the partial upload file is removed: {leftovers:?}"
    );
    // A chunk that hits ENOSPC is rolled back; the session stays usable.
    let resp = c
        .post(r.url("/v2/full/chunked/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202, "{:?}", resp.text().await);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let resp = c.patch(r.url(&loc)).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 507);
    let resp = c.get(r.url(&loc)).send().await.unwrap();
    assert_eq!(
        resp.headers()["range"],
        "0-0",
        "the failed chunk left nothing behind"
    );
    // With space back, the same registry takes a normal push.
    push_image(&c, &r, "full/after", "v1", &[&random_bytes(1000)]).await;
    r.stop().await;
}

fn unsafe_geteuid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_one_access_line_per_request_in_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[log]\nformat = \"json\"\n");
    let p = Process::spawn_args(&["serve", "--config", &config]);
    let c = client();
    assert_eq!(
        c.get(p.url("/v2/some/repo/tags/list"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let line = p.wait_for_line("/v2/some/repo/tags/list");
    assert!(line.contains("dockyard::access"), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 404);
    assert_eq!(v["user"], "-");
    assert!(v["duration_ms"].is_number());
    assert!(v["span"]["id"].is_number(), "request id in the span: {v}");
    assert!(p.stop().success());

    let dir = tempfile::tempdir().unwrap();
    let p = Process::spawn_args(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--root",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(c.get(p.url("/v2/")).send().await.unwrap().status(), 200);
    let line = p.wait_for_line("GET /v2/ 200");
    assert!(
        line.contains("request{id=") && line.contains("status=200"),
        "not a text access line: {line}"
    );
    assert!(p.stop().success());
}

/// Waits until an upload file under `root/uploads` holds bytes: the request is in flight.
async fn wait_for_upload_bytes(root: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let busy = std::fs::read_dir(root.join("uploads"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if busy {
            return;
        }
        assert!(Instant::now() < deadline, "no upload in flight");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish_and_cuts_them_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let p = Process::spawn_args(&["serve", "--config", &config]);
    let c = client();
    // An upload in flight: its first half is sent at once, its second only once the test
    // has seen the server begin to shut down.
    let data = random_bytes(8 * 4096);
    let digest = sha256(&data);
    let (first, rest) = data.split_at(4 * 4096);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let rest = rest.to_vec();
    let slow = futures_util::stream::iter([Ok::<_, std::io::Error>(first.to_vec())]).chain(
        futures_util::stream::once(async move {
            let _ = released.await;
            Ok(rest)
        }),
    );
    let url = p.url(&format!("/v2/slow/upload/blobs/uploads/?digest={digest}"));
    let upload = tokio::spawn({
        let c = c.clone();
        async move {
            c.post(url)
                .body(reqwest::Body::wrap_stream(slow))
                .send()
                .await
        }
    });
    wait_for_upload_bytes(&dir.path().join("data")).await;
    p.signal("TERM");
    p.wait_for_line("shutting down");
    assert!(
        c.get(p.url("/v2/")).send().await.is_err(),
        "no new connections after SIGTERM"
    );
    release.send(()).unwrap();
    let resp = upload
        .await
        .unwrap()
        .expect("the upload in flight completes");
    assert_eq!(resp.status(), 201);
    let mut p = p;
    let status = p.child.wait().unwrap();
    assert!(status.success());

    // Restarted: the blob is there. Then a request that never ends is cut at the deadline.
    let config = write_config(dir.path(), "[server]\n");
    let _ = config;
    std::fs::write(
        dir.path().join("registry.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"1s\"\n[storage]\nroot = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let p = Process::spawn_args(&[
        "serve",
        "--config",
        dir.path().join("registry.toml").to_str().unwrap(),
    ]);
    let resp = c
        .head(p.url(&format!("/v2/slow/upload/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let endless = futures_util::stream::unfold((), |_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(vec![0u8; 16]), ()))
    });
    let url = p.url("/v2/slow/endless/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let _hang = tokio::spawn({
        let c = c.clone();
        async move {
            c.post(url)
                .body(reqwest::Body::wrap_stream(endless))
                .send()
                .await
        }
    });
    wait_for_upload_bytes(&dir.path().join("data")).await;
    let start = Instant::now();
    let mut p = p;
    p.signal("TERM");
    let status = tokio::task::spawn_blocking(move || p.child.wait().unwrap())
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM despite a 1s deadline"
    );
}

#[test]
fn the_banner_says_where_it_listens_where_the_data_is_and_how_to_push() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::spawn(dir.path());
    p.wait_for_line("push with podman");
    let out = p.output();
    for want in [
        format!("Dockyard is serving http://{}", p.addr),
        format!("data:   {}", dir.path().display()),
        "auth:".to_string(),
        format!("docker push {}/NAME:TAG", p.addr),
        format!("podman push --tls-verify=false IMAGE {}/NAME:TAG", p.addr),
    ] {
        assert!(out.contains(&want), "banner lacks {want:?}:\n{out}");
    }
    assert!(p.stop().success());
}

#[test]
fn help_completions_and_config_check() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["config", "check", "--help"],
        &["completions", "--help"],
    ] {
        let (ok, out, _) = dockyard(args);
        assert!(ok && out.contains("Usage:"), "{args:?}: {out}");
    }
    let (ok, out, _) = dockyard(&["serve", "--help"]);
    assert!(ok && out.contains("--listen") && out.contains("--root") && out.contains("--config"));
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out, _) = dockyard(&["completions", shell]);
        assert!(
            ok && out.contains("dockyard") && out.contains("serve"),
            "{shell}: {out}"
        );
    }
    let (ok, out, err) = dockyard(&["config", "check", "--config", "registry.toml"]);
    assert!(ok, "the checked-in registry.toml is valid: {err}");
    assert!(out.contains("ok"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:5000\"\nshutdown_timout = \"5s\"\n",
    )
    .unwrap();
    let (ok, _, err) = dockyard(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.starts_with("dockyard: ") && err.contains("shutdown_timout") && err.contains("line 3"),
        "{err}"
    );
    std::fs::write(&bad, "[storage]\nmin_free = \"lots\"\n").unwrap();
    let (ok, _, err) = dockyard(&["config", "check", "--config", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("min_free"), "{err}");
    let (ok, _, err) = dockyard(&["config", "check", "--config", "/nonexistent/registry.toml"]);
    assert!(!ok && err.contains("cannot read"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_user_and_metrics_count_failed_logins() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[auth]\nmode = \"basic\"\nbcrypt_cost = 4\n");
    let out = run_with_stdin(
        Command::new(env!("CARGO_BIN_EXE_dockyard")).args([
            "user",
            "add",
            "alice",
            "--password-stdin",
            "--config",
            &config,
        ]),
        "wonderland\n",
    );
    assert!(out.status.success(), "{out:?}");
    let p = Process::spawn_args(&["serve", "--config", &config]);
    assert!(p.wait_for_line("auth:   basic").contains("basic"));
    let alice = client_as("alice", "wonderland");
    assert_eq!(alice.get(p.url("/v2/")).send().await.unwrap().status(), 200);
    let line = p.wait_for_line("GET /v2/ 200");
    assert!(line.contains("user=alice"), "{line}");
    let wrong = client_as("alice", "looking-glass");
    assert_eq!(wrong.get(p.url("/v2/")).send().await.unwrap().status(), 401);
    let text = client()
        .get(p.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("dockyard_auth_failures_total 1"), "{text}");
    assert!(p.stop().success());
}
