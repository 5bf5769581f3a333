//! Building responses: the spec's JSON error body (rendered here and nowhere else) and the
//! headers every answer carries.

use warp::http::{header, HeaderValue, Response as HttpResponse, StatusCode};
use warp::reply::Response;

use crate::oci::{ErrorCode, RegistryError};

pub const API_VERSION: &str = "Docker-Distribution-API-Version";

/// Starts a response with the API version header every answer carries.
pub fn builder(status: StatusCode) -> warp::http::response::Builder {
    HttpResponse::builder()
        .status(status)
        .header(API_VERSION, "registry/2.0")
}

pub fn empty(status: StatusCode) -> warp::http::response::Builder {
    builder(status).header(header::CONTENT_LENGTH, "0")
}

/// Finishes a builder; header values we build are always valid, so a failure is our bug.
pub fn finish(b: warp::http::response::Builder, body: impl Into<bytes::Bytes>) -> Response {
    b.body(body.into().into())
        .unwrap_or_else(|e| error(RegistryError::internal(format!("building a response: {e}"))))
}

/// Finishes a builder with a streamed body, so large blobs never sit in memory.
pub fn stream<S, E>(b: warp::http::response::Builder, body: S) -> Response
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let streamed = warp::reply::Reply::into_response(warp::reply::stream(body));
    match b.body(()) {
        Ok(head) => Response::from_parts(head.into_parts().0, streamed.into_body()),
        Err(e) => error(RegistryError::internal(format!("building a response: {e}"))),
    }
}

/// `{"errors":[{"code":…,"message":…,"detail":…}]}` with the code's status.
pub fn error(e: RegistryError) -> Response {
    if e.code == ErrorCode::Unknown {
        tracing::error!(error = %e.message, "request failed");
    }
    let mut entry = serde_json::json!({ "code": e.code.as_str(), "message": e.message });
    if let Some(d) = e.detail {
        entry["detail"] = d;
    }
    let body = serde_json::to_vec(&serde_json::json!({ "errors": [entry] }))
        .expect("JSON values always serialize");
    let status = StatusCode::from_u16(e.status.unwrap_or_else(|| e.code.status()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in e.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(name, v);
        }
    }
    resp
}

/// A `Link` header for the next page of a paged listing (RFC 5988, as the spec shows it).
pub fn next_link(path: &str, n: usize, last: &str) -> String {
    format!("<{path}?n={n}&last={}>; rel=\"next\"", encode_query(last))
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
