//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`: streaming blob reads with single ranges.

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db::{self, schema::*};
use crate::oci::{Digest, ErrorCode, RegistryError, RepoName};
use crate::store::read::FileChunks;

pub async fn get(
    state: &State,
    name: RepoName,
    digest: Digest,
    head: bool,
    req: &Request,
) -> Result<Response, RegistryError> {
    let (n, d) = (name.clone(), digest.clone());
    let store = state.store.clone();
    // One trip to the blocking pool finds the row and opens the file.
    let (rec, file) = state
        .db
        .read(move |tx| {
            let Some(rec) =
                db::blobs::linked(&tx.open_table(BLOBS)?, &tx.open_table(REPO_BLOBS)?, &n, &d)?
            else {
                return Ok(None);
            };
            let file = if head {
                None
            } else {
                Some(store.open_blob(&d).map_err(|e| {
                    RegistryError::internal(format!(
                        "blob {d} has a row but its file is unreadable: {e}"
                    ))
                })?)
            };
            Ok(Some((rec, file)))
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
    match file {
        Some(file) => Ok(reply::stream(b, FileChunks::new(file, start, len))),
        None => Ok(reply::finish(b, "")),
    }
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
