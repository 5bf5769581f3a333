//! `dockyard mirror pull IMAGE...`: pre-seeding the cache before a site goes offline. Each
//! image is pulled through the mirror exactly as a client would pull it (same fetches, same
//! checks, same single flights), every platform of an index or only `--platform os/arch`,
//! and the command returns once every manifest is stored.

use std::time::Duration;

use super::{fetch, Target};
use crate::oci::manifest::{self, Kind};
use crate::oci::{Digest, Reference, RegistryError, RepoName};
use crate::Core;

/// `docker.io/library/alpine:3`, `ghcr.io/o/r@sha256:…` → the mirror target and reference
/// (the tag defaults to `latest`).
fn parse_image(core: &Core, image: &str) -> Result<(Target, Reference), String> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_string()),
        None => match image.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_string()),
            _ => (image, "latest".to_string()),
        },
    };
    let repo = RepoName::parse(name).ok_or_else(|| format!("{image}: invalid repository name"))?;
    let reference =
        Reference::parse(&reference).ok_or_else(|| format!("{image}: invalid tag or digest"))?;
    let t = core.mirrors.resolve(&repo, None).ok_or_else(|| {
        format!(
            "{image}: not under a mirror prefix (configured: {})",
            core.mirrors.prefixes().join(", ")
        )
    })?;
    Ok((t, reference))
}

/// Pulls every image; one line per image. Stops at the first failure.
pub async fn pull(
    core: &Core,
    images: &[String],
    platform: Option<&str>,
) -> Result<String, String> {
    if core.mirrors.is_empty() {
        return Err("no [[mirror]] is configured".to_string());
    }
    let platform = platform
        .map(|p| {
            let mut parts = p.split('/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(os), Some(arch), variant) if !os.is_empty() && !arch.is_empty() => Ok((
                    os.to_string(),
                    arch.to_string(),
                    variant.map(str::to_string),
                )),
                _ => Err(format!("--platform {p:?}: expected os/arch[/variant]")),
            }
        })
        .transpose()?;
    let mut lines = Vec::new();
    for image in images {
        let (t, reference) = parse_image(core, image)?;
        let top = super::manifest(core, &t, &reference, false)
            .await
            .map_err(|e| format!("{image}: {}", e.message))?;
        let parsed = manifest::parse(&top.body, Some(&top.media_type))
            .map_err(|e| format!("{image}: {}", e.message))?;
        let mut images_stored = Vec::new();
        if parsed.kind == Kind::Index {
            for child in children(&top.body, platform.as_ref())? {
                images_stored.push(child);
            }
            if images_stored.is_empty() {
                return Err(format!(
                    "{image}: the index has no manifest for that platform"
                ));
            }
        } else {
            images_stored.push(top.digest.clone());
        }
        let mut blobs = 0;
        for d in &images_stored {
            blobs += pull_image(core, &t, d)
                .await
                .map_err(|e| format!("{image}: {}", e.message))?;
        }
        wait_stored(core, &t, &top.digest)
            .await
            .map_err(|e| format!("{image}: {e}"))?;
        lines.push(format!(
            "{}@{} ({} manifest{}, {} blob{})",
            t.stored,
            top.digest,
            images_stored.len() + usize::from(parsed.kind == Kind::Index),
            if images_stored.len() + usize::from(parsed.kind == Kind::Index) == 1 {
                ""
            } else {
                "s"
            },
            blobs,
            if blobs == 1 { "" } else { "s" },
        ));
    }
    Ok(lines.join("\n"))
}

/// The children of an index, those of `platform` only when it is given.
fn children(
    body: &[u8],
    platform: Option<&(String, String, Option<String>)>,
) -> Result<Vec<Digest>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("index: {e}"))?;
    let mut out = Vec::new();
    for m in v["manifests"].as_array().into_iter().flatten() {
        let p = &m["platform"];
        let keep = match platform {
            None => true,
            Some((os, arch, variant)) => {
                p["os"].as_str() == Some(os)
                    && p["architecture"].as_str() == Some(arch)
                    && variant
                        .as_deref()
                        .is_none_or(|v| p["variant"].as_str() == Some(v))
            }
        };
        if keep {
            if let Some(d) = m["digest"].as_str().and_then(|d| d.parse().ok()) {
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Fetches an image manifest and all its blobs; returns how many blobs it has.
async fn pull_image(core: &Core, t: &Target, digest: &Digest) -> Result<usize, RegistryError> {
    let a = super::manifest(core, t, &Reference::Digest(digest.clone()), false).await?;
    let parsed = manifest::parse(&a.body, Some(&a.media_type))?;
    for b in &parsed.blobs {
        let flight = fetch::start(core, t, b);
        fetch::wait(&flight).await.map_err(|m| {
            RegistryError::new(crate::oci::ErrorCode::BlobUnknown, format!("blob {b}: {m}"))
        })?;
    }
    super::commit_pending(core, &t.stored).await;
    wait_stored(core, t, digest)
        .await
        .map_err(RegistryError::internal)?;
    Ok(parsed.blobs.len())
}

/// Waits until `digest` is stored in `t.stored`: the last blob's fetch commits its
/// manifests just after it finishes.
async fn wait_stored(core: &Core, t: &Target, digest: &Digest) -> Result<(), String> {
    for _ in 0..600 {
        if super::stored(core, t, &Reference::Digest(digest.clone()))
            .await
            .map_err(|e| e.message)?
            .is_some()
        {
            return Ok(());
        }
        super::commit_pending(core, &t.stored).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{digest} was fetched but could not be stored"))
}
