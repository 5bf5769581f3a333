//! Workload 8 (issue 11): the portability commands against what a user would do without
//! them. `import-distribution` of an N-repository Distribution store against re-pushing the
//! same store with `skopeo sync` from a Distribution serving it into a running Dockyard; and
//! `backup` of the imported root (plus one big image) to the same filesystem and to /dev/shm
//! (a copy path: hard links cannot cross filesystems), against `cp -a` of the same root.
//! These drive the CLI, not HTTP, so they run synchronously on a blocking thread.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::client::Result;

pub struct Figures {
    pub repos: usize,
    pub import_s: f64,
    /// `None` when docker-registry or skopeo is missing (said loudly).
    pub skopeo_s: Option<Result<f64>>,
    pub root_bytes: u64,
    pub backup_same_s: f64,
    pub backup_copy_s: f64,
    pub cp_same_s: f64,
    pub cp_copy_s: f64,
    pub backup_again_s: f64,
}

/// Runs the whole workload in a temporary directory under /tmp and one under /dev/shm.
pub fn run(
    bin: &Path,
    dist_bin: Option<&Path>,
    repos: usize,
    layer: usize,
    big_layer: usize,
) -> Result<Figures> {
    let w = tempfile::Builder::new()
        .prefix("bench-portability-")
        .tempdir()?;
    let shm = tempfile::Builder::new()
        .prefix("bench-portability-")
        .tempdir_in("/dev/shm")?;
    let store = w.path().join("dist");
    write_distribution_store(&store, repos, layer)?;
    sync_all()?;

    let imported = w.path().join("imported");
    let import_s = timed(
        Command::new(bin)
            .arg("import-distribution")
            .arg(&store)
            .arg("--root")
            .arg(&imported),
    )?;

    let skopeo_s = match (dist_bin, which("skopeo")) {
        (Some(d), Some(skopeo)) => Some(skopeo_sync(bin, d, &skopeo, w.path(), &store, repos)),
        _ => {
            eprintln!("  !!! skopeo or docker-registry is not installed: no skopeo sync figure");
            None
        }
    };

    // One big image beside the many small ones, so the backup figures are about bytes too.
    let layout = w.path().join("big");
    write_oci_layout(&layout, big_layer)?;
    timed(
        Command::new(bin)
            .arg("import")
            .arg(&layout)
            .arg("--repo")
            .arg("big/image")
            .arg("--root")
            .arg(&imported),
    )?;
    let root_bytes = du(&imported)?;
    sync_all()?;

    let backup_same_s = timed(
        Command::new(bin)
            .arg("backup")
            .arg(w.path().join("backup"))
            .arg("--root")
            .arg(&imported),
    )?;
    let backup_copy_s = timed(
        Command::new(bin)
            .arg("backup")
            .arg(shm.path().join("backup"))
            .arg("--root")
            .arg(&imported),
    )?;
    let cp = w.path().join("cp");
    let cp_same_s = timed(
        Command::new("sh")
            .arg("-c")
            .arg("cp -a \"$1\" \"$2\" && sync -f \"$2\"")
            .arg("sh")
            .arg(&imported)
            .arg(&cp),
    )?;
    let cp_copy_s = timed(
        Command::new("cp")
            .arg("-a")
            .arg(&imported)
            .arg(shm.path().join("cp")),
    )?;
    let backup_again_s = timed(
        Command::new(bin)
            .arg("backup")
            .arg(shm.path().join("backup"))
            .arg("--root")
            .arg(&imported),
    )?;
    Ok(Figures {
        repos,
        import_s,
        skopeo_s,
        root_bytes,
        backup_same_s,
        backup_copy_s,
        cp_same_s,
        cp_copy_s,
        backup_again_s,
    })
}

/// Seconds a command took; its failure (with its output) is an error.
fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output()?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(s)
}

fn sync_all() -> Result<()> {
    timed(&mut Command::new("sync")).map(|_| ())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            total += du(&e.path())?;
        } else if t.is_file() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(path, data)?;
    Ok(())
}

fn manifest(config: &[u8], layers: &[Vec<u8>]) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": format!("sha256:{}", sha256_hex(l)),
                "size": l.len(),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", sha256_hex(config)),
            "size": config.len(),
        },
        "layers": layers,
    }))
    .expect("json")
}

/// Distribution 2.8's on-disk layout: repositories `bench/rNNNN`, each one image (two random
/// layers of `layer` bytes and a config) tagged `latest` (as examples/bench_portability_gen.py).
fn write_distribution_store(root: &Path, repos: usize, layer: usize) -> Result<()> {
    let v2 = root.join("docker/registry/v2");
    let blob = |data: &[u8]| -> Result<String> {
        let d = sha256_hex(data);
        write(
            &v2.join("blobs/sha256").join(&d[..2]).join(&d).join("data"),
            data,
        )?;
        Ok(d)
    };
    let link = |dir: PathBuf, d: &str| write(&dir.join("link"), format!("sha256:{d}").as_bytes());
    for i in 0..repos {
        let repo = v2.join(format!("repositories/bench/r{i:04}"));
        let layers = [random(layer), random(layer)];
        let config = serde_json::to_vec(
            &serde_json::json!({"architecture": "amd64", "os": "linux", "n": i}),
        )?;
        for b in std::iter::once(&config).chain(&layers) {
            let d = blob(b.as_slice())?;
            link(repo.join("_layers/sha256").join(&d), &d)?;
        }
        let m = blob(&manifest(&config, &layers))?;
        link(repo.join("_manifests/revisions/sha256").join(&m), &m)?;
        link(repo.join("_manifests/tags/latest/current"), &m)?;
        link(
            repo.join("_manifests/tags/latest/index/sha256").join(&m),
            &m,
        )?;
    }
    Ok(())
}

/// An OCI layout holding one image of two random `layer`-byte layers, tagged v1.
fn write_oci_layout(dir: &Path, layer: usize) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    let layers = [random(layer), random(layer)];
    let config = br#"{"os":"linux","architecture":"amd64"}"#.to_vec();
    for b in std::iter::once(&config).chain(&layers) {
        write(&blobs.join(sha256_hex(b)), b)?;
    }
    let m = manifest(&config, &layers);
    write(&blobs.join(sha256_hex(&m)), &m)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", sha256_hex(&m)), "size": m.len(),
        "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    write(&dir.join("index.json"), &serde_json::to_vec(&index)?)?;
    write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    Ok(())
}

/// Kills the child on drop, so an error path leaves no server behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let t = Instant::now();
    while TcpStream::connect(addr).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            return Err(format!("nothing listened on {addr} within 20 s").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `skopeo sync` of every repository of `store`, served by Distribution, into a fresh
/// Dockyard: what moving registries costs without import-distribution.
fn skopeo_sync(
    bin: &Path,
    dist: &Path,
    skopeo: &Path,
    w: &Path,
    store: &Path,
    repos: usize,
) -> Result<f64> {
    let src = free_addr()?;
    let dst = free_addr()?;
    let config = w.join("reg.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {src}}}\n",
            store.display()
        ),
    )?;
    let log = |name: &str| std::fs::File::create(w.join(name));
    let _reg = Reaped(
        Command::new(dist)
            .arg("serve")
            .arg(&config)
            .stdout(log("reg.log")?)
            .stderr(log("reg.err")?)
            .spawn()?,
    );
    let _srv = Reaped(
        Command::new(bin)
            .arg("serve")
            .arg("--root")
            .arg(w.join("synced"))
            .arg("--listen")
            .arg(dst.to_string())
            .env("RUST_LOG", "warn")
            .stdout(log("srv.log")?)
            .stderr(log("srv.err")?)
            .spawn()?,
    );
    wait_listening(src)?;
    wait_listening(dst)?;
    let mut yaml = format!("{src}:\n  tls-verify: false\n  images:\n");
    for i in 0..repos {
        yaml.push_str(&format!("    bench/r{i:04}: [latest]\n"));
    }
    let list = w.join("src.yaml");
    std::fs::write(&list, yaml)?;
    timed(
        Command::new(skopeo)
            .args([
                "sync",
                "--src",
                "yaml",
                "--dest",
                "docker",
                "--dest-tls-verify=false",
                "--preserve-digests",
            ])
            .arg(&list)
            .arg(format!("{dst}/")),
    )
}
