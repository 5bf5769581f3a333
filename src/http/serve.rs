//! The accept loop: the warp filter served by hyper on connections set up for a registry.
//! `warp::serve` leaves Nagle's algorithm on, so a small response written in two pieces can
//! wait for a delayed ACK; here every connection gets `TCP_NODELAY`, and HTTP/1 reads
//! request bodies in buffers of up to `READ_BUFFER` so a blob push arrives in large chunks.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use warp::reply::Response;
use warp::Filter;

/// The largest read buffer of one HTTP/1 connection; hyper grows it from 8 KiB only while
/// reads keep filling it, so connections doing small requests stay small.
const READ_BUFFER: usize = 1 << 20;

/// Serves `filter` on `listener` until `shutdown` completes, then stops accepting and waits
/// for the requests in flight.
pub async fn run<F>(
    listener: tokio::net::TcpListener,
    filter: F,
    shutdown: impl Future<Output = ()> + Send,
) where
    F: Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(READ_BUFFER);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
