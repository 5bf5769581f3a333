//! GC benchmark: one Dockyard pass over a store of N blobs and M manifests, a tenth of them
//! garbage (untagged manifests and the blobs only they use), while clients keep pushing;
//! against CNCF Distribution's `registry garbage-collect --delete-untagged` on the equivalent
//! filesystem store (Debian package `docker-registry`).
//!
//! ```text
//! cargo run --release --example bench_gc                       # 100,000 blobs, 10,000 manifests
//! cargo run --release --example bench_gc -- --blobs 20000 --manifests 2000 --pushers 2
//! cargo run --release --example bench_gc -- --no-distribution  # Dockyard only
//! ```
//!
//! Both stores are written directly, not pushed: Dockyard's through the library (blob files,
//! then the rows of `db::blobs::record` and `db::manifests::put`), Distribution's as the
//! files its filesystem driver writes (checked against a real push):
//!
//! ```text
//! docker/registry/v2/blobs/sha256/<xx>/<hex>/data                      every blob and manifest
//! docker/registry/v2/repositories/<name>/_layers/sha256/<hex>/link     "sha256:<hex>"
//! docker/registry/v2/repositories/<name>/_manifests/revisions/sha256/<hex>/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/current/link
//! docker/registry/v2/repositories/<name>/_manifests/tags/<tag>/index/sha256/<hex>/link
//! ```
//!
//! Each image has a config and nine layers of its own, 100 images per repository; every tenth
//! image is untagged. Both collectors delete the untagged manifests and their blobs.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockyard::config::{GcConfig, Untagged};
use dockyard::oci::{manifest, Digest, RepoName, Tag};
use dockyard::store::Location;

const PER_REPO: usize = 100;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Args {
    blobs: usize,
    manifests: usize,
    pushers: usize,
    dir: PathBuf,
    distribution: bool,
}

fn args() -> Args {
    let mut a = Args {
        blobs: 100_000,
        manifests: 10_000,
        pushers: 4,
        dir: std::env::temp_dir().join("dockyard-bench-gc"),
        distribution: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--blobs" => a.blobs = val().parse().expect("--blobs N"),
            "--manifests" => a.manifests = val().parse().expect("--manifests N"),
            "--pushers" => a.pushers = val().parse().expect("--pushers N"),
            "--dir" => a.dir = PathBuf::from(val()),
            "--no-distribution" => a.distribution = false,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.manifests >= PER_REPO && a.blobs >= 2 * a.manifests);
    a
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

/// The bytes of blob number `i`: unique, small (GC cost is per object, not per byte).
fn blob_bytes(i: usize) -> Vec<u8> {
    let mut b = format!("dockyard gc benchmark blob {i:09} ").into_bytes();
    b.resize(512, b'.');
    b
}

/// One image of the store.
struct Image {
    repo: String,
    tag: Option<String>,
    blobs: Vec<(Digest, Vec<u8>)>,
    manifest: Vec<u8>,
    digest: Digest,
}

fn image(n: usize, per_image: usize) -> Image {
    let blobs: Vec<(Digest, Vec<u8>)> = (0..per_image)
        .map(|k| {
            let b = blob_bytes(n * per_image + k);
            (sha256(&b), b)
        })
        .collect();
    let desc = |(d, b): &(Digest, Vec<u8>), mt: &str| serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()});
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(&blobs[0], "application/vnd.oci.image.config.v1+json"),
        "layers": blobs[1..].iter().map(|b| desc(b, "application/vnd.oci.image.layer.v1.tar+gzip")).collect::<Vec<_>>(),
    }))
    .expect("json");
    Image {
        repo: format!("bench/r{:04}", n / PER_REPO),
        // Every tenth image is garbage: untagged, nothing else lists it.
        tag: (n % 10 != 9).then(|| format!("v{n}")),
        digest: sha256(&manifest),
        blobs,
        manifest,
    }
}

/// Writes a file, creating its directory the first time (`made` remembers).
fn write(made: &mut HashSet<PathBuf>, path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("parent");
    if !made.contains(dir) {
        fs::create_dir_all(dir).expect("mkdir");
        made.insert(dir.to_path_buf());
    }
    fs::write(path, bytes).expect("write");
}

/// Writes one repository's images into both stores.
fn build_repo(
    core: &dockyard::Core,
    dist: Option<&Path>,
    images: &[Image],
    made: &mut HashSet<PathBuf>,
) {
    for img in images {
        for (d, b) in &img.blobs {
            fs::write(core.store.path_for(Location::Blob(d)), b).expect("blob file");
        }
    }
    let repo = RepoName::parse(&images[0].repo).expect("repo");
    core.db
        .write_blocking(|tx| {
            for img in images {
                for (d, b) in &img.blobs {
                    dockyard::db::blobs::record(tx, &repo, d, b.len() as u64, None)?;
                }
                let parsed = manifest::parse(&img.manifest, Some(OCI_MANIFEST))?;
                let tags: Vec<Tag> = img
                    .tag
                    .iter()
                    .map(|t| Tag::parse(t).expect("tag"))
                    .collect();
                dockyard::db::manifests::put(
                    tx,
                    &repo,
                    &img.digest,
                    &parsed,
                    &img.manifest,
                    &tags,
                    true,
                )?;
            }
            Ok(())
        })
        .expect("dockyard rows");
    let Some(v2) = dist else { return };
    let blob_data = |d: &Digest| {
        v2.join("blobs/sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
            .join("data")
    };
    let repo_dir = v2.join("repositories").join(repo.as_str());
    let link = |d: &Digest| format!("sha256:{}", d.hex());
    for img in images {
        for (d, b) in &img.blobs {
            write(made, &blob_data(d), b);
            write(
                made,
                &repo_dir.join("_layers/sha256").join(d.hex()).join("link"),
                link(d).as_bytes(),
            );
        }
        write(made, &blob_data(&img.digest), &img.manifest);
        let m = repo_dir.join("_manifests");
        write(
            made,
            &m.join("revisions/sha256")
                .join(img.digest.hex())
                .join("link"),
            link(&img.digest).as_bytes(),
        );
        if let Some(t) = &img.tag {
            let t = m.join("tags").join(t);
            write(made, &t.join("current/link"), link(&img.digest).as_bytes());
            write(
                made,
                &t.join("index/sha256").join(img.digest.hex()).join("link"),
                link(&img.digest).as_bytes(),
            );
        }
    }
}

fn count_files(dir: &Path, name: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name() == name {
                n += 1;
            }
        }
    }
    n
}

/// Pushes small images in a loop until `stop`; records each push's latency.
async fn pusher(
    base: String,
    repo: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, Duration, bool)>>>,
) {
    let c = reqwest::Client::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let config = format!("{{\"os\":\"linux\",\"repo\":\"{repo}\",\"n\":{n}}}").into_bytes();
        let layer: Vec<u8> = (0..4096u32).map(|i| (i as u64 * 31 + n) as u8).collect();
        let mut ok = true;
        for b in [&config, &layer] {
            let d = sha256(b);
            let r = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .body(b.clone())
                .send()
                .await;
            ok &= r.is_ok_and(|r| r.status() == 201);
        }
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(&layer).to_string(), "size": layer.len()}],
        }))
        .expect("json");
        let r = c
            .put(format!("{base}/v2/{repo}/manifests/t{n}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(m)
            .send()
            .await;
        ok &= r.is_ok_and(|r| r.status() == 201);
        log.lock().unwrap().push((started, started.elapsed(), ok));
        n += 1;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    // reqwest is built with rustls and no provider (for oci-client in the tests); plain HTTP
    // still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args();
    let per_image = a.blobs / a.manifests;
    let _ = fs::remove_dir_all(&a.dir);
    let dock_root = a.dir.join("dockyard");
    let dist_root = a.dir.join("distribution");
    let v2 = dist_root.join("docker/registry/v2");
    let config = dockyard::Config {
        root: dock_root.clone(),
        // Collect at once what no client uses, but keep the protection pushes rely on: what a
        // pusher touched (and its uploads in flight) is safe for a second.
        gc: GcConfig {
            interval: None,
            grace: Duration::ZERO,
            push_window: Duration::from_secs(1),
            untagged: Untagged::After(Duration::ZERO),
        },
        ..Default::default()
    };

    // --- build both stores
    let t = Instant::now();
    let registry = dockyard::Registry::open(config).expect("open");
    let core = registry.core().clone();
    for i in 0..256 {
        fs::create_dir_all(dock_root.join(format!("blobs/sha256/{i:02x}"))).expect("shard");
    }
    let repos = a.manifests / PER_REPO;
    let (garbage_manifests, garbage_blobs) = {
        let (core, dist) = (core.clone(), a.distribution.then(|| v2.clone()));
        tokio::task::spawn_blocking(move || {
            let (mut gm, mut gb) = (0, 0);
            let mut made = HashSet::new();
            for r in 0..repos {
                let images: Vec<Image> = (r * PER_REPO..(r + 1) * PER_REPO)
                    .map(|n| image(n, per_image))
                    .collect();
                for img in images.iter().filter(|i| i.tag.is_none()) {
                    gm += 1;
                    gb += img.blobs.len();
                }
                build_repo(&core, dist.as_deref(), &images, &mut made);
                if r % 10 == 9 {
                    eprint!("\rbuilding stores: {}/{repos} repositories", r + 1);
                }
            }
            eprint!("\r\x1b[K");
            (gm, gb)
        })
        .await
        .expect("build")
    };
    println!(
        "store: {} blobs, {} manifests in {repos} repositories; garbage: {garbage_manifests} untagged manifests and the {garbage_blobs} blobs only they use (built in {:.1?})",
        repos * PER_REPO * per_image,
        repos * PER_REPO,
        t.elapsed()
    );

    // --- Dockyard: one pass in the running server, with pushes going on
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(registry.serve(listener, async {
        let _ = stopped.await;
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let pushers: Vec<_> = (0..a.pushers)
        .map(|i| {
            tokio::spawn(pusher(
                base.clone(),
                format!("live/p{i}"),
                stop.clone(),
                log.clone(),
            ))
        })
        .collect();
    // Pushes under way, and the last untagged manifests written older than the push window.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pass_started = Instant::now();
    let c = core.clone();
    let report =
        tokio::task::spawn_blocking(move || dockyard::gc::run_once(&c, &Default::default()))
            .await
            .expect("gc task")
            .expect("gc pass");
    let pass_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pushers {
        p.await.expect("pusher");
    }
    let log = log.lock().unwrap().clone();
    let during: Vec<&(Instant, Duration, bool)> = log
        .iter()
        .filter(|(s, d, _)| *s < pass_ended && *s + *d > pass_started)
        .collect();
    let failed = log.iter().filter(|(_, _, ok)| !ok).count();
    let mut lat: Vec<Duration> = during.iter().map(|(_, d, _)| *d).collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    let c = core.clone();
    let idle = tokio::task::spawn_blocking(move || dockyard::gc::run_once(&c, &Default::default()))
        .await
        .expect("gc task")
        .expect("gc pass");
    let _ = stop_server.send(());
    server.await.expect("server task").expect("serve");
    assert_eq!(report.manifests as usize, garbage_manifests, "{report}");
    assert_eq!(report.blobs as usize, garbage_blobs, "{report}");
    assert_eq!(failed, 0, "pushes failed during the benchmark");
    println!();
    println!(
        "dockyard gc pass, {} pushers running:  {:>9.3} s   {report}",
        a.pushers,
        report.elapsed.as_secs_f64()
    );
    println!(
        "  pushes overlapping the pass: {} (all {} pushes of the run succeeded); latency p50 {}, p99 {}, max {}",
        during.len(),
        log.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    println!(
        "dockyard gc pass with nothing to free:  {:>9.3} s",
        idle.elapsed.as_secs_f64()
    );

    // --- Distribution
    if !a.distribution {
        return;
    }
    let cfg = a.dir.join("distribution.yml");
    fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n",
            dist_root.display()
        ),
    )
    .expect("config");
    let before = count_files(&v2.join("blobs"), "data");
    let t = Instant::now();
    let out = std::process::Command::new("docker-registry")
        .args(["garbage-collect", "--delete-untagged"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run docker-registry (apt-get install docker-registry)");
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "garbage-collect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = count_files(&v2.join("blobs"), "data");
    println!(
        "distribution garbage-collect -m:        {:>9.3} s   deleted {} blob files ({} blobs + {} manifests), registry read-only meanwhile",
        took.as_secs_f64(),
        before - after,
        garbage_blobs,
        garbage_manifests
    );
    assert_eq!(
        before - after,
        garbage_blobs + garbage_manifests,
        "distribution deleted what dockyard deleted"
    );
    println!(
        "speedup: {:.0}x",
        took.as_secs_f64() / report.elapsed.as_secs_f64()
    );
}
