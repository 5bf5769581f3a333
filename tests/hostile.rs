//! Hostile and broken clients against a running server: stalled uploads, idle and half-sent
//! connections, descriptor floods, made-up methods, huge headers, password bursts, lying
//! descriptors, and who may read the files. Every wait is bounded.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::*;

/// Opens a connection and sends `head` (and `body`), leaving the rest unsent.
async fn stall(addr: SocketAddr, head: String, body: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(head.as_bytes()).await.expect("write head");
    c.write_all(body).await.expect("write body");
    c
}

/// Reads until the server closes the connection (what it answered first, possibly
/// nothing), or panics after `within`.
async fn closed_within(mut c: TcpStream, within: Duration, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{what}: still open after {within:?}");
    got
}

/// Asserts `fut` completes within `limit` and returns its output.
async fn promptly<T>(what: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: no answer within {limit:?} (waited {:?})",
            start.elapsed()
        ),
    }
}

/// 300 uploads (monolithic POSTs, PATCHes and manifest PUTs) that send one byte of the 1000
/// they announce, from anonymous clients and from a user: other clients still pull, the
/// server still reports ready, the control channel still answers, and every stalled
/// request is cut once the body timeout has passed. Before, each stalled upload held two
/// blocking threads, and 260 of them froze the whole registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_do_not_starve_other_clients() {
    let body_timeout = Duration::from_secs(4);
    let r = TestRegistry::start_configured(|c| {
        c.auth.mode = dockyard::config::AuthMode::Basic;
        c.auth.bcrypt_cost = 4;
        c.limits.body_timeout = body_timeout;
        c.limits.max_uploads_per_client = 1000;
    })
    .await;
    r.add_user("ci", "secret").await;
    r.grant("ci", "**", "pull,push").await;
    r.grant("anonymous", "open/**", "pull,push").await;
    let c = client_as("ci", "secret");
    let layer = random_bytes(64 << 10);
    let (_, manifest_digest) = push_image(&c, &r, "team/app", "v1", &[&layer]).await;
    // Sessions for the stalled PATCHes.
    let mut sessions = Vec::new();
    for _ in 0..120 {
        let resp = c
            .post(r.url("/v2/team/app/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        sessions.push(resp.headers()["location"].to_str().unwrap().to_string());
    }
    let resumable = sessions.clone();
    let auth = basic("ci", "secret");
    let digest = sha256(b"never finished");
    let mut stalled = Vec::new();
    for i in 0..300 {
        // 150 monolithic POSTs, 120 PATCHes, 30 manifest PUTs: 270 uploads held two blocking
        // threads each before, more than tokio's 512.
        let head = match i % 10 {
            0..=4 => format!(
                "POST /v2/open/x/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: r\r\nContent-Length: 1000\r\n\r\n"
            ),
            5..=8 => format!(
                "PATCH {} HTTP/1.1\r\nHost: r\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n\r\n",
                sessions.pop().expect("a session per PATCH")
            ),
            _ => format!(
                "PUT /v2/team/app/manifests/stalled{i} HTTP/1.1\r\nHost: r\r\nAuthorization: {auth}\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 1000\r\n\r\n"
            ),
        };
        stalled.push(stall(r.addr, head, b"{").await);
    }
    // Let every stalled request reach its handler.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let limit = Duration::from_secs(2);
    for _ in 0..5 {
        let resp = promptly(
            "manifest GET",
            limit,
            c.get(r.url("/v2/team/app/manifests/v1"))
                .header("Accept", OCI_MANIFEST)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let resp = promptly(
            "blob GET",
            limit,
            c.get(r.url(&format!("/v2/team/app/blobs/{}", sha256(&layer))))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.bytes().await.unwrap().len(), layer.len());
        let resp = promptly("readyz", limit, client().get(r.url("/readyz")).send())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let listed = promptly(
            "admin socket",
            limit,
            r.admin(dockyard::admin::Command::AclList { subject: None }),
        )
        .await
        .unwrap();
        assert!(listed.contains("ci"), "{listed}");
        // A push of its own goes through too.
        promptly(
            "blob push",
            limit,
            push_blob(&c, &r, "team/app", &random_bytes(1000)),
        )
        .await;
    }
    assert!(
        started.elapsed() < body_timeout,
        "the checks ran while the uploads were still stalled"
    );
    assert!(manifest_digest.starts_with("sha256:"));
    // Each stalled request is answered (or its connection closed) once the body timeout has
    // passed since its last byte; none is left open.
    let cut = futures_util::future::join_all(
        stalled
            .into_iter()
            .map(|s| closed_within(s, body_timeout + Duration::from_secs(10), "stalled upload")),
    )
    .await;
    let answered = cut.iter().filter(|b| b.starts_with(b"HTTP/1.1 ")).count();
    assert!(answered > 0, "no stalled upload got an error answer");
    // The stalled PATCHes left their sessions resumable at offset 0.
    for s in resumable.iter().take(5) {
        let resp = c.get(r.url(s)).send().await.unwrap();
        assert_eq!(resp.status(), 204, "{s}");
        assert_eq!(resp.headers()["range"], "0-0");
    }
    r.stop().await;
}

/// Past `max_uploads_per_client` uploads in progress, a client's next one gets 429
/// TOOMANYREQUESTS at once; another user is unaffected.
#[tokio::test]
async fn uploads_past_the_per_client_cap_get_429() {
    let r = TestRegistry::start_configured(|c| {
        c.auth.mode = dockyard::config::AuthMode::Basic;
        c.auth.bcrypt_cost = 4;
        c.limits.max_uploads_per_client = 4;
    })
    .await;
    for u in ["alice", "bob"] {
        r.add_user(u, "pw").await;
        r.grant(u, "**", "pull,push").await;
    }
    let auth = basic("alice", "pw");
    let digest = sha256(b"x");
    let head = format!(
        "POST /v2/a/b/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: r\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stall(r.addr, head.clone(), b"x").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fifth = client_as("alice", "pw")
        .post(r.url(&format!("/v2/a/b/blobs/uploads/?digest={}", sha256(b"y"))))
        .body(b"y".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(fifth.status(), 429);
    assert_eq!(error_code(fifth).await, "TOOMANYREQUESTS");
    push_blob(&client_as("bob", "pw"), &r, "a/b", b"bob's").await;
    drop(held);
    // Once they are gone, alice may upload again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = client_as("alice", "pw")
            .post(r.url(&format!("/v2/a/b/blobs/uploads/?digest={}", sha256(b"y"))))
            .body(b"y".to_vec())
            .send()
            .await
            .unwrap();
        if resp.status() == 201 {
            break;
        }
        assert_eq!(resp.status(), 429);
        assert!(Instant::now() < deadline, "alice's slots were never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.stop().await;
}

/// Idle, half-sent-header, drip-fed-header and stalled-body connections are all closed by
/// the server once their timeout has passed.
#[tokio::test]
async fn slow_and_idle_connections_are_closed() {
    let r = TestRegistry::start_configured(|c| {
        c.limits.header_read_timeout = Duration::from_secs(1);
        c.limits.idle_timeout = Duration::from_secs(1);
        c.limits.body_timeout = Duration::from_secs(1);
    })
    .await;
    let within = Duration::from_secs(6);
    let idle = TcpStream::connect(r.addr).await.unwrap();
    let half = stall(r.addr, "GET /v2/ HTTP/1.1\r\nHost: r\r\n".to_string(), b"").await;
    let body = stall(
        r.addr,
        format!("PUT /v2/a/manifests/x HTTP/1.1\r\nHost: r\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: 100\r\n\r\n"),
        b"{\"sche",
    )
    .await;
    // Kept alive after one request, then silent.
    let mut kept = TcpStream::connect(r.addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // One header byte every 100 ms: progress, but a head that never ends.
    let mut drip = TcpStream::connect(r.addr).await.unwrap();
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        let line = b"GET /v2/ HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in line.iter().cycle().take(200) {
            if drip.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    closed_within(idle, within, "idle connection").await;
    closed_within(half, within, "half-sent header").await;
    let answer = closed_within(body, within, "stalled body").await;
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    closed_within(kept, within, "idle keep-alive").await;
    assert!(
        promptly("drip-fed header", within, dripping).await.unwrap(),
        "the drip-fed connection was never closed"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // And the server still serves.
    let resp = client().get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    r.stop().await;
}

/// Under a low open-file limit, a flood of idle connections pauses accepting (one warning,
/// not a hot loop), and once the flood ends new clients are served again.
#[tokio::test]
async fn a_connection_flood_under_a_low_file_limit_pauses_then_recovers() {
    if !require_tool("prlimit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        "[server]\nidle_timeout = \"3s\"\nheader_read_timeout = \"3s\"\n",
    )
    .unwrap();
    let root = dir.path().join("root");
    let (root, config) = (root.to_str().unwrap(), config.to_str().unwrap());
    let bin = env!("CARGO_BIN_EXE_dockyard");
    let p = Process::spawn_args_via(
        "prlimit",
        &[
            "--nofile=200:200",
            bin,
            "serve",
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--root",
            root,
        ],
    );
    // 200 descriptors leave room for 100 connections; 250 more wait in the kernel's
    // backlog (or, once it is full, in the clients' connect retries).
    let started = Instant::now();
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..350 {
        match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(p.addr)).await {
            Ok(Ok(s)) => flood.push(s),
            _ if refused < 3 => refused += 1,
            _ => break,
        }
    }
    assert!(flood.len() > 100, "only {} connects", flood.len());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let paused = p
        .output()
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    // Logged at most once per 10 s however often accepting pauses.
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&paused),
        "expected at most {allowed} rate-limited lines, got {paused}:\n{}",
        p.output()
    );
    drop(flood);
    // The flood has gone: a new client is served (the server drops what it had accepted
    // as the clients close, and the idle timeout covers any it had not noticed).
    let resp = promptly(
        "a client after the flood",
        Duration::from_secs(15),
        client().get(p.url("/v2/")).send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !p.output().contains("Too many open files"),
        "{}",
        p.output()
    );
}

/// Made-up methods are counted as `other`: `/metrics` stays small however many there are.
/// A 100 KiB header is answered 431.
#[tokio::test]
async fn made_up_methods_and_huge_headers_are_bounded() {
    let r = TestRegistry::start().await;
    let metrics = || async {
        client()
            .get(r.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = metrics().await;
    for i in 0..300 {
        let method = format!("M{i}{}", "X".repeat(1000));
        let resp = raw_request(r.addr, &method, "/v2/").await;
        assert!(resp.status >= 400, "{}", resp.status);
    }
    let after = metrics().await;
    assert!(
        !after.contains("XXXXXXXX"),
        "a made-up method became a label"
    );
    assert!(
        after.len() < before.len() + 8 * 1024,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains("method=\"other\""), "{after}");

    let mut c = TcpStream::connect(r.addr).await.unwrap();
    let big = "a".repeat(100 << 10);
    c.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: r\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = closed_within(c, Duration::from_secs(10), "huge header").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer[..answer.len().min(200)])
    );
    // A head of several MiB is cut without being buffered whole.
    let mut c = TcpStream::connect(r.addr).await.unwrap();
    let chunk = format!("X-Pad: {}\r\n", "b".repeat(1000));
    c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n")
        .await
        .unwrap();
    let mut sent = 0;
    while sent < (4 << 20) {
        if c.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(sent < (4 << 20), "the server read a 4 MiB request head");
    r.stop().await;
}

/// 100 wrong passwords for one user at once: no more than `max_failures` are checked with
/// bcrypt, the rest get 429. Another user behind the same address is not locked out by
/// them, and the right password works from elsewhere once the window has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_wrong_passwords_are_throttled_before_bcrypt() {
    let window = Duration::from_secs(3);
    let r = TestRegistry::start_auth(dockyard::config::AuthMode::Basic, |a| {
        a.max_failures = 5;
        a.failure_window = window;
    })
    .await;
    r.add_user("alice", "right").await;
    r.add_user("bob", "bobs").await;
    // A CI fleet starting at once with one robot's (right) credentials and a cold cache:
    // identical attempts share one verification, so none is throttled.
    r.add_user("robot", "beep").await;
    let robot = client_as("robot", "beep");
    let answers = futures_util::future::join_all(
        (0..50).map(|_| async { robot.get(r.url("/v2/")).send().await.unwrap().status() }),
    )
    .await;
    assert!(answers.iter().all(|s| s.as_u16() == 200), "{answers:?}");
    let started = Instant::now();
    let url = r.url("/v2/");
    let answers = futures_util::future::join_all((0..100).map(|i| {
        let url = url.clone();
        async move {
            client_as("alice", &format!("wrong{i}"))
                .get(url)
                .send()
                .await
                .unwrap()
                .status()
        }
    }))
    .await;
    // The user's window began at the burst's first reservation, somewhere between `started`
    // and now: inside the window until `started + window`, past it after `burst_end + window`.
    let burst_end = Instant::now();
    let verified = answers.iter().filter(|s| s.as_u16() == 401).count();
    let throttled = answers.iter().filter(|s| s.as_u16() == 429).count();
    // At most five per window: on a loaded machine the burst can outlast one window, and
    // each window it reaches allows five more (a full suite at load 25 once saw 10).
    let windows = 1 + (burst_end - started).as_millis() / window.as_millis();
    assert!(
        verified as u128 <= 5 * windows,
        "{verified} wrong passwords were checked in {windows} windows of {window:?}"
    );
    assert_eq!(verified + throttled, 100, "{answers:?}");
    // bob, behind the same address, is not locked out by alice's failures.
    let resp = client_as("bob", "bobs")
        .get(r.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // alice herself is, from anywhere, until the window has passed.
    install_crypto_provider();
    let elsewhere = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("authorization", basic("alice", "right").parse().unwrap());
            h
        })
        .build()
        .unwrap();
    // Checked after the answer: one that came back before `started + window` was decided
    // inside the window (checking before sending raced with the window's end under load).
    let resp = elsewhere.get(r.url("/v2/")).send().await.unwrap();
    if started.elapsed() < window {
        assert_eq!(resp.status(), 429);
    }
    tokio::time::sleep(window.saturating_sub(burst_end.elapsed()) + Duration::from_millis(200))
        .await;
    let resp = elsewhere.get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    r.stop().await;
}

/// Guessing across many users from one address is throttled per address.
#[tokio::test]
async fn a_sweep_over_many_users_is_throttled_per_address() {
    let r = TestRegistry::start_auth(dockyard::config::AuthMode::Basic, |a| {
        a.max_failures = 3;
        a.failure_window = Duration::from_secs(60);
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let resp = client_as(&format!("user{i}"), "guess")
            .get(r.url("/v2/"))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429, 429]);
    r.stop().await;
}

/// A manifest whose descriptor names a stored blob with the wrong size is refused.
#[tokio::test]
async fn a_manifest_with_a_lying_descriptor_size_is_refused() {
    let r = TestRegistry::start().await;
    let c = client();
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = random_bytes(1000);
    push_blob(&c, &r, "a/b", config).await;
    push_blob(&c, &r, "a/b", &layer).await;
    let mut m: serde_json::Value =
        serde_json::from_slice(&image_manifest(config, &[&layer])).unwrap();
    m["layers"][0]["size"] = serde_json::json!(999);
    let resp = c
        .put(r.url("/v2/a/b/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(serde_json::to_vec(&m).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_INVALID");
    assert_eq!(v["errors"][0]["detail"]["digest"], sha256(&layer));
    let resp = c.get(r.url("/v2/a/b/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    r.stop().await;
}

fn modes_open_to_others(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut open = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{} {mode:o}", p.display()));
        }
    }
    open
}

/// Served with umask 022, nothing under the root is open to other users; a root that is
/// open already is warned about at start, and `fsck --repair` closes it.
#[tokio::test]
async fn files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_s = root.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_dockyard");
    let script = format!("umask 022; exec {bin} serve --listen 127.0.0.1:0 --root {root_s}");
    let p = Process::spawn_args_via("sh", &["-c", &script]);
    let c = client();
    push_image(&c, &*p.url(""), "a/b", "v1", &[&random_bytes(5000)]).await;
    let resp = c
        .post(p.url("/v2/a/b/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let session = resp.headers()["location"].to_str().unwrap().to_string();
    c.patch(p.url(&session))
        .body(b"partial".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(p.stop().code(), Some(0));
    let open = modes_open_to_others(&root);
    assert!(open.is_empty(), "open to others: {open:?}");

    // An existing root made readable by others: warned about, naming it.
    for entry in [&root, &root.join("dockyard.redb")] {
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let p = Process::spawn(&root);
    let line = p.wait_for_line("readable by other users");
    assert!(line.contains(&root_s), "{line}");
    drop(p);
    let (ok, out, err) = dockyard(&["fsck", "--repair", "--root", &root_s]);
    assert!(ok, "{out}{err}");
    let open = modes_open_to_others(&root);
    assert!(open.is_empty(), "still open after fsck --repair: {open:?}");
}

/// A client that opens a TLS connection and never finishes its handshake is closed after
/// `tls_handshake_timeout`; a real client is still served meanwhile.
#[tokio::test]
async fn an_unfinished_tls_handshake_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let r = TestRegistry::start_configured(|c| {
        c.tls = Some(dockyard::config::TlsFiles { cert, key });
        c.limits.tls_handshake_timeout = Duration::from_secs(1);
    })
    .await;
    let silent = TcpStream::connect(r.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    let half = stall(r.addr, String::new(), &[0x16, 0x03, 0x01]).await;
    install_crypto_provider();
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = c
        .get(format!("https://{}/v2/", r.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    closed_within(silent, Duration::from_secs(5), "silent TLS connection").await;
    closed_within(half, Duration::from_secs(5), "half a ClientHello").await;
    r.stop().await;
}
