//! An upstream registry for mirror tests and benchmarks: CNCF Distribution 2.8 (Debian's
//! `docker-registry`) started on a loopback port with a config file written here, its access
//! log kept in a file so a test can count what the upstream was asked for.
//!
//! Distribution cannot listen on port 0, so a free port is picked (bind, read, release) and
//! kept across `stop`/`start`: a mirror configured with the address finds the upstream again
//! after a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) Distribution 2.8 on `127.0.0.1:port`, storing under `dir/data`.
pub struct Distribution {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq)]
pub struct Access {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    pub status: u16,
}

impl Distribution {
    /// A plain (non-proxy) registry storing under `dir`, open to everyone.
    pub fn start(dir: &Path) -> Distribution {
        Distribution::start_with(dir, "")
    }

    /// Like [`Distribution::start`], with `extra` appended to the YAML config (say a
    /// `proxy:` section with `remoteurl:` to run it as a pull-through cache).
    pub fn start_with(dir: &Path, extra: &str) -> Distribution {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::create_dir_all(dir).expect("distribution dir");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{extra}",
                dir.join("data").display()
            ),
        )
        .expect("write distribution config");
        let mut d = Distribution {
            child: None,
            addr,
            dir: dir.to_path_buf(),
            config,
            log: dir.join("access.log"),
        };
        d.resume();
        d
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills the server (the link goes down); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and storage, appending to the same access log.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "distribution is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("access log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.config)
            // The access log (combined log format) goes to stdout.
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every request logged so far.
    pub fn access_log(&self) -> Vec<Access> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// How many `method` requests for exactly `path` (query ignored) the upstream served.
    pub fn requests(&self, method: &str, path: &str) -> usize {
        self.access_log()
            .iter()
            .filter(|a| a.method == method && a.path.split('?').next() == Some(path))
            .count()
    }

    /// How many GETs of the blob `digest` (in any repository) the upstream answered.
    pub fn blob_gets(&self, digest: &str) -> usize {
        let tail = format!("/blobs/{digest}");
        self.access_log()
            .iter()
            .filter(|a| {
                a.method == "GET" && a.path.split('?').next().is_some_and(|p| p.ends_with(&tail))
            })
            .count()
    }

    /// Where Distribution keeps the bytes of blob `digest` (`sha256:…`): a test may overwrite
    /// it to make the upstream serve wrong bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Distribution {
    /// Pushes a blob: POST, then PUT `?digest=` with the body (Distribution 2.8 has no
    /// monolithic POST). Returns its digest.
    pub async fn push_blob(&self, c: &reqwest::Client, repo: &str, bytes: &[u8]) -> String {
        super::push_blob_in_two_steps(c, self.url("").as_str(), repo, bytes).await
    }

    /// Pushes a config, `layers` and an OCI image manifest over them as `repo:tag`; returns
    /// the manifest's bytes and digest.
    pub async fn push_image(
        &self,
        c: &reqwest::Client,
        repo: &str,
        tag: &str,
        layers: &[&[u8]],
    ) -> (Vec<u8>, String) {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "nonce": hex::encode(super::random_bytes(8)),
        }))
        .expect("json");
        self.push_blob(c, repo, &config).await;
        for l in layers {
            self.push_blob(c, repo, l).await;
        }
        let manifest = super::image_manifest(&config, layers);
        let resp = c
            .put(self.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("Content-Type", super::OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(resp.status(), 201, "put manifest at distribution");
        let d = super::sha256(&manifest);
        (manifest, d)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `127.0.0.1 - - [date] "GET /v2/a/blobs/sha256:… HTTP/1.1" 200 123 "" "ua"` → its parts.
fn parse_access_line(line: &str) -> Option<Access> {
    let start = line.find('"')?;
    let rest = &line[start + 1..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split(' ');
    let method = request.next()?.to_string();
    let path = request.next()?.to_string();
    let status = rest[end + 1..].split_whitespace().next()?.parse().ok()?;
    Some(Access {
        method,
        path,
        status,
    })
}

#[test]
fn access_lines_parse() {
    let a = parse_access_line(
        "127.0.0.1 - - [30/Nov/2026:13:00:00 +0000] \"GET /v2/a/b/blobs/sha256:00 HTTP/1.1\" 200 12 \"\" \"dockyard/0.1\"",
    )
    .unwrap();
    assert_eq!(a.method, "GET");
    assert_eq!(a.path, "/v2/a/b/blobs/sha256:00");
    assert_eq!(a.status, 200);
    assert!(parse_access_line("time=\"x\" level=warning msg=\"y\"").is_none());
}
