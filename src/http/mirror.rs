//! Mirror routing: which requests `mirror` answers, and its answers as HTTP.
//!
//! A request's repository name belongs to a mirror when containerd's `?ns=` names one of the
//! mirror's namespaces (the name is then unprefixed: `library/alpine?ns=docker.io` is stored
//! as `docker.io/library/alpine`), when its first component is a mirror's prefix, or, for a
//! read of a name not stored here, when a mirror is the `default` (dockerd's
//! `registry-mirrors` sends unprefixed names). The route's name is rewritten to the stored
//! name before authorization, so grants apply to what is stored (`docker.io/**`). Pushes
//! into a mirror are refused: its content is the upstream's.

use warp::http::{header, Method, StatusCode};
use warp::reply::Response;

use super::auth::Caller;
use super::path::Route;
use super::{blobs, manifests, reply, Request, State};
use crate::auth::users::Action;
use crate::db;
use crate::mirror::{self, BlobAnswer, Target};
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName};

fn name_mut(route: &mut Route) -> Option<&mut RepoName> {
    match route {
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => Some(n),
        Route::Base | Route::Catalog => None,
    }
}

fn reads(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Finds the mirror a request's name explicitly belongs to (`?ns=`, or a prefix) and
/// rewrites the route to the stored name, before authorization. A write into a mirror is
/// refused here, before anything else.
pub(super) fn resolve(
    state: &State,
    route: &mut Route,
    req: &Request,
) -> Result<Option<Target>, RegistryError> {
    let mirrors = &state.core.mirrors;
    if mirrors.is_empty() {
        return Ok(None);
    }
    let Some(name) = name_mut(route) else {
        return Ok(None);
    };
    let Some(t) = mirrors.resolve(name, req.query("ns")) else {
        return Ok(None);
    };
    *name = t.stored.clone();
    if !reads(&req.method) && req.method != Method::DELETE {
        return Err(RegistryError::new(
            ErrorCode::Denied,
            format!(
                "{} is a mirror of an upstream registry: pushes into it are refused",
                t.stored
            ),
        ));
    }
    Ok(Some(t))
}

/// The default mirror (dockerd's `registry-mirrors`, which sends unprefixed names), after
/// the request was authorized for the name it spelled: a pull of a name not stored here
/// comes from the default mirror when the caller's grants allow pulling the stored name.
/// Otherwise the name stays local, so a site's own pushes (whose HEADs ask about names not
/// stored yet) never depend on the upstream nor on grants over mirrored names. Only the
/// requests a pull makes take this path: manifest GET/HEAD, blob GET, tag list.
pub(super) async fn resolve_default(
    state: &State,
    route: &mut Route,
    req: &Request,
    caller: &Caller,
) -> Result<Option<Target>, RegistryError> {
    let pull = matches!(
        (&req.method, &*route),
        (&Method::GET | &Method::HEAD, Route::Manifest(..))
            | (&Method::GET, Route::Blob(..))
            | (&Method::GET, Route::Tags(_))
    );
    if !pull {
        return Ok(None);
    }
    let Some(name) = name_mut(route) else {
        return Ok(None);
    };
    let Some(t) = state.core.mirrors.default_target(name) else {
        return Ok(None);
    };
    if !caller.granted(t.stored.as_str(), Action::Pull) {
        return Ok(None);
    }
    let n = name.to_string();
    let local = state
        .db
        .read(move |tx| Ok(db::listing::repo_exists(tx, &n)?))
        .await?;
    if local {
        return Ok(None);
    }
    *name = t.stored.clone();
    Ok(Some(t))
}

/// `GET`/`HEAD /v2/<mirrored name>/manifests/<reference>`.
pub(super) async fn manifest(
    state: &State,
    t: &Target,
    reference: Reference,
    head: bool,
) -> Result<Response, RegistryError> {
    let a = mirror::manifest(&state.core, t, &reference, head).await?;
    if !head {
        manifests::note_pull(state, t.stored.clone());
    }
    let b = reply::builder(StatusCode::OK)
        .header(header::CONTENT_TYPE, a.media_type)
        .header(header::CONTENT_LENGTH, a.body.len())
        .header("Docker-Content-Digest", a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest));
    Ok(reply::finish(b, if head { Vec::new() } else { a.body }))
}

/// `GET`/`HEAD /v2/<mirrored name>/blobs/<digest>`: a stored blob is served as any other
/// (ranges included); a blob being fetched streams as it arrives, whole.
pub(super) async fn blob(
    state: &State,
    t: &Target,
    digest: Digest,
    head: bool,
    req: &Request,
) -> Result<Response, RegistryError> {
    let headers = |b: warp::http::response::Builder, d: &Digest| {
        b.header(header::CONTENT_TYPE, "application/octet-stream")
            .header("Docker-Content-Digest", d.to_string())
            .header(header::ETAG, format!("\"{d}\""))
    };
    match mirror::blob(&state.core, t, &digest, head).await? {
        BlobAnswer::Stored => blobs::get(state, t.stored.clone(), digest, head, req).await,
        BlobAnswer::Head { size } => Ok(reply::finish(
            headers(reply::builder(StatusCode::OK), &digest).header(header::CONTENT_LENGTH, size),
            "",
        )),
        BlobAnswer::Fetching { size, body } => {
            let mut b = headers(reply::builder(StatusCode::OK), &digest);
            if let Some(s) = size {
                b = b.header(header::CONTENT_LENGTH, s);
            }
            Ok(reply::stream(b, body))
        }
    }
}
