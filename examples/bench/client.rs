//! The load generator's HTTP client: hyper's connection API with nothing on top, so the
//! client costs as little CPU as possible on a machine it shares with the server. One `Conn`
//! is one TCP connection; a workload at 64 connections holds 64 of them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// A whole response, for the small requests whose body the workload looks at.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Fails unless the status is `want`, quoting the body (an OCI error) when it is not.
    pub fn expect(self, want: u16, what: &str) -> Result<Resp> {
        if self.status.as_u16() == want {
            Ok(self)
        } else {
            Err(format!(
                "{what}: HTTP {} (wanted {want}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
            .into())
        }
    }

    /// The `Location` header as a path and query, whether the server sent it absolute
    /// (Distribution does) or relative (Dockyard does).
    pub fn location(&self) -> Result<String> {
        let l = self.header("location").ok_or("response has no Location")?;
        Ok(path_of(l).to_string())
    }
}

/// `http://host:port/v2/x?y` → `/v2/x?y`; a path is returned as it is.
pub fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// Appends `key=value` to a URL that may already have a query (Distribution's `_state`).
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

pub struct Conn {
    addr: SocketAddr,
    host: String,
    tx: SendRequest<Full<Bytes>>,
    pub timeout: Duration,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            addr,
            host: addr.to_string(),
            tx,
            timeout: Duration::from_secs(60),
        })
    }

    /// A fresh connection to the same server, after an error left this one in doubt.
    pub async fn reconnect(&mut self) -> Result<()> {
        let timeout = self.timeout;
        *self = Conn::connect(self.addr).await?;
        self.timeout = timeout;
        Ok(())
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        let mut b = Request::builder()
            .method(method)
            .uri(path_of(path))
            .header("host", &self.host)
            .header("content-length", body.len());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        Ok(b.body(Full::new(body))?)
    }

    /// Sends a request and returns the response with its body still to be read.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let req = self.build(method, path, headers, body)?;
        let fut = async {
            self.tx.ready().await?;
            Ok::<_, Error>(self.tx.send_request(req).await?)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no response within {:?}", self.timeout))?
    }

    /// Sends a request and reads the whole response.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp> {
        let resp = self.send(method, path, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| "response body timed out")??
            .to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Resp> {
        self.call(Method::GET, path, headers, Bytes::new()).await
    }
}

/// Reads a response body to its end without keeping it, returning its length.
pub async fn drain(mut body: Incoming, timeout: Duration) -> Result<u64> {
    let mut n = 0u64;
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                n += data.len() as u64;
            }
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| "response body timed out")??;
    Ok(n)
}
