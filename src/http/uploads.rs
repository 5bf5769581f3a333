//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (plain, monolithic with `?digest=`, or a
//! cross-repository `?mount=` with or without `&from=`), `PATCH` chunks, `PUT ?digest=` to
//! finish, `GET` status, `DELETE` to cancel.
//!
//! The push data path, top to bottom: the body streams into `uploads/<id>` while it is hashed
//! (`store::upload`), the file is fsynced, the digest checked, the file renamed into
//! `blobs/…` and that rename fsynced (`Store::promote`), and only then one write transaction
//! records the blob, links it into the repository and forgets the session. A crash before
//! the commit leaves a file without a row, which the GC removes; never a row without a file.
//! The promote and the record happen under the blob's lock (`blob_locks`), which also stamps
//! the blob as seen, so the GC cannot delete it between this and the manifest PUT.
//!
//! With the S3 backend the body streams into a multipart upload of the bucket instead
//! (`store::s3_sink`), and the finishing PUT completes the object before the same commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::auth::Caller;
use super::{reply, Request, State};
use crate::db;
use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::upload::{self, Durability};
use crate::store::{BodyStream, Location, Sink};

fn upload_location(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// `Range: 0-<last byte>`, as the spec shows it; an empty upload reports `0-0`.
fn range_header(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

fn progress(status: StatusCode, name: &RepoName, id: &str, len: u64) -> Response {
    reply::finish(
        reply::empty(status)
            .header(header::LOCATION, upload_location(name, id))
            .header(header::RANGE, range_header(len))
            .header("Docker-Upload-UUID", id),
        "",
    )
}

pub async fn start(
    state: &State,
    name: RepoName,
    req: &Request,
    body: BodyStream,
    caller: &Caller,
) -> Result<Response, RegistryError> {
    if let Some(mount) = req.query("mount") {
        let mounted = match req.query("from") {
            Some(from) => try_mount(state, &name, mount, from).await?,
            None => try_mount_any(state, &name, mount, caller).await?,
        };
        if let Some(resp) = mounted {
            return Ok(resp);
        }
        // Spec: "If the registry does not support cross-repository mounting or is unable to
        // mount the requested blob, it SHOULD return a 202" and start a normal upload.
    }
    ensure_space(state)?;
    let id = uuid::Uuid::new_v4().hyphenated().to_string();
    if let Some(digest) = req.query("digest") {
        let expected = parse_digest(digest)?;
        if let Some(bucket) = state.store.bucket() {
            // Straight into the bucket (`store::s3_sink`): no file under uploads/.
            bucket.begin_upload(&id);
            let journal = state.store.journal_for(&id);
            let result = async {
                let sink = bucket
                    .append(&id, &journal, Sink::new(), body, state.config.max_blob_size)
                    .await?;
                commit_blob(state, &name, &id, sink, &expected, false).await
            }
            .await;
            if result.is_err() {
                discard(state, &id).await;
            }
            return result;
        }
        let path = state.store.path_for(Location::Upload(&id));
        let result = async {
            let sink = Sink::new()
                .append(&path, body, state.config.max_blob_size, Durability::Sync)
                .await?;
            commit_blob(state, &name, &id, sink, &expected, false).await
        }
        .await;
        if result.is_err() {
            state.store.remove_upload(&id)?;
        }
        return result;
    }
    if let Some(bucket) = state.store.bucket() {
        bucket.begin_upload(&id);
    }
    let (n, i) = (name.clone(), id.clone());
    // A session lost in a crash only makes the client start its upload again.
    state
        .db
        .write_unsynced(move |tx| db::uploads::create(tx, &i, &n))
        .await?;
    Ok(progress(StatusCode::ACCEPTED, &name, &id, 0))
}

async fn try_mount(
    state: &State,
    name: &RepoName,
    mount: &str,
    from: &str,
) -> Result<Option<Response>, RegistryError> {
    let digest = parse_digest(mount)?;
    let from = RepoName::parse(from).ok_or_else(|| {
        RegistryError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {from:?}"),
        )
    })?;
    let (to, d, db) = (name.clone(), digest.clone(), state.db.clone());
    let mounted = state
        .with_blob(&digest, move |guard| {
            let (t, m) = (to, d.clone());
            let mounted = db.write_grouped(move |tx| db::blobs::mount(tx, &from, &t, &m))?;
            if mounted.is_some() {
                guard.touch(&d);
            }
            Ok(mounted)
        })
        .await?;
    Ok(mounted.map(|_| created(name, &digest)))
}

/// A mount without `from` (OCI 1.1: "the registry MAY treat the mount parameter as the
/// digest of a blob in any repository"), as zot does: any repository that holds the blob and
/// that the caller may pull will do. A blob only in repositories the caller cannot pull is
/// answered exactly like one that does not exist (202, an upload session), so the answer
/// reveals nothing.
async fn try_mount_any(
    state: &State,
    name: &RepoName,
    mount: &str,
    caller: &Caller,
) -> Result<Option<Response>, RegistryError> {
    let digest = parse_digest(mount)?;
    let (to, d, db) = (name.clone(), digest.clone(), state.db.clone());
    let caller = caller.clone();
    let mounted = state
        .with_blob(&digest, move |guard| {
            // Searched in a read transaction (it visits every repository), then mounted in
            // a short write transaction that checks the source again; the stripe keeps the
            // GC away in between.
            let from = db.read_blocking(|tx| {
                db::blobs::holder(tx, &d, |repo| {
                    caller.may(repo, crate::auth::users::Action::Pull)
                })
            })?;
            let Some(from) = from else {
                return Ok(None);
            };
            let mounted = db.write_blocking(|tx| db::blobs::mount(tx, &from, &to, &d))?;
            if mounted.is_some() {
                guard.touch(&d);
            }
            Ok(mounted)
        })
        .await?;
    Ok(mounted.map(|_| created(name, &digest)))
}

fn created(name: &RepoName, digest: &Digest) -> Response {
    reply::finish(
        reply::empty(StatusCode::CREATED)
            .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
            .header("Docker-Content-Digest", digest.to_string()),
        "",
    )
}

/// Refuses new upload bytes while free space is below `[storage] min_free`, so pulls (and the
/// database) keep working on a nearly full disk.
fn ensure_space(state: &State) -> Result<(), RegistryError> {
    let free = state.store.free_space()?;
    if free < state.config.min_free {
        return Err(RegistryError::storage_full(format!(
            "the registry's disk is nearly full ({free} bytes free, min_free is {}); uploads are refused until space is freed",
            state.config.min_free
        )));
    }
    Ok(())
}

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|_| {
        RegistryError::new(ErrorCode::DigestInvalid, format!("invalid digest {s:?}"))
            .with_detail(serde_json::json!({ "digest": s }))
    })
}

/// Checks that the session exists and belongs to this repository.
async fn session(state: &State, name: &RepoName, id: &str) -> Result<(), RegistryError> {
    let i = id.to_string();
    let rec = state.db.read(move |tx| db::uploads::get(tx, &i)).await?;
    match rec {
        Some(r) if r.repo == name.as_str() => Ok(()),
        _ => Err(RegistryError::code(ErrorCode::BlobUploadUnknown)),
    }
}

fn cursor(state: &State, id: &str) -> Arc<tokio::sync::Mutex<Option<Sink>>> {
    let mut map = state.cursors.lock().expect("cursor map lock");
    map.entry(id.to_string()).or_default().clone()
}

/// Takes the session's lock, checking the session before (so unknown ids never enter the
/// cursor map) and again after: a request that waited behind a finishing PUT or a cancel must
/// not act on, and recreate the file of, a session that is gone. The check before is needed
/// only to create the session's entry: a session already in the map (every chunk after the
/// first) is checked once, under its lock, which is the check that matters.
async fn lock_session(
    state: &State,
    name: &RepoName,
    id: &str,
) -> Result<tokio::sync::OwnedMutexGuard<Option<Sink>>, RegistryError> {
    let known = state
        .cursors
        .lock()
        .expect("cursor map lock")
        .get(id)
        .cloned();
    let slot = match known {
        Some(cursor) => cursor.lock_owned().await,
        None => {
            session(state, name, id).await?;
            cursor(state, id).lock_owned().await
        }
    };
    session(state, name, id).await?;
    Ok(slot)
}

/// The session's hash state, rebuilt from its file when this process has not seen it.
async fn current(state: &State, id: &str, slot: &mut Option<Sink>) -> Result<Sink, RegistryError> {
    if let Some(s) = slot.take() {
        return Ok(s);
    }
    if let Some(bucket) = state.store.bucket() {
        // Nothing to rebuild from: the bytes are parts in the bucket and a tail in memory.
        // Only a session that holds nothing yet starts from an empty hash.
        return if bucket.upload_len(id) == Some(0) {
            Ok(Sink::new())
        } else {
            Err(RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                "the upload's state was lost (the registry restarted): start the upload again",
            ))
        };
    }
    let path = state.store.path_for(Location::Upload(id));
    tokio::task::spawn_blocking(
        move || match Sink::rehash(&path, crate::oci::Algorithm::Sha256) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Sink::new()),
            other => other,
        },
    )
    .await
    .map_err(|e| RegistryError::internal(e.to_string()))?
    .map_err(Into::into)
}

/// Closes the session's kept upload file once no request has used it for the body timeout:
/// a client that abandons a chunked upload holds no file descriptor for long (its session
/// stays resumable: the next request reopens the file).
fn close_when_idle(state: &State, slot: &tokio::sync::OwnedMutexGuard<Option<Sink>>) {
    let idle = state.config.limits.body_timeout;
    let session = Arc::downgrade(tokio::sync::OwnedMutexGuard::mutex(slot));
    tokio::spawn(async move {
        let mut wait = idle;
        loop {
            tokio::time::sleep(wait).await;
            let Some(session) = session.upgrade() else {
                return;
            };
            // A session busy with a request now is used, not idle: look again later.
            let open = match session.try_lock() {
                Ok(mut s) => s.as_mut().is_some_and(|s| s.close_idle_writer(idle)),
                Err(_) => true,
            };
            if !open {
                return;
            }
            wait = idle / 2;
        }
    });
}

/// The first and last byte offsets a `Content-Range` names: `0-1023`, `bytes 0-1023/*`,
/// `bytes=0-1023` or `bytes 0-1023/4096` (a complete length, when given, must cover the
/// range).
fn content_range(h: &str) -> Option<(u64, u64)> {
    let h = h
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let (range, total) = match h.split_once('/') {
        Some((r, t)) => (r, Some(t.trim())),
        None => (h, None),
    };
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total_ok = match total {
        None | Some("*") => true,
        Some(t) => t.parse::<u64>().is_ok_and(|t| t > b),
    };
    (b >= a && total_ok).then_some((a, b))
}

fn range_error(message: String) -> RegistryError {
    RegistryError::new(ErrorCode::BlobUploadInvalid, message).with_status(416)
}

/// A chunk's length as its `Content-Range` declares it, and the flag its body raises when it
/// runs past that length.
type Declared = Option<(u64, Arc<AtomicBool>)>;

/// With a `Content-Range`, the chunk must start at the upload's offset and hold exactly the
/// bytes the range names: its `Content-Length` (when sent) must agree up front, and the body
/// is cut off with an error the moment it runs past the range. Returns the chunk's length
/// and the flag that the body overran it. A chunk the header misdescribes is refused whole
/// (416), as Distribution refuses it, rather than half-applied.
fn check_range(
    req: &Request,
    offset: u64,
    body: BodyStream,
) -> Result<(BodyStream, Declared), RegistryError> {
    let Some(cr) = req.header("content-range") else {
        return Ok((body, None));
    };
    let (start, end) =
        content_range(cr).ok_or_else(|| range_error(format!("unreadable Content-Range {cr:?}")))?;
    if start != offset {
        return Err(range_error(format!(
            "chunk {cr:?} does not start at the upload's offset {offset}"
        )));
    }
    let len = end - start + 1;
    if let Some(cl) = req.header("content-length") {
        if cl.trim().parse::<u64>().ok() != Some(len) {
            return Err(range_error(format!(
                "Content-Range {cr:?} names {len} bytes but Content-Length is {cl}"
            )));
        }
    }
    let overran = Arc::new(AtomicBool::new(false));
    let flag = overran.clone();
    let mut seen = 0u64;
    let body = body
        .map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > len {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("body longer than its Content-Range"));
            }
            Ok(chunk)
        })
        .boxed();
    Ok((body, Some((len, overran))))
}

/// Appends the request body to the session, undoing a partial append on failure so the
/// session is exactly as it was before the request.
async fn append(
    state: &State,
    id: &str,
    sink: Sink,
    req: &Request,
    body: BodyStream,
    durability: Durability,
) -> Result<(Sink, Sink), RegistryError> {
    let before = sink.snapshot();
    let (body, declared) = check_range(req, sink.len, body)?;
    if let Some(bucket) = state.store.bucket() {
        // The S3 sink undoes a failed append itself; a body shorter than its Content-Range
        // must fail inside it too, so that the session is left as it was.
        let body = match &declared {
            Some((len, _)) => short_body_fails(body, *len),
            None => body,
        };
        let journal = state.store.journal_for(id);
        return match bucket
            .append(id, &journal, sink, body, state.config.max_blob_size)
            .await
        {
            Ok(after) => Ok((before, after)),
            Err(_) if declared.is_some() => Err(range_error(format!(
                "the body does not hold the bytes its Content-Range {:?} names",
                req.header("content-range").unwrap_or("")
            ))),
            Err(e) => Err(e),
        };
    }
    let path = state.store.path_for(Location::Upload(id));
    let result = sink
        .append(&path, body, state.config.max_blob_size, durability)
        .await;
    let error = match (result, &declared) {
        (Ok(after), Some((len, _))) if after.len - before.len != *len => range_error(format!(
            "the body holds {} bytes, Content-Range names {len}",
            after.len - before.len
        )),
        (Ok(after), _) => return Ok((before, after)),
        (Err(_), Some((len, overran))) if overran.load(Ordering::Relaxed) => range_error(format!(
            "the body holds more than the {len} bytes of its Content-Range"
        )),
        (Err(e), _) => e,
    };
    let len = before.len;
    let _ = tokio::task::spawn_blocking(move || upload::truncate(&path, len)).await;
    Err(error)
}

/// `body`, failing at its end when it held fewer than `len` bytes.
fn short_body_fails(body: BodyStream, len: u64) -> BodyStream {
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = seen.clone();
    let body = body.map(move |chunk| {
        let chunk = chunk?;
        counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Ok(chunk)
    });
    let end = futures_util::stream::once(async move {
        (seen.load(Ordering::Relaxed) < len)
            .then(|| Err(std::io::Error::other("body shorter than its Content-Range")))
    })
    .filter_map(|e| async move { e });
    body.chain(end).boxed()
}

/// Forgets an S3 upload session's bytes: its multipart upload aborted, its spool dropped.
async fn discard(state: &State, id: &str) {
    if let Some(bucket) = state.store.bucket().cloned() {
        let (i, journal) = (id.to_string(), state.store.journal_for(id));
        crate::store::s3::io(async move { bucket.discard_upload(&i, journal).await }).await;
    }
}

pub async fn patch(
    state: &State,
    name: RepoName,
    id: String,
    req: &Request,
    body: BodyStream,
) -> Result<Response, RegistryError> {
    let mut slot = lock_session(state, &name, &id).await?;
    ensure_space(state)?;
    let sink = current(state, &id, &mut slot).await?;
    let len = sink.len;
    // The S3 sink keeps no file to rebuild the hash from: a refused chunk puts it back.
    let keep = state.store.bucket().is_some().then(|| sink.snapshot());
    let result = append(state, &id, sink, req, body, Durability::Lazy).await;
    if result.is_err() {
        *slot = keep;
    }
    match result {
        Ok((_, after)) => {
            let len = after.len;
            let (after, newly_kept) = after.park();
            *slot = Some(after);
            if newly_kept {
                close_when_idle(state, &slot);
            }
            Ok(progress(StatusCode::ACCEPTED, &name, &id, len))
        }
        Err(e) if e.status() == 416 => {
            // Tell the client where the upload really stands so it can resume.
            let mut resp = reply::error(e);
            if let Ok(v) = range_header(len).parse() {
                resp.headers_mut().insert(header::RANGE, v);
            }
            Ok(resp)
        }
        Err(e) => Err(e),
    }
}

pub async fn finish(
    state: &State,
    name: RepoName,
    id: String,
    req: &Request,
    body: BodyStream,
) -> Result<Response, RegistryError> {
    let expected = parse_digest(req.query("digest").unwrap_or(""))?;
    let mut slot = lock_session(state, &name, &id).await?;
    // Closing an upload without a final chunk writes nothing, so it is allowed on a full disk.
    let has_body = match req.header("content-length") {
        Some(len) => len != "0",
        None => req.header("transfer-encoding").is_some(),
    };
    if has_body {
        ensure_space(state)?;
    }
    let sink = current(state, &id, &mut slot).await?;
    let keep = state.store.bucket().is_some().then(|| sink.snapshot());
    let (before, after) = match append(state, &id, sink, req, body, Durability::Sync).await {
        Ok(v) => v,
        Err(e) => {
            *slot = keep;
            return Err(e);
        }
    };
    let result = commit_blob(state, &name, &id, after, &expected, true).await;
    if result.is_err() && state.store.bucket().is_some() {
        // The S3 sink cannot take the final chunk back: the upload is cancelled, as
        // Distribution cancels an upload whose digest is wrong.
        discard(state, &id).await;
        state.cursors.lock().expect("cursor map lock").remove(&id);
    } else if result.is_err() {
        // A wrong digest leaves the session as it was before this request.
        let path = state.store.path_for(Location::Upload(&id));
        let len = before.len;
        let _ = tokio::task::spawn_blocking(move || upload::truncate(&path, len)).await;
        *slot = Some(before);
    } else {
        state.cursors.lock().expect("cursor map lock").remove(&id);
    }
    result
}

/// Verifies the finished upload against the digest the client named, moves the file into
/// the blob store, and records it: file before row.
async fn commit_blob(
    state: &State,
    name: &RepoName,
    id: &str,
    sink: Sink,
    expected: &Digest,
    session: bool,
) -> Result<Response, RegistryError> {
    let path = state.store.path_for(Location::Upload(id));
    let size = sink.len;
    let actual = if expected.algorithm() == sink.hasher.algorithm() {
        sink.digest()
    } else if state.store.bucket().is_some() {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!(
                "with the S3 backend uploads are hashed with {} only, not {}",
                sink.hasher.algorithm().as_str(),
                expected.algorithm().as_str()
            ),
        ));
    } else {
        let p = path.clone();
        let alg = expected.algorithm();
        tokio::task::spawn_blocking(move || Sink::rehash(&p, alg))
            .await
            .map_err(|e| RegistryError::internal(e.to_string()))??
            .digest()
    };
    if &actual != expected {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("upload has digest {actual}, not {expected}"),
        )
        .with_detail(serde_json::json!({ "digest": expected.to_string() })));
    }
    let (store, db) = (state.store.clone(), state.db.clone());
    let (n, d, i) = (name.clone(), expected.clone(), id.to_string());
    // Promote and record under the blob's lock: a GC deleting the same digest either finishes
    // (row and file gone) before `promote` looks for the file, or starts after the row is
    // back and the blob is stamped as seen. Never a row whose file GC is about to unlink.
    state
        .with_blob(expected, move |guard| {
            if let Some(bucket) = store.bucket().cloned() {
                // The object is complete before the row's transaction begins.
                let (ii, dd, journal) = (i.clone(), d.clone(), store.journal_for(&i));
                crate::store::s3::wait(async move {
                    bucket.finish_upload(&ii, journal, &dd, size).await
                })
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        RegistryError::code(ErrorCode::BlobUploadUnknown)
                    }
                    _ => e.into(),
                })?;
            } else {
                if size == 0 && !path.exists() {
                    std::fs::File::create(&path)?.sync_all()?;
                }
                store.promote(&i, &d).map_err(|e| match e.kind() {
                    // The session's file went away under us: the GC expired it.
                    std::io::ErrorKind::NotFound => {
                        RegistryError::code(ErrorCode::BlobUploadUnknown)
                    }
                    _ => e.into(),
                })?;
            }
            let (digest, upload) = (d.clone(), session.then_some(i));
            db.write_grouped(move |tx| {
                db::blobs::record(tx, &n, &digest, size, upload.as_deref())
            })?;
            guard.touch(&d);
            Ok(())
        })
        .await?;
    Ok(created(name, expected))
}

pub async fn status(state: &State, name: RepoName, id: String) -> Result<Response, RegistryError> {
    let mut slot = lock_session(state, &name, &id).await?;
    let sink = current(state, &id, &mut slot).await?;
    let len = sink.len;
    *slot = Some(sink);
    Ok(progress(StatusCode::NO_CONTENT, &name, &id, len))
}

pub async fn cancel(state: &State, name: RepoName, id: String) -> Result<Response, RegistryError> {
    let _held = lock_session(state, &name, &id).await?;
    let i = id.clone();
    state
        .db
        .write(move |tx| db::uploads::delete(tx, &i))
        .await?;
    state.store.remove_upload(&id)?;
    discard(state, &id).await;
    state.cursors.lock().expect("cursor map lock").remove(&id);
    Ok(reply::finish(reply::empty(StatusCode::NO_CONTENT), ""))
}

#[cfg(test)]
mod tests {
    use super::content_range;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("0-1023"), Some((0, 1023)));
        assert_eq!(content_range("1024-2047"), Some((1024, 2047)));
        assert_eq!(content_range("bytes 10-20/*"), Some((10, 20)));
        assert_eq!(content_range("bytes=10-20"), Some((10, 20)));
        assert_eq!(content_range("bytes 10-20/21"), Some((10, 20)));
        assert_eq!(content_range("bytes 10-20/20"), None);
        assert_eq!(content_range("20-10"), None);
        assert_eq!(content_range("x"), None);
    }
}
