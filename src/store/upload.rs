//! Writing an upload: request bytes stream through a bounded channel to one blocking task that
//! appends them to the upload file and hashes them, so a blob is never held in memory whole
//! and the network and the disk work at the same time.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::oci::{Algorithm, Digest, ErrorCode, Hasher, RegistryError};

/// A request body, as the HTTP layer hands it over.
pub type BodyStream = BoxStream<'static, io::Result<Bytes>>;

/// How far an upload has got: its length and the hash of everything so far.
pub struct Sink {
    pub len: u64,
    pub hasher: Hasher,
}

const WRITE_BUFFER: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 32;

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
        let mut buf = vec![0u8; WRITE_BUFFER];
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

    /// Appends `body` to the file at `path`, hashing as it goes, and fsyncs it. Stops with
    /// SIZE_INVALID once the upload would pass `max_len`. On error the file may hold a partial
    /// tail; the caller drops the session or truncates back to `self.len`.
    pub async fn append(
        mut self,
        path: &Path,
        mut body: BodyStream,
        max_len: u64,
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
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let start_len = self.len;
        let writer = tokio::task::spawn_blocking(move || -> io::Result<Sink> {
            let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
            while let Some(chunk) = rx.blocking_recv() {
                self.hasher.update(&chunk);
                out.write_all(&chunk)?;
                self.len += chunk.len() as u64;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_data()?;
            Ok(self)
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
            if tx.send(chunk).await.is_err() {
                writer_failed = true; // its error is reported below
                break;
            }
        }
        drop(tx);
        if failure.is_some() || writer_failed {
            drain(body).await;
        }
        let written = writer
            .await
            .map_err(|e| RegistryError::internal(format!("upload writer: {e}")))??;
        match failure {
            Some(f) => Err(f),
            None => Ok(written),
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
            .append(&path, body(b"first"), 100)
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = match sink.append(&path, body(b"second"), 100).await {
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
