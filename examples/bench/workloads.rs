//! The workloads of the benchmark and the physical limits they are held against. Each
//! function drives one registry at one address; `main` runs it against both and tabulates.
//! A request counts only when its status and body are what the protocol promises; anything
//! else is an error, reported and never counted as done.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;
use sha2::Digest as _;

use crate::client::{drain, with_query, Conn, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCTETS: (&str, &str) = ("content-type", "application/octet-stream");
/// What a pulling client accepts; Distribution refuses an OCI manifest to a client that
/// does not list its media type.
const ACCEPT: (&str, &str) = (
    "accept",
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json",
);

/// Fast, reproducible filler (xorshift64): random enough that nothing compresses or
/// deduplicates, cheap enough that generating 1 GiB takes a fraction of a second.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for c in v.chunks_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        c.copy_from_slice(&s.to_le_bytes()[..c.len()]);
    }
    v
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// Physical limits

/// sha256 over `bytes` on this thread: every pushed byte must be hashed, so a push can go no
/// faster than one core hashes.
pub fn hash_rate(bytes: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let d = sha256(bytes);
    (d, t.elapsed())
}

/// Copies `bytes` from one file to another in 1 MiB reads and writes and fsyncs the copy:
/// what storing a blob costs with no network and no hashing. The source is written and
/// synced first, untimed, so it is read from the page cache as a pushed body is from memory.
pub fn copy_with_fsync(bytes: &[u8], dir: &Path) -> Result<Duration> {
    use std::io::{Read, Write};
    let src = dir.join("limit-src");
    let dst = dir.join("limit-dst");
    let mut f = std::fs::File::create(&src)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    let t = Instant::now();
    let mut input = std::fs::File::open(&src)?;
    let mut output = std::fs::File::create(&dst)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
    }
    output.sync_all()?;
    let took = t.elapsed();
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    Ok(took)
}

/// Sends `bytes` over one loopback TCP connection from memory to a reader that discards
/// them: the ceiling for serving a blob to one client.
pub async fn loopback(bytes: Bytes) -> Result<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let len = bytes.len();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < len {
            let r = s.read(&mut buf).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Ok::<_, std::io::Error>(n)
    });
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    for chunk in bytes.chunks(1 << 20) {
        s.write_all(chunk).await?;
    }
    s.shutdown().await?;
    let got = reader.await??;
    let took = t.elapsed();
    if got != len {
        return Err(format!("loopback moved {got} of {len} bytes").into());
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// 1. Push one large blob, 2. pull it

/// Pushes `blob` as POST then either one PUT with the whole body (`chunk` = None) or PATCHes
/// of `chunk` bytes and an empty PUT. Returns the time from the POST to the 201, after
/// checking with a HEAD that the registry serves the blob at its size.
pub async fn push_blob(
    addr: SocketAddr,
    repo: &str,
    blob: Bytes,
    digest: &str,
    chunk: Option<usize>,
) -> Result<Duration> {
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(300);
    let size = blob.len();
    let t = Instant::now();
    let start = c
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await?
        .expect(202, "POST upload")?;
    let mut loc = start.location()?;
    let last = match chunk {
        None => blob,
        Some(n) => {
            let mut off = 0;
            while off < size {
                let end = (off + n).min(size);
                let range = format!("{off}-{}", end - 1);
                let r = c
                    .call(
                        Method::PATCH,
                        &loc,
                        &[OCTETS, ("content-range", &range)],
                        blob.slice(off..end),
                    )
                    .await?
                    .expect(202, "PATCH chunk")?;
                loc = r.location()?;
                off = end;
            }
            Bytes::new()
        }
    };
    c.call(
        Method::PUT,
        &with_query(&loc, "digest", digest),
        &[OCTETS],
        last,
    )
    .await?
    .expect(201, "PUT upload")?;
    let took = t.elapsed();
    let head = c
        .call(
            Method::HEAD,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            Bytes::new(),
        )
        .await?
        .expect(200, "HEAD pushed blob")?;
    if head.header("content-length") != Some(size.to_string().as_str()) {
        return Err(format!(
            "HEAD after push: content-length {:?}, pushed {size}",
            head.header("content-length")
        )
        .into());
    }
    Ok(took)
}

/// GETs a blob (or the `range` of it) and reads the body to its end. With `verify`, the
/// body is also hashed (untimed use only: hashing on the client would be the bottleneck).
pub async fn pull_blob(
    addr: SocketAddr,
    repo: &str,
    digest: &str,
    range: Option<(u64, u64)>,
    expect_len: u64,
    verify: Option<&[u8]>,
) -> Result<Duration> {
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(300);
    let path = format!("/v2/{repo}/blobs/{digest}");
    let range_h = range.map(|(a, b)| format!("bytes={a}-{b}"));
    let mut headers = vec![];
    if let Some(r) = &range_h {
        headers.push(("range", r.as_str()));
    }
    let t = Instant::now();
    if let Some(want) = verify {
        let r = c.call(Method::GET, &path, &headers, Bytes::new()).await?;
        let r = r.expect(if range.is_some() { 206 } else { 200 }, "GET blob")?;
        if r.body.as_ref() != want {
            return Err("pulled bytes differ from the pushed ones".into());
        }
        return Ok(t.elapsed());
    }
    let resp = c.send(Method::GET, &path, &headers, Bytes::new()).await?;
    let want = if range.is_some() { 206 } else { 200 };
    if resp.status().as_u16() != want {
        return Err(format!("GET blob: HTTP {} (wanted {want})", resp.status()).into());
    }
    let n = drain(resp.into_body(), c.timeout).await?;
    let took = t.elapsed();
    if n != expect_len {
        return Err(format!("GET blob: {n} bytes, wanted {expect_len}").into());
    }
    Ok(took)
}

// ---------------------------------------------------------------------------------------
// 3. Many small images

pub struct Image {
    pub repo: String,
    pub tag: String,
    pub blobs: Vec<(String, Bytes)>,
    pub manifest: Bytes,
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

fn manifest(config: (&str, usize), layers: &[(String, usize)]) -> Bytes {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config.0, config.1),
        "layers": layers.iter().map(|(d, n)| descriptor(OCI_LAYER, d, *n)).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("json").into()
}

/// `n` images of three random layers of 1 to `layer_max` bytes, a config and a manifest,
/// spread over 16 repositories.
pub fn make_images(n: usize, layer_max: usize, seed: u64) -> Vec<Image> {
    (0..n)
        .map(|i| {
            let s = seed ^ ((i as u64) << 20);
            let sizes = random_bytes(24, s);
            let mut blobs = Vec::new();
            let mut layers = Vec::new();
            for k in 0..3 {
                let raw = u64::from_le_bytes(sizes[k * 8..k * 8 + 8].try_into().expect("8"));
                let len =
                    1024.min(layer_max) + (raw as usize) % (layer_max - 1024.min(layer_max) + 1);
                let bytes = Bytes::from(random_bytes(len, s + k as u64 + 1));
                let d = sha256(&bytes);
                layers.push((d.clone(), len));
                blobs.push((d, bytes));
            }
            let config = Bytes::from(
                serde_json::to_vec(&serde_json::json!({
                    "architecture": "amd64", "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": []},
                    "nonce": format!("{s:x}"),
                }))
                .expect("json"),
            );
            let dc = sha256(&config);
            let manifest = manifest((&dc, config.len()), &layers);
            blobs.push((dc, config));
            Image {
                repo: format!("small/r{:02}", i % 16),
                tag: format!("i{i}"),
                blobs,
                manifest,
            }
        })
        .collect()
}

/// The small-blob push real clients do: POST for a session, PUT the bytes with `?digest=`.
async fn push_small(c: &mut Conn, repo: &str, digest: &str, bytes: Bytes) -> Result<()> {
    let r = c
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await?
        .expect(202, "POST upload")?;
    let loc = r.location()?;
    c.call(
        Method::PUT,
        &with_query(&loc, "digest", digest),
        &[OCTETS],
        bytes,
    )
    .await?
    .expect(201, "PUT blob")?;
    Ok(())
}

async fn put_manifest(c: &mut Conn, repo: &str, reference: &str, body: Bytes) -> Result<()> {
    c.call(
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("content-type", OCI_MANIFEST)],
        body,
    )
    .await?
    .expect(201, "PUT manifest")?;
    Ok(())
}

pub async fn push_image(c: &mut Conn, img: &Image) -> Result<()> {
    for (d, b) in &img.blobs {
        push_small(c, &img.repo, d, b.clone()).await?;
    }
    put_manifest(c, &img.repo, &img.tag, img.manifest.clone()).await
}

/// What a batch of concurrent work achieved: successes, failures (with the first failure's
/// message) and the wall time.
#[derive(Default)]
pub struct Batch {
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Runs `job(i)` for i in 0..n on `clients` connections, each taking the next index.
async fn run_batch<F, Fut>(addr: SocketAddr, n: usize, clients: usize, job: F) -> Batch
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (Conn, Result<()>)> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let first_error = Arc::new(Mutex::new(None::<String>));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, job, first_error) = (next.clone(), job.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0, 0);
            let mut conn = match Conn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    first_error
                        .lock()
                        .expect("lock")
                        .get_or_insert(e.to_string());
                    return (0, 1);
                }
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (c, r) = job(conn, i).await;
                conn = c;
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error
                            .lock()
                            .expect("lock")
                            .get_or_insert(e.to_string());
                        if conn.reconnect().await.is_err() {
                            break;
                        }
                    }
                }
            }
            (ok, errors)
        }));
    }
    let mut b = Batch::default();
    for t in tasks {
        let (ok, errors) = t.await.unwrap_or((0, 1));
        b.ok += ok;
        b.errors += errors;
    }
    b.elapsed = t.elapsed();
    b.first_error = first_error.lock().expect("lock").take();
    b
}

pub async fn push_images(addr: SocketAddr, images: Arc<Vec<Image>>, clients: usize) -> Batch {
    run_batch(addr, images.len(), clients, move |mut c, i| {
        let images = images.clone();
        async move {
            let r = push_image(&mut c, &images[i]).await;
            (c, r)
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 4. Small requests under concurrency

/// The image the small-request workload reads: one repository, `tags` tags on one manifest.
pub struct Hot {
    pub repo: String,
    pub manifest_len: usize,
    pub config: (String, usize),
    pub layer: String,
}

pub async fn seed_hot(addr: SocketAddr, tags: usize, seed: u64) -> Result<Hot> {
    let mut c = Conn::connect(addr).await?;
    let img = &make_images(1, 32 * 1024, seed)[0];
    let repo = "hot/app".to_string();
    for (d, b) in &img.blobs {
        push_small(&mut c, &repo, d, b.clone()).await?;
    }
    put_manifest(&mut c, &repo, "latest", img.manifest.clone()).await?;
    for t in 1..tags {
        put_manifest(&mut c, &repo, &format!("v{t}"), img.manifest.clone()).await?;
    }
    let (config, cbytes) = &img.blobs[3];
    Ok(Hot {
        repo,
        manifest_len: img.manifest.len(),
        config: (config.clone(), cbytes.len()),
        layer: img.blobs[0].0.clone(),
    })
}

#[derive(Clone, Copy, Debug)]
pub enum Probe {
    Manifest,
    HeadBlob,
    Tags,
}

impl Probe {
    pub fn all() -> [Probe; 3] {
        [Probe::Manifest, Probe::HeadBlob, Probe::Tags]
    }

    pub fn label(self) -> &'static str {
        match self {
            Probe::Manifest => "GET manifest by tag",
            Probe::HeadBlob => "HEAD blob",
            Probe::Tags => "GET tags list",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Probe::Manifest => "manifest",
            Probe::HeadBlob => "head_blob",
            Probe::Tags => "tags",
        }
    }
}

pub struct Load {
    pub ok: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

async fn probe_once(c: &mut Conn, probe: Probe, hot: &Hot) -> Result<()> {
    match probe {
        Probe::Manifest => {
            let r = c
                .get(&format!("/v2/{}/manifests/latest", hot.repo), &[ACCEPT])
                .await?
                .expect(200, "GET manifest")?;
            if r.body.len() != hot.manifest_len {
                return Err(format!(
                    "manifest of {} bytes, pushed {}",
                    r.body.len(),
                    hot.manifest_len
                )
                .into());
            }
        }
        Probe::HeadBlob => {
            c.call(
                Method::HEAD,
                &format!("/v2/{}/blobs/{}", hot.repo, hot.layer),
                &[],
                Bytes::new(),
            )
            .await?
            .expect(200, "HEAD blob")?;
        }
        Probe::Tags => {
            let r = c
                .get(&format!("/v2/{}/tags/list", hot.repo), &[])
                .await?
                .expect(200, "GET tags list")?;
            if !r.body.starts_with(b"{") {
                return Err("tags list is not JSON".into());
            }
        }
    }
    Ok(())
}

/// `conns` connections each sending `probe` back to back for `duration`.
pub async fn hammer(
    addr: SocketAddr,
    probe: Probe,
    hot: Arc<Hot>,
    conns: usize,
    duration: Duration,
) -> Load {
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut connected = Vec::new();
    let mut errors = 0;
    for _ in 0..conns {
        match Conn::connect(addr).await {
            Ok(mut c) => {
                c.timeout = Duration::from_secs(10);
                connected.push(c)
            }
            Err(e) => {
                errors += 1;
                first_error
                    .lock()
                    .expect("lock")
                    .get_or_insert(e.to_string());
            }
        }
    }
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = connected
        .into_iter()
        .map(|mut c| {
            let (hot, first_error) = (hot.clone(), first_error.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut errors = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    match probe_once(&mut c, probe, &hot).await {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u32),
                        Err(e) => {
                            errors += 1;
                            first_error
                                .lock()
                                .expect("lock")
                                .get_or_insert(e.to_string());
                            if c.reconnect().await.is_err() {
                                break;
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = start.elapsed();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[((lat.len() - 1) as f64 * p).round() as usize] as f64
    };
    let first_error = first_error.lock().expect("lock").take();
    Load {
        ok: lat.len(),
        errors,
        first_error,
        rps: lat.len() as f64 / secs(elapsed),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

// ---------------------------------------------------------------------------------------
// 5. The catalog of many repositories

/// Creates `n` repositories `cat/rNNNNN`, each holding one manifest over the hot image's
/// config: a cross-repository mount and a manifest PUT per repository.
pub async fn seed_repos(addr: SocketAddr, hot: Arc<Hot>, n: usize, clients: usize) -> Batch {
    let body = manifest((&hot.config.0, hot.config.1), &[]);
    run_batch(addr, n, clients, move |mut c, i| {
        let (hot, body) = (hot.clone(), body.clone());
        async move {
            let r = async {
                let repo = format!("cat/r{i:05}");
                c.call(
                    Method::POST,
                    &format!(
                        "/v2/{repo}/blobs/uploads/?mount={}&from={}",
                        hot.config.0, hot.repo
                    ),
                    &[],
                    Bytes::new(),
                )
                .await?
                .expect(201, "mount")?;
                put_manifest(&mut c, &repo, "v1", body).await
            }
            .await;
            (c, r)
        }
    })
    .await
}

/// Lists the whole catalog, following `Link` headers for as long as the registry sends them
/// (Distribution pages by 100 even when no `n` is given). Returns the time, the number of
/// repositories and the number of requests.
pub async fn list_catalog(
    addr: SocketAddr,
    n: Option<usize>,
    max_pages: usize,
) -> Result<(Duration, usize, usize)> {
    let mut c = Conn::connect(addr).await?;
    let mut next = Some(match n {
        Some(n) => format!("/v2/_catalog?n={n}"),
        None => "/v2/_catalog".to_string(),
    });
    let (mut count, mut requests) = (0, 0);
    let t = Instant::now();
    while let Some(path) = next.take() {
        requests += 1;
        if requests > max_pages {
            return Err(format!("catalog still paging after {max_pages} requests").into());
        }
        let r = c.get(&path, &[]).await?.expect(200, "GET _catalog")?;
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        count += v["repositories"]
            .as_array()
            .ok_or("catalog without repositories")?
            .len();
        next = r.header("link").and_then(link_next).map(str::to_string);
    }
    Ok((t.elapsed(), count, requests))
}

/// `</v2/_catalog?last=x&n=100>; rel="next"` → `/v2/_catalog?last=x&n=100`.
fn link_next(h: &str) -> Option<&str> {
    if !h.contains("rel=\"next\"") {
        return None;
    }
    let a = h.find('<')? + 1;
    let b = h[a..].find('>')? + a;
    Some(crate::client::path_of(&h[a..b]))
}

/// p50 and p99 (ms) of `n` sequential GETs of a UI page on one connection (Dockyard only:
/// Distribution has no UI). Each answer must be a 200 holding `must_contain`.
pub async fn page_latency(
    addr: SocketAddr,
    path: &str,
    n: usize,
    must_contain: &str,
) -> Result<(f64, f64)> {
    let mut c = Conn::connect(addr).await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c.get(path, &[]).await?.expect(200, path)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if !String::from_utf8_lossy(&r.body).contains(must_contain) {
            return Err(format!("{path} does not show {must_contain:?}").into());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}
