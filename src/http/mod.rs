//! The HTTP API, the only module that knows warp. One catch-all filter under `/v2` parses the
//! path into a `Route` (see `path`), and `dispatch` hands it to the handler of its resource.
//! Handlers return `Result<Response, RegistryError>`; errors are rendered once, in `reply`.

mod blobs;
mod catalog;
mod manifests;
pub mod path;
mod referrers;
pub mod reply;
pub mod serve;
mod tags;
mod uploads;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::config::Config;
use crate::db::Db;
use crate::oci::{ErrorCode, RegistryError};
use crate::store::{BodyStream, Sink, Store};
use path::Route;

/// Everything a request handler may touch.
pub struct State {
    pub config: Config,
    pub db: Db,
    pub store: Store,
    /// The hash state of uploads in progress, by upload id. Each session has its own lock, so
    /// chunks of one upload are applied in order while different uploads run in parallel. A
    /// session missing here (after a restart) is rebuilt by re-reading its file.
    pub cursors: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Sink>>>>>,
}

impl State {
    pub fn new(core: crate::Core) -> State {
        State {
            config: core.config,
            db: core.db,
            store: core.store,
            cursors: Mutex::new(HashMap::new()),
        }
    }
}

/// The request as the handlers see it, less its body, which handlers that read one take
/// separately (by value, so it need not be shared across threads).
pub struct Request {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
}

impl Request {
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The whole API as one warp filter.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = warp::any().map(move || state.clone());
    let query = warp::query::<Vec<(String, String)>>()
        .or_else(|_| async { Err::<(Vec<(String, String)>,), _>(warp::reject::custom(BadQuery)) });
    warp::path("v2")
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(query)
        .and(warp::body::stream())
        .and(with_state)
        .then(
            |tail: warp::path::Tail, method, headers, query, body, state: Arc<State>| async move {
                let req = Request {
                    method,
                    headers,
                    query,
                };
                match dispatch(&state, tail.as_str(), req, box_body(body)).await {
                    Ok(resp) => resp,
                    Err(e) => reply::error(e),
                }
            },
        )
        .recover(|rejection: warp::Rejection| async move {
            let e = if rejection.find::<BadQuery>().is_some() {
                RegistryError::new(ErrorCode::Unsupported, "malformed query string")
                    .with_status(400)
            } else {
                RegistryError::new(ErrorCode::Unsupported, "no such endpoint").with_status(404)
            };
            Ok::<_, Infallible>(reply::error(e))
        })
        .unify()
}

#[derive(Debug)]
struct BadQuery;
impl warp::reject::Reject for BadQuery {}

fn box_body<S, B>(body: S) -> BodyStream
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    body.map(|r| {
        r.map(|mut b| b.copy_to_bytes(b.remaining()))
            .map_err(std::io::Error::other)
    })
    .boxed()
}

async fn dispatch(
    state: &State,
    tail: &str,
    req: Request,
    body: BodyStream,
) -> Result<Response, RegistryError> {
    let route = path::parse(tail)?;
    let head = req.method == Method::HEAD;
    match (req.method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => Ok(reply::finish(
            reply::builder(StatusCode::OK).header("Content-Type", "application/json"),
            "{}",
        )),
        (Method::GET, Route::Catalog) => catalog::list(state, &req).await,
        (Method::GET, Route::Tags(name)) => tags::list(state, name, &req).await,
        (Method::GET | Method::HEAD, Route::Manifest(name, r)) => {
            manifests::get(state, name, r, head).await
        }
        (Method::PUT, Route::Manifest(name, r)) => manifests::put(state, name, r, &req, body).await,
        (Method::DELETE, Route::Manifest(name, r)) => manifests::delete(state, name, r).await,
        (Method::GET | Method::HEAD, Route::Blob(name, d)) => {
            blobs::get(state, name, d, head, &req).await
        }
        (Method::DELETE, Route::Blob(name, d)) => blobs::delete(state, name, d).await,
        (Method::POST, Route::UploadStart(name)) => uploads::start(state, name, &req, body).await,
        (Method::GET, Route::Upload(name, id)) => uploads::status(state, name, id).await,
        (Method::PATCH, Route::Upload(name, id)) => {
            uploads::patch(state, name, id, &req, body).await
        }
        (Method::PUT, Route::Upload(name, id)) => {
            uploads::finish(state, name, id, &req, body).await
        }
        (Method::DELETE, Route::Upload(name, id)) => uploads::cancel(state, name, id).await,
        (Method::GET, Route::Referrers(name, d)) => referrers::list(state, name, d, &req).await,
        (m, _) => Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!("{m} is not supported on /v2/{tail}"),
        )),
    }
}
