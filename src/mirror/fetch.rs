//! Blob fetches: one per (repository, digest) at a time, run in the background so a client
//! that goes away does not stop it, written through the upload path, and tailed by every
//! client that asks meanwhile.
//!
//! The fetch appends the upstream's body to `uploads/<id>` one batch (about 1 MiB) at a time
//! with `Sink::append` (written and hashed on the blocking pool), and publishes how many
//! bytes readers may see: all but the last batch, until the whole blob is fsynced and its
//! digest checked. Then it renames the file into place and records the blob under its
//! stripe (as an upload's end does), and publishes the full length. Readers read the file
//! by offset (an open file survives the rename); one that opens it after the rename opens
//! the blob instead. A digest mismatch, a short body or an upstream failure removes the
//! upload file, records nothing, and cuts every reader's response short (they declared the
//! length, so the client sees the failure).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use tokio::sync::watch;

use super::upstream::UpstreamError;
use super::Target;
use crate::db;
use crate::oci::{Digest, ErrorCode, RegistryError};
use crate::store::upload::Durability;
use crate::store::{Location, Sink};
use crate::Core;

/// The body of a blob being fetched, as a reader sees it.
pub type BlobBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync>>;

/// Bytes gathered from the upstream before they are appended (and the most a reader is
/// held back while the digest is unchecked).
const BATCH: usize = 1 << 20;
/// Upstream body chunks received ahead of the disk (hyper's chunks are at most a read
/// buffer, so this bounds a fetch's memory to a few MiB).
const AHEAD: usize = 64;

/// Fetches in progress.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<(String, String), Arc<Flight>>>,
}

pub struct Flight {
    upload_id: String,
    progress: watch::Sender<Progress>,
}

#[derive(Clone, Debug)]
struct Progress {
    /// The upstream answered (its length, when it said).
    started: bool,
    size: Option<u64>,
    /// Bytes of the upload file readers may send.
    visible: u64,
    state: State,
}

#[derive(Clone, Debug)]
enum State {
    Running,
    /// Stored: the blob's row is committed.
    Done,
    Failed(Arc<Mutex<Option<Failure>>>, String),
}

#[derive(Debug)]
pub enum Failure {
    Upstream(UpstreamError),
    Other(RegistryError),
}

/// The fetch of `digest` into `t.stored`: the one in progress, or a new one.
pub fn start(core: &Core, t: &Target, digest: &Digest) -> Arc<Flight> {
    let key = (t.stored.to_string(), digest.to_string());
    let mut map = core.mirrors.flights.map.lock().expect("flights lock");
    if let Some(f) = map.get(&key) {
        return f.clone();
    }
    let (tx, _) = watch::channel(Progress {
        started: false,
        size: None,
        visible: 0,
        state: State::Running,
    });
    let flight = Arc::new(Flight {
        upload_id: uuid::Uuid::new_v4().hyphenated().to_string(),
        progress: tx,
    });
    map.insert(key.clone(), flight.clone());
    drop(map);
    let (core, t, digest, f) = (core.clone(), t.clone(), digest.clone(), flight.clone());
    tokio::spawn(async move {
        let result = run(&core, &t, &digest, &f).await;
        let failed = result.is_err();
        match result {
            Ok(size) => {
                f.progress.send_modify(|p| {
                    p.started = true;
                    p.size = Some(size);
                    p.visible = size;
                    p.state = State::Done;
                });
            }
            Err(e) => {
                let message = match &e {
                    Failure::Upstream(u) => u.to_string(),
                    Failure::Other(r) => r.message.clone(),
                };
                tracing::warn!(repo = %t.stored, digest = %digest, error = %message,
                    "mirror: blob fetch failed; nothing stored");
                let path = core.store.path_for(Location::Upload(&f.upload_id));
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
                f.progress.send_modify(|p| {
                    p.state = State::Failed(Arc::new(Mutex::new(Some(e))), message.clone())
                });
            }
        }
        // Removed only now: a request from here on finds the row (or starts afresh).
        {
            let mut map = core.mirrors.flights.map.lock().expect("flights lock");
            if map.get(&key).is_some_and(|x| Arc::ptr_eq(x, &f)) {
                map.remove(&key);
            }
        }
        if !failed {
            super::commit_pending(&core, &t.stored).await;
        }
    });
    flight
}

/// Fetches, verifies and stores the blob; returns its size.
async fn run(core: &Core, t: &Target, digest: &Digest, f: &Flight) -> Result<u64, Failure> {
    // Stored meanwhile (the previous fetch committed between the caller's check and ours)?
    if super::is_linked(core, &t.stored, digest)
        .await
        .map_err(Failure::Other)?
    {
        let d = digest.to_string();
        let size = core
            .db
            .read(move |tx| {
                Ok(tx
                    .open_table(db::schema::BLOBS)?
                    .get(d.as_str())?
                    .map(|v| db::schema::decode::<db::schema::BlobRecord>(v.value()))
                    .transpose()?
                    .map_or(0, |r| r.size))
            })
            .await
            .map_err(Failure::Other)?;
        return Ok(size);
    }
    let free = core
        .store
        .free_space()
        .map_err(|e| Failure::Other(e.into()))?;
    if free < core.config.min_free {
        return Err(Failure::Other(RegistryError::storage_full(format!(
            "the registry's disk is nearly full ({free} bytes free); nothing more is cached"
        ))));
    }
    let resp = core
        .mirrors
        .upstream(t)
        .send(
            &core.metrics,
            "blob",
            Method::GET,
            &format!("/v2/{}/blobs/{digest}", t.remote),
            &t.remote,
            None,
        )
        .await
        .map_err(Failure::Upstream)?;
    let size = resp.content_length();
    let max = core.config.max_blob_size;
    if size.is_some_and(|s| s > max) {
        return Err(Failure::Other(RegistryError::new(
            ErrorCode::SizeInvalid,
            format!("the upstream's blob {digest} is larger than max_blob_size"),
        )));
    }
    f.progress.send_modify(|p| {
        p.started = true;
        p.size = size;
    });
    let path = core.store.path_for(Location::Upload(&f.upload_id));
    // The network side runs ahead of the disk side by up to `AHEAD` chunks, so receiving
    // the next batch overlaps writing and hashing this one.
    let (tx, mut body) = tokio::sync::mpsc::channel(AHEAD);
    let metrics = core.metrics.clone();
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            if let Ok(c) = &chunk {
                metrics.mirror_upstream_bytes(c.len() as u64);
            }
            let failed = chunk.is_err();
            // The fetch gave up (its receiver is gone): stop reading.
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    let mut sink = Sink::new();
    let mut synced = false;
    let mut done = false;
    while !done {
        let mut batch = Vec::new();
        let mut n = 0usize;
        while n < BATCH {
            match body.recv().await {
                None => {
                    done = true;
                    break;
                }
                Some(Err(e)) => {
                    return Err(Failure::Upstream(UpstreamError::Unreachable(format!(
                        "the body of blob {digest} failed: {e}"
                    ))))
                }
                Some(Ok(c)) => {
                    n += c.len();
                    batch.push(c);
                }
            }
        }
        if n == 0 {
            continue;
        }
        let before = sink.len;
        let chunks: crate::store::BodyStream =
            futures_util::stream::iter(batch.into_iter().map(Ok)).boxed();
        let durability = if done {
            Durability::Sync
        } else {
            Durability::Lazy
        };
        synced = done;
        sink = sink
            .append(&path, chunks, max, durability)
            .await
            .map_err(Failure::Other)?;
        // Everything before this batch may be read; this batch waits for the next one (or
        // for the digest check).
        f.progress.send_modify(|p| p.visible = before);
    }
    if !synced {
        // The body ended on a batch boundary (or was empty): fsync what the appends wrote
        // (an empty append creates the file of an empty blob).
        sink = sink
            .append(
                &path,
                futures_util::stream::empty().boxed(),
                max,
                Durability::Sync,
            )
            .await
            .map_err(Failure::Other)?;
    }
    let len = sink.len;
    if size.is_some_and(|s| s != len) {
        return Err(Failure::Other(RegistryError::new(
            ErrorCode::SizeInvalid,
            format!(
                "the upstream sent {len} bytes of blob {digest}, not the {} it announced",
                size.unwrap_or(0)
            ),
        )));
    }
    let actual = if digest.algorithm() == sink.hasher.algorithm() {
        sink.digest()
    } else {
        let (p, alg) = (path.clone(), digest.algorithm());
        tokio::task::spawn_blocking(move || Sink::rehash(&p, alg))
            .await
            .map_err(|e| Failure::Other(RegistryError::internal(e.to_string())))?
            .map_err(|e| Failure::Other(e.into()))?
            .digest()
    };
    if &actual != digest {
        return Err(Failure::Other(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("the upstream's bytes for {digest} have digest {actual}: refused"),
        )));
    }
    let (store, db, locks) = (core.store.clone(), core.db.clone(), core.blob_locks.clone());
    let (n, d, id) = (t.stored.clone(), digest.clone(), f.upload_id.clone());
    tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
        // As an upload's end: promote and record under the stripe, stamped as seen.
        let mut guard = locks.lock(&d);
        store.promote(&id, &d)?;
        let digest = d.clone();
        db.write_grouped(move |tx| db::blobs::record(tx, &n, &digest, len, None))?;
        guard.touch(&d);
        Ok(())
    })
    .await
    .map_err(|e| Failure::Other(RegistryError::internal(e.to_string())))?
    .map_err(Failure::Other)?;
    Ok(len)
}

/// Waits for the fetch to end: `Err` with its failure's text.
pub async fn wait(flight: &Arc<Flight>) -> Result<(), String> {
    let mut rx = flight.progress.subscribe();
    let p = rx
        .wait_for(|p| !matches!(p.state, State::Running))
        .await
        .map_err(|_| "the blob fetch vanished".to_string())?
        .clone();
    match p.state {
        State::Failed(_, m) => Err(m),
        _ => Ok(()),
    }
}

/// Waits until the fetch has an answer from upstream, then returns the blob's length (when
/// known) and a body that follows the fetch to its end.
pub async fn tail(
    core: &Core,
    flight: &Arc<Flight>,
    digest: &Digest,
) -> Result<(Option<u64>, BlobBody), Failure> {
    let mut rx = flight.progress.subscribe();
    let p = rx
        .wait_for(|p| p.started || !matches!(p.state, State::Running))
        .await
        .map_err(|_| Failure::Other(RegistryError::internal("the blob fetch vanished")))?
        .clone();
    if let State::Failed(slot, message) = &p.state {
        // The first reader gets the cause (to map it to a status); the others its text.
        return Err(slot
            .lock()
            .expect("failure lock")
            .take()
            .unwrap_or_else(|| {
                Failure::Other(
                    RegistryError::new(ErrorCode::Unknown, message.clone()).with_status(502),
                )
            }));
    }
    let reader = Reader {
        rx,
        file: None,
        pos: 0,
        upload: core.store.path_for(Location::Upload(&flight.upload_id)),
        blob: core.store.path_for(Location::Blob(digest)),
        ended: false,
    };
    let body = futures_util::stream::unfold(reader, |mut r| async move {
        if r.ended {
            return None;
        }
        match r.next().await {
            Ok(Some(b)) => Some((Ok(b), r)),
            Ok(None) => None,
            Err(e) => {
                r.ended = true;
                Some((Err(e), r))
            }
        }
    });
    Ok((p.size, Box::pin(body)))
}

struct Reader {
    rx: watch::Receiver<Progress>,
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    upload: std::path::PathBuf,
    blob: std::path::PathBuf,
    ended: bool,
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let p = self.rx.borrow_and_update().clone();
            if let State::Failed(_, m) = &p.state {
                return Err(io::Error::other(format!("blob fetch failed: {m}")));
            }
            if self.pos < p.visible {
                if self.file.is_none() {
                    let done = matches!(p.state, State::Done);
                    let (upload, blob) = (self.upload.clone(), self.blob.clone());
                    let opened =
                        tokio::task::spawn_blocking(move || match std::fs::File::open(&upload) {
                            Err(e) if e.kind() == io::ErrorKind::NotFound && done => {
                                std::fs::File::open(&blob).map(Some)
                            }
                            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                            other => other.map(Some),
                        })
                        .await
                        .map_err(io::Error::other)??;
                    match opened {
                        Some(f) => self.file = Some(Arc::new(f)),
                        // Renamed between our look and the publication of `Done`.
                        None => {
                            if self.rx.changed().await.is_err() {
                                return Err(io::Error::other("blob fetch vanished"));
                            }
                            continue;
                        }
                    }
                }
                let file = self.file.clone().expect("opened above");
                let (pos, n) = (self.pos, (p.visible - self.pos).min(BATCH as u64) as usize);
                let bytes = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    file.read_exact_at(&mut buf, pos)?;
                    Ok(buf)
                })
                .await
                .map_err(io::Error::other)??;
                self.pos += n as u64;
                return Ok(Some(Bytes::from(bytes)));
            }
            if matches!(p.state, State::Done) {
                return Ok(None);
            }
            if self.rx.changed().await.is_err() {
                return Err(io::Error::other("blob fetch vanished"));
            }
        }
    }
}
