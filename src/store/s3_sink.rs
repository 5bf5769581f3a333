//! The upload sink of the S3 backend: request bodies stream straight into a multipart upload
//! of the bucket, hashed as they arrive (in stream order, on the blocking pool, while the
//! next bytes are received). Chunked PATCHes of any size add to a tail held in memory; each
//! time it reaches a part (`s3::PART`, 8 MiB), the part is sent, up to `PARTS_IN_FLIGHT`
//! (4) parts of one request at once, so the network to the store is kept busy while the
//! body streams in. Memory: the tail plus the parts in flight per session (40 MiB), and at
//! most `PARTS_IN_PROCESS` parts in flight in the whole process, whatever the number of
//! uploads. A request returns only once its parts are stored; part ids are kept in part
//! order whatever order they complete in. No upload bytes touch the local disk.
//!
//! The digest is only known at the end, so the multipart upload writes a temporary object
//! `<prefix>/uploads/<session>`; the finishing request completes it, copies it to the blob's
//! key (a server-side copy) and deletes it, all before the caller commits the row (object
//! before row). A blob that fits in one part is one PUT to its key, no temporary object.
//! (The copy costs about 0.2–0.4 s of a 1 GiB push on Garage, which copies block references,
//! not bytes: not worth a second path that targets the blob's key when the digest is known
//! up front.)
//!
//! The multipart upload's id is journaled (`<root>/uploads/<session>.multipart`, fsynced,
//! see `s3`) before its first part is sent, and the journal stays until the temporary
//! object is deleted. A cancelled or expired session aborts it; a restart loses the hash
//! state and the tail (held in memory), so the session answers BLOB_UPLOAD_UNKNOWN and the
//! client starts over, and the GC aborts the journaled upload (and deletes a temporary
//! object completed just before a crash) when the session expires.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::task::JoinHandle;

use super::s3::{self, Bucket, PART, PARTS_IN_FLIGHT};
use super::upload::{BodyStream, Sink};
use crate::oci::{Digest, ErrorCode, Hasher, RegistryError};

/// Bytes hashed per trip to the blocking pool.
const HASH_BATCH: usize = 1 << 20;
/// Parts on their way to the bucket at once in the whole process, whatever the number of
/// uploads: what bounds the memory of many concurrent pushes (`PART` each, 128 MiB in all)
/// beyond the tail each session holds.
const PARTS_IN_PROCESS: usize = 16;
static PART_PLACES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARTS_IN_PROCESS);

/// One session's upload into the bucket, between requests.
#[derive(Default)]
pub struct Spool {
    /// The multipart upload of the temporary object, once a first part was sent.
    multipart: Option<String>,
    parts: Vec<PartId>,
    /// Bytes after the last part (fewer than `PART`).
    tail: Vec<Bytes>,
    tail_len: usize,
}

/// Every session's spool, by session id. Requests of one session are serialized by the
/// session lock of `http::uploads`, so a spool is taken out for a request and put back.
#[derive(Default)]
pub struct Spools(Mutex<HashMap<String, Spool>>);

impl Spools {
    pub fn begin(&self, id: &str) {
        self.0
            .lock()
            .expect("spool map lock")
            .insert(id.to_string(), Spool::default());
    }

    fn take(&self, id: &str) -> Option<Spool> {
        self.0.lock().expect("spool map lock").remove(id)
    }

    fn put(&self, id: &str, spool: Spool) {
        self.0
            .lock()
            .expect("spool map lock")
            .insert(id.to_string(), spool);
    }

    /// The bytes session `id` holds (every part is a whole `PART` until the last).
    pub fn held(&self, id: &str) -> Option<u64> {
        self.0
            .lock()
            .expect("spool map lock")
            .get(id)
            .map(|s| (s.parts.len() * PART + s.tail_len) as u64)
    }
}

fn lost() -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        "the upload's state was lost (the registry restarted): start the upload again",
    )
}

fn s3_error(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::internal(format!("object store: {e}"))
}

impl Bucket {
    fn upload_key(&self, id: &str) -> Key {
        self.key(&format!("uploads/{id}"))
    }

    /// Appends `body` to session `id`: hashed into `sink` in stream order, whole parts sent
    /// to the bucket (up to `PARTS_IN_FLIGHT` at once, each holding one of the process's
    /// `PARTS_IN_PROCESS` places), the rest kept as the tail. Returns once every part of this
    /// request is stored. On error the session is as it was before (a part sent meanwhile
    /// is simply sent again, under the same number, by a later request).
    pub async fn append(
        &self,
        id: &str,
        journal: &Path,
        sink: Sink,
        mut body: BodyStream,
        max_len: u64,
    ) -> Result<Sink, RegistryError> {
        let mut spool = self.spools.take(id).ok_or_else(lost)?;
        let before = (spool.parts.len(), spool.tail.clone(), spool.tail_len);
        let (mut len, hasher) = sink.into_parts();
        let before_len = len;
        // Out while a batch is hashed on the blocking pool (one batch at a time: the hash
        // sees the bytes in the order they came).
        let mut hasher = Some(hasher);
        let mut hashing: Option<JoinHandle<Hasher>> = None;
        let mut unhashed: Vec<Bytes> = Vec::new();
        let mut unhashed_len = 0usize;
        // Parts on their way, oldest first: their ids join `spool.parts` in that order.
        let mut sending: VecDeque<JoinHandle<object_store::Result<PartId>>> = VecDeque::new();
        let mut body_done = false;
        // For the debug log: how long the body waited for the store (every place in flight
        // taken and a whole part ready), against the request's time.
        let (started, mut waited) = (std::time::Instant::now(), std::time::Duration::ZERO);
        let result: Result<(), RegistryError> = async {
            loop {
                if hashing.is_none()
                    && unhashed_len > 0
                    && (unhashed_len >= HASH_BATCH || body_done)
                {
                    let batch = std::mem::take(&mut unhashed);
                    unhashed_len = 0;
                    let mut h = hasher.take().expect("hasher is back after each batch");
                    hashing = Some(tokio::task::spawn_blocking(move || {
                        for c in &batch {
                            h.update(c);
                        }
                        h
                    }));
                }
                while spool.tail_len >= PART && sending.len() < PARTS_IN_FLIGHT {
                    if spool.multipart.is_none() {
                        self.create_multipart(id, journal, &mut spool).await?;
                    }
                    let permit = PART_PLACES
                        .acquire()
                        .await
                        .map_err(|e| RegistryError::internal(format!("part places: {e}")))?;
                    let upload = spool.multipart.clone().expect("created above");
                    let (s3, key) = (self.s3(), self.upload_key(id));
                    let idx = spool.parts.len() + sending.len();
                    let part = take_part(&mut spool, PART);
                    sending.push_back(s3::spawn(async move {
                        let _permit = permit;
                        s3.put_part(&key, &upload, idx, part).await
                    }));
                }
                if body_done && hashing.is_none() && unhashed_len == 0 && sending.is_empty()
                    && spool.tail_len < PART
                {
                    return Ok(());
                }
                let store_bound = spool.tail_len >= PART;
                let t = std::time::Instant::now();
                tokio::select! {
                    biased;
                    h = async { hashing.as_mut().expect("guarded").await }, if hashing.is_some() => {
                        hashing = None;
                        hasher = Some(h.map_err(|e| RegistryError::internal(format!("hash task: {e}")))?);
                    }
                    sent = async { sending.front_mut().expect("guarded").await }, if !sending.is_empty() => {
                        sending.pop_front();
                        let part_id = match sent
                            .map_err(|e| RegistryError::internal(format!("part task: {e}")))?
                        {
                            Ok(p) => p,
                            // The store no longer knows the multipart upload (aborted behind
                            // our back): the client's only way on is to start again.
                            Err(object_store::Error::NotFound { .. }) => {
                                return Err(RegistryError::new(
                                    ErrorCode::BlobUploadUnknown,
                                    "the object store lost the upload's multipart upload: start the upload again",
                                ))
                            }
                            Err(e) => return Err(s3_error(e)),
                        };
                        spool.parts.push(part_id);
                        touch(journal).await;
                    }
                    chunk = body.next(), if !body_done
                        && unhashed_len < 2 * HASH_BATCH
                        && spool.tail_len < PART => match chunk {
                        None => body_done = true,
                        Some(chunk) => {
                            let chunk = chunk.map_err(|e| {
                                RegistryError::new(
                                    ErrorCode::BlobUploadInvalid,
                                    format!("request body failed: {e}"),
                                )
                            })?;
                            len += chunk.len() as u64;
                            if len > max_len {
                                return Err(RegistryError::new(
                                    ErrorCode::SizeInvalid,
                                    format!("blob exceeds the maximum size of {max_len} bytes"),
                                ));
                            }
                            unhashed_len += chunk.len();
                            unhashed.push(chunk.clone());
                            spool.tail_len += chunk.len();
                            spool.tail.push(chunk);
                        }
                    },
                }
                if store_bound {
                    waited += t.elapsed();
                }
            }
        }
        .await;
        tracing::debug!(
            upload = id,
            bytes = len - before_len,
            ms = started.elapsed().as_millis() as u64,
            waited_for_store_ms = waited.as_millis() as u64,
            "request body sent to the bucket"
        );
        // Nothing of this request may still be on its way once the session is put back: a
        // late part could land after a later request sent that number again.
        for part in sending {
            let _ = part.await;
        }
        if let Some(h) = hashing {
            hasher = h.await.ok();
        }
        match result {
            Ok(()) => {
                self.spools.put(id, spool);
                let hasher = hasher.ok_or_else(|| RegistryError::internal("hash state lost"))?;
                Ok(Sink::from_parts(len, hasher))
            }
            Err(e) => {
                spool.parts.truncate(before.0);
                spool.tail = before.1;
                spool.tail_len = before.2;
                self.spools.put(id, spool);
                Err(e)
            }
        }
    }

    /// Creates (and journals) the multipart upload of session `id`'s temporary object,
    /// before its first part is sent.
    async fn create_multipart(
        &self,
        id: &str,
        journal: &Path,
        spool: &mut Spool,
    ) -> Result<(), RegistryError> {
        let key = self.upload_key(id);
        let (s3, k) = (self.s3(), key.clone());
        let upload = s3::io(async move { s3.create_multipart(&k).await })
            .await
            .map_err(s3_error)?;
        s3::write_journal(journal, &key, &upload).await?;
        spool.multipart = Some(upload);
        Ok(())
    }

    /// Makes session `id`'s bytes the object of `digest` (`size` bytes, already verified):
    /// one PUT of the tail, or the last part, the multipart upload completed, copied to the
    /// blob's key and the temporary object deleted. The session's spool is gone afterwards
    /// either way. Blocking callers use `s3::wait`.
    pub async fn finish_upload(
        &self,
        id: &str,
        journal: PathBuf,
        digest: &Digest,
        size: u64,
    ) -> std::io::Result<()> {
        let mut spool = self
            .spools
            .take(id)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "upload lost"))?;
        let result = async {
            let blob = self.blob_key(digest);
            let tail_len = spool.tail_len;
            let tail = take_part(&mut spool, tail_len);
            let Some(upload) = spool.multipart.clone() else {
                if self.size(digest).await? != Some(size) {
                    self.s3().put(&blob, tail).await.map_err(to_io)?;
                }
                return Ok(());
            };
            let key = self.upload_key(id);
            let mut parts = std::mem::take(&mut spool.parts);
            let t = std::time::Instant::now();
            if tail.content_length() > 0 {
                let p = self
                    .s3()
                    .put_part(&key, &upload, parts.len(), tail)
                    .await
                    .map_err(to_io)?;
                parts.push(p);
            }
            let last_part = t.elapsed();
            self.s3()
                .complete_multipart(&key, &upload, parts)
                .await
                .map_err(to_io)?;
            let completed = t.elapsed();
            // Content addressing: an object already at the blob's key holds these bytes.
            if self.size(digest).await? != Some(size) {
                self.s3().copy(&key, &blob).await.map_err(to_io)?;
            }
            let copied = t.elapsed();
            self.s3().delete(&key).await.map_err(to_io)?;
            // Only now: until the temporary object is gone, the journal names it for the GC.
            let _ = tokio::fs::remove_file(&journal).await;
            tracing::debug!(
                %digest,
                size,
                last_part_ms = last_part.as_millis() as u64,
                complete_ms = (completed - last_part).as_millis() as u64,
                copy_ms = (copied - completed).as_millis() as u64,
                delete_ms = (t.elapsed() - copied).as_millis() as u64,
                "upload finished in the bucket"
            );
            Ok(())
        }
        .await;
        if result.is_err() {
            self.abort_spool(spool, id, &journal).await;
        }
        result
    }

    /// Forgets session `id` (cancelled, expired, or refused at its end) and aborts its
    /// multipart upload, if any. Blocking callers use `s3::wait`.
    pub async fn discard_upload(&self, id: &str, journal: PathBuf) {
        let spool = self.spools.take(id).unwrap_or_default();
        self.abort_spool(spool, id, &journal).await;
    }

    async fn abort_spool(&self, spool: Spool, id: &str, journal: &Path) {
        let aborted = match spool.multipart {
            Some(upload) => self
                .abort_multipart(&self.upload_key(id), &upload)
                .await
                .is_ok(),
            // A journal without a spool: a session from before a restart.
            None if journal.exists() => self.abort_journaled(journal).await.is_ok(),
            None => true,
        };
        if aborted {
            let _ = tokio::fs::remove_file(journal).await;
        }
    }
}

/// The first `n` bytes of the tail, as a part: the chunks as they came (views, not copies),
/// the one across the boundary split.
fn take_part(spool: &mut Spool, n: usize) -> PutPayload {
    let mut out = Vec::new();
    let mut got = 0;
    while got < n {
        let need = n - got;
        let first = &mut spool.tail[0];
        if first.len() <= need {
            got += first.len();
            out.push(spool.tail.remove(0));
        } else {
            got += need;
            out.push(first.split_to(need));
        }
    }
    spool.tail_len -= n;
    out.into_iter().collect()
}

/// Keeps a running upload's journal young, so the GC never takes it for a leftover (as an
/// upload file's mtime moves while it is written).
async fn touch(journal: &Path) {
    let journal = journal.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        std::fs::File::options()
            .append(true)
            .open(&journal)?
            .set_modified(std::time::SystemTime::now())
    })
    .await;
}

fn to_io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e)
        }
        e => std::io::Error::other(e),
    }
}
