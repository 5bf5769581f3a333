//! The network front: accepts connections, speaks TLS when configured, hands each request to
//! the warp routes inside a span carrying a request id, writes one access line per request,
//! feeds the metrics, and on shutdown stops accepting and lets requests in flight finish up
//! to a deadline.
//!
//! warp's own `serve` has neither TLS nor a shutdown deadline, so this owns the accept loop
//! and drives hyper's HTTP/1 connection directly, as warp does internally.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tower_service::Service;
use tracing::Instrument;

use warp::http;

use crate::metrics::Metrics;

/// The largest read buffer of one HTTP/1 connection.
const READ_BUFFER: usize = 1 << 20;

/// The client's address, put into every request's extensions (warp's own `addr::remote`
/// only works under `warp::serve`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

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
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = Handler {
            inner: service.clone(),
            peer,
            metrics: metrics.clone(),
            next_id: next_id.clone(),
        };
        let svc = hyper::service::service_fn(move |req| handler.clone().call(req));
        let watcher = graceful.watcher();
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            // hyper grows a connection's read buffer from 8 KiB only while reads keep filling
            // it, so a blob push arrives in large chunks while small requests stay small.
            builder.max_buf_size(READ_BUFFER);
            let result = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(s), svc))
                            .await
                    }
                    Err(e) => {
                        // Plain HTTP to a TLS port, or a client that distrusts us.
                        tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "connection ended with an error");
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

#[derive(Clone)]
struct Handler<S> {
    inner: S,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
    next_id: Arc<AtomicU64>,
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
        let mut req = req.map(|inner| CountingBody { inner, metrics });
        req.extensions_mut().insert(ClientAddr(self.peer));
        let span = tracing::info_span!("request", id);
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
            .observe(route, method.as_str(), status, elapsed);
        if log {
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
        let (parts, body) = resp.into_parts();
        let body = body
            .map_frame(move |f| {
                if let Some(d) = f.data_ref() {
                    sent.add_sent(d.len() as u64);
                }
                f
            })
            .boxed();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// A request body that adds what it yields to the received-bytes counter.
pub struct CountingBody {
    inner: Incoming,
    metrics: Arc<Metrics>,
}

impl http_body::Body for CountingBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &poll {
            if let Some(d) = frame.data_ref() {
                self.metrics.add_received(d.len() as u64);
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
