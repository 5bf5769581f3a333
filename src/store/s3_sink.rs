//! The upload sink of the S3 backend: request bodies stream straight into a multipart upload
//! of the bucket, hashed as they arrive, with at most one part (`s3::PART`, 8 MiB) held in
//! memory per session: chunked PATCHes of any size add to that tail, and each time it reaches
//! a part, the part is sent. No upload bytes touch the local disk.
//!
//! The digest is only known at the end, so the multipart upload writes a temporary object
//! `<prefix>/uploads/<session>`; the finishing request completes it, copies it to the blob's
//! key (a server-side copy) and deletes it, all before the caller commits the row (object
//! before row). A blob that fits in one part is one PUT to its key, no temporary object.
//!
//! The multipart upload's id is journaled (`<root>/uploads/<session>.multipart`, fsynced,
//! see `s3`) before its first part is sent. A cancelled or expired session aborts it; a
//! restart loses the hash state and the tail (held in memory), so the session answers
//! BLOB_UPLOAD_UNKNOWN and the client starts over, and the GC aborts the journaled upload
//! when the session expires.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::ObjectStoreExt;

use super::s3::{self, Bucket, PART};
use super::upload::{BodyStream, Sink};
use crate::oci::{Digest, ErrorCode, RegistryError};

/// Bytes hashed per trip to the blocking pool.
const HASH_BATCH: usize = 1 << 20;

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

    /// Appends `body` to session `id`: hashed into `sink`, whole parts sent to the bucket,
    /// the rest kept as the tail. On error the session is as it was before (a part sent
    /// meanwhile is simply sent again, under the same number, by a later request).
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
        // Out while a batch is hashed on the blocking pool.
        let mut hasher = Some(hasher);
        let mut unhashed: Vec<Bytes> = Vec::new();
        let mut unhashed_len = 0usize;
        let result: Result<(), RegistryError> = async {
            loop {
                let chunk = body.next().await;
                let done = chunk.is_none();
                if let Some(chunk) = chunk {
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
                if unhashed_len >= HASH_BATCH || (done && unhashed_len > 0) {
                    let batch = std::mem::take(&mut unhashed);
                    unhashed_len = 0;
                    let mut h = hasher.take().expect("hasher is back after each batch");
                    h = tokio::task::spawn_blocking(move || {
                        for c in &batch {
                            h.update(c);
                        }
                        h
                    })
                    .await
                    .map_err(|e| RegistryError::internal(format!("hash task: {e}")))?;
                    hasher = Some(h);
                }
                while spool.tail_len >= PART {
                    let part = take_part(&mut spool, PART);
                    self.send_part(id, journal, &mut spool, part).await?;
                }
                if done {
                    return Ok(());
                }
            }
        }
        .await;
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

    /// Sends one part, creating (and journaling) the multipart upload on the first.
    async fn send_part(
        &self,
        id: &str,
        journal: &Path,
        spool: &mut Spool,
        part: Bytes,
    ) -> Result<(), RegistryError> {
        let key = self.upload_key(id);
        let (s3, k) = (self.s3(), key.clone());
        if spool.multipart.is_none() {
            let upload = s3::io(async move { s3.create_multipart(&k).await })
                .await
                .map_err(s3_error)?;
            s3::write_journal(journal, &key, &upload).await?;
            spool.multipart = Some(upload);
        }
        let upload = spool.multipart.clone().expect("created above");
        let (s3, idx) = (self.s3(), spool.parts.len());
        let part_id = s3::io(async move { s3.put_part(&key, &upload, idx, part.into()).await })
            .await
            .map_err(s3_error)?;
        spool.parts.push(part_id);
        // A running upload's journal stays young, so the GC never takes it for a leftover
        // (as an upload file's mtime moves while it is written).
        let journal = journal.to_path_buf();
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::File::options()
                .append(true)
                .open(&journal)?
                .set_modified(std::time::SystemTime::now())
        })
        .await;
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
                    self.s3().put(&blob, tail.into()).await.map_err(to_io)?;
                }
                return Ok(());
            };
            let key = self.upload_key(id);
            let mut parts = std::mem::take(&mut spool.parts);
            if !tail.is_empty() {
                let p = self
                    .s3()
                    .put_part(&key, &upload, parts.len(), tail.into())
                    .await
                    .map_err(to_io)?;
                parts.push(p);
            }
            self.s3()
                .complete_multipart(&key, &upload, parts)
                .await
                .map_err(to_io)?;
            let _ = tokio::fs::remove_file(&journal).await;
            // Content addressing: an object already at the blob's key holds these bytes.
            if self.size(digest).await? != Some(size) {
                self.s3().copy(&key, &blob).await.map_err(to_io)?;
            }
            self.s3().delete(&key).await.map_err(to_io)?;
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
                .s3()
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

/// The first `n` bytes of the tail, as one buffer (a copy of at most one part).
fn take_part(spool: &mut Spool, n: usize) -> Bytes {
    let mut out = BytesMut::with_capacity(n);
    while out.len() < n {
        let need = n - out.len();
        let first = &mut spool.tail[0];
        if first.len() <= need {
            out.extend_from_slice(first);
            spool.tail.remove(0);
        } else {
            out.extend_from_slice(&first.split_to(need));
        }
    }
    spool.tail_len -= n;
    out.freeze()
}

fn to_io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e)
        }
        e => std::io::Error::other(e),
    }
}
