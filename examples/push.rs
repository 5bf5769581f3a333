//! A short client that pushes a generated image over the distribution API, step by step, for
//! people learning the protocol. Every request is printed.
//!
//! ```text
//! cargo run --example push -- 127.0.0.1:5000 demo/hello:latest
//! ```

use reqwest::Client;
use sha2::{Digest, Sha256};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pushes one blob the chunked way: POST opens a session, PATCH sends the bytes, PUT with
/// `?digest=` closes it. The registry checks the digest before it stores anything.
async fn push_blob(http: &Client, base: &str, repo: &str, bytes: &[u8]) -> Result<String> {
    let d = digest(bytes);
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    println!("POST   /v2/{repo}/blobs/uploads/ -> {}", resp.status());
    let location = resp.headers()["location"].to_str()?.to_string();
    let url = |loc: &str| {
        if loc.starts_with('/') {
            format!("{base}{loc}")
        } else {
            loc.to_string()
        }
    };

    let resp = http
        .patch(url(&location))
        .header("Content-Type", "application/octet-stream")
        .header(
            "Content-Range",
            format!("0-{}", bytes.len().saturating_sub(1)),
        )
        .body(bytes.to_vec())
        .send()
        .await?;
    println!(
        "PATCH  {location} ({} bytes) -> {} Range: {:?}",
        bytes.len(),
        resp.status(),
        resp.headers().get("range")
    );
    let location = resp.headers()["location"].to_str()?.to_string();

    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{}{sep}digest={d}", url(&location)))
        .send()
        .await?;
    println!("PUT    {location}?digest={d} -> {}", resp.status());
    if !resp.status().is_success() {
        return Err(format!("blob push failed: {}", resp.text().await?).into());
    }
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let registry = args.next().unwrap_or_else(|| "127.0.0.1:5000".to_string());
    let image = args
        .next()
        .unwrap_or_else(|| "demo/hello:latest".to_string());
    let (repo, tag) = image.split_once(':').unwrap_or((image.as_str(), "latest"));
    let base = format!("http://{registry}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = Client::new();

    // A layer is any blob; a real one is a gzipped tar. This one is a tar with one file.
    let mut tar = tar::Builder::new(Vec::new());
    let content = format!(
        "hello from dockyard's push example at {:?}\n",
        std::time::SystemTime::now()
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", content.as_bytes())?;
    let layer = tar.into_inner()?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
        "config": {},
    }))?;

    let layer_digest = push_blob(&http, &base, repo, &layer).await?;
    let config_digest = push_blob(&http, &base, repo, &config).await?;

    // The manifest ties them together; pushing it under a tag makes the image pullable.
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }],
    }))?;
    let resp = http
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await?;
    println!("PUT    /v2/{repo}/manifests/{tag} -> {}", resp.status());
    if !resp.status().is_success() {
        return Err(format!("manifest push failed: {}", resp.text().await?).into());
    }
    println!("pushed {registry}/{repo}:{tag}@{}", digest(&manifest));
    Ok(())
}
