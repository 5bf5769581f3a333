//! Workload 10 (issue 14): blobs on S3, side by side on the same three-node Garage cluster
//! (`.ci/garage.sh start`): Dockyard with `[storage] backend = "s3"` (redirect on) against
//! Distribution 2.8 with its `s3` driver (regionendpoint to Garage, path style, v4 auth, its
//! own root directory in the bucket; it redirects blob GETs to the store by default too).
//! Each gets its own prefix under `bench/<run>/` in the bucket.
//!
//! Push of one big blob, its pull following the 307 (against Garage's own GET of the same
//! object, the limit: what a client reading the object straight from Garage gets), small
//! images by many clients, HEAD blob and GET manifest at 16 connections, and a GC pass after
//! deleting the small images (Dockyard: `dockyard gc` through the running server; Distribution:
//! `registry garbage-collect`, which wants the registry stopped).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Method;

use crate::client::{drain, path_of, Conn, Result};
use crate::servers::{Kind, Server};

/// The cluster's bucket, from the env file `.ci/garage.sh start` writes.
#[derive(Clone)]
pub struct Garage {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Reads `DOCKYARD_S3_ENV` (default `/tmp/dockyard-garage/env`); `None` when missing.
pub fn garage() -> Option<Garage> {
    let file =
        std::env::var("DOCKYARD_S3_ENV").unwrap_or_else(|_| "/tmp/dockyard-garage/env".to_string());
    let text = std::fs::read_to_string(file).ok()?;
    let get = |k: &str| {
        text.lines()
            .map(|l| l.trim().trim_start_matches("export "))
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some(Garage {
        endpoint: get("DOCKYARD_S3_ENDPOINT")?,
        region: get("DOCKYARD_S3_REGION")?,
        bucket: get("DOCKYARD_S3_BUCKET")?,
        access_key_id: get("DOCKYARD_S3_ACCESS_KEY_ID")?,
        secret_access_key: get("DOCKYARD_S3_SECRET_ACCESS_KEY")?,
    })
}

/// A prefix no earlier run used.
pub fn run_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench/{}-{nanos}", std::process::id())
}

/// Dockyard on the bucket: redirect on, snapshots every 5 s, and a GC whose grace (6 s, which
/// must exceed the snapshot interval) the GC workload waits out. The secret key file goes
/// into `secrets`, which must outlive the server (a restart reads it again). `kind` is
/// Dockyard or the baseline build, each on a prefix of its own.
pub async fn start_dockyard(
    kind: Kind,
    bin: &Path,
    g: &Garage,
    prefix: &str,
    secrets: &Path,
) -> Result<Server> {
    let secret = secrets.join("s3-secret");
    std::fs::write(&secret, &g.secret_access_key)?;
    let text = format!(
        "[log]\nlevel = \"warn\"\n\n[storage]\nbackend = \"s3\"\n\n[storage.s3]\n\
         endpoint = \"{}\"\nregion = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}/{}\"\n\
         access_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n\
         path_style = true\nredirect = true\nsnapshot_interval = \"5s\"\n\n\
         [gc]\ninterval = \"off\"\ngrace = \"6s\"\npush_window = \"1s\"\n",
        g.endpoint,
        g.region,
        g.bucket,
        kind.name().to_lowercase(),
        g.access_key_id,
        secret.display()
    );
    Server::start_with(kind, bin, Some(text)).await
}

/// Distribution 2.8 on the bucket: its `s3` driver with the region endpoint set to Garage
/// (path-style requests), v4 signatures, plain HTTP, its own root directory.
pub async fn start_distribution(bin: &Path, g: &Garage, prefix: &str) -> Result<Server> {
    let text = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  accesslog:\n    disabled: true\n\
         storage:\n  s3:\n    accesskey: {}\n    secretkey: {}\n    region: {}\n    \
         regionendpoint: {}\n    forcepathstyle: true\n    bucket: {}\n    \
         rootdirectory: /{prefix}/distribution\n    secure: false\n    v4auth: true\n  \
         delete:\n    enabled: true\n  cache:\n    blobdescriptor: inmemory\n\
         http:\n  addr: {{ADDR}}\n",
        g.access_key_id, g.secret_access_key, g.region, g.endpoint, g.bucket
    );
    Server::start_with(Kind::Distribution, bin, Some(text)).await
}

/// `http://host:port/path?query` → (address, path and query).
fn split_url(url: &str) -> Result<(SocketAddr, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not a plain http URL: {url}"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| format!("{host} (of {url}): {e}"))?;
    Ok((addr, path_of(url)))
}

/// GETs a blob as a client does: the registry's answer, and when it is a redirect, the
/// object store's. Returns the time to the last byte and the redirect's target (if any).
pub async fn pull_following(
    addr: SocketAddr,
    repo: &str,
    digest: &str,
    len: u64,
) -> Result<(Duration, Option<String>)> {
    let t = Instant::now();
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(300);
    let resp = c
        .send(
            Method::GET,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            Bytes::new(),
        )
        .await?;
    let status = resp.status().as_u16();
    let (body, target) = match status {
        200 => (resp.into_body(), None),
        307 | 302 | 301 | 303 | 308 => {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or("redirect without a Location")?
                .to_string();
            drop(resp);
            let (store, path) = split_url(&location)?;
            let mut s = Conn::connect(store).await?;
            s.timeout = Duration::from_secs(300);
            let r = s.send(Method::GET, path, &[], Bytes::new()).await?;
            if r.status().as_u16() != 200 {
                return Err(format!("GET {location}: HTTP {}", r.status()).into());
            }
            let n = drain(r.into_body(), s.timeout).await?;
            if n != len {
                return Err(format!("redirected GET: {n} bytes, wanted {len}").into());
            }
            return Ok((t.elapsed(), Some(location)));
        }
        other => return Err(format!("GET blob: HTTP {other}").into()),
    };
    let n = drain(body, c.timeout).await?;
    if n != len {
        return Err(format!("GET blob: {n} bytes, wanted {len}").into());
    }
    Ok((t.elapsed(), target))
}

/// Garage's own GET of an object (a presigned URL): the limit of a redirected pull.
pub async fn store_get(url: &str, len: u64) -> Result<Duration> {
    let (addr, path) = split_url(url)?;
    let t = Instant::now();
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(300);
    let r = c.send(Method::GET, path, &[], Bytes::new()).await?;
    if r.status().as_u16() != 200 {
        return Err(format!("GET from the store: HTTP {}", r.status()).into());
    }
    let n = drain(r.into_body(), c.timeout).await?;
    if n != len {
        return Err(format!("GET from the store: {n} bytes, wanted {len}").into());
    }
    Ok(t.elapsed())
}

/// Deletes each (repo, manifest bytes) by digest, as `DELETE /v2/<repo>/manifests/<digest>`.
pub async fn delete_manifests(addr: SocketAddr, manifests: &[(String, Bytes)]) -> Result<()> {
    let mut c = Conn::connect(addr).await?;
    for (repo, m) in manifests {
        let d = crate::workloads::sha256(m);
        c.call(
            Method::DELETE,
            &format!("/v2/{repo}/manifests/{d}"),
            &[],
            Bytes::new(),
        )
        .await?
        .expect(202, "DELETE manifest")?;
    }
    Ok(())
}

/// Deletes a blob from a repository (`DELETE /v2/<repo>/blobs/<digest>`).
pub async fn delete_blob(addr: SocketAddr, repo: &str, digest: &str) -> Result<()> {
    let mut c = Conn::connect(addr).await?;
    c.call(
        Method::DELETE,
        &format!("/v2/{repo}/blobs/{digest}"),
        &[],
        Bytes::new(),
    )
    .await?
    .expect(202, "DELETE blob")?;
    Ok(())
}

/// One GC pass: Dockyard's through the running server (`dockyard gc`), Distribution's with
/// `registry garbage-collect` on its config, after stopping it (it must not serve meanwhile).
/// Returns the seconds it took and its last output line.
pub async fn gc_pass(s: &mut Server, bin: &Path) -> Result<(f64, String)> {
    let mut cmd = Command::new(bin);
    match s.kind {
        Kind::Distribution => {
            s.stop().await?;
            cmd.arg("garbage-collect")
                .arg(s.config_path())
                .env_remove("AWS_CA_BUNDLE");
        }
        _ => {
            cmd.arg("gc")
                .arg("--root")
                .arg(s.root())
                .arg("--config")
                .arg(s.config_path());
        }
    }
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let took = t.elapsed().as_secs_f64();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("gc failed ({}): {text}", out.status).into());
    }
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    Ok((took, last.chars().take(200).collect()))
}

/// HEAD of a blob as a client does it: the registry's answer, and when that is a redirect
/// (Distribution's s3 driver redirects HEAD too), the store's HEAD of the target. `store` is
/// the connection kept to the store across calls. Returns the size the answer names.
async fn head_following(
    c: &mut Conn,
    store: &mut Option<Conn>,
    repo: &str,
    digest: &str,
) -> Result<u64> {
    let r = c
        .call(
            Method::HEAD,
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            Bytes::new(),
        )
        .await?;
    let r = match r.status.as_u16() {
        200 => r,
        307 | 302 => {
            let location = r
                .header("location")
                .ok_or("redirect without a Location")?
                .to_string();
            let (addr, path) = split_url(&location)?;
            if store.is_none() {
                *store = Some(Conn::connect(addr).await?);
            }
            let s = store.as_mut().expect("just set");
            s.call(Method::HEAD, path, &[], Bytes::new())
                .await?
                .expect(200, "HEAD at the store")?
        }
        other => return Err(format!("HEAD blob: HTTP {other}").into()),
    };
    r.header("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "HEAD without a Content-Length".into())
}

/// Pushes one big blob (POST, then one PUT with the body) and checks with a HEAD, followed
/// where the registry redirects it, that it is served at its size. Times the POST to the 201.
pub async fn push_big(addr: SocketAddr, repo: &str, blob: Bytes, digest: &str) -> Result<Duration> {
    let mut c = Conn::connect(addr).await?;
    c.timeout = Duration::from_secs(600);
    let size = blob.len() as u64;
    let t = Instant::now();
    let loc = c
        .call(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await?
        .expect(202, "POST upload")?
        .location()?;
    c.call(
        Method::PUT,
        &crate::client::with_query(&loc, "digest", digest),
        &[("content-type", "application/octet-stream")],
        blob,
    )
    .await?
    .expect(201, "PUT upload")?;
    let took = t.elapsed();
    let got = head_following(&mut c, &mut None, repo, digest).await?;
    if got != size {
        return Err(format!("HEAD after push: {got} bytes, pushed {size}").into());
    }
    Ok(took)
}

/// `conns` connections sending HEADs of the hot image's layer back to back for `duration`
/// (each following a redirect on a connection of its own to the store); answers per second.
pub async fn hammer_head(
    addr: SocketAddr,
    hot: std::sync::Arc<crate::workloads::Hot>,
    conns: usize,
    duration: Duration,
) -> crate::workloads::Load {
    use std::sync::{Arc, Mutex};
    let first_error = Arc::new(Mutex::new(None::<String>));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (hot, first_error) = (hot.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            let mut c = match Conn::connect(addr).await {
                Ok(c) => c,
                Err(e) => {
                    first_error
                        .lock()
                        .expect("lock")
                        .get_or_insert(e.to_string());
                    return (0, 1);
                }
            };
            let mut store = None;
            while Instant::now() < deadline {
                match head_following(&mut c, &mut store, &hot.repo, &hot.layer).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error
                            .lock()
                            .expect("lock")
                            .get_or_insert(e.to_string());
                        store = None;
                        if c.reconnect().await.is_err() {
                            break;
                        }
                    }
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap_or((0, 1));
        ok += o;
        errors += e;
    }
    let elapsed = start.elapsed();
    let first_error = first_error.lock().expect("lock").take();
    crate::workloads::Load {
        ok,
        errors,
        first_error,
        rps: ok as f64 / elapsed.as_secs_f64(),
        p50_us: 0.0,
        p99_us: 0.0,
    }
}

/// Garage's own PUT of `blob` by the same library Dockyard uses (object_store, 8 MiB parts,
/// four in flight, as `store::s3` uploads): the limit of a push, which no registry in front
/// of this cluster can beat. The object is deleted afterwards.
pub async fn store_put(g: &Garage, prefix: &str, blob: Bytes) -> Result<Duration> {
    use object_store::{ObjectStoreExt, WriteMultipart};
    // reqwest is built without a default TLS provider (see src/http_client.rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&g.endpoint)
        .with_allow_http(g.endpoint.starts_with("http://"))
        .with_region(&g.region)
        .with_bucket_name(&g.bucket)
        .with_access_key_id(&g.access_key_id)
        .with_secret_access_key(&g.secret_access_key)
        .with_virtual_hosted_style_request(false)
        .build()?;
    let key = object_store::path::Path::from(format!("{prefix}/limit/put"));
    let t = Instant::now();
    let mut w = WriteMultipart::new_with_chunk_size(s3.put_multipart(&key).await?, 8 << 20);
    for part in blob.chunks(8 << 20) {
        w.wait_for_capacity(4).await?;
        w.write(part);
    }
    w.finish().await?;
    let elapsed = t.elapsed();
    s3.delete(&key).await?;
    Ok(elapsed)
}
