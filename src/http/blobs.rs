//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`: streaming blob reads with single ranges.

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db::{self, schema::*};
use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::Location;

const READ_CHUNK: usize = 256 * 1024;

pub async fn get(
    state: &State,
    name: RepoName,
    digest: Digest,
    head: bool,
    req: &Request,
) -> Result<Response, RegistryError> {
    let (n, d, db) = (name.clone(), digest.clone(), state.db.clone());
    // A client that sees the blob here may PUT a manifest naming it without uploading it:
    // the sighting renews the blob's grace, atomically with the read (see `blob_locks`).
    let rec = state
        .with_blob(&digest, move |guard| {
            let rec = db.read_blocking(|tx| {
                Ok(db::blobs::linked(
                    &tx.open_table(BLOBS)?,
                    &tx.open_table(REPO_BLOBS)?,
                    &n,
                    &d,
                )?)
            })?;
            if rec.is_some() {
                guard.touch(&d);
            }
            Ok(rec)
        })
        .await?
        .ok_or_else(|| RegistryError::code(ErrorCode::BlobUnknown))?;
    let size = rec.size;
    let range = match req.header("range") {
        Some(r) => parse_range(r, size)?,
        None => None,
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
    if head {
        return Ok(reply::finish(b, ""));
    }
    let path = state.store.path_for(Location::Blob(&digest));
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| match e.kind() {
            // Collected since the read above: possible only with a zero lease (`[gc] grace` and
            // `push_window` both zero), where a sighting protects nothing.
            std::io::ErrorKind::NotFound => RegistryError::code(ErrorCode::BlobUnknown),
            _ => RegistryError::internal(format!(
                "blob {digest} has a row but its file is unreadable: {e}"
            )),
        })?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await?;
    }
    Ok(reply::stream(
        b,
        ReaderStream::with_capacity(file.take(len), READ_CHUNK),
    ))
}

/// Parses a single `bytes=` range against a blob of `size` bytes into inclusive bounds.
/// Several ranges are not supported (the spec asks for none); an unsatisfiable one is 416.
fn parse_range(h: &str, size: u64) -> Result<Option<(u64, u64)>, RegistryError> {
    let bad = || {
        RegistryError::new(
            ErrorCode::RangeInvalid,
            format!("range {h:?} not satisfiable for {size} bytes"),
        )
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Err(bad());
    };
    if spec.contains(',') {
        return Err(bad());
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
        for bad in [
            "bytes=100-",
            "bytes=5-1",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=x-1",
            "bytes=-0",
        ] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }
}
