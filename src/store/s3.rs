//! Blob bytes in an S3-compatible bucket (`[storage] backend = "s3"`), through Apache Arrow's
//! `object_store` (SigV4 signing, multipart uploads, presigned URLs, retries).
//!
//! ```text
//! <bucket>/<prefix>/
//! ├── blobs/sha256/abcdef…        one object per blob, named by its digest
//! ├── uploads/<session>           the temporary object of an upload in progress
//! └── (snapshots/…)               the database snapshots (`[storage.s3] snapshot_interval`)
//! ```
//!
//! Request bodies stream into the bucket through `s3_sink` (a multipart upload per session).
//! Files (an import's staged blobs, `migrate-storage`) are copied by `Bucket::put_file`. Only
//! once the object is complete does the caller commit the blob's row (object before row). A
//! multipart upload in progress is named by a journal file `<root>/uploads/<id>.multipart`
//! (its key and S3 upload id), written and fsynced right after the upload is created and
//! removed once it is completed or aborted, so a crash leaves a file the GC finds and aborts
//! (`Bucket::abort_journaled`).
//!
//! This module knows S3; the rest of `store` decides when to call it.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::signer::Signer;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::config::S3Config;
use crate::oci::Digest;

/// Size of each part of a multipart upload: above S3's (and Garage's) 5 MiB minimum, and
/// what one upload holds in memory per part in flight.
pub const PART: usize = 8 << 20;
/// Parts of one blob uploaded at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Suffix of the journal file that names a multipart upload in progress.
pub const JOURNAL_SUFFIX: &str = ".multipart";

/// A connected bucket: the handle every S3 operation goes through, and where our keys start.
#[derive(Clone)]
pub struct Bucket {
    s3: Arc<AmazonS3>,
    /// Every key starts with this (may be empty).
    prefix: String,
    config: Arc<S3Config>,
    /// Upload sessions streaming into the bucket (`s3_sink`).
    pub(super) spools: Arc<super::s3_sink::Spools>,
}

impl std::fmt::Debug for Bucket {
    // Never the secret: only where the bucket is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("endpoint", &self.config.endpoint)
            .field("bucket", &self.config.bucket)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// object_store's HTTP goes through our own reqwest stack (rustls with ring, the system's
/// roots, our user agent: `http_client`), not a client of its own with another TLS provider.
#[derive(Debug)]
struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = crate::http_client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Content-Length is the object's size: no transparent decompression.
            .no_gzip()
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

impl Bucket {
    /// Builds the client from `[storage.s3]` (reading the secret key file). Makes no request:
    /// [`Bucket::check`] does.
    pub fn connect(config: &S3Config) -> Result<Bucket, String> {
        let secret = std::fs::read_to_string(&config.secret_access_key_file)
            .map_err(|e| {
                format!(
                    "storage.s3.secret_access_key_file {}: {e}",
                    config.secret_access_key_file.display()
                )
            })?
            .trim()
            .to_string();
        if secret.is_empty() {
            return Err(format!(
                "storage.s3.secret_access_key_file {}: the file is empty",
                config.secret_access_key_file.display()
            ));
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(secret)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_http_connector(Connector);
        if let Some(endpoint) = &config.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let s3 = b.build().map_err(|e| format!("storage.s3: {e}"))?;
        Ok(Bucket {
            s3: Arc::new(s3),
            prefix: config.prefix.clone(),
            config: Arc::new(config.clone()),
            spools: Arc::default(),
        })
    }

    /// The handle, for code that needs plain object operations (the database snapshots).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.s3.clone()
    }

    pub(super) fn s3(&self) -> Arc<AmazonS3> {
        self.s3.clone()
    }

    /// Starts the in-memory side of an upload session (see `s3_sink`).
    pub fn begin_upload(&self, id: &str) {
        self.spools.begin(id);
    }

    /// How many bytes upload session `id` holds, if this process holds its state.
    pub fn upload_len(&self, id: &str) -> Option<u64> {
        self.spools.held(id)
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// `rel` under the prefix: every key of ours is made here.
    pub fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    pub fn blob_key(&self, digest: &Digest) -> Key {
        self.key(&format!(
            "blobs/{}/{}",
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// One request that proves the endpoint answers and the key may list the bucket: what
    /// the server does at start, so a wrong endpoint or key fails there and not at a pull.
    pub async fn check(&self) -> Result<(), String> {
        self.s3
            .list_with_delimiter(Some(&self.key("blobs")))
            .await
            .map(|_| ())
            .map_err(|e| format!("bucket {:?}: {e}", self.config.bucket))
    }

    /// The size of the blob's object, or `None` when there is none.
    pub async fn size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match self.s3.head(&self.blob_key(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(to_io(e)),
        }
    }

    /// The bytes `start..start+len` of a blob, as a stream.
    pub async fn read(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
    ) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        if len == 0 {
            // An empty range is not a valid Range header; an empty blob has no bytes to get.
            return Ok(futures_util::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..start + len)),
            ..Default::default()
        };
        let got = self
            .s3
            .get_opts(&self.blob_key(digest), options)
            .await
            .map_err(to_io)?;
        Ok(got.into_stream().map_err(to_io).boxed())
    }

    /// A presigned GET URL of the blob, valid for `[storage.s3] redirect_lifetime`. A client
    /// following it sends its own Range header, which the object store answers.
    pub async fn presigned_get(&self, digest: &Digest) -> io::Result<String> {
        self.s3
            .signed_url(
                object_store::signer::Method::GET,
                &self.blob_key(digest),
                self.config.redirect_lifetime,
            )
            .await
            .map(|u| u.to_string())
            .map_err(to_io)
    }

    /// Writes the blob's object (`size` bytes) into a new file at `to`, hashing it on the
    /// way, and fsyncs it; a short object or other bytes are an `InvalidData` error (and the
    /// file is removed).
    pub async fn download(&self, digest: &Digest, size: u64, to: &Path) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let result = async {
            let mut out = tokio::fs::File::create(to).await?;
            let mut hasher = crate::oci::Hasher::new(digest.algorithm());
            let mut len = 0u64;
            let mut stream = self.read(digest, 0, size).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
                out.write_all(&chunk).await?;
            }
            out.sync_all().await?;
            let actual = hasher.finish();
            if len != size || &actual != digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("object of {digest} holds {len} bytes hashing to {actual}"),
                ));
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(to).await;
        }
        result
    }

    /// Deletes a blob's object; one that is already gone is not an error.
    pub async fn delete(&self, digest: &Digest) -> io::Result<()> {
        match self.s3.delete(&self.blob_key(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Every blob object under the prefix: its digest (keys that are not a digest are
    /// skipped), size and last-modified time (Unix seconds).
    pub async fn list_blobs(&self) -> io::Result<Vec<(Digest, u64, i64)>> {
        let base = self.key("blobs");
        let mut out = Vec::new();
        let mut listing = self.s3.list(Some(&base));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(to_io)?;
            let mut parts = meta.location.parts().collect::<Vec<_>>();
            let (Some(hex), Some(alg)) = (parts.pop(), parts.pop()) else {
                continue;
            };
            if let Ok(d) = format!("{}:{}", alg.as_ref(), hex.as_ref()).parse::<Digest>() {
                out.push((d, meta.size, meta.last_modified.timestamp()));
            }
        }
        Ok(out)
    }

    /// Copies the finished upload file at `path` (`size` bytes, already verified to hash to
    /// `digest`) into the blob's object: one PUT when it fits in a part, else a multipart
    /// upload whose id is journaled at `journal` while it runs. An object of the same size
    /// already there is kept (content addressing: same digest, same bytes).
    pub async fn put_file(
        &self,
        path: &Path,
        journal: &Path,
        digest: &Digest,
        size: u64,
    ) -> io::Result<()> {
        if self.size(digest).await? == Some(size) {
            return Ok(());
        }
        let key = self.blob_key(digest);
        let file = open_blocking(path.to_path_buf()).await?;
        if size <= PART as u64 {
            let (_, bytes) = read_part(file, PART).await?;
            if bytes.len() as u64 != size {
                return Err(short_file(path, size));
            }
            self.s3.put(&key, bytes.into()).await.map_err(to_io)?;
            return Ok(());
        }
        let id = self.s3.create_multipart(&key).await.map_err(to_io)?;
        write_journal(journal, &key, &id).await?;
        match self.put_parts(file, &key, &id, size).await {
            Ok(parts) => {
                self.s3
                    .complete_multipart(&key, &id, parts)
                    .await
                    .map_err(to_io)?;
            }
            Err(e) => {
                // Best effort: a failed abort leaves the journal for the GC to retry.
                if self.s3.abort_multipart(&key, &id).await.is_ok() {
                    let _ = tokio::fs::remove_file(journal).await;
                }
                return Err(e);
            }
        }
        let _ = tokio::fs::remove_file(journal).await;
        Ok(())
    }

    /// Reads the file part by part (on the blocking pool) and uploads up to
    /// `PARTS_IN_FLIGHT` parts at once: memory stays at a few parts whatever the blob's size.
    async fn put_parts(
        &self,
        file: std::fs::File,
        key: &Key,
        id: &String,
        size: u64,
    ) -> io::Result<Vec<PartId>> {
        let count = size.div_ceil(PART as u64) as usize;
        let reads = futures_util::stream::unfold(Some(file), |file| async move {
            let file = file?;
            match read_part(file, PART).await {
                Ok((_, b)) if b.is_empty() => None,
                Ok((file, b)) => Some((Ok(b), Some(file))),
                Err(e) => Some((Err(e), None)),
            }
        });
        let mut parts = reads
            .enumerate()
            .map(|(i, bytes)| async move {
                let bytes = bytes?;
                self.s3
                    .put_part(key, id, i, bytes.into())
                    .await
                    .map(|p| (i, p))
                    .map_err(to_io)
            })
            .buffer_unordered(PARTS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        if parts.len() != count {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("upload file has {} parts, expected {count}", parts.len()),
            ));
        }
        parts.sort_by_key(|(i, _)| *i);
        Ok(parts.into_iter().map(|(_, p)| p).collect())
    }

    /// Whether the multipart upload a journal's text (`key\nid\n`) names still takes parts:
    /// sends it a one-byte part. For tests and diagnosis of a stale upload, never on a
    /// request's path.
    pub async fn multipart_alive(&self, journal_text: &str) -> io::Result<bool> {
        let mut lines = journal_text.lines();
        let (Some(key), Some(id)) = (lines.next(), lines.next()) else {
            return Ok(false);
        };
        match self
            .s3
            .put_part(
                &Key::from(key),
                &id.to_string(),
                0,
                Bytes::from_static(b"x").into(),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Aborts the multipart upload a journal file names (left by a crash in
    /// [`Bucket::put_file`] or an upload session) and removes the journal.
    pub async fn abort_journaled(&self, journal: &Path) -> io::Result<()> {
        let text = tokio::fs::read_to_string(journal).await?;
        let mut lines = text.lines();
        if let (Some(key), Some(id)) = (lines.next(), lines.next()) {
            self.abort_multipart(&Key::from(key), id).await?;
        }
        // A journal torn by the crash (no id yet) names nothing that exists.
        tokio::fs::remove_file(journal).await
    }

    /// Aborts a multipart upload (one already gone, aborted or completed, is not an error).
    /// When it wrote a session's temporary object (`uploads/<session>`), that object is
    /// deleted too: a crash between completing it and deleting it after the copy to the
    /// blob's key leaves it behind, and nothing else ever reads it.
    pub(super) async fn abort_multipart(&self, key: &Key, id: &str) -> io::Result<()> {
        match self.s3.abort_multipart(key, &id.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(to_io(e)),
        }
        if key.prefix_matches(&self.key("uploads")) {
            match self.s3.delete(key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(to_io(e)),
            }
        }
        Ok(())
    }
}

fn to_io(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

fn short_file(path: &Path, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{} is not {size} bytes long", path.display()),
    )
}

async fn open_blocking(path: PathBuf) -> io::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || std::fs::File::open(path))
        .await
        .map_err(io::Error::other)?
}

/// Up to `max` bytes from the file's current position (fewer only at its end).
async fn read_part(file: std::fs::File, max: usize) -> io::Result<(std::fs::File, Bytes)> {
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(max);
        (&file).take(max as u64).read_to_end(&mut buf)?;
        Ok((file, Bytes::from(buf)))
    })
    .await
    .map_err(io::Error::other)?
}

/// Names a multipart upload in progress, durably, before any part is sent.
pub(super) async fn write_journal(journal: &Path, key: &Key, id: &str) -> io::Result<()> {
    let (journal, text) = (journal.to_path_buf(), format!("{key}\n{id}\n"));
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&journal)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })
    .await
    .map_err(io::Error::other)?
}

/// The runtime every S3 request runs on, whoever asks: the request handlers, the GC and fsck
/// on their blocking threads, the CLI without a runtime of its own. One runtime owns the
/// connection pool, so no pooled connection outlives the runtime that drives it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dockyard-s3")
            .enable_all()
            .build()
            .expect("cannot start the S3 runtime")
    })
}

/// Runs `f` on the S3 runtime; for async callers.
pub async fn io<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    match runtime().spawn(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Starts `f` on the S3 runtime without waiting for it.
pub(super) fn spawn<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> tokio::task::JoinHandle<T> {
    runtime().spawn(f)
}

/// Runs `f` on the S3 runtime and waits for it; for blocking threads (never a runtime's
/// worker thread).
pub fn wait<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    runtime().block_on(f)
}

/// A blob's bytes from the bucket, for a response body: a task on the S3 runtime pulls the
/// object's stream and hands chunks over a short channel, so at most a few chunks are held
/// and a client that goes away ends the GET (the task's send fails).
pub struct ObjectChunks {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
}

impl ObjectChunks {
    /// Opens the bytes `start..start+len` of the blob (a missing object fails here, before
    /// any status is sent) and starts pumping them.
    pub async fn open(bucket: &Bucket, digest: &Digest, start: u64, len: u64) -> io::Result<Self> {
        let (b, d) = (bucket.clone(), digest.clone());
        let mut stream = io(async move { b.read(&d, start, len).await }).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        runtime().spawn(async move {
            while let Some(chunk) = stream.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(ObjectChunks { rx })
    }
}

impl futures_util::Stream for ObjectChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// The blob a journal's multipart upload was writing (from its key), if it can be read.
pub fn journal_digest(journal: &Path) -> Option<Digest> {
    let text = std::fs::read_to_string(journal).ok()?;
    let key = text.lines().next()?;
    let mut parts = key.rsplit('/');
    let (hex, alg) = (parts.next()?, parts.next()?);
    format!("{alg}:{hex}").parse().ok()
}
