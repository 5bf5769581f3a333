//! The HTTP API, the only module that knows warp. One catch-all filter under `/v2` parses the
//! path into a `Route` (see `path`), and `dispatch` hands it to the handler of its resource.
//! Handlers return `Result<Response, RegistryError>`; errors are rendered once, in `reply`.

pub mod auth;
mod blobs;
mod catalog;
mod health;

pub use health::metrics_only;
mod manifests;
mod mirror;
pub mod path;
mod referrers;
pub mod reply;
mod tags;
mod ui;
mod uploads;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::reply::Response;
use warp::Filter;

use crate::auth::access::Access;
use crate::auth::users::Action;
use crate::config::Config;
use crate::db::Db;
use crate::gc::blob_locks::BlobLocks;
use crate::metrics::Metrics;
use crate::oci::{ErrorCode, RegistryError};
use crate::server::{ClientAddr, Principal, RequestId, RouteLabel};
use crate::store::{BodyStream, Cursors, Store};
use auth::{Auth, Caller, Need};
use path::Route;

/// Everything a request handler may touch.
pub struct State {
    pub config: Config,
    pub db: Db,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Shared with the GC: see `blob_locks`.
    pub blob_locks: Arc<BlobLocks>,
    /// Hash state of uploads in progress, shared with the GC (see `store::Cursors`).
    pub cursors: Arc<Cursors>,
    /// Users and grants (the snapshot the control channel refreshes) and the token key.
    pub access: Arc<Access>,
    pub auth: Auth,
    /// Which pulls to record (see `db::pulls`).
    pub pulls: crate::db::pulls::PullClock,
    /// The whole instance, for the UI's storage page (a dry GC pass needs it).
    pub core: crate::Core,
    /// Sessions and CSRF keys of the web UI.
    pub ui: ui::UiState,
    /// Body-carrying writes in progress per client (`[server] max_uploads_per_client`).
    pub writes: WriteSlots,
}

/// Counts the body-carrying writes (upload requests, manifest PUTs) each client has in
/// progress, so one client (a user, or an address when anonymous) cannot hold them all.
pub struct WriteSlots {
    max: usize,
    held: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One write in progress; dropping it frees the slot.
pub struct WriteSlot<'a> {
    slots: &'a WriteSlots,
    key: String,
}

impl WriteSlots {
    pub fn new(max: usize) -> WriteSlots {
        WriteSlots {
            max,
            held: Default::default(),
        }
    }

    fn take(&self, key: String) -> Result<WriteSlot<'_>, RegistryError> {
        let mut held = self.held.lock().expect("write slots lock");
        let n = held.entry(key.clone()).or_default();
        if *n >= self.max {
            return Err(RegistryError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "more than {} uploads in progress from this client; try again when one ends",
                    self.max
                ),
            )
            .with_header("Retry-After", "1".to_string()));
        }
        *n += 1;
        Ok(WriteSlot { slots: self, key })
    }
}

impl Drop for WriteSlot<'_> {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("write slots lock");
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl State {
    /// Runs `f` on the blocking pool holding the stripe of `digest` (see `blob_locks`), so
    /// that it happens wholly before or wholly after any GC deletion of that blob. `f` gets
    /// the guard to stamp the blob as seen.
    pub async fn with_blob<T, F>(
        &self,
        digest: &crate::oci::Digest,
        f: F,
    ) -> Result<T, RegistryError>
    where
        F: FnOnce(&mut crate::gc::blob_locks::BlobGuard<'_>) -> Result<T, RegistryError>
            + Send
            + 'static,
        T: Send + 'static,
    {
        let locks = self.blob_locks.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || f(&mut locks.lock(&digest)))
            .await
            .map_err(|e| RegistryError::internal(format!("blob task: {e}")))?
    }

    pub fn new(core: crate::Core) -> State {
        State {
            writes: WriteSlots::new(core.config.limits.max_uploads_per_client),
            pulls: Default::default(),
            ui: ui::UiState::new(&core.config),
            core: core.clone(),
            auth: Auth::new(
                core.config.auth.clone(),
                core.config.tls.is_some(),
                core.metrics.clone(),
            ),
            config: core.config,
            db: core.db,
            store: core.store,
            metrics: core.metrics,
            blob_locks: core.blob_locks,
            cursors: core.cursors,
            access: core.access,
        }
    }
}

/// The request as the handlers see it, less its body, which handlers that read one take
/// separately (by value, so it need not be shared across threads).
pub struct Request {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    /// The client's address, for failed-login throttling.
    pub remote: Option<SocketAddr>,
    /// The access log's id of this request, for its webhook events.
    pub id: Option<u64>,
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

/// The whole API as one warp filter: `/v2/…` and the token service at `/token`.
pub fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let health_state = state.clone();
    let with_state = warp::any().map(move || state.clone());
    let query = warp::query::<Vec<(String, String)>>()
        .or_else(|_| async { Err::<(Vec<(String, String)>,), _>(warp::reject::custom(BadQuery)) });
    let request = warp::method()
        .and(warp::header::headers_cloned())
        .and(query)
        // Our accept loop (`server`) records the peer; warp's `addr::remote` only works under
        // `warp::serve`.
        .and(warp::ext::optional::<ClientAddr>())
        .and(warp::ext::optional::<RequestId>())
        .map(
            |method, headers, query, client: Option<ClientAddr>, id: Option<RequestId>| Request {
                method,
                headers,
                query,
                remote: client.map(|c| c.0),
                id: id.map(|i| i.0),
            },
        );
    let api = warp::path("v2")
        .and(warp::path::tail())
        .and(request)
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(
            |tail: warp::path::Tail, req: Request, body, state: Arc<State>| async move {
                let tail = tail.as_str();
                let (label, result) = match path::parse(tail) {
                    Ok(route) => (
                        route.label(),
                        dispatch(&state, route, tail, req, box_body(body)).await,
                    ),
                    Err(e) => ("invalid", Err(e)),
                };
                let mut resp = result.unwrap_or_else(reply::error);
                resp.extensions_mut().insert(RouteLabel(label));
                resp
            },
        );
    let token = warp::path("token")
        .and(warp::path::end())
        .and(warp::get().or(warp::post()).unify())
        .and(request)
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(|req: Request, body, state: Arc<State>| async move {
            let mut resp = match read_small(box_body(body), auth::MAX_FORM).await {
                Ok(body) => state.auth.token_endpoint(&state, req, body).await,
                Err(e) => reply::error(e),
            };
            resp.extensions_mut().insert(RouteLabel("token"));
            resp
        });
    let ui = warp::path("ui")
        .and(warp::path::full())
        .and(request)
        .and(warp::body::stream())
        .and(with_state.clone())
        .then(
            |full: warp::path::FullPath, req: Request, body, state: Arc<State>| async move {
                // `/ui` itself goes to `/ui/`, so that relative paths are the same everywhere.
                let mut resp = match full.as_str().strip_prefix("/ui/") {
                    Some(tail) => ui::handle(state, tail, req, box_body(body)).await,
                    None => ui::root(&state),
                };
                resp.extensions_mut().insert(RouteLabel("ui"));
                resp
            },
        );
    let root = warp::path::end()
        .and(warp::get().or(warp::head()).unify())
        .and(with_state.clone())
        .map(|state: Arc<State>| {
            let mut resp = ui::root(&state);
            resp.extensions_mut().insert(RouteLabel("ui"));
            resp
        });
    api.or(token)
        .unify()
        .or(ui)
        .unify()
        .or(root)
        .unify()
        .or(health::routes(health_state))
        .unify()
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

/// Reads a small request body whole, refusing one longer than `limit`.
async fn read_small(mut body: BodyStream, limit: usize) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
        if out.len() > limit {
            return Err(
                RegistryError::new(ErrorCode::SizeInvalid, "request body too large")
                    .with_status(413),
            );
        }
    }
    Ok(out)
}

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

/// What a request must be allowed to do: pull to read, push to write (uploads included,
/// their cancellation too), delete to delete a manifest or blob.
fn need<'a>(method: &Method, route: &'a Route) -> Need<'a> {
    let write = |m: &Method| match *m {
        Method::GET | Method::HEAD => Action::Pull,
        Method::DELETE => Action::Delete,
        _ => Action::Push,
    };
    match route {
        Route::Base => Need::Login,
        Route::Catalog => Need::Listing,
        Route::Tags(n) | Route::Referrers(n, _) => Need::Repo(n, Action::Pull),
        Route::Manifest(n, _) | Route::Blob(n, _) => Need::Repo(n, write(method)),
        Route::UploadStart(n) | Route::Upload(n, _) => Need::Repo(n, Action::Push),
    }
}

/// A cross-repository mount reads the source, so it needs pull there as well as push on the
/// target. Without it the mount parameters are dropped and the client gets the spec's
/// fallback, a plain upload session: the answer is the same whether or not the blob exists.
/// A mount without `from` is kept: `uploads::start` looks only in what the caller may pull.
fn restrict_mount(req: &mut Request, caller: &Caller) {
    let allowed = req
        .query("from")
        .is_none_or(|from| caller.may(from, Action::Pull));
    if req.query("mount").is_some() && !allowed {
        req.query.retain(|(k, _)| k != "mount" && k != "from");
    }
}

/// Requests that stream a body into the registry: upload starts, chunks and ends, and
/// manifest PUTs.
fn writes_body(method: &Method, route: &Route) -> bool {
    matches!(
        (method, route),
        (&Method::POST, Route::UploadStart(_))
            | (&Method::PATCH | &Method::PUT, Route::Upload(..))
            | (&Method::PUT, Route::Manifest(..))
    )
}

/// Authorizes the request for its route, then hands it to the route's handler. Who made it
/// is put into the response for the access log.
async fn dispatch(
    state: &State,
    mut route: Route,
    tail: &str,
    mut req: Request,
    body: BodyStream,
) -> Result<Response, RegistryError> {
    // Before authorization: grants apply to the name a mirrored repository is stored under.
    let mut mirror = mirror::resolve(state, &mut route, &req)?;
    let caller = state
        .auth
        .authorize(state, &req, need(&req.method, &route))
        .await?;
    if mirror.is_none() {
        mirror = mirror::resolve_default(state, &mut route, &req, &caller).await?;
    }
    if matches!(route, Route::UploadStart(_)) {
        restrict_mount(&mut req, &caller);
    }
    let user = caller.user().map(str::to_string);
    // Held until the handler is done with the body.
    let _slot = if writes_body(&req.method, &route) {
        let client = match (&user, req.remote) {
            (Some(u), _) => format!("user:{u}"),
            (None, Some(a)) => format!("addr:{}", a.ip()),
            (None, None) => "addr:-".to_string(),
        };
        match state.writes.take(client) {
            Ok(slot) => Some(slot),
            Err(e) => {
                tracing::warn!(user = user.as_deref(), client = ?req.remote, "too many uploads at once");
                let mut resp = reply::error(e);
                if let Some(user) = user {
                    resp.extensions_mut().insert(Principal(user));
                }
                return Ok(resp);
            }
        }
    } else {
        None
    };
    let result = match (mirror, &req.method, route) {
        (Some(t), &(Method::GET | Method::HEAD), Route::Manifest(_, r)) => {
            mirror::manifest(state, &t, r, req.method == Method::HEAD).await
        }
        (Some(t), &(Method::GET | Method::HEAD), Route::Blob(_, d)) => {
            mirror::blob(state, &t, d, req.method == Method::HEAD, &req).await
        }
        (_, _, route) => handle(state, route, tail, req, body, caller).await,
    };
    let mut resp = result.unwrap_or_else(reply::error);
    if let Some(user) = user {
        resp.extensions_mut().insert(Principal(user));
    }
    Ok(resp)
}

async fn handle(
    state: &State,
    route: Route,
    tail: &str,
    req: Request,
    body: BodyStream,
    caller: Caller,
) -> Result<Response, RegistryError> {
    let head = req.method == Method::HEAD;
    match (req.method.clone(), route) {
        (Method::GET | Method::HEAD, Route::Base) => Ok(reply::finish(
            reply::builder(StatusCode::OK).header("Content-Type", "application/json"),
            "{}",
        )),
        (Method::GET, Route::Catalog) => catalog::list(state, &req, caller).await,
        (Method::GET, Route::Tags(name)) => tags::list(state, name, &req).await,
        (Method::GET | Method::HEAD, Route::Manifest(name, r)) => {
            let who = manifests::request_info(state, &req, caller.user());
            manifests::get(state, name, r, head, who).await
        }
        (Method::PUT, Route::Manifest(name, r)) => {
            let who = manifests::request_info(state, &req, caller.user());
            manifests::put(state, name, r, &req, body, who).await
        }
        (Method::DELETE, Route::Manifest(name, r)) => {
            let who = manifests::request_info(state, &req, caller.user());
            manifests::delete(state, name, r, who).await
        }
        (Method::GET | Method::HEAD, Route::Blob(name, d)) => {
            blobs::get(state, name, d, head, &req).await
        }
        (Method::DELETE, Route::Blob(name, d)) => blobs::delete(state, name, d).await,
        (Method::POST, Route::UploadStart(name)) => {
            uploads::start(state, name, &req, body, &caller).await
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn needed(method: Method, tail: &str) -> Option<(String, Action)> {
        let route = path::parse(tail).unwrap();
        match need(&method, &route) {
            Need::Repo(n, a) => Some((n.to_string(), a)),
            Need::Login | Need::Listing => None,
        }
    }

    #[test]
    fn every_route_needs_the_action_it_performs() {
        const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        const U: &str = "3f2a7c1e-8d4b-4a6f-9e0c-1b2d3e4f5a6b";
        let r = |a| Some(("a/b".to_string(), a));
        use Action::*;
        assert!(matches!(need(&Method::GET, &Route::Base), Need::Login));
        assert!(matches!(need(&Method::GET, &Route::Catalog), Need::Listing));
        assert_eq!(needed(Method::GET, "a/b/tags/list"), r(Pull));
        assert_eq!(needed(Method::GET, "a/b/manifests/v1"), r(Pull));
        assert_eq!(needed(Method::HEAD, "a/b/manifests/v1"), r(Pull));
        assert_eq!(needed(Method::PUT, "a/b/manifests/v1"), r(Push));
        assert_eq!(needed(Method::DELETE, "a/b/manifests/v1"), r(Delete));
        assert_eq!(needed(Method::GET, &format!("a/b/blobs/{D}")), r(Pull));
        assert_eq!(needed(Method::HEAD, &format!("a/b/blobs/{D}")), r(Pull));
        assert_eq!(needed(Method::DELETE, &format!("a/b/blobs/{D}")), r(Delete));
        assert_eq!(needed(Method::POST, "a/b/blobs/uploads/"), r(Push));
        for m in [Method::GET, Method::PATCH, Method::PUT, Method::DELETE] {
            assert_eq!(needed(m, &format!("a/b/blobs/uploads/{U}")), r(Push));
        }
        assert_eq!(needed(Method::GET, &format!("a/b/referrers/{D}")), r(Pull));
        // A method no handler takes still needs more than a read before it is refused.
        assert_eq!(needed(Method::POST, "a/b/manifests/v1"), r(Push));
    }
}
