//! Workload 9 (issue 10): the pull-through mirror against CNCF Distribution in proxy mode,
//! both in front of the same upstream, a third registry (Distribution 2.8 with filesystem
//! storage) on loopback. Pulls are what a client does: the manifest by tag, then the config
//! and every layer at once, each on its own connection, bodies read to the end and counted.
//!
//! - cold: the first pull of an image through the mirror, against the same pull straight from
//!   the upstream (the mirror fetches, stores and hashes while it streams: target at most 10%
//!   slower), and through Distribution's proxy;
//! - warm: the same image again, now cached, through the mirror against the proxy;
//! - herd: 50 clients pulling one image neither has cached, at once: wall time, the bytes the
//!   upstream sent (counted in its access log; the target is the image once) and the peak RSS
//!   of each (VmHWM, reset before).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::client::{drain, Conn, Result};
use crate::workloads::{push_image, random_bytes, secs, sha256, Image, OCI_MANIFEST};

const ACCEPT: (&str, &str) = (
    "accept",
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json",
);

/// What one run measured. Times in seconds; `None` where Distribution was not there to
/// act as the proxy.
pub struct Figures {
    pub image_bytes: u64,
    pub cold_mirror: Vec<Result<f64>>,
    pub cold_direct: Vec<Result<f64>>,
    pub cold_proxy: Vec<Result<f64>>,
    pub warm_mirror: Vec<Result<f64>>,
    pub warm_proxy: Vec<Result<f64>>,
    pub herd: [Herd; 2],
}

/// 50 concurrent cold pulls through one registry (index 0: the mirror, 1: the proxy).
pub struct Herd {
    pub wall: Result<f64>,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Blob bytes the upstream sent while the herd ran.
    pub upstream_bytes: Result<u64>,
    pub peak_rss_mib: Result<f64>,
    /// The largest anonymous part of the resident set seen by sampling `RssAnon` every
    /// 10 ms: the peak RSS also counts the file pages a server maps to send blobs, which
    /// the kernel can drop at will.
    pub peak_anon_mib: Result<f64>,
}

/// A registry process on a loopback port, killed on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command, addr: SocketAddr, log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let p = Proc { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "nothing listening on {addr} after 30 s:\n{}",
                    std::fs::read_to_string(&p.log).unwrap_or_default()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5")?;
        Ok(())
    }

    fn peak_rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .ok_or("no VmHWM")?
            .parse()?;
        Ok(kib / 1024.0)
    }
}

/// `RssAnon` of a process, in MiB.
fn rss_anon_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("no RssAnon")?
        .parse()?;
    Ok(kib / 1024.0)
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Distribution 2.8 with filesystem storage; with `proxy`, a pull-through cache of it.
/// The upstream keeps its access log (on stdout, in the combined log format) to count
/// the bytes it sends.
fn distribution(dist: &Path, dir: &Path, name: &str, proxy: Option<SocketAddr>) -> Result<Proc> {
    let addr = free_addr()?;
    let root = dir.join(format!("{name}-data"));
    let access = if proxy.is_none() { "false" } else { "true" };
    let mut yml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: {access}\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
         cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: {addr}\n",
        root.display()
    );
    if let Some(up) = proxy {
        yml.push_str(&format!("proxy:\n  remoteurl: http://{up}\n"));
    }
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(&config, yml)?;
    let mut cmd = Command::new(dist);
    cmd.arg("serve").arg(&config);
    Proc::spawn(cmd, addr, dir.join(format!("{name}.log")))
}

/// Dockyard mirroring `upstream` under the prefix `up`.
fn dockyard(bin: &Path, dir: &Path, upstream: SocketAddr) -> Result<Proc> {
    let addr = free_addr()?;
    let config = dir.join("mirror.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"warn\"\n\n[[mirror]]\nprefix = \"up\"\nupstream = \"http://{upstream}\"\n"
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--root")
        .arg(dir.join("mirror-root"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn");
    Proc::spawn(cmd, addr, dir.join("mirror.log"))
}

/// One image of three random layers of the given sizes (and a config), in `repo:latest`.
fn big_image(repo: &str, layers: [usize; 3], seed: u64) -> Image {
    let mut blobs = Vec::new();
    let mut descs = Vec::new();
    for (k, len) in layers.into_iter().enumerate() {
        let bytes = Bytes::from(random_bytes(len, seed * 16 + k as u64 + 1));
        let d = sha256(&bytes);
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len,
        }));
        blobs.push((d, bytes));
    }
    let config = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []}, "nonce": seed,
        }))
        .expect("json"),
    );
    let dc = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": dc, "size": config.len()},
        "layers": descs,
    }))
    .expect("json");
    blobs.push((dc, config));
    Image {
        repo: repo.to_string(),
        tag: "latest".to_string(),
        blobs,
        manifest: manifest.into(),
    }
}

/// A client's pull of `repo:latest` from `addr`: the manifest, then every blob at once on
/// connections of their own. Returns the wall time after checking every length.
async fn pull(addr: SocketAddr, repo: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(600);
    let m = c
        .get(&format!("/v2/{repo}/manifests/latest"), &[ACCEPT])
        .await?
        .expect(200, "GET manifest")?;
    let m: serde_json::Value = serde_json::from_slice(&m.body)?;
    let mut blobs = vec![m["config"].clone()];
    blobs.extend(m["layers"].as_array().ok_or("no layers")?.iter().cloned());
    let mut tasks = Vec::new();
    for b in blobs {
        let (digest, size) = (
            b["digest"].as_str().ok_or("no digest")?.to_string(),
            b["size"].as_u64().ok_or("no size")?,
        );
        let repo = repo.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(addr).await?;
            c.timeout = Duration::from_secs(600);
            let resp = c
                .send(
                    Method::GET,
                    &format!("/v2/{repo}/blobs/{digest}"),
                    &[],
                    Bytes::new(),
                )
                .await?;
            if resp.status() != 200 {
                return Err(format!("GET blob {digest}: HTTP {}", resp.status()).into());
            }
            let n = drain(resp.into_body(), c.timeout).await?;
            if n != size {
                return Err(format!("GET blob {digest}: {n} bytes of {size}").into());
            }
            Ok::<_, crate::client::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(t.elapsed())
}

/// Bytes of the 200/206 answers to blob GETs in a combined-format access log, from byte
/// `from` of the file on.
fn blob_bytes_sent(log: &Path, from: u64) -> Result<u64> {
    let text = std::fs::read(log)?;
    let text = String::from_utf8_lossy(&text[from as usize..]);
    let mut sum = 0;
    for line in text.lines() {
        // ... "GET /v2/<name>/blobs/sha256:… HTTP/1.1" 200 12345 "referer" "agent"
        let Some((request, rest)) = line.split_once("\" ") else {
            continue;
        };
        if !(request.contains("\"GET /v2/") && request.contains("/blobs/sha256:")) {
            continue;
        }
        let mut f = rest.split_whitespace();
        let (status, size) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if status == "200" || status == "206" {
            sum += size.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(sum)
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

fn as_secs(r: Result<Duration>) -> Result<f64> {
    r.map(secs)
}

async fn herd(through: &Proc, repo: &str, clients: usize, upstream: &Proc) -> Herd {
    let _ = through.reset_peak();
    let from = log_len(&upstream.log);
    let pid = through.pid();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak: Result<f64> = Err("no sample".into());
        loop {
            if let Ok(v) = rss_anon_mib(pid) {
                peak = Ok(peak.map_or(v, |p| p.max(v)));
            }
            if *stopped.borrow() {
                return peak;
            }
            let _ = tokio::time::timeout(Duration::from_millis(10), stopped.changed()).await;
        }
    });
    let t = Instant::now();
    let repo: Arc<str> = repo.into();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, repo) = (through.addr, repo.clone());
            tokio::spawn(async move { pull(addr, &repo).await })
        })
        .collect();
    let (mut errors, mut first_error) = (0, None);
    for task in tasks {
        let r = match task.await {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(e.to_string().into()),
        };
        if let Err(e) = r {
            errors += 1;
            first_error.get_or_insert(e.to_string());
        }
    }
    let wall = t.elapsed();
    let _ = stop.send(true);
    let peak_anon_mib = match sampler.await {
        Ok(r) => r,
        Err(e) => Err(e.to_string().into()),
    };
    // The upstream writes an access line once it has sent a response: give the last ones a
    // moment to land (untimed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    Herd {
        wall: if errors < clients {
            Ok(secs(wall))
        } else {
            Err("every pull failed".into())
        },
        errors,
        first_error,
        upstream_bytes: blob_bytes_sent(&upstream.log, from),
        peak_rss_mib: through.peak_rss_mib(),
        peak_anon_mib,
    }
}

/// Runs the whole workload in a temporary directory: `layers` are the image's three layer
/// sizes, `reps` how many cold and warm pulls each side gets (the best counts).
pub async fn run(
    bin: &Path,
    dist: &Path,
    layers: [usize; 3],
    reps: usize,
    clients: usize,
) -> Result<Figures> {
    let w = tempfile::Builder::new().prefix("bench-mirror-").tempdir()?;
    let upstream = distribution(dist, w.path(), "upstream", None)?;
    // A Dockyard that cannot mirror (an older build, a bad config) fails its cells only:
    // the direct and proxy figures are still measured.
    let mirror = dockyard(bin, w.path(), upstream.addr).map_err(|e| e.to_string());
    let mirror_addr = mirror.as_ref().map(|m| m.addr).map_err(|e| e.clone());
    let via_mirror = |repo: String| {
        let addr = mirror_addr.clone();
        async move {
            match addr {
                Ok(a) => as_secs(pull(a, &format!("up/{repo}")).await),
                Err(e) => Err(format!("the mirror did not start: {e}").into()),
            }
        }
    };
    let proxy = distribution(dist, w.path(), "proxy", Some(upstream.addr))?;

    // One image per cold repetition (cold only once per image), one for the herd.
    let mut images: Vec<Image> = (0..reps)
        .map(|i| big_image(&format!("bench/cold{i}"), layers, 0x5EED + i as u64))
        .collect();
    images.push(big_image("bench/herd", layers, 0x4E2D));
    let image_bytes: u64 = images[0].blobs.iter().map(|(_, b)| b.len() as u64).sum();
    {
        let mut c = Conn::connect(upstream.addr).await?;
        c.timeout = Duration::from_secs(600);
        for img in &images {
            push_image(&mut c, img).await?;
        }
    }
    // The layers are pushed; the generator's copies are not needed any more.
    let names: Vec<String> = images.iter().map(|i| i.repo.clone()).collect();
    drop(images);

    let mut f = Figures {
        image_bytes,
        cold_mirror: vec![],
        cold_direct: vec![],
        cold_proxy: vec![],
        warm_mirror: vec![],
        warm_proxy: vec![],
        herd: [empty_herd(), empty_herd()],
    };
    for (i, repo) in names[..reps].iter().enumerate() {
        // Alternate who goes first, as the other workloads do.
        if i % 2 == 0 {
            f.cold_direct.push(as_secs(pull(upstream.addr, repo).await));
            f.cold_mirror.push(via_mirror(repo.clone()).await);
            f.cold_proxy.push(as_secs(pull(proxy.addr, repo).await));
        } else {
            f.cold_proxy.push(as_secs(pull(proxy.addr, repo).await));
            f.cold_mirror.push(via_mirror(repo.clone()).await);
            f.cold_direct.push(as_secs(pull(upstream.addr, repo).await));
        }
    }
    let warm = &names[0];
    for i in 0..reps.max(3) {
        if i % 2 == 0 {
            f.warm_mirror.push(via_mirror(warm.clone()).await);
            f.warm_proxy.push(as_secs(pull(proxy.addr, warm).await));
        } else {
            f.warm_proxy.push(as_secs(pull(proxy.addr, warm).await));
            f.warm_mirror.push(via_mirror(warm.clone()).await);
        }
    }
    let h = &names[reps];
    f.herd[0] = match &mirror {
        Ok(m) => herd(m, &format!("up/{h}"), clients, &upstream).await,
        Err(e) => Herd {
            wall: Err(format!("the mirror did not start: {e}").into()),
            ..empty_herd()
        },
    };
    f.herd[1] = herd(&proxy, h, clients, &upstream).await;
    Ok(f)
}

fn empty_herd() -> Herd {
    Herd {
        wall: Err("not run".into()),
        errors: 0,
        first_error: None,
        upstream_bytes: Err("not run".into()),
        peak_rss_mib: Err("not run".into()),
        peak_anon_mib: Err("not run".into()),
    }
}
