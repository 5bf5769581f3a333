//! `GET /v2/_catalog?n=&last=`, straight from the repository table: no directory walk. It
//! lists only the repositories the caller may pull; pages count visible names only.

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::auth::Caller;
use super::tags::page_params;
use super::{reply, Request, State};
use crate::db;
use crate::oci::RegistryError;

pub async fn list(state: &State, req: &Request, caller: Caller) -> Result<Response, RegistryError> {
    let (n, last, paged) = page_params(req)?;
    let page = state
        .db
        .read(move |tx| db::listing::catalog(tx, last.as_deref(), n, |r| caller.may_list(r)))
        .await?;
    let body = serde_json::to_vec(&serde_json::json!({ "repositories": page.items }))
        .expect("JSON values always serialize");
    let mut b = reply::builder(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
    if paged && page.more {
        if let Some(last) = page.items.last() {
            b = b.header(header::LINK, reply::next_link("/v2/_catalog", n, last));
        }
    }
    Ok(reply::finish(b, body))
}
