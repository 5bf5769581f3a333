//! Blob fetches: one per (repository, digest) at a time, run in the background so a client
//! that goes away does not stop it, written through the upload path, and tailed by every
//! client that asks meanwhile.
//!
//! Two paths leave the upstream's body, side by side:
//! - **to the clients, from memory**: each chunk the upstream sends is kept in the flight
//!   (`Recent`, reference-counted `Bytes`) and handed to every reader as it is, with no copy
//!   and no disk or blocking-pool hop. All but the last chunk received are released at once;
//!   the last waits for the next one, or, at the end, for the digest check of the whole
//!   body. Chunks already on disk are kept only while the flight holds more than `KEEP`
//!   bytes; a reader that falls further behind reads the upload file by offset instead.
//! - **to the disk**: the same chunks are appended to `uploads/<id>` one batch (about
//!   1 MiB) at a time with `Sink::append` (written and hashed on the blocking pool; about
//!   2 MiB (`AHEAD`) of body wait in memory for the disk, which paces the upstream).
//!
//! Once the body has ended, its size and digest are checked and the last chunk is released:
//! a client never gets a whole blob with the wrong digest. Only then is the file fsynced,
//! renamed into place and the blob recorded under its stripe (as an upload's end does): no
//! client waits for the fsync. If the fsync or the record fails after the release, nothing
//! is stored (the next pull fetches again); readers finish, since what they got was
//! verified. A reader holds at most `IN_FLIGHT` frames in hyper's write queue (a chunk
//! from memory, or one of its own `READ`-sized buffers for the file), so a herd of slow
//! readers holds a bounded amount each. A reader that reads the file after its rename
//! opens the blob instead. A digest mismatch, a short or long body or an upstream failure
//! removes the upload file, records nothing, and cuts every reader's response short (they
//! declared the length, so the client sees the failure).

use std::collections::{HashMap, VecDeque};
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
/// Upstream body bytes received ahead of the disk (counted in KiB permits, see `cost`).
const AHEAD: usize = (2 * BATCH) >> 10;
/// Bytes of chunks already on disk a flight keeps in memory for readers a little behind
/// the newest chunk (chunks not on disk yet are kept until they are).
const KEEP: usize = 2 << 20;
/// Bytes each read of the upload file (by a reader behind the chunks in memory) sends at
/// most.
const READ: usize = 64 << 10;
/// Frames one reader may have in hyper's write queue (which would otherwise take up to its
/// `max_buf_size` per connection): each is one of the reader's reused read buffers, lent
/// with a file read or as the token of a chunk from memory. It comes back when hyper has
/// written the frame out; a reader whose frames are all queued waits. A herd of readers
/// holds at most this many each.
const IN_FLIGHT: usize = 2;

/// The budget permits a chunk of `len` bytes takes: one per KiB begun, at most all of them
/// (so a chunk larger than the budget still passes, alone).
fn cost(len: usize) -> u32 {
    len.div_ceil(1024).clamp(1, AHEAD) as u32
}

/// Fetches in progress.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<(String, String), Arc<Flight>>>,
}

pub struct Flight {
    upload_id: String,
    progress: watch::Sender<Progress>,
    /// The upstream's latest chunks, handed to readers from memory.
    recent: Mutex<Recent>,
}

#[derive(Clone, Debug)]
struct Progress {
    /// The upstream answered (its length, when it said).
    started: bool,
    size: Option<u64>,
    /// Bytes readers may send: every chunk received but the last, until the digest check.
    released: u64,
    /// Bytes appended to the upload file (where a reader behind `Recent` reads).
    on_disk: u64,
    /// The whole body hashed to the digest and was released (`released` is its length); it
    /// may still be on its way to disk and into the database.
    verified: bool,
    state: State,
}

#[derive(Clone, Debug)]
enum State {
    Running,
    /// Stored: the blob's row is committed.
    Done,
    Failed(Arc<Mutex<Option<Failure>>>, String),
}

/// The chunks of a flight still in memory: contiguous, from offset `start` of the blob.
#[derive(Default)]
struct Recent {
    start: u64,
    chunks: VecDeque<Bytes>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Drops the oldest chunks, while more than `KEEP` bytes are held, of those entirely
    /// below `on_disk`: a reader that needs them reads the file.
    fn trim(&mut self, on_disk: u64) {
        while self.bytes > KEEP {
            let Some(len) = self.chunks.front().map(Bytes::len) else {
                break;
            };
            if self.start + len as u64 > on_disk {
                break;
            }
            self.chunks.pop_front();
            self.bytes -= len;
            self.start += len as u64;
        }
    }

    /// The bytes from offset `pos` to the end of its chunk (or to `until`), if still here.
    fn at(&self, pos: u64, until: u64) -> Option<Bytes> {
        if pos < self.start {
            return None;
        }
        let mut offset = self.start;
        for c in &self.chunks {
            let end = offset + c.len() as u64;
            if pos < end {
                let to = end.min(until);
                return (to > pos)
                    .then(|| c.slice((pos - offset) as usize..(to - offset) as usize));
            }
            offset = end;
        }
        None
    }

    fn clear(&mut self) {
        self.start += self.bytes as u64;
        self.chunks.clear();
        self.bytes = 0;
    }
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
        // A failed fetch stays in the map for an instant after its readers were told; a
        // request then starts a new fetch rather than sharing a failure it did not see.
        if !matches!(f.progress.borrow().state, State::Failed(..)) {
            return f.clone();
        }
    }
    let (tx, _) = watch::channel(Progress {
        started: false,
        size: None,
        released: 0,
        on_disk: 0,
        verified: false,
        state: State::Running,
    });
    let flight = Arc::new(Flight {
        upload_id: uuid::Uuid::new_v4().hyphenated().to_string(),
        progress: tx,
        recent: Mutex::default(),
    });
    map.insert(key.clone(), flight.clone());
    drop(map);
    let (core, t, digest, f) = (core.clone(), t.clone(), digest.clone(), flight.clone());
    tokio::spawn(async move {
        let result = run(&core, &t, &digest, &f).await;
        // Readers still behind read the file (or the blob) from here on.
        f.recent.lock().expect("recent lock").clear();
        let failed = result.is_err();
        match result {
            Ok(size) => {
                f.progress.send_modify(|p| {
                    p.started = true;
                    p.size = Some(size);
                    p.released = size;
                    p.on_disk = size;
                    p.verified = true;
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
async fn run(core: &Core, t: &Target, digest: &Digest, f: &Arc<Flight>) -> Result<u64, Failure> {
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
    // The network side runs ahead of the disk side by up to `AHEAD` bytes, so receiving
    // the next batch overlaps writing and hashing this one, and a fetch holds a few MiB of
    // body at most however its chunks are cut. It also hands each chunk to the readers.
    let budget = Arc::new(tokio::sync::Semaphore::new(AHEAD));
    let (tx, mut body) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
    let metrics = core.metrics.clone();
    let reader_budget = budget.clone();
    let net = f.clone();
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let c = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            if c.is_empty() {
                continue;
            }
            metrics.mirror_upstream_bytes(c.len() as u64);
            if size.is_some_and(|s| received + c.len() as u64 > s) {
                // Never handed to a reader: its response declared the length.
                let _ = tx.send(Err(format!(
                    "the upstream sent more than the {} bytes it announced",
                    size.unwrap_or(0)
                )));
                return;
            }
            match reader_budget.acquire_many(cost(c.len())).await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            // Every chunk before this one may go to readers now; this one waits for the
            // next (or for the digest check).
            net.recent.lock().expect("recent lock").push(c.clone());
            let before = received;
            received += c.len() as u64;
            net.progress.send_if_modified(|p| {
                let moved = p.released < before;
                p.released = p.released.max(before);
                moved
            });
            // The fetch gave up (its receiver is gone): stop reading.
            if tx.send(Ok(c)).is_err() {
                return;
            }
        }
    });
    // Dropped (closing the budget) however this function ends, so the reader task stops.
    struct Close(Arc<tokio::sync::Semaphore>);
    impl Drop for Close {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = Close(budget.clone());
    let mut sink = Sink::new();
    let mut done = false;
    let mut created = false;
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
        // An empty body still needs its (empty) file: the first append creates it.
        if n == 0 && created {
            continue;
        }
        created = true;
        let permits: usize = batch.iter().map(|c| cost(c.len()) as usize).sum();
        let chunks: crate::store::BodyStream =
            futures_util::stream::iter(batch.into_iter().map(Ok)).boxed();
        // Never fsynced here: the whole file is fsynced once, after its bytes are released.
        sink = sink
            .append(&path, chunks, max, Durability::Lazy)
            .await
            .map_err(Failure::Other)?;
        budget.add_permits(permits);
        // Published before the trim: a reader that misses a chunk in memory finds it on disk.
        let on_disk = sink.len;
        f.progress.send_modify(|p| p.on_disk = on_disk);
        f.recent.lock().expect("recent lock").trim(on_disk);
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
        drop(sink);
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
    // The bytes are the blob: release them all now, so no client waits for the fsync. A
    // failure from here on records nothing (the next pull fetches again), but what was sent
    // was the right blob.
    f.progress.send_modify(|p| {
        p.released = len;
        p.on_disk = len;
        p.verified = true;
    });
    let (store, db, locks) = (core.store.clone(), core.db.clone(), core.blob_locks.clone());
    let (n, d, id) = (t.stored.clone(), digest.clone(), f.upload_id.clone());
    tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
        // fsync acts on the file, whichever descriptor asks: the append's writer is gone.
        std::fs::File::open(&path)?.sync_data()?;
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
    let (back, free) = tokio::sync::mpsc::channel(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        back.try_send(Vec::new()).expect("room for every buffer");
    }
    let reader = Reader {
        rx,
        flight: flight.clone(),
        file: None,
        pos: 0,
        upload: core.store.path_for(Location::Upload(&flight.upload_id)),
        blob: core.store.path_for(Location::Blob(digest)),
        ended: false,
        free,
        back,
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
    flight: Arc<Flight>,
    file: Option<Arc<std::fs::File>>,
    pos: u64,
    upload: std::path::PathBuf,
    blob: std::path::PathBuf,
    ended: bool,
    /// The reader's buffers not lent to hyper, and where a lent one goes back.
    free: tokio::sync::mpsc::Receiver<Vec<u8>>,
    back: tokio::sync::mpsc::Sender<Vec<u8>>,
}

/// A body frame lent to hyper with one of the reader's buffers: the bytes read into the
/// buffer, or a chunk from memory (`chunk`, the buffer then only counts the frame);
/// dropping it (sent) gives the buffer back.
struct Lent {
    buf: Vec<u8>,
    chunk: Option<Bytes>,
    back: tokio::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        match &self.chunk {
            Some(c) => c,
            None => &self.buf,
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // Fails only once the reader is gone, and then the buffer is simply freed.
        let _ = self.back.try_send(std::mem::take(&mut self.buf));
    }
}

impl Reader {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            let p = self.rx.borrow_and_update().clone();
            let failed = match &p.state {
                State::Failed(_, m) => Some(m.clone()),
                _ => None,
            };
            // Bytes released after the digest check are the blob's, even if storing it then
            // failed: a reader that can still read them finishes.
            if let (Some(m), false) = (&failed, p.verified) {
                return Err(io::Error::other(format!("blob fetch failed: {m}")));
            }
            if self.pos < p.released {
                let Some(mut buf) = self.free.recv().await else {
                    return Err(io::Error::other("read buffers lost"));
                };
                let back = self.back.clone();
                let held =
                    (self.flight.recent.lock().expect("recent lock")).at(self.pos, p.released);
                if let Some(chunk) = held {
                    self.pos += chunk.len() as u64;
                    let chunk = Some(chunk);
                    return Ok(Some(Bytes::from_owner(Lent { buf, chunk, back })));
                }
                // Behind the chunks in memory, so on disk (they leave memory only then).
                let readable = p.released.min(p.on_disk);
                if self.pos >= readable {
                    // Trimmed or cleared after our look at the progress: wait for what
                    // comes next (already there if it was published meanwhile).
                    let _ = self.back.try_send(buf);
                    if self.rx.changed().await.is_err() {
                        return Err(io::Error::other("blob fetch vanished"));
                    }
                    continue;
                }
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
                        None => {
                            let _ = self.back.try_send(buf);
                            if let Some(m) = failed {
                                return Err(io::Error::other(format!("blob fetch failed: {m}")));
                            }
                            // Renamed between our look and the publication of `Done`.
                            if self.rx.changed().await.is_err() {
                                return Err(io::Error::other("blob fetch vanished"));
                            }
                            continue;
                        }
                    }
                }
                let file = self.file.clone().expect("opened above");
                let (pos, n) = (self.pos, (readable - self.pos).min(READ as u64) as usize);
                // Keeps its capacity: only the first read into a buffer allocates.
                buf.resize(n, 0);
                let (buf, read) = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let r = file.read_exact_at(&mut buf, pos);
                    (buf, r)
                })
                .await
                .map_err(io::Error::other)?;
                let out = Bytes::from_owner(Lent {
                    buf,
                    chunk: None,
                    back,
                });
                read?;
                self.pos += n as u64;
                return Ok(Some(out));
            }
            if p.verified {
                return Ok(None);
            }
            if let Some(m) = failed {
                return Err(io::Error::other(format!("blob fetch failed: {m}")));
            }
            if self.rx.changed().await.is_err() {
                return Err(io::Error::other("blob fetch vanished"));
            }
        }
    }
}
