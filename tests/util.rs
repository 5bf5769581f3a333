//! Shared test helpers: a registry on a `127.0.0.1:0` listener in a temporary directory, and
//! small builders for blobs and manifests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest as _, Sha256};

pub mod upstream;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A registry served in-process by the library, on a listener the test bound itself.
pub struct TestRegistry {
    pub addr: SocketAddr,
    pub root: PathBuf,
    /// The served instance, for tests that run a GC pass or fsck beside the server.
    pub core: dockyard::Core,
    _dir: Option<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestRegistry {
    pub async fn start() -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let mut r = TestRegistry::start_at(&root).await;
        r._dir = Some(dir);
        r
    }

    /// Serves the given root; the caller owns the directory.
    pub async fn start_at(root: &Path) -> TestRegistry {
        let config = dockyard::Config {
            root: root.to_path_buf(),
            ..Default::default()
        };
        TestRegistry::start_with(config).await
    }

    pub async fn start_with(config: dockyard::Config) -> TestRegistry {
        let root = config.root.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut registry = dockyard::Registry::open(config).expect("open registry");
        // As `dockyard serve` does: the control channel exists before anyone is told the
        // address, so a test may use the CLI at once.
        registry.bind_admin().expect("bind the admin socket");
        let core = registry.core().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve = registry.serve(listener, async {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move { serve.await.expect("serve") });
        TestRegistry {
            addr,
            root,
            core,
            _dir: None,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops serving and waits until the database is closed, so the root can be reopened.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

/// reqwest (pulled in with rustls by oci-client) needs a process-wide crypto provider even
/// for plain HTTP; ring is the one compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("reqwest client")
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// What a test pushes to: an in-process registry, the binary, or a base URL.
pub trait Serves {
    fn url(&self, path: &str) -> String;
}

impl Serves for TestRegistry {
    fn url(&self, path: &str) -> String {
        TestRegistry::url(self, path)
    }
}

impl Serves for Process {
    fn url(&self, path: &str) -> String {
        Process::url(self, path)
    }
}

impl Serves for str {
    fn url(&self, path: &str) -> String {
        format!("{self}{path}")
    }
}

/// Pushes a blob in one POST with `?digest=` and asserts 201.
pub async fn push_blob(
    c: &reqwest::Client,
    r: &(impl Serves + ?Sized),
    repo: &str,
    bytes: &[u8],
) -> String {
    let d = sha256(bytes);
    let resp = c
        .post(r.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("push blob");
    assert_eq!(
        resp.status(),
        201,
        "push blob: {}",
        resp.text().await.unwrap_or_default()
    );
    d
}

/// Pushes a blob as POST, then PUT `?digest=` with the body, and asserts 202 then 201: the
/// only upload Distribution 2.8 takes (it has no monolithic POST).
pub async fn push_blob_in_two_steps(
    c: &reqwest::Client,
    r: &(impl Serves + ?Sized),
    repo: &str,
    bytes: &[u8],
) -> String {
    let d = sha256(bytes);
    let resp = c
        .post(r.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .await
        .expect("start upload");
    assert_eq!(resp.status(), 202, "start upload");
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        r.url(&loc)
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let resp = c
        .put(format!("{loc}{sep}digest={d}"))
        .body(bytes.to_vec())
        .send()
        .await
        .expect("finish upload");
    assert_eq!(resp.status(), 201, "finish upload");
    d
}

/// PUTs an OCI image manifest under `reference` and asserts 201.
pub async fn put_manifest(
    c: &reqwest::Client,
    r: &(impl Serves + ?Sized),
    repo: &str,
    reference: &str,
    manifest: &[u8],
) {
    let resp = c
        .put(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.to_vec())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(
        resp.status(),
        201,
        "put manifest: {}",
        resp.text().await.unwrap_or_default()
    );
}

pub fn descriptor(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": sha256(bytes), "size": bytes.len() })
}

/// An OCI image manifest over the given config and layers.
pub fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": layers.iter().map(|l| descriptor(OCI_LAYER, l)).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("json")
}

/// Pushes config, layers and manifest under `tag`; returns the manifest bytes and digest.
pub async fn push_image(
    c: &reqwest::Client,
    r: &(impl Serves + ?Sized),
    repo: &str,
    tag: &str,
    layers: &[&[u8]],
) -> (Vec<u8>, String) {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "nonce": hex::encode(random_bytes(8)),
    }))
    .expect("json");
    push_blob(c, r, repo, &config).await;
    for l in layers {
        push_blob(c, r, repo, l).await;
    }
    let manifest = image_manifest(&config, layers);
    put_manifest(c, r, repo, tag, &manifest).await;
    let d = sha256(&manifest);
    (manifest, d)
}

/// The `errors[0].code` of a spec error body, asserting the body has the spec's shape.
pub async fn error_code(resp: reqwest::Response) -> String {
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: body is not JSON: {e}"));
    let code = v["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {v}"));
    assert!(v["errors"][0]["message"].is_string(), "no message in {v}");
    code.to_string()
}

/// Whether the tests run in CI: `CI` set to anything but empty, `0` or `false` (any case), as
/// CI services set it (`true`, `1`, `yes` …). In CI a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var("CI").ok().as_deref())
}

fn ci_value_means_ci(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(v) => !v.eq_ignore_ascii_case("false"),
    }
}

#[test]
fn ci_is_anything_but_empty_zero_or_false() {
    for v in ["true", "1", "yes", "TRUE", "on", "woodpecker"] {
        assert!(ci_value_means_ci(Some(v)), "{v}");
    }
    for v in [
        None,
        Some(""),
        Some("0"),
        Some("false"),
        Some("False"),
        Some(" "),
    ] {
        assert!(!ci_value_means_ci(v), "{v:?}");
    }
}

/// Whether an external client is on PATH. Outside CI a missing client is reported loudly and
/// the test returns early; in CI (`CI=true`) a missing client fails the test.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if in_ci() {
            panic!("{tool} is required in CI but is not installed (.ci/run installs it)");
        }
        eprintln!("\n!!!!! SKIPPED: `{tool}` is not installed; install it (see .ci/run) to run this interop test !!!!!\n");
    }
    found
}

/// An environment variable a client needs (set by `.ci/daemons.sh`); missing means the daemon
/// is not running: fatal in CI, loudly reported elsewhere.
pub fn require_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let hint =
                "start the daemons with `.ci/daemons.sh start && source /tmp/dockyard-daemons/env`";
            if in_ci() {
                panic!("{var} is not set in CI; .ci/run must start the daemons ({hint})");
            }
            eprintln!("\n!!!!! SKIPPED: {var} is not set; {hint} to run this interop test !!!!!\n");
            None
        }
    }
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{desc}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        panic!(
            "{desc} failed ({}):\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// The `dockyard` binary as a child process, for tests that restart, signal or kill it. Its
/// stdout and stderr lines are collected in `output`.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    pub output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `dockyard serve --listen 127.0.0.1:0 --root ROOT` and waits for the line that
    /// names the address it bound.
    pub fn spawn(root: &Path) -> Process {
        let root = root.to_string_lossy().into_owned();
        Process::spawn_args(&["serve", "--listen", "127.0.0.1:0", "--root", &root])
    }

    /// Starts the binary with `args` (which must make it serve) and waits for the line that
    /// names the address it bound.
    pub fn spawn_args(args: &[&str]) -> Process {
        Process::spawn_args_env(args, &[])
    }

    /// [`Process::spawn_args`] with extra environment variables for the child.
    pub fn spawn_args_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        Process::spawn_via(env!("CARGO_BIN_EXE_dockyard"), args, env)
    }

    /// Like `spawn_args`, through a wrapper program (`prlimit`, `sh -c`) whose `args` start
    /// the binary.
    pub fn spawn_args_via(program: &str, args: &[&str]) -> Process {
        Process::spawn_via(program, args, &[])
    }

    fn spawn_via(program: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        use std::io::{BufRead, BufReader, Read};
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dockyard");
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let (tx, output) = (tx.clone(), output.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let addr = line.find("listening on http").map(|i| {
                        let rest = line[i..].split("://").nth(1).unwrap_or("");
                        rest.chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect::<String>()
                    });
                    // Record the line before announcing it, so `output()` already holds it.
                    output.lock().expect("output lock").push(line);
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(100)) {
                break a.parse().expect("address in the listening line");
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "dockyard exited early: {status}\n{}",
                    output.lock().expect("output lock").join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "dockyard did not report its address"
            );
        };
        Process {
            child,
            addr,
            output,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    /// Waits (up to 10 s) for a printed line containing `needle` and returns it.
    pub fn wait_for_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .output
                .lock()
                .expect("output lock")
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} in:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that the control socket of the server on `root` exists. A server binds it before
/// it prints the listening line (which `Process::spawn*` waits for), so there is nothing to
/// wait for any more; kept for the tests that still call it, where it checks that order.
pub fn wait_for_admin_socket(root: &Path) {
    assert!(
        dockyard::admin::socket_path(root).exists(),
        "no admin socket under {root:?} after the listening line"
    );
}

/// Runs `dockyard ARGS…` to completion: (success, stdout, stderr).
pub fn dockyard<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dockyard"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run dockyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `dockyard ARGS… --config CONFIG` to completion: (success, stdout, stderr).
pub fn dockyard_with_config(args: &[&str], config: &Path) -> (bool, String, String) {
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    all.push(std::ffi::OsStr::new("--config"));
    all.push(config.as_os_str());
    dockyard(&all)
}

/// `dockyard ARGS… --root ROOT` with `stdin` piped in, on the blocking pool (so an
/// in-process server keeps serving): (success, stdout, stderr).
pub async fn dockyard_at(root: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dockyard"));
    cmd.args(args).arg("--root").arg(root).env("NO_COLOR", "1");
    let stdin = stdin.to_string();
    let out = tokio::task::spawn_blocking(move || run_with_stdin(&mut cmd, &stdin))
        .await
        .expect("dockyard task");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config for `root` whose GC runs only when asked and keeps nothing for time's sake
/// (`[gc] interval = "off"`, grace and push window zero), written as `dir/registry.toml`.
pub fn gc_by_hand_config(dir: &Path, root: &Path) -> PathBuf {
    write_config(
        dir,
        "registry.toml",
        &format!(
            "[storage]\nroot = {:?}\n[gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"0s\"\n",
            root.display().to_string()
        ),
    )
}

/// Runs a client command on the blocking pool with `input` on its stdin (a password); it
/// must succeed. Returns its stdout.
pub async fn run_async_with_stdin(mut cmd: Command, input: &str) -> String {
    let input = input.to_string();
    let desc = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || run_with_stdin(&mut cmd, &input))
        .await
        .expect("command task");
    assert!(
        out.status.success(),
        "{desc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a client command on the blocking pool; it must fail. Returns its stderr.
pub async fn fails_async(mut cmd: Command) -> String {
    let desc = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || run_with_stdin(&mut cmd, ""))
        .await
        .expect("command task");
    assert!(!out.status.success(), "{desc} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The digest `docker push` says it pushed.
pub fn docker_push_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{out}"))
        .to_string()
}

/// A tar archive of a few random files, as a container root filesystem.
pub fn rootfs_tar(files: usize, size: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for i in 0..files {
        let data = random_bytes(size);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, format!("data/file{i}.bin"), data.as_slice())
            .expect("tar entry");
    }
    tar.into_inner().expect("tar")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// Writes an OCI image layout at `dir` holding one image per architecture, each with one
/// gzipped random layer. With one architecture, `index.json` names the image manifest under
/// `tag`; with several, it names an image index over them. Returns the digest `tag` names.
pub fn oci_layout(dir: &Path, tag: &str, archs: &[&str]) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d["sha256:".len()..]), bytes).expect("layout blob");
        d
    };
    let mut manifests = Vec::new();
    for arch in archs {
        let tar = rootfs_tar(3, 20_000);
        let layer = gzip(&tar);
        put(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch, "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        }))
        .expect("json");
        put(&config);
        let manifest = image_manifest(&config, &[&layer]);
        let d = put(&manifest);
        manifests.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let (top, media_type) = if manifests.len() == 1 {
        (manifests.pop().expect("one manifest"), OCI_MANIFEST)
    } else {
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
        }))
        .expect("json");
        let d = put(&index);
        (
            serde_json::json!({"digest": d, "size": index.len()}),
            OCI_INDEX,
        )
    };
    let digest = top["digest"].as_str().expect("digest").to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type, "digest": digest, "size": top["size"],
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    digest
}

/// The digest `tag` names in an OCI layout's index.json.
pub fn layout_digest(dir: &Path, tag: &str) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("json");
    index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in {index}"))
        .to_string()
}

/// Runs a command with `input` on its stdin and returns its output, whatever its status.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{desc}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

/// A podman with all of its state (storage, config, temp) inside `dir`: no system state.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    pub fn new(dir: &Path) -> Podman {
        std::fs::create_dir_all(dir.join("tmp")).expect("podman tmp");
        std::fs::write(
            dir.join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .expect("registries.conf");
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{0}/events.log\"\nimage_copy_tmp_dir = \"{0}/tmp\"\n\
                 [network]\nnetwork_config_dir = \"{0}/net\"\n",
                dir.display()
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy.json");
        Podman {
            dir: dir.to_path_buf(),
        }
    }

    pub fn policy(&self) -> String {
        self.dir.join("policy.json").to_string_lossy().into_owned()
    }

    /// `podman login --password-stdin`, keeping the login in `authfile`.
    pub async fn login(&self, authfile: &str, host: &str, user: &str, password: &str) {
        let args = [
            "login",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "-u",
            user,
            "--password-stdin",
            host,
        ];
        run_async_with_stdin(self.command(&args), password).await;
    }

    /// `podman push` with the login in `authfile`; returns the digest it pushed.
    pub async fn push(&self, authfile: &str, image: &str) -> String {
        let digestfile = self.dir.join("digest");
        let (policy, digestfile_arg) = (self.policy(), digestfile.to_string_lossy());
        run_async(self.command(&[
            "push",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "--signature-policy",
            &policy,
            "--digestfile",
            &digestfile_arg,
            image,
        ]))
        .await;
        std::fs::read_to_string(&digestfile)
            .expect("podman's digest file")
            .trim()
            .to_string()
    }

    /// `podman pull` with the login in `authfile`.
    pub async fn pull(&self, authfile: &str, image: &str) {
        let policy = self.policy();
        run_async(self.command(&[
            "pull",
            "--tls-verify=false",
            "--authfile",
            authfile,
            "--signature-policy",
            &policy,
            image,
        ]))
        .await;
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let w = &self.dir;
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", w.join("containers.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", w.join("registries.conf"))
            .env("TMPDIR", w.join("tmp"))
            .arg("--root")
            .arg(w.join("root"))
            .arg("--runroot")
            .arg(w.join("runroot"))
            .arg("--tmpdir")
            .arg(w.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
            ])
            .args(args);
        c
    }
}

/// Runs a command on the blocking pool, so an in-process server keeps serving meanwhile.
pub async fn run_async(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .expect("command task")
}

/// The digest the registry serves for `repo:reference`, and the raw bytes.
pub async fn served_manifest(
    r: &TestRegistry,
    repo: &str,
    reference: &str,
) -> (String, String, Vec<u8>) {
    let resp = client()
        .get(r.url(&format!("/v2/{repo}/manifests/{reference}")))
        .send()
        .await
        .expect("get manifest");
    assert_eq!(resp.status(), 200, "GET manifest {repo}:{reference}");
    let digest = resp.headers()["docker-content-digest"]
        .to_str()
        .expect("digest header")
        .to_string();
    let media_type = resp.headers()["content-type"]
        .to_str()
        .expect("content type")
        .to_string();
    let body = resp.bytes().await.expect("body").to_vec();
    assert_eq!(
        sha256(&body),
        digest,
        "served bytes hash to the served digest"
    );
    (digest, media_type, body)
}

/// A reqwest client that sends `Authorization: <value>` with every request.
pub fn client_with(authorization: &str) -> reqwest::Client {
    install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        authorization.parse().expect("header value"),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(headers)
        .build()
        .expect("reqwest client")
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b64}")
}

/// A client sending Basic credentials with every request.
pub fn client_as(user: &str, password: &str) -> reqwest::Client {
    client_with(&basic(user, password))
}

impl TestRegistry {
    /// Serves a fresh root with auth in `mode`, and bcrypt at its cheapest cost (tests check
    /// behaviour, not cost).
    pub async fn start_auth(
        mode: dockyard::config::AuthMode,
        tweak: impl FnOnce(&mut dockyard::config::AuthConfig),
    ) -> TestRegistry {
        TestRegistry::start_configured(|c| {
            c.auth.mode = mode;
            c.auth.bcrypt_cost = 4;
            tweak(&mut c.auth);
        })
        .await
    }

    /// fsck of this registry's root, beside the running server (as `dockyard fsck` through
    /// the control channel does), rehashing every blob with `verify_hashes`.
    pub async fn fsck(&self, verify_hashes: bool) -> dockyard::gc::fsck::FsckReport {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || {
            dockyard::gc::fsck::check(
                &core,
                &dockyard::gc::fsck::FsckOptions {
                    verify_hashes,
                    ..Default::default()
                },
            )
        })
        .await
        .expect("fsck task")
        .expect("fsck")
    }

    /// Runs a control command through the server's admin socket: `Ok` with its text, or
    /// `Err` with its one-line refusal.
    pub async fn admin(&self, command: dockyard::admin::Command) -> Result<String, String> {
        // `start_with` binds the socket before it returns: no waiting for it.
        match dockyard::admin::call(&self.root, &command)
            .await
            .expect("admin socket")
            .expect("a server answers on the admin socket")
        {
            dockyard::admin::Outcome::Ok(s) => Ok(s),
            dockyard::admin::Outcome::Err(e) => Err(e),
        }
    }

    pub async fn add_user(&self, name: &str, password: &str) {
        self.admin(dockyard::admin::Command::UserAdd {
            name: name.to_string(),
            password: dockyard::auth::users::Secret::new(password),
        })
        .await
        .expect("user add");
    }

    pub async fn grant(&self, subject: &str, pattern: &str, actions: &str) {
        self.admin(dockyard::admin::Command::AclGrant {
            subject: subject.to_string(),
            pattern: pattern.to_string(),
            actions: actions.to_string(),
        })
        .await
        .expect("acl grant");
    }

    /// A fresh registry whose GC never runs by itself and keeps nothing for time's sake (no
    /// timer, grace and push window zero); `tweak` changes that and the rest.
    pub async fn start_gc_by_hand(tweak: impl FnOnce(&mut dockyard::Config)) -> TestRegistry {
        TestRegistry::start_configured(|c| {
            c.gc.interval = None;
            c.gc.grace = Duration::ZERO;
            c.gc.push_window = Duration::ZERO;
            tweak(c);
        })
        .await
    }

    /// One GC pass on the served instance, on the blocking pool.
    pub async fn gc_pass(&self, opts: dockyard::gc::GcOptions) -> dockyard::gc::GcReport {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || dockyard::gc::run_once(&core, &opts))
            .await
            .expect("gc task")
            .expect("gc pass")
    }

    /// The digest `repo:reference` is served under (a `HEAD`), asked as `user`.
    pub async fn served_digest_as(
        &self,
        user: &str,
        password: &str,
        repo: &str,
        reference: &str,
    ) -> String {
        let resp = client_as(user, password)
            .head(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .send()
            .await
            .expect("HEAD manifest");
        assert_eq!(resp.status(), 200, "HEAD {repo}:{reference} as {user}");
        resp.headers()["docker-content-digest"]
            .to_str()
            .expect("digest header")
            .to_string()
    }

    /// Serves a fresh temporary root with the defaults changed by `tweak` (a smaller limit,
    /// say); the directory lives as long as the registry.
    pub async fn start_configured(tweak: impl FnOnce(&mut dockyard::Config)) -> TestRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = dockyard::Config {
            root: dir.path().to_path_buf(),
            ..Default::default()
        };
        tweak(&mut config);
        let mut r = TestRegistry::start_with(config).await;
        r._dir = Some(dir);
        r
    }
}

/// A response read off the wire by `raw_request`.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD target HTTP/1.1` exactly as written, for request targets an HTTP client
/// would normalize before sending (`..`, `%2e%2e`, `//`), and reads the whole response.
pub async fn raw_request(addr: SocketAddr, method: &str, target: &str) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut raw))
        .await
        .expect("response within 30s")
        .expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

/// Decodes a `Transfer-Encoding: chunked` body (no trailers).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        rest = &rest[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Sends a request whose body stops short of the Content-Length it declares, then closes the
/// sending half, as a client that dies mid-upload would; returns whatever the server answered
/// (possibly nothing) once it closed the connection.
pub async fn send_truncated(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    declared_len: usize,
    sent: &[u8],
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    assert!(sent.len() < declared_len, "the body must stop short");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {declared_len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(sent).await.expect("write partial body");
    conn.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
    answer
}

impl Process {
    /// Starts `dockyard serve --listen 127.0.0.1:0 --root ROOT --config CONFIG`.
    pub fn spawn_with_config(root: &Path, config: &Path) -> Process {
        Process::spawn_with_config_env(root, config, &[])
    }

    /// [`Process::spawn_with_config`] with extra environment variables for the child.
    pub fn spawn_with_config_env(root: &Path, config: &Path, env: &[(&str, &str)]) -> Process {
        let (root, config) = (root.to_string_lossy(), config.to_string_lossy());
        Process::spawn_args_env(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--root",
                &root,
                "--config",
                &config,
            ],
            env,
        )
    }
}

/// A config file for the binary with the given `[gc]` (and other) lines; lives in `dir`.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml).expect("write config");
    path
}

/// The digests of every blob file under `root/blobs`.
pub fn blob_files(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(algs) = std::fs::read_dir(root.join("blobs")) else {
        return out;
    };
    for alg in algs.flatten() {
        for shard in std::fs::read_dir(alg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(shard.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.insert(format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Puts a blob into the instance the way an upload's commit does (file, then a row linked
/// into `repos`, both under the blob's lock), but without any client having seen it:
/// garbage the GC may take at once when the grace is zero.
pub async fn seed_blob(core: &dockyard::Core, repos: &[&str], bytes: &[u8]) -> String {
    use dockyard::store::Location;
    let d: dockyard::oci::Digest = sha256(bytes).parse().expect("digest");
    let repos: Vec<dockyard::oci::RepoName> = repos
        .iter()
        .map(|r| dockyard::oci::RepoName::parse(r).expect("repo"))
        .collect();
    let (core, dd, bytes) = (core.clone(), d.clone(), bytes.to_vec());
    tokio::task::spawn_blocking(move || {
        let _held = core.blob_locks.lock(&dd);
        let path = core.store.path_for(Location::Blob(&dd));
        std::fs::create_dir_all(path.parent().expect("shard")).expect("shard dir");
        std::fs::write(&path, &bytes).expect("blob file");
        core.db
            .write_blocking(|tx| {
                for r in &repos {
                    dockyard::db::blobs::record(tx, r, &dd, bytes.len() as u64, None)?;
                }
                Ok(())
            })
            .expect("record seeded blob");
    })
    .await
    .expect("seed task");
    d.to_string()
}

/// Pulls `repo:reference` from the registry at `base` and checks the manifest bytes and
/// every blob it lists byte for byte (by digest). Panics with `what` on any difference.
pub async fn assert_pulls(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    manifest: &[u8],
    what: &str,
) {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: GET manifest: {e}"));
    assert_eq!(resp.status(), 200, "{what}: GET {repo}:{reference}");
    let body = resp.bytes().await.expect("manifest body");
    assert_eq!(
        body.as_ref(),
        manifest,
        "{what}: manifest bytes of {repo}:{reference}"
    );
    let m: serde_json::Value = serde_json::from_slice(manifest).expect("manifest json");
    let mut digests: Vec<String> = Vec::new();
    if let Some(c) = m["config"]["digest"].as_str() {
        digests.push(c.to_string());
    }
    for l in m["layers"].as_array().into_iter().flatten() {
        digests.push(l["digest"].as_str().expect("layer digest").to_string());
    }
    for d in digests {
        let resp = c
            .get(format!("{base}/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: GET blob: {e}"));
        assert_eq!(
            resp.status(),
            200,
            "{what}: GET blob {d} of {repo}:{reference}"
        );
        let bytes = resp.bytes().await.expect("blob body");
        assert_eq!(
            sha256(&bytes),
            d,
            "{what}: bytes of blob {d} of {repo}:{reference}"
        );
    }
}

/// A client that opens a connection per request. Blob GETs on a kept-alive connection wait
/// ~40 ms each (Nagle's algorithm against delayed ACKs: the server does not set TCP_NODELAY
/// on accepted sockets), which makes tests that pull many blobs slow for no reason of theirs.
pub fn fresh_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(0)
        .build()
        .expect("reqwest client")
}

/// Where `.ci/garage.sh start` writes its env file when `DOCKYARD_GARAGE_DIR` is not set.
pub const GARAGE_ENV_FILE: &str = "/tmp/dockyard-garage/env";

/// The S3 bucket of the three-node Garage cluster that `.ci/garage.sh start` runs on loopback:
/// the five `DOCKYARD_S3_*` values it writes to its env file.
#[derive(Clone, Debug)]
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The test's share of the cluster's nodes (see [`GARAGE_NODES`]), held as long as any
    /// copy of this value lives; `None` where no cluster is touched.
    pub nodes: Option<std::rc::Rc<GarageShare>>,
}

/// A test that kills a Garage node takes this lock exclusively; every other test on the
/// cluster takes it shared, so that no other test sees the cluster with a replica missing
/// (slower requests, and listings that lag further: Garage filters deleted objects out on
/// each replica before it merges a listing's replies, so a replica that has not applied a
/// DELETE yet makes the listing name the object for a moment).
pub static GARAGE_NODES: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A held share of [`GARAGE_NODES`] (a poisoned lock, left by a failed test, still guards).
#[derive(Debug)]
pub struct GarageShare(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>);

/// Waits until no test has a Garage node down, and keeps it so while the share lives.
pub fn garage_share() -> GarageShare {
    GarageShare(GARAGE_NODES.read().unwrap_or_else(|e| e.into_inner()))
}

/// Waits until no other test uses the cluster, and keeps it so while the guard lives: for the
/// test that kills and restarts nodes.
pub fn garage_alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    GARAGE_NODES.write().unwrap_or_else(|e| e.into_inner())
}

impl S3Env {
    /// Writes the secret key to `dir/s3-secret` (mode 0600) and returns a `[storage]` section
    /// for `backend = "s3"` under `prefix` (give each test its own, see [`s3_prefix`]).
    /// `extra` lines go into `[storage.s3]` (`redirect = true`, `snapshot_interval = "2s"` …).
    pub fn storage_toml(&self, dir: &Path, prefix: &str, extra: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, &self.secret_access_key).expect("write s3 secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
            .expect("chmod s3 secret");
        format!(
            "[storage]\nbackend = \"s3\"\n\n[storage.s3]\nendpoint = \"{}\"\nregion = \"{}\"\n\
             bucket = \"{}\"\nprefix = \"{prefix}\"\naccess_key_id = \"{}\"\n\
             secret_access_key_file = \"{}\"\npath_style = true\n{extra}\n",
            self.endpoint,
            self.region,
            self.bucket,
            self.access_key_id,
            secret.display()
        )
    }
}

/// A prefix inside the shared bucket that no other test (or earlier run) uses.
pub fn s3_prefix(test: &str) -> String {
    let mut r = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut r);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("tests/{test}-{hex}")
}

/// The Garage cluster's bucket: from `DOCKYARD_S3_*` variables when all five are set, else
/// from the env file named by `DOCKYARD_S3_ENV` (default [`GARAGE_ENV_FILE`]). Missing means
/// Garage is not running: fatal in CI, loudly reported elsewhere (the test returns early).
pub fn require_s3() -> Option<S3Env> {
    let mut env = s3_env()?;
    env.nodes = Some(std::rc::Rc::new(garage_share()));
    Some(env)
}

/// [`require_s3`] without a share of the cluster's nodes: for the test that takes
/// [`garage_alone`].
pub fn s3_env() -> Option<S3Env> {
    const KEYS: [&str; 5] = [
        "DOCKYARD_S3_ENDPOINT",
        "DOCKYARD_S3_REGION",
        "DOCKYARD_S3_BUCKET",
        "DOCKYARD_S3_ACCESS_KEY_ID",
        "DOCKYARD_S3_SECRET_ACCESS_KEY",
    ];
    let mut values: std::collections::HashMap<String, String> = KEYS
        .iter()
        .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    let file = std::env::var("DOCKYARD_S3_ENV").unwrap_or_else(|_| GARAGE_ENV_FILE.to_string());
    if values.len() < KEYS.len() {
        values.clear();
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                let line = line.trim().trim_start_matches("export ");
                if let Some((k, v)) = line.split_once('=') {
                    values.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
    }
    let get = |k: &str| values.get(k).filter(|v| !v.is_empty()).cloned();
    match (
        get(KEYS[0]),
        get(KEYS[1]),
        get(KEYS[2]),
        get(KEYS[3]),
        get(KEYS[4]),
    ) {
        (Some(endpoint), Some(region), Some(bucket), Some(access_key_id), Some(secret)) => {
            Some(S3Env {
                endpoint,
                region,
                bucket,
                access_key_id,
                secret_access_key: secret,
                nodes: None,
            })
        }
        _ => {
            let hint = format!(
                "start Garage with `bash .ci/garage.sh start` (it writes {file}; or set \
                 DOCKYARD_S3_ENV to its env file)"
            );
            if in_ci() {
                panic!("the S3 test cluster is required in CI but {file} is missing or incomplete; .ci/run must {hint}");
            }
            eprintln!("\n!!!!! SKIPPED: no S3 test cluster; {hint} to run this S3 test !!!!!\n");
            None
        }
    }
}
