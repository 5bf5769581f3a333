//! Writing an upload: the async side waits for the network and the blocking pool only does
//! disk work. Request bytes go to two lanes, one writing the upload file and one hashing,
//! each running short blocking jobs on whatever has queued for it, neither waiting for the
//! other (`Lane`). So a blob is never held in memory whole, the network, the disk and the
//! hash all work at the same time, a stall on one side is absorbed by the other's queue,
//! and a client that stalls holds no blocking thread: no number of slow uploads can starve
//! the pool that reads, the database and the admin socket need.
//!
//! Two halves, kept apart on purpose: the *session* (`Sink`: how many bytes the upload
//! holds and the hash of all of them, which the digest check at the end relies on) and the
//! *writer* (where the bytes go: today the upload file, opened once and kept open between
//! the `PATCH`es of a session, `Writer`). Only the writer knows about files; a sink that
//! writes elsewhere (an object store, `s3_sink`) replaces the `Writer` and its lane and
//! keeps the session as it is.
//!
//! Between requests the writer stays with the session (in `Cursors`), so a chunked upload
//! pays for opening its file once, not per chunk. Kept writers are bounded: at most
//! `KEPT_WRITERS` in the process (past that a session reopens its file per request, as
//! before), and one idle for the body timeout is closed (`Sink::close_idle_writer`). A
//! closed or lost writer costs nothing but a reopen: the session's state is the file plus
//! the hash in memory (rebuilt from the file after a restart).
//!
//! Durability: the bytes of a blob are fsynced once, when the upload is finished and before
//! the file is renamed into the blob store (`Sink::append` with `Durability::Sync`). While
//! the bytes stream in, writeback of what was written is started every `WRITEBACK` bytes, so
//! the disk works during the upload and the final fsync has little left to do. A `PATCH` is
//! not fsynced on its own: after a power loss its tail may be gone, which the session's
//! length (rebuilt from the file) shows, and the digest check at the end refuses anything
//! that does not hash to what the client named.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use crate::oci::{Algorithm, Digest, ErrorCode, Hasher, RegistryError};

/// A request body, as the HTTP layer hands it over.
pub type BodyStream = BoxStream<'static, io::Result<Bytes>>;

/// The hash state of uploads in progress, by upload id. Each session has its own lock, so
/// chunks of one upload are applied in order while different uploads run in parallel. A
/// session missing here (after a restart) is rebuilt by re-reading its file; the GC drops the
/// entries of sessions it expires.
pub type Cursors = std::sync::Mutex<
    std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<Option<Sink>>>>,
>;

/// How far an upload has got: its length and the hash of everything so far, and the writer
/// its bytes went to, while it is kept open.
pub struct Sink {
    pub len: u64,
    pub hasher: Hasher,
    writer: Option<Writer>,
}

/// Where an upload's bytes are written: its file, open for appending, and how far the
/// kernel has been asked to write it back.
struct Writer {
    file: File,
    /// Up to where writeback has been started.
    kicked: u64,
    /// Held while this writer is kept between requests (counted in `KEPT`).
    kept: Option<Kept>,
    /// When the last request left it.
    parked: std::time::Instant,
}

/// Writers kept open between requests, at most, in the process: each holds a file
/// descriptor, and an abandoned session must not hold one for long.
const KEPT_WRITERS: usize = 64;
static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One of the `KEPT_WRITERS` places, given back when the writer is closed.
struct Kept;

impl Kept {
    fn take() -> Option<Kept> {
        use std::sync::atomic::Ordering;
        KEPT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < KEPT_WRITERS).then_some(n + 1)
        })
        .ok()
        .map(|_| Kept)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Read size when rehashing a file.
const READ_BUFFER: usize = 1 << 20;
/// Bytes queued for a lane (writing or hashing) while its job runs; past this, reading the
/// request waits for the slower lane. An upload holds about twice this plus one HTTP read
/// buffer (1 MiB, `server`). 4 MiB (as deep as the channels of the design before the lanes)
/// pushed no faster beyond noise and raised the server's peak RSS during a 1 GiB push from
/// 23 to 32 MiB.
const BATCH: usize = 1 << 20;
/// Bytes a lane gathers before it starts a job, unless the body is complete or has nothing
/// ready: fewer trips to the blocking pool than one per network read.
const JOB: usize = 256 << 10;
/// How much is written before its writeback to disk is started.
const WRITEBACK: u64 = 8 << 20;

/// Whether `Sink::append` makes the file durable before it returns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Durability {
    /// fsync the file: the upload is about to become a blob.
    Sync,
    /// Leave it to the kernel (writeback is already started): a `PATCH` in the middle.
    Lazy,
}

impl Sink {
    pub fn new() -> Sink {
        Sink {
            len: 0,
            hasher: Hasher::new(Algorithm::Sha256),
            writer: None,
        }
    }

    /// A session's state with no writer open: a sink whose bytes go elsewhere (S3) is only
    /// its length and hash.
    pub fn from_parts(len: u64, hasher: Hasher) -> Sink {
        Sink {
            len,
            hasher,
            writer: None,
        }
    }

    /// Its length and hash, closing the writer if one is open.
    pub fn into_parts(self) -> (u64, Hasher) {
        (self.len, self.hasher)
    }

    /// The session's state without its writer: what to go back to if a request fails.
    pub fn snapshot(&self) -> Sink {
        Sink {
            len: self.len,
            hasher: self.hasher.clone(),
            writer: None,
        }
    }

    /// Readies the sink to wait for the session's next request: its writer stays open if
    /// one of the `KEPT_WRITERS` places is free, and is closed otherwise. Also says whether
    /// the writer has just begun to be kept, in which case the caller arranges for
    /// `close_idle_writer` to be called (once per kept writer, not per request).
    pub fn park(mut self) -> (Sink, bool) {
        let mut newly = false;
        if let Some(mut w) = self.writer.take() {
            if w.kept.is_none() {
                w.kept = Kept::take();
                newly = w.kept.is_some();
            }
            if w.kept.is_some() {
                w.parked = std::time::Instant::now();
                self.writer = Some(w);
            }
        }
        (self, newly)
    }

    /// Closes the writer if no request has used it for `idle`; the next request reopens
    /// the file. Returns whether a writer is still open.
    pub fn close_idle_writer(&mut self, idle: std::time::Duration) -> bool {
        if self
            .writer
            .as_ref()
            .is_some_and(|w| w.parked.elapsed() >= idle)
        {
            self.writer = None;
        }
        self.writer.is_some()
    }

    /// Rebuilds the state of an upload file by reading it back, for a session whose in-memory
    /// state was lost (a restart) or that must be hashed with another algorithm.
    pub fn rehash(path: &Path, algorithm: Algorithm) -> io::Result<Sink> {
        let mut f = File::open(path)?;
        let mut hasher = Hasher::new(algorithm);
        let mut buf = vec![0u8; READ_BUFFER];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Sink {
            len,
            hasher,
            writer: None,
        })
    }

    /// Appends `body` to the file at `path`, hashing as it goes; with `Durability::Sync` the
    /// file (with everything appended before) is fsynced. Stops with SIZE_INVALID once the
    /// upload would pass `max_len`. On error the file may hold a partial tail; the caller
    /// drops the session or truncates back to `self.len`.
    ///
    /// Only the jobs of the two lanes (open and write, hash) run on the blocking pool;
    /// waiting for the client happens here, on the async side.
    pub async fn append(
        self,
        path: &Path,
        mut body: BodyStream,
        max_len: u64,
        durability: Durability,
    ) -> Result<Sink, RegistryError> {
        if let Some(w) = &self.writer {
            // A kept writer's file may have been removed since the last request (the GC
            // expired the session, or it was cancelled): like `open`, refuse to go on rather
            // than write into a file that no longer has a name. (fstat: inode metadata in
            // memory, no disk wait.)
            use std::os::unix::fs::MetadataExt;
            if w.file.metadata().map_or(true, |m| m.nlink() == 0) {
                drain(body).await;
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    "the upload session expired",
                ));
            }
        }
        let file = match self.writer {
            Some(writer) => FileSide::Open(writer),
            None => FileSide::Closed {
                path: path.to_path_buf(),
                create: self.len == 0,
            },
        };
        let mut writing = Lane::new(file);
        let mut hashing = Lane::new(self.hasher);
        // Bytes in the upload so far, the writing lane's queue included.
        let mut received = self.len;
        let mut failure = None;
        let mut body_done = false;
        // Set once the writing lane's last job (which opens the file even for an empty body,
        // and fsyncs it when asked) is on its way.
        let mut last_sent = false;
        // Set when the body had nothing ready the last time it was asked: lanes then start on
        // less than `JOB`, so a slow client's bytes reach the file as they come.
        let mut body_idle = false;
        loop {
            let flush = body_done || body_idle;
            if !last_sent && (writing.ready(flush) || body_done && writing.ready_to_finish()) {
                // Where this job's bytes go: after everything handed to the lane before.
                let at = received - writing.queued as u64;
                let (side, chunks) = writing.start();
                last_sent = body_done;
                let finish = body_done.then_some(durability);
                writing.job = Some(Box::pin(async move {
                    blocking(move || side.write(at, &chunks, finish))
                        .await?
                        .map(FileSide::Open)
                }));
            }
            if hashing.ready(flush) {
                let (mut hasher, chunks) = hashing.start();
                hashing.job = Some(Box::pin(blocking(move || {
                    for chunk in &chunks {
                        hasher.update(chunk);
                    }
                    hasher
                })));
            }
            if last_sent && writing.job.is_none() && hashing.job.is_none() {
                break;
            }
            let backlog = writing.queued.max(hashing.queued);
            let readable = !body_done && backlog < BATCH;
            // An idle lane holding less than `JOB`: take what the body has ready now, and if
            // it has nothing, start the lane on what it holds.
            let partial = writing.waiting() || hashing.waiting();
            let ready_now = if readable && partial && !body_idle {
                match body.next().now_or_never() {
                    Some(item) => Some(item),
                    None => {
                        body_idle = true;
                        continue;
                    }
                }
            } else {
                None
            };
            let item = match ready_now {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    done = async { writing.job.as_mut().expect("guarded").await }, if writing.job.is_some() => {
                        // A failed write: the client is told, the rest of its body dropped.
                        if let Err(e) = writing.finish(done) {
                            failure = Some(e);
                            break;
                        }
                        continue;
                    }
                    done = async { hashing.job.as_mut().expect("guarded").await }, if hashing.job.is_some() => {
                        if let Err(e) = hashing.finish(done) {
                            failure = Some(e);
                            break;
                        }
                        continue;
                    }
                    item = body.next(), if readable => item,
                },
            };
            body_idle = false;
            match item {
                None => body_done = true,
                Some(Err(e)) => {
                    failure = Some(RegistryError::new(
                        ErrorCode::BlobUploadInvalid,
                        format!("request body failed: {e}"),
                    ));
                    break;
                }
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    if received > max_len {
                        failure = Some(RegistryError::new(
                            ErrorCode::SizeInvalid,
                            format!("blob exceeds the maximum size of {max_len} bytes"),
                        ));
                        break;
                    }
                    writing.push(chunk.clone());
                    hashing.push(chunk);
                }
            }
        }
        if let Some(job) = writing.job.take() {
            // A failure elsewhere: let the write in progress land, so the caller's
            // truncation sees a file nobody is writing to.
            let _ = job.await;
        }
        if let Some(f) = failure {
            if f.code != ErrorCode::BlobUploadInvalid {
                drain(body).await;
            }
            return Err(f);
        }
        match (writing.idle, hashing.idle) {
            (Some(FileSide::Open(writer)), Some(hasher)) => Ok(Sink {
                len: received,
                hasher,
                writer: Some(writer),
            }),
            _ => Err(RegistryError::internal("upload state lost")),
        }
    }

    pub fn digest(self) -> Digest {
        self.hasher.finish()
    }
}

/// A job of one lane on the blocking pool, giving back that lane's state.
type Job<T> = Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send>>;

/// One side of an upload's disk work: writing the file, or hashing. Both see every chunk
/// (reference-counted views, not copies), each in order, but neither waits for the other: a
/// lane that finishes a job takes whatever has queued up meanwhile, so a stall on one side
/// (writeback throttling, a descheduled hashing thread) is absorbed by the other's queue
/// instead of stopping both. Reading the request waits only when a queue is full
/// (`BATCH`), which bounds what an upload holds in memory.
struct Lane<T> {
    /// The lane's state while no job holds it.
    idle: Option<T>,
    job: Option<Job<T>>,
    queue: Vec<Bytes>,
    queued: usize,
}

impl<T> Lane<T> {
    fn new(state: T) -> Lane<T> {
        Lane {
            idle: Some(state),
            job: None,
            queue: Vec::new(),
            queued: 0,
        }
    }

    fn push(&mut self, chunk: Bytes) {
        self.queued += chunk.len();
        self.queue.push(chunk);
    }

    /// Whether a job should start now: the lane is idle and has enough queued to be worth a
    /// trip to the blocking pool (`JOB`), or, with `flush` (the body is complete or has
    /// nothing ready), anything at all.
    fn ready(&self, flush: bool) -> bool {
        self.job.is_none()
            && self.idle.is_some()
            && (self.queued >= JOB || (flush && !self.queue.is_empty()))
    }

    /// Idle with something queued, short of `JOB`: waiting for more, or for the body to
    /// pause.
    fn waiting(&self) -> bool {
        self.job.is_none() && self.idle.is_some() && !self.queue.is_empty()
    }

    /// Takes the lane's state back from its job, which has ended with `done`.
    fn finish(&mut self, done: Result<T, RegistryError>) -> Result<(), RegistryError> {
        self.job = None;
        self.idle = Some(done?);
        Ok(())
    }

    /// Takes the lane's state and everything queued for its next job.
    fn start(&mut self) -> (T, Vec<Bytes>) {
        self.queued = 0;
        (
            self.idle.take().expect("a lane starts only when idle"),
            std::mem::take(&mut self.queue),
        )
    }
}

impl Lane<FileSide> {
    /// The writing lane also runs once at the end with nothing queued: that job opens the
    /// file for an empty body and fsyncs it when asked.
    fn ready_to_finish(&self) -> bool {
        self.job.is_none() && self.idle.is_some()
    }
}

/// The upload file, as the writing lane holds it.
enum FileSide {
    /// Not opened yet: the lane's first job opens it.
    Closed {
        path: PathBuf,
        create: bool,
    },
    Open(Writer),
}

impl FileSide {
    /// Writes `chunks` at the end of the file (which holds `at` bytes), starting writeback
    /// every `WRITEBACK` bytes; with `finish`, then makes the file durable as asked.
    fn write(
        self,
        at: u64,
        chunks: &[Bytes],
        finish: Option<Durability>,
    ) -> Result<Writer, RegistryError> {
        let mut w = match self {
            FileSide::Open(w) => w,
            FileSide::Closed { path, create } => Writer {
                file: open(&path, create)?,
                kicked: at,
                kept: None,
                parked: std::time::Instant::now(),
            },
        };
        let mut end = at;
        for chunk in chunks {
            w.file.write_all(chunk)?;
            end += chunk.len() as u64;
        }
        if end - w.kicked >= WRITEBACK {
            start_writeback(&w.file, w.kicked, end - w.kicked);
            w.kicked = end;
        }
        if finish == Some(Durability::Sync) {
            w.file.sync_data()?;
        }
        Ok(w)
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::internal(format!("upload task: {e}")))
}

/// Opens an upload file for appending. Only the first bytes of an upload create it:
/// appending to a session whose file has gone (expired by the GC while this request waited)
/// must fail, since recreating it would let the hash state of the old bytes vouch for a file
/// holding only new ones.
fn open(path: &Path, create: bool) -> Result<File, RegistryError> {
    match OpenOptions::new().create(create).append(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Err(RegistryError::new(
            ErrorCode::BlobUploadUnknown,
            "the upload session expired",
        )),
        other => Ok(other?),
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink::new()
    }
}

/// Reads and discards what is left of a refused request body, for a bounded amount and time,
/// so that the client reads our error instead of a connection reset: closing a socket with
/// unread data makes the kernel send RST, which can destroy the response in flight.
async fn drain(mut body: BodyStream) {
    const MAX_BYTES: u64 = 256 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);
    let _ = tokio::time::timeout(MAX_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            seen += chunk.len() as u64;
            if seen > MAX_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Cuts an upload file back to `len` bytes, undoing a chunk that failed half-way.
pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_data()
}

/// Asks the kernel to start writing `len` bytes at `offset` to disk without waiting, so an
/// upload's final fsync finds most of it already written. Advisory: errors are ignored (the
/// fsync that follows reports real ones).
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own, with no pointers.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &'static [u8]) -> BodyStream {
        futures_util::stream::iter([Ok(Bytes::from_static(bytes))]).boxed()
    }

    /// Regression: a session expired (file removed) between a chunk's session check and its
    /// append recreated the file with only the new chunk, and the finished upload, hashed
    /// from the remembered state, was promoted as a blob with the wrong bytes.
    #[tokio::test]
    async fn a_continued_upload_whose_file_vanished_fails_instead_of_recreating_it() {
        let dir = tempfile_dir();
        let path = dir.join("upload");
        let sink = Sink::new()
            .append(&path, body(b"first"), 100, Durability::Sync)
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = match sink
            .append(&path, body(b"second"), 100, Durability::Sync)
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("append recreated a vanished upload file"),
        };
        assert_eq!(err.code, ErrorCode::BlobUploadUnknown);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Parked writers are bounded: past `KEPT_WRITERS`, a session's file is closed (and its
    /// next request reopens it); closing a kept writer gives its place back.
    #[tokio::test]
    async fn at_most_kept_writers_stay_open_between_requests() {
        let dir = tempfile_dir();
        let mut sinks = Vec::new();
        for i in 0..KEPT_WRITERS + 3 {
            let sink = Sink::new()
                .append(
                    &dir.join(format!("u{i}")),
                    body(b"x"),
                    100,
                    Durability::Lazy,
                )
                .await
                .unwrap();
            assert!(sink.writer.is_some(), "an append leaves its writer open");
            let (sink, newly) = sink.park();
            assert_eq!(newly, i < KEPT_WRITERS, "upload {i}");
            assert_eq!(sink.writer.is_some(), i < KEPT_WRITERS, "upload {i}");
            sinks.push(sink);
        }
        // A kept writer carries on: the next chunk goes to the same open file.
        let first = sinks.remove(0);
        let first = first
            .append(&dir.join("u0"), body(b"yz"), 100, Durability::Sync)
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.join("u0")).unwrap(), b"xyz");
        let (mut first, newly) = first.park();
        assert!(!newly, "still holds its place");
        assert!(first.close_idle_writer(std::time::Duration::from_secs(3600)));
        assert!(!first.close_idle_writer(std::time::Duration::ZERO));
        // That place is free again.
        let last = dir.join(format!("u{}", KEPT_WRITERS + 2));
        let (late, newly) = sinks
            .pop()
            .unwrap()
            .append(&last, body(b"y"), 100, Durability::Lazy)
            .await
            .unwrap()
            .park();
        assert!(newly && late.writer.is_some());
        drop((sinks, late));
        assert_eq!(KEPT.load(std::sync::atomic::Ordering::Acquire), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A client that sends a little and pauses: what it sent reaches the file (and the hash)
    /// while it pauses, not once `JOB` bytes have gathered.
    #[tokio::test]
    async fn bytes_of_a_pausing_client_reach_the_file_while_it_pauses() {
        let dir = tempfile_dir();
        let path = dir.join("upload");
        let (resume, resumed) = tokio::sync::oneshot::channel::<()>();
        let body = futures_util::stream::iter([Ok(Bytes::from_static(b"early"))])
            .chain(futures_util::stream::once(async move {
                let _ = resumed.await;
                Ok(Bytes::from_static(b"late"))
            }))
            .boxed();
        let append = tokio::spawn({
            let path = path.clone();
            async move { Sink::new().append(&path, body, 100, Durability::Sync).await }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read(&path).unwrap_or_default() != b"early" {
            assert!(
                std::time::Instant::now() < deadline,
                "paused bytes not written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        resume.send(()).unwrap();
        let sink = append.await.unwrap().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"earlylate");
        assert_eq!(sink.len, 9);
        let mut want = Hasher::new(Algorithm::Sha256);
        want.update(b"earlylate");
        assert_eq!(sink.digest(), want.finish());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockyard-upload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
