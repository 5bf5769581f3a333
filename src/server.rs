//! The network front: accepts connections, speaks TLS when configured, hands each request to
//! the warp routes inside a span carrying a request id, writes one access line per request,
//! feeds the metrics, and on shutdown stops accepting and lets requests in flight finish up
//! to a deadline.
//!
//! warp's own `serve` has neither TLS nor a shutdown deadline, so this owns the accept loop
//! and drives hyper's HTTP/1 connection directly, as warp does internally.
//!
//! Hostile or broken clients are bounded here, whatever the route (`config::Limits`):
//! - at most `max_connections` connections: at the cap, accepting pauses until one closes
//!   (the kernel's backlog holds newcomers), and a failing `accept` (out of descriptors)
//!   backs off; both are logged at most once per `LOG_EVERY`;
//! - each connection has a watchdog (`Watch`): idle between requests for `idle_timeout`, or
//!   still sending a request head `header_read_timeout` after its first byte, it is closed;
//! - a request head is at most `MAX_HEAD` bytes (hyper answers 431 beyond it) and the
//!   connection is cut once an unfinished head passes twice that, so an unfinished head
//!   never pins the 1 MiB body buffer;
//! - a request body that yields nothing for `body_timeout` fails (`CountingBody`);
//! - the TLS handshake must end within `tls_handshake_timeout`;
//! - metric labels come from closed sets (`method_label`, `RouteLabel`), so made-up methods
//!   cannot grow `/metrics`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tower_service::Service;
use tracing::Instrument;

use warp::http;

use crate::config::Limits;
use crate::metrics::Metrics;

/// The largest read buffer of one HTTP/1 connection (what a blob push reads at a time).
const READ_BUFFER: usize = 1 << 20;
/// The largest request head (request line and headers): registry clients send a few KiB.
pub const MAX_HEAD: usize = 64 << 10;
/// An unfinished head longer than this ends the connection (a complete one between
/// `MAX_HEAD` and this gets hyper's 431).
const HEAD_CUTOFF: usize = 2 * MAX_HEAD;
/// Repeated warnings about the accept loop are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The client's address, put into every request's extensions (warp's own `addr::remote`
/// only works under `warp::serve`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The access log's request id (`request{id=N}`, counted from 1 at each start), put into
/// every request's extensions: a webhook event's `request.id` is this, so a receiver can find
/// the request's access line (with the event's `source.instanceID`, it is unique).
#[derive(Clone, Copy, Debug)]
pub struct RequestId(pub u64);

/// Set on a response by the routes: which endpoint answered, for metrics and the access log.
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

/// Set on a response by authentication: who made the request, for the access log.
#[derive(Clone, Debug)]
pub struct Principal(pub String);

/// A TLS certificate and key that can be reloaded (on SIGHUP) without dropping connections:
/// each new handshake takes the current config; established sessions keep theirs.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> io::Result<Tls> {
        let config = Tls::read(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self) -> io::Result<()> {
        let config = Tls::read(&self.cert, &self.key)?;
        *self.current.write().expect("tls lock") = Arc::new(config);
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().expect("tls lock").clone())
    }

    fn read(cert: &Path, key: &Path) -> io::Result<rustls::ServerConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad("cannot read certificate", cert, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| bad("bad certificate", cert, &e))?;
        if certs.is_empty() {
            return Err(bad("no certificate in", cert, &"empty"));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| bad("cannot read key", key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("tls setup for", cert, &e))?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)
            .map_err(|e| bad("certificate and key do not match:", key, &e))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Serves `service` on `listener` until `shutdown` completes, then waits up to
/// `shutdown_timeout` for requests in flight.
pub async fn run<S>(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    service: S,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
    limits: Limits,
) where
    S: Service<
            http::Request<CountingBody>,
            Response = warp::reply::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let next_id = Arc::new(AtomicU64::new(1));
    let slots = Arc::new(tokio::sync::Semaphore::new(connection_cap(
        limits.max_connections,
    )));
    let mut at_cap = RateLimitedLog::default();
    let mut accept_failed = RateLimitedLog::default();
    let mut backoff = Duration::from_millis(10);
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                at_cap.warn(|suppressed| {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        suppressed,
                        "connection limit reached: not accepting until a connection closes"
                    )
                });
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => p.expect("never closed"),
                }
            }
        };
        let (stream, peer) = tokio::select! {
            // Shutdown first: with connections waiting, an unbiased select could go on
            // accepting them after the shutdown was announced ("no new connections").
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(10);
                    pair
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off (up to a second) instead
                    // of spinning, and say so once in a while rather than on every try.
                    accept_failed.warn(|suppressed| {
                        tracing::warn!(error = %e, suppressed, "accept failed; backing off")
                    });
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watch = Arc::new(Watch::new());
        let handler = Handler {
            inner: service.clone(),
            peer,
            metrics: metrics.clone(),
            next_id: next_id.clone(),
            body_timeout: limits.body_timeout,
            watch: watch.clone(),
        };
        let svc = hyper::service::service_fn(move |req| {
            // The head is complete: from here the request's own timeouts apply.
            handler.watch.set(Phase::Busy);
            handler.clone().call(req)
        });
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            // hyper grows a connection's read buffer from 8 KiB only while reads keep filling
            // it, so a blob push arrives in large chunks while small requests stay small.
            builder.max_buf_size(READ_BUFFER);
            builder.max_header_size(MAX_HEAD);
            let result = match tls {
                None => {
                    let io = TokioIo::new(Watched::new(stream, watch.clone()));
                    let conn = watcher.watch(builder.serve_connection(io, svc));
                    watch.guard(conn, &limits).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(s)) => {
                            watch.set(Phase::Idle);
                            let io = TokioIo::new(Watched::new(s, watch.clone()));
                            let conn = watcher.watch(builder.serve_connection(io, svc));
                            watch.guard(conn, &limits).await
                        }
                        Ok(Err(e)) => {
                            // Plain HTTP to a TLS port, or a client that distrusts us.
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            match result {
                Some(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error")
                }
                None => tracing::debug!(client = %peer, "connection timed out"),
                Some(Ok(())) => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout = ?shutdown_timeout,
            "requests still in flight at the shutdown deadline were cut off"
        );
    }
}

/// The connection cap actually used: `max_connections`, but below the process's limit on
/// open files (raised to its hard limit first), keeping room for the database, blob files,
/// uploads and the admin socket. Hitting the cap pauses accepting; hitting the file limit
/// would fail every `open` of every request.
fn connection_cap(max_connections: usize) -> usize {
    let Some(files) = raise_file_limit() else {
        return max_connections;
    };
    let reserved = (files / 2).min(256);
    let room = files.saturating_sub(reserved).max(16) as usize;
    if room < max_connections {
        tracing::warn!(
            max_connections,
            open_files = files,
            "the open-file limit is low: accepting at most {room} connections"
        );
    }
    max_connections.min(room)
}

/// Raises the soft limit on open files to the hard limit; returns the soft limit in force.
fn raise_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with a properly sized out-parameter.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// A warning that repeats (every failed accept, every pause at the cap) logged at most once
/// per `LOG_EVERY`, with how many were left out since the last line.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        log(self.suppressed);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Where a connection stands, for its watchdog.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Phase {
    /// Between requests (or before the first): `idle_timeout` from `since`.
    Idle = 0,
    /// A request head is arriving: `header_read_timeout` from its first byte.
    Head = 1,
    /// A request is being served: its body has `body_timeout` (`CountingBody`); the
    /// handler and the response are not timed here.
    Busy = 2,
    /// Before the TLS handshake (which has its own timeout).
    Handshake = 3,
}

/// One connection's phase and when it began, shared by its IO (`Watched`), its requests
/// (`Handler`) and its watchdog (`Watch::guard`).
struct Watch {
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds from `epoch` to the start of `phase`.
    since: AtomicU64,
    /// Bytes of the request head read so far.
    head: AtomicUsize,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            epoch: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            since: AtomicU64::new(0),
            head: AtomicUsize::new(0),
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Busy,
            _ => Phase::Handshake,
        }
    }

    fn set(&self, phase: Phase) {
        self.since
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.head.store(0, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Drives `conn` until it ends (`Some`) or the watchdog closes it (`None`).
    async fn guard<F, T>(&self, conn: F, limits: &Limits) -> Option<T>
    where
        F: Future<Output = T>,
    {
        // Deadlines only ever move later except when a head starts, so re-checking at a
        // fraction of the shortest timeout is precise enough and costs one timer per tick.
        let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 8)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let watchdog = async {
            loop {
                let since = Duration::from_millis(self.since.load(Ordering::Acquire));
                let limit = match self.phase() {
                    Phase::Idle => limits.idle_timeout,
                    Phase::Head => limits.header_read_timeout,
                    Phase::Busy | Phase::Handshake => {
                        tokio::time::sleep(tick).await;
                        continue;
                    }
                };
                let left = (since + limit).saturating_sub(self.epoch.elapsed());
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left.min(tick)).await;
            }
        };
        tokio::select! {
            out = conn => Some(out),
            _ = watchdog => None,
        }
    }
}

/// A connection's byte stream as hyper reads it, reporting to the connection's `Watch`: the
/// first byte between requests starts a head, and a head may read at most `HEAD_CUTOFF`
/// bytes before hyper has parsed it (reads in that phase are limited accordingly, so a body
/// that follows its head in the same packets is never mistaken for head bytes).
struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> Watched<S> {
    fn new(inner: S, watch: Arc<Watch>) -> Watched<S> {
        Watched { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let phase = self.watch.phase();
        if phase == Phase::Busy || phase == Phase::Handshake {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let read = self.watch.head.load(Ordering::Relaxed);
        let room = HEAD_CUTOFF.saturating_sub(read);
        if room == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            )));
        }
        let n = if buf.remaining() > room {
            let mut limited = buf.take(room);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
            let n = limited.filled().len();
            // SAFETY: `limited` views `buf`'s unfilled part, and the read initialised its
            // first `n` bytes.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            n
        } else {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            buf.filled().len() - before
        };
        if n > 0 {
            if phase == Phase::Idle {
                self.watch.set(Phase::Head);
            }
            self.watch.head.fetch_add(n, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sets the connection idle when a response has been sent (hyper drops the body then).
struct ResponseDone(Arc<Watch>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// The method as a metric label: the methods HTTP defines, else "other" (hyper accepts any
/// token as a method, and a label per made-up one would grow `/metrics` without bound).
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[derive(Clone)]
struct Handler<S> {
    inner: S,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    next_id: Arc<AtomicU64>,
    body_timeout: Duration,
    watch: Arc<Watch>,
}

impl<S> Handler<S>
where
    S: Service<
        http::Request<CountingBody>,
        Response = warp::reply::Response,
        Error = std::convert::Infallible,
    >,
{
    async fn call(
        mut self,
        req: http::Request<Incoming>,
    ) -> Result<
        http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, warp::Error>>,
        std::convert::Infallible,
    > {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let method = req.method().clone();
        // The access line's fields are built only when it will be written.
        let log = tracing::enabled!(target: "dockyard::access", tracing::Level::INFO);
        let path = if log {
            req.uri().path().to_string()
        } else {
            String::new()
        };
        let metrics = self.metrics.clone();
        let body_timeout = self.body_timeout;
        let mut req = req.map(|inner| CountingBody {
            inner,
            metrics,
            timeout: body_timeout,
            stall: None,
            progress: None,
        });
        req.extensions_mut().insert(ClientAddr(self.peer));
        let span = tracing::info_span!("request", id);
        req.extensions_mut().insert(RequestId(id));
        let resp = match self.inner.call(req).instrument(span.clone()).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status().as_u16();
        let route = resp
            .extensions()
            .get::<RouteLabel>()
            .map_or("other", |r| r.0);
        let elapsed = start.elapsed();
        self.metrics
            .observe(route, method_label(&method), status, elapsed);
        if log {
            // A made-up method is logged as far as a real one could go.
            let method: &str = match method_label(&method) {
                "other" => &method.as_str()[..method.as_str().len().min(16)],
                known => known,
            };
            let user = resp
                .extensions()
                .get::<Principal>()
                .map_or("-", |p| p.0.as_str());
            let bytes = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            span.in_scope(|| {
                tracing::info!(
                    target: "dockyard::access",
                    client = %self.peer,
                    method = %method,
                    path = %path,
                    status,
                    bytes = %bytes,
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    user = %user,
                    "{method} {path} {status}"
                )
            });
        }
        let sent = self.metrics.clone();
        let done = ResponseDone(self.watch.clone());
        let (parts, body) = resp.into_parts();
        let body = body
            .map_frame(move |f| {
                let _ = &done;
                if let Some(d) = f.data_ref() {
                    sent.add_sent(d.len() as u64);
                }
                f
            })
            .boxed();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// A request body that adds what it yields to the received-bytes counter, and fails once
/// it has yielded nothing for `timeout` (a stalled client must not hold its request, and
/// whatever the request holds, forever).
pub struct CountingBody {
    inner: Incoming,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Armed the first time the body is waited for, and moved on only when it fires: a
    /// frame just notes the time (`progress`), so a streaming upload does not pay a timer
    /// (an allocation and two timer-wheel updates) per frame.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last frame came, if one came since the timer was armed or moved.
    progress: Option<tokio::time::Instant>,
}

/// The error of a request body whose client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
pub struct BodyStalled(pub Duration);

impl http_body::Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.metrics.add_received(d.len() as u64);
                }
                if this.stall.is_some() {
                    this.progress = Some(tokio::time::Instant::now());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.timeout;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                loop {
                    if stall.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Fired: a stall only if no frame came in the last `timeout`.
                    match this.progress.take() {
                        Some(last) => stall.as_mut().reset(last + timeout),
                        None => return Poll::Ready(Some(Err(BodyStalled(timeout).into()))),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
