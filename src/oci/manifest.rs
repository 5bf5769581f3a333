//! Manifest parsing: what a pushed manifest references, so that a PUT can check that it all
//! exists and count it. The bytes themselves are stored and served untouched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{ErrorCode, RegistryError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The media types a manifest PUT accepts. Docker schema1 is deliberately absent:
/// Distribution 2.8 refuses it too, and no current client pushes it.
pub const ACCEPTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The fields of any of the four manifest kinds that the registry looks at.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Image,
    Index,
}

#[derive(Clone, Debug)]
pub struct ParsedManifest {
    pub media_type: String,
    pub kind: Kind,
    /// Blobs that must exist in the repository: the config and the layers (deduplicated;
    /// a layer pointing at external `urls` is exempt, as Distribution exempts it).
    pub blobs: Vec<Digest>,
    /// The size each blob descriptor declares (config and layers, as listed), checked
    /// against the stored blob when the manifest is stored: a lying size makes pulls fail.
    pub blob_sizes: Vec<(Digest, u64)>,
    /// Manifests an index points at; they must exist in the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Descriptor>,
    /// The type a referrers listing reports: `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::new(ErrorCode::ManifestInvalid, msg)
}

/// Parses a manifest body. `content_type` is the request's Content-Type, used when the body
/// carries no `mediaType` (OCI makes the field optional); when both are present they must agree.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest, RegistryError> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let media_type = match (&raw.media_type, header) {
        (Some(body), Some(h)) if body != h => {
            return Err(invalid(format!(
                "mediaType {body} does not match Content-Type {h}"
            )))
        }
        (Some(body), _) => body.clone(),
        (None, Some(h)) => h.to_string(),
        // Without either, guess from the shape, as Distribution does for OCI documents.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if !ACCEPTED.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unsupported manifest media type {media_type}"
        )));
    }
    if raw.schema_version != Some(2) {
        return Err(invalid("schemaVersion must be 2"));
    }
    let kind = if media_type == OCI_INDEX || media_type == DOCKER_LIST {
        Kind::Index
    } else {
        Kind::Image
    };
    let mut blobs = Vec::new();
    let mut blob_sizes = Vec::new();
    let mut children = Vec::new();
    let artifact_type;
    match kind {
        Kind::Image => {
            let config = raw
                .config
                .ok_or_else(|| invalid("image manifest has no config"))?;
            let layers = raw.layers.unwrap_or_default();
            if raw.manifests.is_some() {
                return Err(invalid("image manifest must not have manifests"));
            }
            artifact_type = raw
                .artifact_type
                .clone()
                .or_else(|| Some(config.media_type.clone()));
            blob_sizes.push((config.digest.clone(), config.size));
            blobs.push(config.digest);
            for l in layers.into_iter().filter(|l| l.urls.is_empty()) {
                blob_sizes.push((l.digest.clone(), l.size));
                blobs.push(l.digest);
            }
        }
        Kind::Index => {
            let manifests = raw
                .manifests
                .ok_or_else(|| invalid("index has no manifests"))?;
            if raw.layers.is_some() || raw.config.is_some() {
                return Err(invalid("index must not have config or layers"));
            }
            artifact_type = raw.artifact_type.clone();
            children.extend(manifests.into_iter().map(|m| m.digest));
        }
    }
    blobs.sort();
    blobs.dedup();
    children.sort();
    children.dedup();
    Ok(ParsedManifest {
        media_type,
        kind,
        blobs,
        blob_sizes,
        children,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn image_manifest_lists_config_and_layers_once() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":2}},
            "layers":[{{"mediaType":"x","digest":"{D2}","size":3}},{{"mediaType":"x","digest":"{D2}","size":3}}]}}"#
        );
        let m = parse(body.as_bytes(), None).unwrap();
        assert_eq!(m.kind, Kind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn index_lists_children_and_header_fills_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":9}}]}}"#
        );
        let m = parse(body.as_bytes(), Some(OCI_INDEX)).unwrap();
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.children.len(), 1);
        assert_eq!(m.media_type, OCI_INDEX);
    }

    #[test]
    fn bad_documents_are_manifest_invalid() {
        for (body, ct) in [
            ("not json", None),
            (
                r#"{"schemaVersion":1}"#,
                Some("application/vnd.docker.distribution.manifest.v1+json"),
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                Some(OCI_MANIFEST),
            ),
            (
                r#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:abc","size":1},"layers":[]}"#,
                None,
            ),
        ] {
            let err = parse(body.as_bytes(), ct).unwrap_err();
            assert_eq!(err.code, ErrorCode::ManifestInvalid, "{body}");
        }
    }
}
