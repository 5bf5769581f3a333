//! `GET /v2/<name>/tags/list?n=&last=`.

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db;
use crate::oci::{ErrorCode, RegistryError, RepoName};

/// Pagination parameters shared by the tag list and the catalog. Without `n` the listing is
/// complete; `n` is capped so one request cannot ask for an unbounded page.
pub fn page_params(req: &Request) -> Result<(usize, Option<String>, bool), RegistryError> {
    const MAX_PAGE: usize = 10_000;
    let n = match req.query("n") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::new(ErrorCode::Unsupported, format!("n={v:?} is not a number"))
                .with_status(400)
        })?),
        None => None,
    };
    let last = req.query("last").map(str::to_string);
    Ok((
        n.unwrap_or(usize::MAX)
            .min(if n.is_some() { MAX_PAGE } else { usize::MAX }),
        last,
        n.is_some(),
    ))
}

pub async fn list(state: &State, name: RepoName, req: &Request) -> Result<Response, RegistryError> {
    let (n, last, paged) = page_params(req)?;
    let (r, l) = (name.clone(), last.clone());
    let key = format!("tags\0{name}\0{}\0{n}", last.as_deref().unwrap_or("\0"));
    let page = state
        .db
        .read_remembered(
            key,
            |p: &Option<db::listing::Page>| {
                p.as_ref()
                    .map_or(0, |p| p.items.iter().map(|t| t.len() + 24).sum())
            },
            move |tx| db::listing::tags(tx, &r, l.as_deref(), n),
        )
        .await?
        .ok_or_else(|| RegistryError::code(ErrorCode::NameUnknown))?;
    let body =
        serde_json::to_vec(&serde_json::json!({ "name": name.as_str(), "tags": page.items }))
            .expect("JSON values always serialize");
    let mut b = reply::builder(StatusCode::OK).header(header::CONTENT_TYPE, "application/json");
    if paged && page.more {
        if let Some(last) = page.items.last() {
            b = b.header(
                header::LINK,
                reply::next_link(&format!("/v2/{name}/tags/list"), n, last),
            );
        }
    }
    Ok(reply::finish(b, body))
}
