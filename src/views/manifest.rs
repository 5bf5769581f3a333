//! One manifest in detail: its config (read from the config blob), layers, an index's
//! children by platform, and the referrers that name it.

use std::collections::BTreeMap;

use redb::ReadTransaction;
use serde::Serialize;
use serde_json::Value;

use super::platform_string;
use crate::db::schema::*;
use crate::db::{listing, manifests};
use crate::oci::{Digest, Reference, RegistryError, RepoName};
use crate::store::Store;

/// Config blobs larger than this are not parsed (a real image config is a few KiB).
const MAX_CONFIG: u64 = 1024 * 1024;

const IMAGE_CONFIGS: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

#[derive(Clone, Debug, Serialize)]
pub struct ManifestView {
    pub repo: String,
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    /// Tags of the repository pointing at it.
    pub tags: Vec<String>,
    pub pushed: u64,
    pub subject: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub config_descriptor: Option<Layer>,
    /// The parsed image config, when the config is one.
    pub config: Option<ConfigView>,
    pub layers: Vec<Layer>,
    pub children: Vec<Child>,
    pub referrers: Vec<Referrer>,
    /// The manifest exactly as pushed.
    pub raw: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The history entry that made this layer (its `created_by`), when the config says.
    pub command: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Child {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<String>,
    /// Whether the child is stored in this repository (an index may list absent ones).
    pub stored: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ConfigView {
    pub created: Option<String>,
    pub author: Option<String>,
    pub platform: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub history: Vec<HistoryRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HistoryRow {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn descriptor(v: &Value) -> Layer {
    Layer {
        digest: text(&v["digest"]).unwrap_or_default(),
        media_type: text(&v["mediaType"]).unwrap_or_default(),
        size: v["size"].as_u64().unwrap_or(0),
        command: None,
    }
}

/// The manifest `reference` names in `repo`, or `None`.
pub fn manifest(
    tx: &ReadTransaction,
    store: &Store,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Option<ManifestView>, RegistryError> {
    let Some((digest, rec, body)) = manifests::get(tx, repo, reference, true)? else {
        return Ok(None);
    };
    let body = body.unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or_default();
    let r = repo.as_str();
    let d = digest.to_string();
    let mut tags = Vec::new();
    for e in tx.open_table(TAGS)?.range((r, "")..)? {
        let (k, v) = e?;
        if k.value().0 != r {
            break;
        }
        if v.value() == d {
            tags.push(k.value().1.to_string());
        }
    }
    let config_descriptor = json.get("config").map(descriptor);
    let config = config_descriptor
        .as_ref()
        .filter(|c| IMAGE_CONFIGS.contains(&c.media_type.as_str()) && c.size <= MAX_CONFIG)
        .and_then(|c| read_config(store, &c.digest));
    let mut layers: Vec<Layer> = json["layers"]
        .as_array()
        .map(|a| a.iter().map(descriptor).collect())
        .unwrap_or_default();
    if let Some(c) = &config {
        // History entries without `empty_layer` made the layers, in order.
        let made = c.history.iter().filter(|h| !h.empty_layer);
        for (layer, h) in layers.iter_mut().zip(made) {
            layer.command = h.created_by.clone();
        }
    }
    let stored = tx.open_table(MANIFESTS)?;
    let children = json["manifests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let l = descriptor(m);
                    Ok(Child {
                        stored: stored.get((r, l.digest.as_str()))?.is_some(),
                        platform: platform_string(&m["platform"]),
                        digest: l.digest,
                        media_type: l.media_type,
                        size: l.size,
                    })
                })
                .collect::<Result<Vec<_>, RegistryError>>()
        })
        .transpose()?
        .unwrap_or_default();
    let referrers = listing::referrers(tx, repo, &digest, None)?
        .into_iter()
        .map(|r| Referrer {
            digest: r.digest.to_string(),
            media_type: r.media_type,
            artifact_type: super::artifact_type(r.artifact_type.as_deref()),
            size: r.size,
            annotations: r.annotations.unwrap_or_default(),
        })
        .collect();
    Ok(Some(ManifestView {
        repo: r.to_string(),
        digest: d,
        media_type: rec.media_type,
        artifact_type: super::artifact_type(rec.artifact_type.as_deref()),
        size: rec.size,
        tags,
        pushed: rec.pushed_ms / 1000,
        subject: rec.subject,
        annotations: rec.annotations.unwrap_or_default(),
        config_descriptor,
        config,
        layers,
        children,
        referrers,
        raw: String::from_utf8_lossy(&body).into_owned(),
    }))
}

/// Reads and parses an image config blob; `None` when it is missing or not JSON (the page
/// then shows the descriptor only).
fn read_config(store: &Store, digest: &str) -> Option<ConfigView> {
    let digest: Digest = digest.parse().ok()?;
    let bytes = store.read_head(&digest, MAX_CONFIG).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let c = &v["config"];
    Some(ConfigView {
        created: text(&v["created"]),
        author: text(&v["author"]),
        platform: platform_string(&v),
        env: strings(&c["Env"]),
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        working_dir: text(&c["WorkingDir"]).filter(|s| !s.is_empty()),
        user: text(&c["User"]).filter(|s| !s.is_empty()),
        labels: string_map(&c["Labels"]),
        history: v["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| HistoryRow {
                created: text(&h["created"]),
                created_by: text(&h["created_by"]),
                comment: text(&h["comment"]),
                empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
            })
            .collect(),
    })
}
