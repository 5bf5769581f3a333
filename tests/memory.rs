//! "No blob is ever held in memory whole": the binary takes a 1 GiB blob in and serves it
//! back while its peak resident set (`VmHWM`) stays under 64 MiB.

use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use sha2::{Digest as _, Sha256};

use crate::util::*;

const GIB: usize = 1 << 30;
const CHUNK: usize = 1 << 20;
const LIMIT_KIB: u64 = 64 * 1024;

/// The blob: 1 GiB from a seeded generator, made one chunk at a time (never whole here
/// either).
fn chunks(seed: u64) -> impl Iterator<Item = Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..GIB / CHUNK).map(move |_| {
        let mut c = vec![0u8; CHUNK];
        rng.fill(c.as_mut_slice());
        c
    })
}

/// The server's peak resident set so far, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_blob_goes_in_and_out_with_the_server_under_64_mib() {
    let seed: u64 = rand::thread_rng().gen();
    let digest = {
        let mut h = Sha256::new();
        for c in chunks(seed) {
            h.update(&c);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    };
    let dir = tempfile::tempdir().unwrap();
    let p = Process::spawn(&dir.path().join("data"));
    let pid = p.child.id();
    let idle = peak_kib(pid);
    let c = fresh_client();

    let body = futures_util::stream::iter(chunks(seed).map(Ok::<_, std::io::Error>));
    let resp = c
        .post(p.url(&format!("/v2/big/blob/blobs/uploads/?digest={digest}")))
        .header("Content-Length", GIB.to_string())
        .body(reqwest::Body::wrap_stream(body))
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let after_push = peak_kib(pid);

    let resp = c
        .get(p.url(&format!("/v2/big/blob/blobs/{digest}")))
        .timeout(std::time::Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], GIB.to_string().as_str());
    let mut h = Sha256::new();
    let mut n = 0;
    let mut stream = resp.bytes_stream();
    while let Some(part) = stream.next().await {
        let part = part.unwrap();
        n += part.len();
        h.update(&part);
    }
    assert_eq!(n, GIB);
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest);
    let after_pull = peak_kib(pid);
    eprintln!(
        "memory: server VmHWM {idle} KiB idle, {after_push} KiB after a 1 GiB push, \
         {after_pull} KiB after pulling it (limit {LIMIT_KIB} KiB)"
    );
    assert!(after_push < LIMIT_KIB, "push: peak {after_push} KiB");
    assert!(after_pull < LIMIT_KIB, "pull: peak {after_pull} KiB");
    assert!(p.stop().success());
}
