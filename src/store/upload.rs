//! Writing an upload: request bytes stream through bounded channels to two blocking tasks,
//! one appending them to the upload file and one hashing them, so a blob is never held in
//! memory whole and the network, the disk and the hash all work at the same time.
//!
//! Durability: the bytes of a blob are fsynced once, when the upload is finished and before
//! the file is renamed into the blob store (`Sink::append` with `Durability::Sync`). While
//! the bytes stream in, writeback of what was written is started every `WRITEBACK` bytes, so
//! the disk works during the upload and the final fsync has little left to do. A `PATCH` is
//! not fsynced on its own: after a power loss its tail may be gone, which the session's
//! length (rebuilt from the file) shows, and the digest check at the end refuses anything
//! that does not hash to what the client named.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

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

/// How far an upload has got: its length and the hash of everything so far.
pub struct Sink {
    pub len: u64,
    pub hasher: Hasher,
}

/// Read size when rehashing a file.
const READ_BUFFER: usize = 1 << 20;
/// Chunks queued between the network and each blocking task. A chunk is at most the HTTP
/// read buffer (1 MiB, `http::serve`), so an upload holds about 4 MiB at most.
const CHANNEL_DEPTH: usize = 4;
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
        }
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
        Ok(Sink { len, hasher })
    }

    /// Appends `body` to the file at `path`, hashing as it goes; with `Durability::Sync` the
    /// file (with everything appended before) is fsynced. Stops with SIZE_INVALID once the
    /// upload would pass `max_len`. On error the file may hold a partial tail; the caller
    /// drops the session or truncates back to `self.len`.
    pub async fn append(
        self,
        path: &Path,
        mut body: BodyStream,
        max_len: u64,
        durability: Durability,
    ) -> Result<Sink, RegistryError> {
        // Only the first bytes of an upload create its file. Appending to a session whose
        // file has gone (expired by the GC while this request waited) must fail: recreating
        // it would let the hash state of the old bytes vouch for a file holding only new ones.
        let file = match OpenOptions::new()
            .create(self.len == 0)
            .append(true)
            .open(path)
        {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.len > 0 => {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    "the upload session expired",
                ))
            }
            other => other?,
        };
        let (wtx, mut wrx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let (htx, mut hrx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let start_len = self.len;
        let writer = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            let mut file = file;
            let (mut written, mut kicked) = (0u64, 0u64);
            while let Some(chunk) = wrx.blocking_recv() {
                file.write_all(&chunk)?;
                written += chunk.len() as u64;
                if written - kicked >= WRITEBACK {
                    start_writeback(&file, start_len + kicked, written - kicked);
                    kicked = written;
                }
            }
            if durability == Durability::Sync {
                file.sync_data()?;
            }
            Ok(written)
        });
        let mut hasher = self.hasher;
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = hrx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        let mut received = start_len;
        let mut failure = None;
        let mut writer_failed = false;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(RegistryError::new(
                        ErrorCode::BlobUploadInvalid,
                        format!("request body failed: {e}"),
                    ));
                    break;
                }
            };
            received += chunk.len() as u64;
            if received > max_len {
                failure = Some(RegistryError::new(
                    ErrorCode::SizeInvalid,
                    format!("blob exceeds the maximum size of {max_len} bytes"),
                ));
                break;
            }
            // Both tasks see every chunk (a reference-counted view, not a copy).
            if htx.send(chunk.clone()).await.is_err() || wtx.send(chunk).await.is_err() {
                writer_failed = true; // its error is reported below
                break;
            }
        }
        drop((wtx, htx));
        if failure.is_some() || writer_failed {
            drain(body).await;
        }
        let task_failed =
            |e: tokio::task::JoinError| RegistryError::internal(format!("upload task: {e}"));
        let written = writer.await.map_err(task_failed)??;
        let hasher = hashing.await.map_err(task_failed)?;
        match failure {
            Some(f) => Err(f),
            None => Ok(Sink {
                len: start_len + written,
                hasher,
            }),
        }
    }

    pub fn digest(self) -> Digest {
        self.hasher.finish()
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

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dockyard-upload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
