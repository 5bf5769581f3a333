//! Writing an upload: the async side waits for the network and the blocking pool only does
//! disk work. Request bytes are gathered into batches; each batch is written to the upload
//! file and hashed by two short blocking jobs that run side by side, while the next batch is
//! being received. So a blob is never held in memory whole, the network, the disk and the
//! hash all work at the same time, and a client that stalls holds no blocking thread: no
//! number of slow uploads can starve the pool that reads, the database and the admin socket
//! need.
//!
//! Two halves, kept apart on purpose: the *session* (`Sink`: how many bytes the upload
//! holds and the hash of all of them, which the digest check at the end relies on) and the
//! *writer* (where the bytes go: today the upload file, opened once and kept open between
//! the `PATCH`es of a session, `Writer`). Only the writer knows about files; a sink that
//! writes elsewhere (an object store) replaces the `Writer` and `Disk` jobs and keeps the
//! session, the batching and the hashing as they are.
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
use futures_util::StreamExt;

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
/// Bytes gathered from the network while the previous batch is on disk; past this, reading
/// the request waits for the disk. With one batch in flight, an upload holds about twice
/// this plus one HTTP read buffer (1 MiB, `server`).
const BATCH: usize = 1 << 20;
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
    /// Only `Disk` jobs (open, write, hash, fsync) run on the blocking pool, one batch at a
    /// time; waiting for the client happens here, on the async side.
    pub async fn append(
        self,
        path: &Path,
        mut body: BodyStream,
        max_len: u64,
        durability: Durability,
    ) -> Result<Sink, RegistryError> {
        let start_len = self.len;
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
        let mut disk = Some(match self.writer {
            Some(writer) => Disk::Open {
                writer,
                hasher: self.hasher,
                len: self.len,
            },
            None => Disk::Closed {
                path: path.to_path_buf(),
                create: self.len == 0,
                hasher: self.hasher,
                len: self.len,
            },
        });
        let mut in_flight: Option<DiskJob> = None;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        let mut received = start_len;
        let mut failure = None;
        let mut body_done = false;
        // Set once the last job (which opens the file even for an empty body, and fsyncs it
        // when asked) is on its way.
        let mut last_sent = false;
        loop {
            if in_flight.is_none() && !last_sent && (!batch.is_empty() || body_done) {
                if let Some(d) = disk.take() {
                    let chunks = std::mem::take(&mut batch);
                    batched = 0;
                    last_sent = body_done;
                    in_flight = Some(Box::pin(d.run(chunks, body_done.then_some(durability))));
                }
            }
            if last_sent && in_flight.is_none() {
                break;
            }
            tokio::select! {
                biased;
                done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                    in_flight = None;
                    match done {
                        Ok(d) => disk = Some(d),
                        Err(e) => {
                            // The disk failed: the client is told, the rest of its body dropped.
                            failure = Some(e);
                            break;
                        }
                    }
                }
                chunk = body.next(), if !body_done && batched < BATCH => match chunk {
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
                        batched += chunk.len();
                        batch.push(chunk);
                    }
                },
            }
        }
        if let Some(job) = in_flight.take() {
            // A failure on the network side: let the batch on disk land, so the caller's
            // truncation sees a file nobody is writing to.
            let _ = job.await;
        }
        match failure {
            Some(f) => {
                if f.code != ErrorCode::BlobUploadInvalid {
                    drain(body).await;
                }
                Err(f)
            }
            None => match disk {
                Some(Disk::Open {
                    hasher,
                    len,
                    writer,
                }) => Ok(Sink {
                    len,
                    hasher,
                    writer: Some(writer),
                }),
                Some(Disk::Closed { hasher, len, .. }) => Ok(Sink {
                    len,
                    hasher,
                    writer: None,
                }),
                None => Err(RegistryError::internal("upload state lost")),
            },
        }
    }

    pub fn digest(self) -> Digest {
        self.hasher.finish()
    }
}

/// A disk job: one batch written and hashed on the blocking pool.
type DiskJob = Pin<Box<dyn Future<Output = Result<Disk, RegistryError>> + Send>>;

/// The disk side of an upload in progress, handed to each batch's jobs and back.
enum Disk {
    /// Not opened yet: the first batch opens it on the blocking pool.
    Closed {
        path: PathBuf,
        create: bool,
        hasher: Hasher,
        len: u64,
    },
    Open {
        writer: Writer,
        hasher: Hasher,
        /// Bytes in the file, this request's included.
        len: u64,
    },
}

impl Disk {
    /// Writes and hashes `chunks` (in two blocking jobs side by side); with `finish`, then
    /// makes the file durable as asked.
    async fn run(
        self,
        chunks: Vec<Bytes>,
        finish: Option<Durability>,
    ) -> Result<Disk, RegistryError> {
        let task_failed =
            |e: tokio::task::JoinError| RegistryError::internal(format!("upload task: {e}"));
        let (writer, hasher, len) = match self {
            Disk::Open {
                writer,
                hasher,
                len,
            } => (writer, hasher, len),
            Disk::Closed {
                path,
                create,
                hasher,
                len,
            } => {
                let file = tokio::task::spawn_blocking(move || open(&path, create))
                    .await
                    .map_err(task_failed)??;
                let writer = Writer {
                    file,
                    kicked: len,
                    kept: None,
                    parked: std::time::Instant::now(),
                };
                (writer, hasher, len)
            }
        };
        let added: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        // Both jobs see every chunk (reference-counted views, not copies).
        let for_hash = chunks.clone();
        let writing = tokio::task::spawn_blocking(move || -> io::Result<Writer> {
            let mut w = writer;
            for chunk in &chunks {
                w.file.write_all(chunk)?;
            }
            let end = len + added;
            if end - w.kicked >= WRITEBACK {
                start_writeback(&w.file, w.kicked, end - w.kicked);
                w.kicked = end;
            }
            if finish == Some(Durability::Sync) {
                w.file.sync_data()?;
            }
            Ok(w)
        });
        let hashing = async {
            if added == 0 {
                return Ok(hasher);
            }
            tokio::task::spawn_blocking(move || {
                let mut hasher = hasher;
                for chunk in &for_hash {
                    hasher.update(chunk);
                }
                hasher
            })
            .await
        };
        let (written, hashed) = futures_util::future::join(writing, hashing).await;
        let writer = written.map_err(task_failed)??;
        let hasher = hashed.map_err(task_failed)?;
        Ok(Disk::Open {
            writer,
            hasher,
            len: len + added,
        })
    }
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

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockyard-upload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
