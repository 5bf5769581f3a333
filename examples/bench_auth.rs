//! What Basic authentication costs on the hot path: `HEAD /v2/<repo>/manifests/<tag>` per
//! second at a number of concurrent clients, with auth off and with `auth.mode = "basic"`
//! (every request carrying credentials, the default bcrypt cost), served in-process on
//! loopback. Rounds alternate between the two so that other load on the machine hits both.
//!
//! ```text
//! cargo run --release --example bench_auth -- [--clients 16] [--seconds 5] [--rounds 3]
//! ```
//!
//! Each round is bounded in time and in requests (`--max-requests`, per round and mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use dockyard::admin::Command;
use dockyard::config::AuthMode;
use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Options {
    clients: usize,
    seconds: u64,
    rounds: usize,
    max_requests: u64,
}

fn options() -> Result<Options> {
    let mut o = Options {
        clients: 16,
        seconds: 5,
        rounds: 3,
        max_requests: 2_000_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--clients" => o.clients = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--rounds" => o.rounds = value.parse()?,
            "--max-requests" => o.max_requests = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(o)
}

/// A registry on its own runtime (its own threads), so the load generator does not share
/// the server's workers; returns its address.
fn serve(mode: AuthMode, root: &std::path::Path) -> Result<std::net::SocketAddr> {
    let config = dockyard::Config {
        root: root.to_path_buf(),
        log_level: "warn".into(),
        auth: dockyard::config::AuthConfig {
            mode,
            ..Default::default()
        },
        ..Default::default()
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let registry = dockyard::Registry::open(config)?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            if let Err(e) = registry.serve(listener, std::future::pending()).await {
                eprintln!("bench_auth: server failed: {e}");
            }
        });
    });
    Ok(addr)
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes a one-layer image as `bench/app:v1`.
async fn push(http: &reqwest::Client, base: &str) -> Result<()> {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"a layer".to_vec();
    for blob in [config.to_vec(), layer.clone()] {
        let resp = http
            .post(format!(
                "{base}/v2/bench/app/blobs/uploads/?digest={}",
                digest(&blob)
            ))
            .body(blob)
            .send()
            .await?;
        if resp.status() != 201 {
            return Err(format!("blob push: {}", resp.status()).into());
        }
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(&layer), "size": layer.len()}],
    }))?;
    let resp = http
        .put(format!("{base}/v2/bench/app/manifests/v1"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await?;
    if resp.status() != 201 {
        return Err(format!("manifest push: {}", resp.status()).into());
    }
    Ok(())
}

fn client(authorization: Option<&str>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = authorization {
        headers.insert(reqwest::header::AUTHORIZATION, a.parse()?);
    }
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// `clients` tasks, each with its own connection, sending HEADs until the time or the request
/// budget runs out; answers requests per second. Each client's first request (the one that
/// pays for bcrypt) is made before the clock starts.
async fn load(url: &str, authorization: Option<&str>, o: &Options) -> Result<f64> {
    let clients: Vec<reqwest::Client> = (0..o.clients)
        .map(|_| client(authorization))
        .collect::<Result<_>>()?;
    for c in &clients {
        let status = c.head(url).send().await?.status();
        if status != 200 {
            return Err(format!("warm-up HEAD: {status}").into());
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let budget = o.max_requests;
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| {
            let (url, done) = (url.to_string(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < budget {
                    let resp = c.head(&url).send().await.map_err(|e| e.to_string())?;
                    if resp.status() != 200 {
                        return Err(format!("HEAD: {}", resp.status()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    // reqwest is built with rustls and no default provider (for oci-client in the tests).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = options()?;
    let open_dir = tempfile::tempdir()?;
    let auth_dir = tempfile::tempdir()?;
    let open = serve(AuthMode::None, open_dir.path())?;
    let authed = serve(AuthMode::Basic, auth_dir.path())?;
    let password = "bench password";
    // The control channel, as `dockyard user add` would use it.
    let admin = |command: Command| {
        let root = auth_dir.path().to_path_buf();
        async move {
            for _ in 0..500 {
                if let Some(outcome) = dockyard::admin::call(&root, &command).await? {
                    return Ok(outcome);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err::<_, Box<dyn std::error::Error>>("the admin socket never appeared".into())
        }
    };
    admin(Command::UserAdd {
        name: "bench".into(),
        password: dockyard::auth::users::Secret::new(password),
    })
    .await?;
    admin(Command::AclGrant {
        subject: "bench".into(),
        pattern: "bench/**".into(),
        actions: "pull,push".into(),
    })
    .await?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("bench:{password}"))
    );
    push(&client(None)?, &format!("http://{open}")).await?;
    push(&client(Some(&basic))?, &format!("http://{authed}")).await?;

    println!(
        "HEAD /v2/bench/app/manifests/v1, {} clients, {}s per round",
        o.clients, o.seconds
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        let a = load(
            &format!("http://{open}/v2/bench/app/manifests/v1"),
            None,
            &o,
        )
        .await?;
        let b = load(
            &format!("http://{authed}/v2/bench/app/manifests/v1"),
            Some(&basic),
            &o,
        )
        .await?;
        println!("round {round}: auth off {a:>8.0} req/s   basic {b:>8.0} req/s");
        off.push(a);
        on.push(b);
    }
    let (a, b) = (median(off), median(on));
    println!(
        "median:  auth off {a:>8.0} req/s   basic {b:>8.0} req/s   basic/off = {:.1}%",
        100.0 * b / a
    );
    Ok(())
}
