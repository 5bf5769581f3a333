//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`. Bytes are stored and served
//! exactly as pushed, with the media type they were pushed as.

use futures_util::StreamExt;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db;
use crate::oci::{manifest, Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::store::BodyStream;

pub async fn get(
    state: &State,
    name: RepoName,
    reference: Reference,
    head: bool,
) -> Result<Response, RegistryError> {
    let key = format!("manifest\0{name}\0{reference}\0{head}");
    let repo = name.clone();
    let found = state
        .db
        .read_remembered(
            key,
            |f: &Option<db::manifests::Found>| {
                f.as_ref().map_or(0, |(_, r, b)| {
                    r.size as usize + b.as_ref().map_or(0, Vec::len)
                })
            },
            move |tx| db::manifests::get(tx, &name, &reference, !head),
        )
        .await?;
    if !head && found.is_some() {
        note_pull(state, repo);
    }
    let Some((digest, rec, body)) = found else {
        return Err(RegistryError::code(ErrorCode::ManifestUnknown));
    };
    let b = reply::builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, rec.media_type)
        .header(header::CONTENT_LENGTH, rec.size)
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""));
    Ok(reply::finish(b, body.unwrap_or_default()))
}

/// Records that `repo` was pulled, at most once a minute per repository and off the request's
/// path: the write commits without fsync, in the background (see `db::pulls`).
pub(super) fn note_pull(state: &State, repo: RepoName) {
    if !state.pulls.due(repo.as_str()) {
        return;
    }
    let db = state.db.clone();
    tokio::spawn(async move {
        let at = db::now();
        let r = db
            .write_unsynced(move |tx| db::pulls::record(tx, repo.as_str(), at))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e.message, "cannot record a pull");
        }
    });
}

/// Reads a manifest body, refusing it once it passes the configured maximum.
async fn read_body(mut body: BodyStream, max: u64) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("request body failed: {e}"),
            )
        })?;
        if (out.len() + chunk.len()) as u64 > max {
            // Spec: a registry "SHOULD return a 413 Payload Too Large" for an oversized manifest.
            return Err(RegistryError::new(
                ErrorCode::ManifestInvalid,
                format!("manifest exceeds the maximum size of {max} bytes"),
            )
            .with_status(413));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub async fn put(
    state: &State,
    name: RepoName,
    reference: Reference,
    req: &Request,
    body: BodyStream,
) -> Result<Response, RegistryError> {
    let body = read_body(body, state.config.max_manifest_size).await?;
    let parsed = manifest::parse(&body, req.header("content-type"))?;
    let mut tags = Vec::new();
    let digest = match &reference {
        Reference::Digest(expected) => {
            let actual = Digest::of(expected.algorithm(), &body);
            if &actual != expected {
                return Err(RegistryError::new(
                    ErrorCode::DigestInvalid,
                    format!("manifest has digest {actual}, not {expected}"),
                )
                .with_detail(serde_json::json!({ "digest": expected.to_string() })));
            }
            actual
        }
        Reference::Tag(t) => {
            tags.push(t.clone());
            Digest::sha256_of(&body)
        }
    };
    // OCI 1.1.1: further tags may be given as `?tag=` parameters in one PUT.
    for (k, v) in &req.query {
        if k == "tag" {
            tags.push(Tag::parse(v).ok_or_else(|| {
                RegistryError::new(ErrorCode::ManifestInvalid, format!("invalid tag {v:?}"))
            })?);
        }
    }
    let subject = parsed.subject.as_ref().map(|s| s.digest.to_string());
    let (n, d, t) = (name.clone(), digest.clone(), tags.clone());
    let policies = state.config.policies.clone();
    let sparse = state.config.sparse_indexes;
    state
        .db
        .write(move |tx| {
            if !policies.is_empty() {
                db::policy::check_put(tx, &n, &d, &parsed.blobs, &t, &policies)?;
            }
            db::manifests::put(tx, &n, &d, &parsed, &body, &t, sparse)
        })
        .await?;
    let mut b = reply::empty(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/manifests/{digest}"))
        .header("Docker-Content-Digest", digest.to_string());
    if let Some(s) = subject {
        b = b.header("OCI-Subject", s);
    }
    for t in &tags {
        b = b.header("OCI-Tag", t.as_str());
    }
    Ok(reply::finish(b, ""))
}

pub async fn delete(
    state: &State,
    name: RepoName,
    reference: Reference,
) -> Result<Response, RegistryError> {
    let policies = state.config.policies.clone();
    let removed = state
        .db
        .write(move |tx| {
            if !policies.is_empty() {
                db::policy::check_delete(tx, &name, &reference, &policies)?;
            }
            match &reference {
                Reference::Digest(d) => db::manifests::delete(tx, &name, d),
                Reference::Tag(t) => db::manifests::delete_tag(tx, &name, t),
            }
        })
        .await?;
    if !removed {
        return Err(RegistryError::code(ErrorCode::ManifestUnknown));
    }
    Ok(reply::finish(reply::empty(StatusCode::ACCEPTED), ""))
}
