//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`. Bytes are stored and served
//! exactly as pushed, with the media type they were pushed as.

use futures_util::StreamExt;
use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db;
use crate::events::{Action, Appended, RequestInfo, Subject};
use crate::oci::{manifest, Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::store::BodyStream;

/// Who asked, for the events this request may record; `None` when no webhook is configured.
pub fn request_info(state: &State, req: &Request, user: Option<&str>) -> Option<RequestInfo> {
    if state.config.webhooks.is_empty() {
        return None;
    }
    Some(RequestInfo {
        // The access log's `request{id=N}`; a new UUID only if the accept loop gave none.
        id: req
            .id
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |n| n.to_string()),
        addr: req.remote.map(|a| a.to_string()).unwrap_or_default(),
        host: req.header("host").unwrap_or_default().to_string(),
        method: req.method.to_string(),
        useragent: req.header("user-agent").unwrap_or_default().to_string(),
        actor: user.unwrap_or_default().to_string(),
        scheme: if state.config.tls.is_some() {
            "https"
        } else {
            "http"
        },
    })
}

pub async fn get(
    state: &State,
    name: RepoName,
    reference: Reference,
    head: bool,
    who: Option<RequestInfo>,
) -> Result<Response, RegistryError> {
    let key = format!("manifest\0{name}\0{reference}\0{head}");
    let repo = name.clone();
    // A pull event, when an endpoint takes them: its tag (if pulled by tag). Built before
    // `reference` moves into the read, and only then, to keep the hot path as it was.
    let pull_tag = match (&who, head) {
        (Some(_), false) if state.config.webhooks.any(Action::Pull) => Some(match &reference {
            Reference::Tag(t) => Some(t.to_string()),
            Reference::Digest(_) => None,
        }),
        _ => None,
    };
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
    let Some((digest, rec, body)) = found else {
        return Err(RegistryError::code(ErrorCode::ManifestUnknown));
    };
    if !head {
        if let (Some(tag), Some(who)) = (pull_tag, who) {
            record_pull(
                state,
                repo.clone(),
                digest.to_string(),
                rec.clone(),
                tag,
                who,
            );
        }
        note_pull(state, repo);
    }
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

/// Appends a pull event off the request's path, without fsync (see `events` for why a crash
/// may lose the last pull events but never a push's).
fn record_pull(
    state: &State,
    repo: RepoName,
    digest: String,
    rec: db::schema::ManifestRecord,
    tag: Option<String>,
    who: RequestInfo,
) {
    let (db, hub, hooks, metrics) = (
        state.db.clone(),
        state.core.events.clone(),
        state.config.webhooks.clone(),
        state.metrics.clone(),
    );
    tokio::spawn(async move {
        let h = (hub.clone(), hooks.clone());
        let r = db
            .write_unsynced(move |tx| {
                let subject = Subject {
                    repo: repo.as_str(),
                    digest: Some(digest.clone()),
                    media_type: &rec.media_type,
                    size: rec.size,
                    tag: tag.as_deref(),
                };
                h.0.record(tx, &h.1, Action::Pull, &subject, &who)
            })
            .await;
        match r {
            Ok(appended) => hub.committed(&hooks, &metrics, &appended),
            Err(e) => tracing::warn!(error = %e.message, "cannot record a pull event"),
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
    who: Option<RequestInfo>,
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
    let (hub, hooks) = (state.core.events.clone(), state.config.webhooks.clone());
    let appended = state
        .db
        .write(move |tx| {
            if !policies.is_empty() {
                db::policy::check_put(tx, &n, &d, &parsed.blobs, &t, &policies)?;
            }
            db::manifests::put(tx, &n, &d, &parsed, &body, &t, sparse)?;
            // The push events commit with the push (see `events`): one per tag, or one
            // without a tag for a push by digest.
            let mut appended = Appended::default();
            if let Some(who) = &who {
                let names: Vec<Option<&str>> = match t.is_empty() {
                    true => vec![None],
                    false => t.iter().map(|t| Some(t.as_str())).collect(),
                };
                for tag in names {
                    let subject = Subject {
                        repo: n.as_str(),
                        digest: Some(d.to_string()),
                        media_type: &parsed.media_type,
                        size: body.len() as u64,
                        tag,
                    };
                    appended.merge(hub.record(tx, &hooks, Action::Push, &subject, who)?);
                }
            }
            Ok(appended)
        })
        .await?;
    notify(state, &appended);
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
    who: Option<RequestInfo>,
) -> Result<Response, RegistryError> {
    if !delete_recorded(state, name, reference, who).await? {
        return Err(RegistryError::code(ErrorCode::ManifestUnknown));
    }
    Ok(reply::finish(reply::empty(StatusCode::ACCEPTED), ""))
}

/// Deletes a tag or a manifest by the API's rules (policy checks, then `db::manifests`) with
/// its delete event, in one transaction; false when there was nothing to delete. Shared with
/// the web UI.
pub async fn delete_recorded(
    state: &State,
    name: RepoName,
    reference: Reference,
    who: Option<RequestInfo>,
) -> Result<bool, RegistryError> {
    let policies = state.config.policies.clone();
    let (hub, hooks) = (state.core.events.clone(), state.config.webhooks.clone());
    let (removed, appended) = state
        .db
        .write(move |tx| {
            if !policies.is_empty() {
                db::policy::check_delete(tx, &name, &reference, &policies)?;
            }
            let removed = match &reference {
                Reference::Digest(d) => db::manifests::delete(tx, &name, d),
                Reference::Tag(t) => db::manifests::delete_tag(tx, &name, t),
            }?;
            let appended = match (&who, removed) {
                (Some(who), true) => hub.record_delete(tx, &hooks, &name, &reference, who)?,
                _ => Appended::default(),
            };
            Ok((removed, appended))
        })
        .await?;
    notify(state, &appended);
    Ok(removed)
}

/// After the commit: wakes the delivery tasks of the endpoints that got events.
fn notify(state: &State, appended: &Appended) {
    if !appended.0.is_empty() {
        state
            .core
            .events
            .committed(&state.config.webhooks, &state.metrics, appended);
    }
}
