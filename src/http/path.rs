//! Turns the path after `/v2/` into a `Route`. Repository names contain slashes, so the
//! endpoint is found from the right-hand end and everything before it is the name.

use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};

#[derive(Debug, PartialEq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Route {
    /// The endpoint's name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags(_) => "tags",
            Route::Manifest(..) => "manifest",
            Route::Blob(..) => "blob",
            Route::UploadStart(_) | Route::Upload(..) => "upload",
            Route::Referrers(..) => "referrers",
        }
    }
}

fn not_found(path: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, format!("no endpoint at /v2/{path}"))
        .with_status(404)
}

fn name(path: &str, segments: &[&str]) -> Result<RepoName, RegistryError> {
    if segments.is_empty() {
        return Err(not_found(path));
    }
    let joined = segments.join("/");
    RepoName::parse(&joined).ok_or_else(|| {
        RegistryError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {joined:?}"),
        )
        .with_detail(serde_json::json!({ "name": joined }))
    })
}

fn digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|_| {
        RegistryError::new(ErrorCode::DigestInvalid, format!("invalid digest {s:?}"))
            .with_detail(serde_json::json!({ "digest": s }))
    })
}

/// Upload ids are the uuids we hand out; anything else cannot name a session (or a file).
fn upload_id(s: &str) -> Result<String, RegistryError> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| RegistryError::code(ErrorCode::BlobUploadUnknown))
}

pub fn parse(tail: &str) -> Result<Route, RegistryError> {
    if tail.is_empty() {
        return Ok(Route::Base);
    }
    if tail == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<&str> = tail.split('/').collect();
    let n = segs.len();
    let at = |i: usize| if i <= n { segs[n - i] } else { "" };
    if n >= 3 && at(2) == "tags" && at(1) == "list" {
        return Ok(Route::Tags(name(tail, &segs[..n - 2])?));
    }
    if n >= 4 && at(3) == "blobs" && at(2) == "uploads" {
        let repo = name(tail, &segs[..n - 3])?;
        return Ok(if at(1).is_empty() {
            Route::UploadStart(repo)
        } else {
            Route::Upload(repo, upload_id(at(1))?)
        });
    }
    if n >= 3 && at(2) == "blobs" && at(1) == "uploads" {
        return Ok(Route::UploadStart(name(tail, &segs[..n - 2])?));
    }
    if n >= 3 {
        let repo_segs = &segs[..n - 2];
        match at(2) {
            "manifests" => {
                let repo = name(tail, repo_segs)?;
                let r = at(1);
                // A reference with a colon can only be a digest; anything else must be a tag.
                let reference = if r.contains(':') {
                    Reference::Digest(digest(r)?)
                } else {
                    Reference::Tag(Tag::parse(r).ok_or_else(|| {
                        RegistryError::new(ErrorCode::ManifestInvalid, format!("invalid tag {r:?}"))
                            .with_detail(serde_json::json!({ "tag": r }))
                    })?)
                };
                return Ok(Route::Manifest(repo, reference));
            }
            "blobs" => return Ok(Route::Blob(name(tail, repo_segs)?, digest(at(1))?)),
            "referrers" => return Ok(Route::Referrers(name(tail, repo_segs)?, digest(at(1))?)),
            _ => {}
        }
    }
    Err(not_found(tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const U: &str = "3f2a7c1e-8d4b-4a6f-9e0c-1b2d3e4f5a6b";

    fn code(tail: &str) -> ErrorCode {
        parse(tail).unwrap_err().code
    }

    #[test]
    fn routes_with_nested_names() {
        let r = |s: &str| RepoName::parse(s).unwrap();
        assert_eq!(parse("").unwrap(), Route::Base);
        assert_eq!(parse("_catalog").unwrap(), Route::Catalog);
        assert_eq!(parse("a/b/c/tags/list").unwrap(), Route::Tags(r("a/b/c")));
        assert_eq!(
            parse("library/alpine/manifests/latest").unwrap(),
            Route::Manifest(r("library/alpine"), Reference::parse("latest").unwrap())
        );
        assert_eq!(
            parse(&format!("x/manifests/{D}")).unwrap(),
            Route::Manifest(r("x"), Reference::parse(D).unwrap())
        );
        assert_eq!(
            parse(&format!("a/b/blobs/{D}")).unwrap(),
            Route::Blob(r("a/b"), D.parse().unwrap())
        );
        assert_eq!(
            parse("a/blobs/uploads/").unwrap(),
            Route::UploadStart(r("a"))
        );
        assert_eq!(
            parse("a/blobs/uploads").unwrap(),
            Route::UploadStart(r("a"))
        );
        assert_eq!(
            parse(&format!("a/blobs/uploads/{U}")).unwrap(),
            Route::Upload(r("a"), U.to_string())
        );
        assert_eq!(
            parse(&format!("a/referrers/{D}")).unwrap(),
            Route::Referrers(r("a"), D.parse().unwrap())
        );
        // Names may contain the endpoint words themselves.
        assert_eq!(
            parse("blobs/manifests/tags/list").unwrap(),
            Route::Tags(r("blobs/manifests"))
        );
        assert_eq!(
            parse("tags/blobs/uploads/").unwrap(),
            Route::UploadStart(r("tags"))
        );
    }

    #[test]
    fn path_tricks_and_bad_parts_are_refused() {
        assert_eq!(code("../etc/tags/list"), ErrorCode::NameInvalid);
        assert_eq!(code("a/../../b/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("a%2f..%2fb/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("UPPER/manifests/latest"), ErrorCode::NameInvalid);
        assert_eq!(code("a/manifests/bad:digest"), ErrorCode::DigestInvalid);
        assert_eq!(code("a/manifests/..%2f"), ErrorCode::ManifestInvalid);
        assert_eq!(code("a/blobs/sha256:abc"), ErrorCode::DigestInvalid);
        assert_eq!(code("a/blobs/uploads/../../x"), ErrorCode::Unsupported);
        assert_eq!(
            code("a/blobs/uploads/not-a-uuid"),
            ErrorCode::BlobUploadUnknown
        );
        assert_eq!(code("a/whatever/x"), ErrorCode::Unsupported);
        assert_eq!(code("manifests/latest"), ErrorCode::Unsupported);
    }
}
