//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`: streaming blob reads with single ranges.

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db::{self, schema::*};
use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::read::FileChunks;
use crate::store::s3::ObjectChunks;
use crate::store::BlobBytes;

pub async fn get(
    state: &State,
    name: RepoName,
    digest: Digest,
    head: bool,
    req: &Request,
) -> Result<Response, RegistryError> {
    let key = format!("blob\0{name}\0{digest}");
    // The hot HEAD (a client checking before it uploads): answered here, without a trip to
    // the blocking pool, when the blob's stripe is free and its record remembered.
    if head {
        if let Some(rec) = remembered_head(state, &key, &digest) {
            let rec = rec.ok_or_else(|| RegistryError::code(ErrorCode::BlobUnknown))?;
            return found(rec, None, digest, req).await;
        }
    }
    let (n, d, db, store) = (
        name.clone(),
        digest.clone(),
        state.db.clone(),
        state.store.clone(),
    );
    // A client that sees the blob here may PUT a manifest naming it without uploading it:
    // the sighting renews the blob's grace, atomically with the read (see `blob_locks`).
    // The same trip to the blocking pool opens the file (with S3, the object is read or
    // redirected to once back here: a HEAD never touches the bucket, the row knows the size).
    let (rec, file) = state
        .with_blob(&digest, move |guard| {
            let rec = db.read_remembered_blocking(
                key,
                |_| std::mem::size_of::<BlobRecord>(),
                |tx| {
                    Ok(db::blobs::linked(
                        &tx.open_table(BLOBS)?,
                        &tx.open_table(REPO_BLOBS)?,
                        &n,
                        &d,
                    )?)
                },
            )?;
            let Some(rec) = rec else {
                return Ok(None);
            };
            guard.touch(&d);
            let file = if head {
                None
            } else {
                Some(store.blob_bytes(&d).map_err(|e| match e.kind() {
                    // Collected since the read above: possible only with a zero lease
                    // (`[gc] grace` and `push_window` both zero), where a sighting protects
                    // nothing.
                    std::io::ErrorKind::NotFound => RegistryError::code(ErrorCode::BlobUnknown),
                    _ => RegistryError::internal(format!(
                        "blob {d} has a row but its file is unreadable: {e}"
                    )),
                })?)
            };
            Ok(Some((rec, file)))
        })
        .await?
        .ok_or_else(|| RegistryError::code(ErrorCode::BlobUnknown))?;
    found(rec, file, digest, req).await
}

/// The hot HEAD's record, when the blob's stripe is free and its record remembered (the
/// sighting stamped under the stripe); `None` sends the request the slow way. Not async: the
/// stripe's guard must not live across an await.
fn remembered_head(state: &State, key: &str, digest: &Digest) -> Option<Option<BlobRecord>> {
    let mut guard = state.blob_locks.try_lock(digest)?;
    let rec = state.db.remembered::<Option<BlobRecord>>(key)?;
    if rec.is_some() {
        guard.touch(digest);
    }
    Some(rec)
}

/// The answer for a blob that exists: its headers, and its bytes unless `file` is `None`.
async fn found(
    rec: BlobRecord,
    file: Option<BlobBytes>,
    digest: Digest,
    req: &Request,
) -> Result<Response, RegistryError> {
    let size = rec.size;
    if let Some(BlobBytes::Object(bucket)) = &file {
        if bucket.config().redirect {
            // The bytes flow from the object store: a short-lived presigned URL, to which the
            // client sends its own Range header (the store answers it).
            let (b, d) = (bucket.clone(), digest.clone());
            let url = crate::store::s3::io(async move { b.presigned_get(&d).await })
                .await
                .map_err(|e| RegistryError::internal(format!("presigning {digest}: {e}")))?;
            let resp = reply::builder(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, url)
                .header("Docker-Content-Digest", digest.to_string());
            return Ok(reply::finish(resp, ""));
        }
    }
    let range = match req.header("range").map(|h| parse_range(h, size)) {
        None => None,
        Some(Ok(r)) => r,
        Some(Err(e)) => return Ok(unsatisfiable(e, size)),
    };
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut b = reply::builder(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    if range.is_some() {
        b = b.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    match file {
        Some(BlobBytes::File(file)) => Ok(reply::stream(b, FileChunks::new(file, start, len))),
        Some(BlobBytes::Object(bucket)) => {
            let chunks = ObjectChunks::open(&bucket, &digest, start, len)
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => RegistryError::code(ErrorCode::BlobUnknown),
                    _ => RegistryError::internal(format!(
                        "blob {digest} has a row but its object is unreadable: {e}"
                    )),
                })?;
            Ok(reply::stream(b, chunks))
        }
        None => Ok(reply::finish(b, "")),
    }
}

/// A 416 that names the blob's length (RFC 9110), so the client can ask again.
fn unsatisfiable(e: RegistryError, size: u64) -> Response {
    let mut resp = reply::error(e);
    if let Ok(v) = format!("bytes */{size}").parse() {
        resp.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    resp
}

/// Parses a single `bytes=` range against a blob of `size` bytes into inclusive bounds;
/// `None` means "send the whole blob". An unsatisfiable or malformed range is 416.
fn parse_range(h: &str, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    let bad = || {
        RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {h:?} not satisfiable for {size} bytes"),
        )
    };
    // RFC 9110 §14.2: a server "MUST ignore a Range header field that contains a range unit it
    // does not understand", and MAY ignore one it does not support: several ranges would need
    // a multipart body, which no registry client asks for, so they get the whole blob.
    // Range units are case-insensitive (RFC 9110 §14.1).
    let h = h.trim();
    let Some(spec) = h
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        // A suffix range: the last `b` bytes.
        let n: u64 = b.parse().map_err(|_| bad())?;
        if n == 0 || size == 0 {
            return Err(bad());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| bad())?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| bad())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

pub async fn delete(
    state: &State,
    name: RepoName,
    digest: Digest,
) -> Result<Response, RegistryError> {
    let removed = state
        .db
        .write(move |tx| db::blobs::unlink(tx, &name, &digest))
        .await?;
    if !removed {
        return Err(RegistryError::code(ErrorCode::BlobUnknown));
    }
    Ok(reply::finish(reply::empty(StatusCode::ACCEPTED), ""))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-1000", 100).unwrap(), Some((50, 99)));
        assert_eq!(parse_range("items=0-1", 100).unwrap(), None);
        assert_eq!(parse_range("BYTES=0-1", 100).unwrap(), Some((0, 1)));
        assert_eq!(parse_range("bytes=0-1,3-4", 100).unwrap(), None);
        for bad in ["bytes=100-", "bytes=5-1", "bytes=x-1", "bytes=-0"] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}
