//! `GET /v2/<name>/referrers/<digest>?artifactType=`: an OCI image index of the manifests
//! whose `subject` is the digest.

use warp::http::{header, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::db;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, RegistryError, RepoName};

pub async fn list(
    state: &State,
    name: RepoName,
    subject: Digest,
    req: &Request,
) -> Result<Response, RegistryError> {
    let filter = req.query("artifactType").map(str::to_string);
    let f = filter.clone();
    let descriptors = state
        .db
        .read(move |tx| db::listing::referrers(tx, &name, &subject, f.as_deref()))
        .await?;
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    }))
    .expect("JSON values always serialize");
    let mut b = reply::builder(StatusCode::OK).header(header::CONTENT_TYPE, OCI_INDEX);
    if filter.is_some() {
        b = b.header("OCI-Filters-Applied", "artifactType");
    }
    Ok(reply::finish(b, body))
}
