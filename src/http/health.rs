//! `/healthz` (the process answers), `/readyz` (it can do its job: the database answers, the
//! data directory is writable, free space is above `min_free`) and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::Filter;

use super::{reply, State};
use crate::db::schema::{BlobRecord, BLOBS, UPLOADS};
use crate::db::{self};
use crate::metrics::Stored;
use crate::oci::RegistryError;
use crate::server::RouteLabel;

pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let get = warp::get().or(warp::head()).unify();
    let with_state = warp::any().map(move || state.clone());
    let healthz = warp::path!("healthz")
        .and(get)
        .map(|| labelled("healthz", text(StatusCode::OK, "ok\n".to_string())));
    let readyz = warp::path!("readyz")
        .and(get)
        .and(with_state.clone())
        .then(|state: Arc<State>| async move { labelled("readyz", ready(&state).await) });
    let metrics =
        warp::path!("metrics")
            .and(get)
            .and(with_state)
            .and_then(|state: Arc<State>| async move {
                // A separate metrics listener serves them instead (see `metrics_only`).
                if !state.config.metrics_enabled || state.config.metrics_listen.is_some() {
                    return Err(warp::reject::not_found());
                }
                Ok::<_, warp::Rejection>(labelled("metrics", metrics(&state).await))
            });
    healthz.or(readyz).unify().or(metrics).unify()
}

/// `/metrics` alone, for `[metrics] listen` on an address of its own.
pub fn metrics_only(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    warp::path!("metrics")
        .and(warp::any().map(move || state.clone()))
        .then(|state: Arc<State>| async move { labelled("metrics", metrics(&state).await) })
        .or(warp::any().map(|| text(StatusCode::NOT_FOUND, "not found\n".to_string())))
        .unify()
}

fn labelled(label: &'static str, mut resp: Response) -> Response {
    resp.extensions_mut().insert(RouteLabel(label));
    resp
}

fn text(status: StatusCode, body: String) -> Response {
    reply::finish(
        reply::builder(status).header(header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        body,
    )
}

async fn ready(state: &State) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = state
        .db
        .read(|tx| Ok(tx.open_table(UPLOADS).map(|_| ())?))
        .await
    {
        problems.push(format!("database: {}", e.message));
    }
    let store = state.store.clone();
    let min_free = state.config.min_free;
    let disk = tokio::task::spawn_blocking(move || -> Result<(), String> {
        store
            .probe_writable()
            .map_err(|e| format!("data directory not writable: {e}"))?;
        let free = store
            .free_space()
            .map_err(|e| format!("free space unknown: {e}"))?;
        if free < min_free {
            return Err(format!(
                "free space {free} bytes is below min_free {min_free}"
            ));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = disk {
        problems.push(e);
    }
    if problems.is_empty() {
        text(StatusCode::OK, "ready\n".to_string())
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn metrics(state: &State) -> Response {
    let stored = state
        .db
        .read(|tx| {
            let uploads = redb::ReadableTableMetadata::len(&tx.open_table(UPLOADS)?)?;
            let blobs = tx.open_table(BLOBS)?;
            let mut stored = Stored {
                blobs: 0,
                bytes: 0,
                uploads,
            };
            for entry in redb::ReadableTable::iter(&blobs)? {
                let (_, v) = entry?;
                let rec: BlobRecord = db::schema::decode(v.value())?;
                stored.blobs += 1;
                stored.bytes += rec.size;
            }
            Ok::<_, RegistryError>(stored)
        })
        .await;
    match stored {
        Ok(stored) => reply::finish(
            reply::builder(StatusCode::OK)
                .header(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE),
            state.metrics.render(&stored),
        ),
        Err(e) => reply::error(e),
    }
}
