//! Webhooks against a real receiver (tests/webhook_receiver.py, Python's http.server on
//! loopback): Distribution's envelope with a valid signature for push, delete and pull; a
//! receiver down then up gets everything in order; events queued when the server is killed
//! arrive after the restart; a hanging receiver does not hold pushes back; a full outbox drops
//! its oldest events and counts them; `dockyard events` shows the outbox; the GC pass's own
//! deletes (retention, untagged manifests) send delete events, its dry run none.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dockyard::config::AuthMode;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::util::*;

const RECEIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_receiver.py");
const SECRET: &str = "hook-secret-for-tests";

/// The receiver as a child process; killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
    mode: PathBuf,
}

impl Receiver {
    /// Starts the receiver on `port` (0: any), logging into `dir`.
    fn start(dir: &Path, port: u16) -> Receiver {
        let log = dir.join("received.jsonl");
        let mode = dir.join("mode");
        let mut child = Command::new("python3")
            .arg(RECEIVER)
            .args(["--port", &port.to_string()])
            .arg("--log")
            .arg(&log)
            .arg("--mode-file")
            .arg(&mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {line:?}"));
        Receiver {
            child,
            port,
            log,
            mode,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(&self.mode, mode).unwrap();
    }

    /// Every request received so far, in order.
    fn requests(&self) -> Vec<Value> {
        match std::fs::read_to_string(&self.log) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => vec![],
        }
    }

    /// The events of the requests it answered 200, in the order they came.
    fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["answered"] == 200)
            .flat_map(|r| {
                let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                body["events"].as_array().unwrap().clone()
            })
            .collect()
    }

    /// Waits until `n` events were delivered (a bound against hanging, not a timing check).
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} events delivered: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `[[webhook]]` tables with a secret file in `dir`.
fn webhook_toml(dir: &Path, url: &str, extra: &str) -> String {
    let secret = dir.join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    format!(
        "[[webhook]]\nname = \"test\"\nurl = \"{url}\"\n\
         events = [\"push\", \"delete\", \"pull\", \"gc\"]\n\
         secret_file = \"{}\"\ntimeout = \"1s\"\nbackoff = \"50ms\"\nbackoff_max = \"200ms\"\n{extra}\n",
        secret.display()
    )
}

fn webhooks(toml: &str) -> dockyard::events::Webhooks {
    dockyard::Config::from_toml(toml).unwrap().webhooks
}

fn check_signature(request: &Value) {
    let body = request["body"].as_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(request["headers"]["x-dockyard-signature"], want.as_str());
    assert_eq!(
        request["headers"]["content-type"],
        "application/vnd.docker.distribution.events.v1+json"
    );
}

/// The tags of `events` in the order they first appear (at least once: a repeat is allowed).
fn first_tags(events: &[Value], action: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| e["action"] == action && seen.insert(e["id"].as_str().unwrap().to_string()))
        .map(|e| e["target"]["tag"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn events_text(r: &TestRegistry) -> String {
    r.admin(dockyard::admin::Command::Events { json: false })
        .await
        .unwrap()
}

async fn metric(r: &TestRegistry, name: &str) -> u64 {
    let text = client()
        .get(r.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{endpoint=\"test\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits until a metric reads `want`: the queued gauge is also set by the delivery task from
/// its own reads, which may trail a push by one round.
async fn wait_metric(r: &TestRegistry, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = metric(r, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, not {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn push_delete_and_pull_events_arrive_signed_in_distributions_envelope() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path(), 0);
    let hooks = webhooks(&webhook_toml(dir.path(), &rx.url(), ""));
    let r = TestRegistry::start_configured(|c| {
        c.webhooks = hooks;
        c.auth.mode = AuthMode::Basic;
        c.auth.bcrypt_cost = 4;
    })
    .await;
    r.add_user("alice", "pw").await;
    r.grant("alice", "**", "admin").await;
    let c = client_as("alice", "pw");
    let layer = random_bytes(300);
    let (manifest, digest) = push_image(&c, &r, "team/app", "v1", &[&layer]).await;
    let pulled = c
        .get(r.url("/v2/team/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .header("User-Agent", "webhook-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), 200);
    // The pull event is written in the background; wait for it before deleting, so the
    // order below is the order of the requests.
    rx.wait_for(2).await;
    let del = c
        .delete(r.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let del = c
        .delete(r.url(&format!("/v2/team/app/manifests/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let events = rx.wait_for(4).await;
    for req in rx.requests() {
        check_signature(&req);
    }
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["push", "pull", "delete", "delete"], "{events:#?}");

    let push = &events[0];
    let t = &push["target"];
    assert_eq!(t["mediaType"], OCI_MANIFEST);
    assert_eq!(t["digest"], digest.as_str());
    assert_eq!(t["size"], manifest.len());
    assert_eq!(t["length"], manifest.len());
    assert_eq!(t["repository"], "team/app");
    assert_eq!(t["tag"], "v1");
    assert_eq!(
        t["url"],
        format!("http://{}/v2/team/app/manifests/{digest}", r.addr).as_str()
    );
    assert_eq!(push["actor"]["name"], "alice");
    assert_eq!(push["request"]["method"], "PUT");
    assert_eq!(push["request"]["host"], r.addr.to_string().as_str());
    assert!(push["request"]["id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(push["request"]["addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(push["source"]["addr"], r.addr.to_string().as_str());
    assert!(push["source"]["instanceID"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(push["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));

    let pull = &events[1];
    assert_eq!(pull["target"]["digest"], digest.as_str());
    assert_eq!(pull["target"]["tag"], "v1");
    assert_eq!(pull["request"]["method"], "GET");
    assert_eq!(pull["request"]["useragent"], "webhook-test/1");
    assert_eq!(pull["actor"]["name"], "alice");

    // As Distribution: a tag's delete names the tag, a manifest's its digest.
    assert_eq!(events[2]["target"]["tag"], "v1");
    assert_eq!(events[2]["target"]["repository"], "team/app");
    assert!(events[2]["target"].get("digest").is_none());
    assert_eq!(events[3]["target"]["digest"], digest.as_str());
    assert_eq!(events[3]["request"]["method"], "DELETE");

    // A GC pass sends its summary.
    r.admin(dockyard::admin::Command::Gc { dry_run: false })
        .await
        .unwrap();
    let events = rx.wait_for(5).await;
    assert_eq!(events[4]["action"], "gc");
    assert!(events[4]["gc"]["blobs"].is_u64(), "{:#?}", events[4]);

    // `dockyard rm` deletes by the API's rules, with the same event.
    push_image(&c, &r, "team/app", "v2", &[&layer]).await;
    r.admin(dockyard::admin::Command::Rm {
        target: "team/app:v2".into(),
    })
    .await
    .unwrap();
    let events = rx.wait_for(7).await;
    assert_eq!(events[5]["action"], "push");
    assert_eq!(events[6]["action"], "delete");
    assert_eq!(events[6]["target"]["tag"], "v2");
    assert!(events[6]["request"]["useragent"]
        .as_str()
        .unwrap()
        .starts_with("dockyard/"));

    // Deliveries are counted; the outbox is empty.
    wait_metric(&r, "dockyard_webhook_queued", 0).await;
    assert_eq!(metric(&r, "dockyard_webhook_delivered_total").await, 7);
    assert_eq!(metric(&r, "dockyard_webhook_dropped_total").await, 0);
    let text = events_text(&r).await;
    assert!(
        text.contains("endpoint test (push, delete, pull, gc): 0 queued, 0 dropped")
            && text.contains("7 delivered"),
        "{text}"
    );
    let json: Value = serde_json::from_str(
        &r.admin(dockyard::admin::Command::Events { json: true })
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json[0]["endpoint"], "test");
    assert_eq!(json[0]["queued"], 0);
    assert_eq!(json[0]["delivered"], 7);
    assert_eq!(
        json[0]["events"],
        serde_json::json!(["push", "delete", "pull", "gc"])
    );
    r.stop().await;
}

#[tokio::test]
async fn a_receiver_down_then_up_gets_every_event_in_order() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hooks = webhooks(&webhook_toml(dir.path(), &url, ""));
    let r = TestRegistry::start_configured(|c| c.webhooks = hooks).await;
    let c = client();
    let tags: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    for t in &tags {
        push_image(&c, &r, "ci/app", t, &[&random_bytes(64)]).await;
    }
    // Nobody listens: the deliveries fail and are retried; every event waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&r, "dockyard_webhook_failed_total").await < 2 {
        assert!(Instant::now() < deadline, "no failed attempt counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = events_text(&r).await;
    assert!(text.contains("12 queued, 0 dropped"), "{text}");
    assert!(
        text.contains("push ci/app:t00"),
        "the oldest is shown first: {text}"
    );
    wait_metric(&r, "dockyard_webhook_queued", 12).await;

    let rx = Receiver::start(dir.path(), port);
    let events = rx.wait_for(12).await;
    assert_eq!(first_tags(&events, "push"), tags);
    r.stop().await;
}

#[tokio::test]
async fn events_queued_when_the_server_is_killed_arrive_after_the_restart() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let config = write_config(
        dir.path(),
        "registry.toml",
        &webhook_toml(dir.path(), &url, ""),
    );
    let server = Process::spawn_with_config(&root, &config);
    wait_for_admin_socket(&root);
    let c = client();
    let tags: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    for t in &tags {
        push_image(
            &c,
            server.url("").as_str(),
            "kill/app",
            t,
            &[&random_bytes(64)],
        )
        .await;
    }
    let (ok, out, err) = dockyard(&[
        "events",
        "--root",
        root.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("endpoint test (push, delete, pull, gc): 5 queued"),
        "{out}"
    );
    server.signal("KILL");
    drop(server);

    let rx = Receiver::start(dir.path(), port);
    let server = Process::spawn_with_config(&root, &config);
    let events = rx.wait_for(5).await;
    assert_eq!(first_tags(&events, "push"), tags);
    // An event's `request.id` is its request's id in the access log (`request{id=N}`).
    push_image(
        &c,
        server.url("").as_str(),
        "kill/app",
        "k5",
        &[&random_bytes(64)],
    )
    .await;
    let line = server.wait_for_line("PUT /v2/kill/app/manifests/k5 201");
    let logged = line
        .split("request{id=")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap_or_else(|| panic!("no request id in {line:?}"));
    let events = rx.wait_for(6).await;
    let k5 = events.iter().find(|e| e["target"]["tag"] == "k5").unwrap();
    assert_eq!(k5["request"]["id"], logged, "{line}\n{k5:#}");
    drop(server);

    // A restart without the endpoint drops what it still had queued, saying so.
    let other = write_config(dir.path(), "none.toml", "");
    let rx_gone = free_port();
    let url = format!("http://127.0.0.1:{rx_gone}/hook");
    let dead = write_config(
        dir.path(),
        "dead.toml",
        &webhook_toml(dir.path(), &url, "max_queued = 1").replace("\"test\"", "\"dead\""),
    );
    let server = Process::spawn_with_config(&root, &dead);
    for t in ["late", "later"] {
        let base = server.url("");
        push_image(&c, base.as_str(), "kill/app", t, &[&random_bytes(64)]).await;
    }
    // The second push overflowed the outbox of one: logged at error level.
    let line = server.wait_for_line("webhook outbox full");
    assert!(line.contains("ERROR") && line.contains("dead"), "{line}");
    server.stop();
    let server = Process::spawn_with_config(&root, &other);
    server.wait_for_line("no longer in the config");
    wait_for_admin_socket(&root);
    let (ok, out, err) = dockyard(&[
        "events",
        "--root",
        root.to_str().unwrap(),
        "--config",
        other.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no webhooks configured and no events queued");
}

#[tokio::test]
async fn a_hanging_receiver_does_not_hold_pushes_back() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start(dir.path(), 0);
    rx.set_mode("hang");
    let hooks = webhooks(&webhook_toml(dir.path(), &rx.url(), ""));
    let r = TestRegistry::start_configured(|c| c.webhooks = hooks).await;
    let c = client();
    push_image(&c, &r, "hang/app", "first", &[&random_bytes(64)]).await;
    // The first delivery is in the receiver's hands, and it does not answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.requests().is_empty() {
        assert!(Instant::now() < deadline, "no delivery attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pushes complete while the endpoint hangs: all of them, none waiting for it.
    let n = 30;
    let tags: Vec<String> = (0..n).map(|i| format!("h{i:02}")).collect();
    for t in &tags {
        push_image(&c, &r, "hang/app", t, &[&random_bytes(64)]).await;
    }
    let during = rx.requests().len();
    assert!(
        rx.requests().iter().all(|q| q["answered"] == "hang"),
        "nothing was answered"
    );
    assert!(rx.delivered().is_empty());
    let text = events_text(&r).await;
    assert!(text.contains(&format!("{} queued", n + 1)), "{text}");
    // Each attempt was cut by the timeout and counted as a failure.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&r, "dockyard_webhook_failed_total").await < 1 {
        assert!(
            Instant::now() < deadline,
            "the hanging attempt was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{n} pushes completed while the receiver hung ({during} attempts held by it)");
    rx.set_mode("ok");
    let events = rx.wait_for(n + 1).await;
    let mut want = vec!["first".to_string()];
    want.extend(tags);
    assert_eq!(first_tags(&events, "push"), want);
    r.stop().await;
}

#[tokio::test]
async fn a_full_outbox_drops_its_oldest_events_and_counts_them() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let hooks = webhooks(&webhook_toml(dir.path(), &url, "max_queued = 3"));
    let r = TestRegistry::start_configured(|c| c.webhooks = hooks).await;
    let c = client();
    for i in 0..7 {
        push_image(&c, &r, "full/app", &format!("f{i}"), &[&random_bytes(64)]).await;
    }
    assert_eq!(metric(&r, "dockyard_webhook_dropped_total").await, 4);
    wait_metric(&r, "dockyard_webhook_queued", 3).await;
    let text = events_text(&r).await;
    assert!(text.contains("3 queued, 4 dropped"), "{text}");
    assert!(
        text.contains("push full/app:f4") && !text.contains("full/app:f3"),
        "{text}"
    );
    let rx = Receiver::start(dir.path(), port);
    let events = rx.wait_for(3).await;
    assert_eq!(first_tags(&events, "push"), ["f4", "f5", "f6"]);
    r.stop().await;
}

#[test]
fn config_check_names_a_bad_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "good.toml",
        &webhook_toml(dir.path(), "http://127.0.0.1:9/hook", ""),
    );
    let (ok, out, err) = dockyard(&["config", "check", "-c", good.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 webhooks"), "{out}");
    let bad = write_config(
        dir.path(),
        "bad.toml",
        "[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"push\", \"tagged\"]\n",
    );
    let (ok, _, err) = dockyard(&["config", "check", "-c", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("webhook[0]") && err.contains("unknown event \"tagged\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// Every key path of a JSON value (`target.mediaType`, …), objects only.
fn key_paths(v: &Value, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    if let Some(o) = v.as_object() {
        for (k, v) in o {
            let p = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            key_paths(v, &p, out);
            out.insert(p);
        }
    }
}

/// The events about manifest `digest` (a tag's delete names no digest), once its delete came.
async fn manifest_events(rx: &Receiver, digest: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<Value> = rx
            .delivered()
            .into_iter()
            .filter(|e| e["target"]["digest"] == digest)
            .collect();
        if got.iter().any(|e| e["action"] == "delete") {
            return got;
        }
        assert!(Instant::now() < deadline, "no delete event: {got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Side by side with CNCF Distribution 2.8 (Debian's `docker-registry`) sending its own
/// notifications to the same kind of receiver: for the same manifest push, pull and delete,
/// Dockyard's envelope has the same media type and every field Distribution's has, with the
/// same values where they describe the manifest.
#[tokio::test]
async fn the_envelope_has_every_field_distribution_2_8_sends() {
    if !require_tool("python3") || !require_tool("docker-registry") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dist_dir, ours_dir) = (dir.path().join("dist"), dir.path().join("ours"));
    std::fs::create_dir_all(&dist_dir).unwrap();
    std::fs::create_dir_all(&ours_dir).unwrap();
    let rx_dist = Receiver::start(&dist_dir, 0);
    let rx_ours = Receiver::start(&ours_dir, 0);

    let dist_addr = format!("127.0.0.1:{}", free_port());
    let config = dist_dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  \
             delete: {{enabled: true}}\nhttp:\n  addr: {dist_addr}\nnotifications:\n  endpoints:\n    \
             - name: test\n      url: {}\n      timeout: 2s\n      threshold: 5\n      backoff: 100ms\n",
            dist_dir.join("data").display(),
            rx_dist.url()
        ),
    )
    .unwrap();
    let mut dist = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&dist_addr).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let hooks = webhooks(&webhook_toml(&ours_dir, &rx_ours.url(), ""));
    let r = TestRegistry::start_configured(|c| c.webhooks = hooks).await;

    let c = client();
    let config_blob =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = random_bytes(500);
    let manifest = image_manifest(config_blob, &[&layer]);
    let digest = sha256(&manifest);
    for base in [format!("http://{dist_addr}"), r.url("")] {
        for blob in [&config_blob[..], &layer] {
            // Distribution 2.8 has no monolithic POST.
            push_blob_in_two_steps(&c, base.as_str(), "same/app", blob).await;
        }
        put_manifest(&c, base.as_str(), "same/app", "v1", &manifest).await;
        let resp = c
            .get(format!("{base}/v2/same/app/manifests/v1"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Wait for the pull event before the delete, so both keep the requests' order.
        let rx = if base.contains(&dist_addr) {
            &rx_dist
        } else {
            &rx_ours
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rx.delivered().iter().any(|e| e["action"] == "pull") {
            assert!(Instant::now() < deadline, "no pull event from {base}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let resp = c
            .delete(format!("{base}/v2/same/app/manifests/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }
    // Distribution also sends events for blobs; the manifests' are the ones both send.
    let theirs = manifest_events(&rx_dist, &digest).await;
    let ours = manifest_events(&rx_ours, &digest).await;
    let _ = dist.kill();
    let _ = dist.wait();
    let actions = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(actions(&theirs), ["push", "pull", "delete"], "{theirs:#?}");
    assert_eq!(
        actions(&ours),
        actions(&theirs),
        "ours {ours:#?}\ntheirs {theirs:#?}"
    );
    for (o, t) in ours.iter().zip(&theirs) {
        let (mut ok, mut tk) = Default::default();
        key_paths(o, "", &mut ok);
        key_paths(t, "", &mut tk);
        let missing: Vec<_> = tk.difference(&ok).collect();
        assert!(
            missing.is_empty(),
            "{} event lacks {missing:?}\nours {o:#}\ntheirs {t:#}",
            o["action"]
        );
        for f in ["mediaType", "size", "digest", "length", "repository", "tag"] {
            if t["target"].get(f).is_some() {
                assert_eq!(o["target"][f], t["target"][f], "{} target.{f}", o["action"]);
            }
        }
        assert_eq!(o["request"]["method"], t["request"]["method"]);
    }
    let content_type = |rx: &Receiver| rx.requests()[0]["headers"]["content-type"].clone();
    assert_eq!(content_type(&rx_ours), content_type(&rx_dist));
    r.stop().await;
}

/// The events of a receiver's 200-answered requests, each request's signature checked.
fn signed_events(rx: &Receiver) -> Vec<Value> {
    for req in rx.requests() {
        check_signature(&req);
    }
    rx.delivered()
}

#[tokio::test]
async fn the_gc_passs_own_deletes_send_delete_events_in_order_and_a_dry_run_sends_none() {
    if !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::create_dir_all(&dir_b).unwrap();
    // `test` takes pushes and deletes but no `gc` summary: its deletes can arrive only if the
    // pass wakes its delivery task after each commit. `audit` takes deletes and the summary.
    let (rx, audit) = (Receiver::start(&dir_a, 0), Receiver::start(&dir_b, 0));
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let endpoint = |name: &str, url: &str, events: &str| {
        format!(
            "[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [{events}]\n\
             secret_file = \"{}\"\ntimeout = \"1s\"\nbackoff = \"50ms\"\nbackoff_max = \"200ms\"\n",
            secret.display()
        )
    };
    let toml = format!(
        "{}{}\n[[policy]]\npattern = \"ret/**\"\nkeep_last = 1\n\n\
         [gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"0s\"\nuntagged = \"0s\"\n",
        endpoint("test", &rx.url(), "\"push\", \"delete\""),
        endpoint("audit", &audit.url(), "\"delete\", \"gc\""),
    );
    let parsed = dockyard::Config::from_toml(&toml).unwrap();
    let r = TestRegistry::start_configured(move |c| {
        c.webhooks = parsed.webhooks;
        c.policies = parsed.policies;
        c.gc = parsed.gc;
    })
    .await;
    let c = client();
    // ret/app: r0..r3, each its own image; keep_last = 1 keeps r3 (the newest, and the
    // greatest name were the push times equal).
    let mut ret_digests = Vec::new();
    for i in 0..4 {
        let tag = format!("r{i}");
        let (_, d) = push_image(&c, &r, "ret/app", &tag, &[&random_bytes(100)]).await;
        ret_digests.push(d);
    }
    // loose/app: one image pushed by digest, untagged from the start.
    let config = random_bytes(50);
    let layer = random_bytes(70);
    push_blob(&c, &r, "loose/app", &config).await;
    push_blob(&c, &r, "loose/app", &layer).await;
    let loose = image_manifest(&config, &[&layer]);
    let loose_d = sha256(&loose);
    put_manifest(&c, &r, "loose/app", &loose_d, &loose).await;
    rx.wait_for(5).await;

    let dry = r
        .admin(dockyard::admin::Command::Gc { dry_run: true })
        .await
        .unwrap();
    for t in ["r0", "r1", "r2"] {
        assert!(
            dry.contains(&format!("would delete tag ret/app:{t} ")),
            "{dry}"
        );
    }
    r.admin(dockyard::admin::Command::Gc { dry_run: false })
        .await
        .unwrap();
    assert_eq!(tags_list(&r, "ret/app").await, ["r3"]);

    // Retention's tag deletes first (the pass's step 0, by tag name), then the manifests
    // left untagged, with the one pushed by digest, in the pass's (repository, digest)
    // order. A dry run's events would have come first: there are none.
    let mut untagged = vec![(String::from("loose/app"), loose_d.clone())];
    let mut expired: Vec<String> = ret_digests[..3].to_vec();
    expired.sort();
    untagged.extend(expired.into_iter().map(|d| ("ret/app".to_string(), d)));
    let want: Vec<(String, String, String)> = ["r0", "r1", "r2"]
        .iter()
        .map(|t| ("ret/app".to_string(), t.to_string(), String::new()))
        .chain(
            untagged
                .into_iter()
                .map(|(repo, d)| (repo, String::new(), d)),
        )
        .collect();
    let target = |e: &Value| {
        let field = |k: &str| e["target"][k].as_str().unwrap_or("").to_string();
        (field("repository"), field("tag"), field("digest"))
    };

    rx.wait_for(5 + want.len()).await;
    let events: Vec<Value> = signed_events(&rx).into_iter().skip(5).collect();
    assert_eq!(events.len(), want.len(), "{events:#?}");
    let got: Vec<_> = events.iter().map(target).collect();
    assert_eq!(got, want, "{events:#?}");

    let audited = audit.wait_for(want.len() + 1).await;
    let audited_signed = signed_events(&audit);
    assert_eq!(audited_signed.len(), want.len() + 1, "{audited:#?}");
    let (deletes, summary) = audited_signed.split_at(want.len());
    let got: Vec<_> = deletes.iter().map(target).collect();
    assert_eq!(got, want, "{audited:#?}");
    let summary = &summary[0];
    assert_eq!(summary["action"], "gc");
    assert_eq!(summary["gc"]["expired_tags"], 3);
    assert_eq!(summary["gc"]["manifests"], 4);

    // Each is the API's delete event, made by the GC: one request id for the pass, which its
    // summary carries too; the actor is one no user can be.
    let pass_id = summary["request"]["id"].as_str().unwrap();
    assert!(!pass_id.is_empty());
    assert_eq!(summary["actor"]["name"], "dockyard:gc");
    for e in events.iter().chain(deletes) {
        assert_eq!(e["action"], "delete", "{e:#}");
        assert_eq!(e["actor"]["name"], "dockyard:gc", "{e:#}");
        assert_eq!(e["request"]["method"], "DELETE", "{e:#}");
        assert_eq!(e["request"]["id"], pass_id, "{e:#}");
        assert!(e["request"]["useragent"]
            .as_str()
            .unwrap()
            .starts_with("dockyard/"));
        assert_eq!(e["source"]["addr"], r.addr.to_string().as_str());
        assert!(e["id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'));
    }
    // The same event ids at both endpoints: one event, appended to each outbox.
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&events), ids(deletes));

    // A pass with nothing to delete sends its summary only.
    r.admin(dockyard::admin::Command::Gc { dry_run: false })
        .await
        .unwrap();
    let audited = audit.wait_for(want.len() + 2).await;
    assert_eq!(audited[want.len() + 1]["action"], "gc");
    assert_ne!(audited[want.len() + 1]["request"]["id"], pass_id);
    wait_metric(&r, "dockyard_webhook_queued", 0).await;
    assert_eq!(
        metric(&r, "dockyard_webhook_delivered_total").await,
        (5 + want.len()) as u64
    );
    r.stop().await;
}

async fn tags_list(r: &TestRegistry, repo: &str) -> Vec<String> {
    let v: Value = client()
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
