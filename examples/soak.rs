//! A soak test against hostile company (issue 15), not part of `cargo test`: normal clients
//! push, pull and delete images while a GC pass runs every few seconds and 200 slow clients
//! stay attached (drip-feeding uploads, stalled uploads that reconnect when cut, idle
//! connections that reconnect when closed). At the end: fsck must be clean and the p99
//! latency of the normal clients' requests under 100 ms.
//!
//! ```text
//! cargo run --release --example soak                      # 10 minutes, 200 slow clients
//! cargo run --release --example soak -- 60s 200           # duration, slow clients
//! ```
//!
//! The registry runs in-process on its own runtime, so the load generator's threads do not
//! share its workers or its blocking pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const NORMAL_CLIENTS: usize = 4;

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Latencies of the normal clients' requests, and failures.
#[derive(Default)]
struct Record {
    latencies: Mutex<Vec<Duration>>,
    errors: AtomicU64,
}

impl Record {
    async fn time<T>(&self, f: impl std::future::Future<Output = reqwest::Result<T>>) -> Option<T> {
        let start = Instant::now();
        match f.await {
            Ok(v) => {
                self.latencies.lock().unwrap().push(start.elapsed());
                Some(v)
            }
            Err(e) => {
                eprintln!("request failed: {e}");
                self.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

async fn check(resp: Option<reqwest::Response>, want: u16, what: &str, rec: &Record) {
    if let Some(r) = resp {
        if r.status().as_u16() != want {
            eprintln!(
                "{what}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            rec.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One normal client: push an image (config, two layers, manifest), pull it back, and
/// delete every third one, until `stop`.
async fn normal(base: String, n: usize, rec: Arc<Record>, stop: Arc<AtomicBool>) -> u64 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut rounds = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let repo = format!("soak/c{n}");
        let config = random(512);
        let layers = [random(64 << 10), random(256 << 10)];
        for blob in std::iter::once(&config).chain(layers.iter()) {
            let d = sha256(blob);
            let r = rec
                .time(
                    c.post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                        .body(blob.clone())
                        .send(),
                )
                .await;
            check(r, 201, "push blob", &rec).await;
        }
        let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": sha256(b), "size": b.len()});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config),
            "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
        }))
        .unwrap();
        let tag = format!("r{rounds}");
        let r = rec
            .time(
                c.put(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Content-Type", OCI_MANIFEST)
                    .body(manifest.clone())
                    .send(),
            )
            .await;
        check(r, 201, "put manifest", &rec).await;
        let r = rec
            .time(
                c.get(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Accept", OCI_MANIFEST)
                    .send(),
            )
            .await;
        check(r, 200, "get manifest", &rec).await;
        for l in &layers {
            let r = rec
                .time(async {
                    let r = c
                        .get(format!("{base}/v2/{repo}/blobs/{}", sha256(l)))
                        .send()
                        .await?;
                    let status = r.status();
                    let body = r.bytes().await?;
                    Ok((status, body))
                })
                .await;
            if let Some((status, body)) = r {
                if status != 200 || body.len() != l.len() {
                    eprintln!("pull blob: {status}, {} bytes", body.len());
                    rec.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if rounds.is_multiple_of(3) {
            let r = rec
                .time(
                    c.delete(format!("{base}/v2/{repo}/manifests/{}", sha256(&manifest)))
                        .send(),
                )
                .await;
            check(r, 202, "delete manifest", &rec).await;
        }
        rounds += 1;
    }
    rounds
}

/// One slow client of kind `i % 4`, reconnecting whenever the server closes it:
/// 0, 1: an upload drip-fed one byte per second (progress: never cut);
/// 2: an upload that sends one byte and stalls (cut after `body_timeout`);
/// 3: an idle connection (closed after `idle_timeout`).
async fn slow(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>, reconnects: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let digest = sha256(format!("slow {i}").as_bytes());
        let head = format!(
            "POST /v2/slow/s{i}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000000\r\n\r\n"
        );
        let ended = async {
            match i % 4 {
                0 | 1 => {
                    c.write_all(head.as_bytes()).await?;
                    while !stop.load(Ordering::Relaxed) {
                        c.write_all(b"x").await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                2 => {
                    c.write_all(head.as_bytes()).await?;
                    c.write_all(b"x").await?;
                    let mut buf = [0u8; 1024];
                    while c.read(&mut buf).await? > 0 {}
                }
                _ => {
                    let mut buf = [0u8; 1024];
                    while c.read(&mut buf).await? > 0 {}
                }
            }
            Ok::<_, std::io::Error>(())
        };
        tokio::select! {
            _ = ended => { reconnects.fetch_add(1, Ordering::Relaxed); }
            _ = async { while !stop.load(Ordering::Relaxed) { tokio::time::sleep(Duration::from_millis(200)).await } } => return,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let duration = args
        .first()
        .map(|d| humantime::parse_duration(d))
        .transpose()?
        .unwrap_or(Duration::from_secs(600));
    let slow_clients: usize = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let mut config = dockyard::Config {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.limits.body_timeout = Duration::from_secs(10);
    config.limits.idle_timeout = Duration::from_secs(20);
    config.limits.max_uploads_per_client = slow_clients + 64;
    config.gc.interval = Some(Duration::from_secs(5));
    config.gc.grace = Duration::ZERO;
    config.gc.push_window = Duration::from_secs(10);
    config.log_level = "warn".into();

    // The server on a runtime of its own.
    let server_rt = tokio::runtime::Runtime::new()?;
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let registry = dockyard::Registry::open(config)?;
    let core = registry.core().clone();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(registry.serve(listener, async {
        let _ = stopped.await;
    }));

    let client_rt = tokio::runtime::Runtime::new()?;
    let base = format!("http://{addr}");
    let rec = Arc::new(Record::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicU64::new(0));
    println!(
        "soak: {duration:?}, {NORMAL_CLIENTS} normal clients, {slow_clients} slow clients, GC every 5s, on {base}"
    );
    let rounds = client_rt.block_on(async {
        let slow_tasks: Vec<_> = (0..slow_clients)
            .map(|i| tokio::spawn(slow(addr, i, stop.clone(), reconnects.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let normal_tasks: Vec<_> = (0..NORMAL_CLIENTS)
            .map(|n| tokio::spawn(normal(base.clone(), n, rec.clone(), stop.clone())))
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut rounds = 0;
        for t in normal_tasks {
            rounds += t.await.unwrap();
        }
        for t in slow_tasks {
            let _ = t.await;
        }
        rounds
    });
    let _ = stop_server.send(());
    server_rt.block_on(server)??;
    let report = dockyard::gc::fsck::check(
        &core,
        &dockyard::gc::fsck::FsckOptions {
            verify_hashes: true,
            repair: false,
            progress: None,
        },
    )?;
    let mut lat = rec.latencies.lock().unwrap().clone();
    lat.sort();
    let (p50, p99, max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    let errors = rec.errors.load(Ordering::Relaxed);
    println!(
        "rounds {rounds}, requests {}, errors {errors}, slow-client reconnects {}",
        lat.len(),
        reconnects.load(Ordering::Relaxed)
    );
    println!("latency p50 {p50:?}, p99 {p99:?}, max {max:?}");
    println!(
        "fsck: {} problems ({} blobs, {} manifests)",
        report.problems.len(),
        report.blobs,
        report.manifests
    );
    for p in &report.problems {
        println!("  {p:?}");
    }
    let ok = report.problems.is_empty() && errors == 0 && p99 < Duration::from_millis(100);
    println!("{}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
