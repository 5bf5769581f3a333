//! The checks a repository's `[[policy]]` makes of a change, run in the change's own write
//! transaction before `db::manifests` applies it, so that what they read cannot move before
//! the change commits: two pushes cannot both fit under a quota that fits only one (redb has
//! one writer; the second push's check sees the first one's manifest).

use std::collections::HashSet;

use redb::{ReadableTable, WriteTransaction};
use serde_json::json;

use super::schema::*;
use super::DbError;
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};
use crate::policy::{Policies, Policy};

/// Refuses a manifest PUT that would move an immutable tag or raise the usage of the
/// repositories its policy governs over the policy's quota.
pub fn check_put(
    tx: &WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
    blobs: &[Digest],
    tags: &[Tag],
    policies: &Policies,
) -> Result<(), RegistryError> {
    let Some((index, policy)) = policies.governing(repo.as_str()) else {
        return Ok(());
    };
    let r = repo.as_str();
    let d = digest.to_string();
    {
        let tag_table = tx.open_table(TAGS)?;
        for tag in tags.iter().filter(|t| policy.is_immutable(t.as_str())) {
            if let Some(old) = tag_table.get((r, tag.as_str()))? {
                if old.value() != d {
                    return Err(immutable(policy, repo, tag.as_str(), old.value()));
                }
            }
        }
    }
    let Some(limit) = policy.quota else {
        return Ok(());
    };
    let manifests = tx.open_table(MANIFESTS)?;
    if manifests.get((r, d.as_str()))?.is_some() {
        return Ok(()); // Already counted: moving tags adds no bytes.
    }
    let blob_table = tx.open_table(BLOBS)?;
    let (counted, used) = usage(
        &tx.open_table(REPOS)?,
        &tx.open_table(BLOB_USES)?,
        &blob_table,
        &|name| policies.governing(name).is_some_and(|(i, _)| i == index),
    )?;
    let mut adds = 0;
    let mut seen = HashSet::new();
    for b in blobs {
        let b = b.to_string();
        if counted.contains(&b) || !seen.insert(b.clone()) {
            continue;
        }
        if let Some(v) = blob_table.get(b.as_str())? {
            adds += decode::<BlobRecord>(v.value())?.size;
        }
    }
    if adds > 0 && used + adds > limit {
        let h = crate::gc::human_bytes;
        return Err(RegistryError::new(
            ErrorCode::Denied,
            format!(
                "quota exceeded: the repositories under {} use {} of their {} quota and this \
                 push adds {} ({} bytes used, {} bytes quota, {} bytes pushed); its blobs \
                 were uploaded but are not kept unless a manifest references them",
                policy.pattern.as_str(),
                h(used),
                h(limit),
                h(adds),
                used,
                limit,
                adds
            ),
        )
        .with_detail(json!({
            "pattern": policy.pattern.as_str(), "used": used, "quota": limit, "push": adds,
        })));
    }
    Ok(())
}

/// Refuses a DELETE of an immutable tag, or of a manifest an immutable tag points at.
pub fn check_delete(
    tx: &WriteTransaction,
    repo: &RepoName,
    reference: &Reference,
    policies: &Policies,
) -> Result<(), RegistryError> {
    let Some(policy) = policies.for_repo(repo.as_str()) else {
        return Ok(());
    };
    if policy.immutable_tags.is_empty() {
        return Ok(());
    }
    let r = repo.as_str();
    let tags = tx.open_table(TAGS)?;
    match reference {
        Reference::Tag(t) => {
            if policy.is_immutable(t.as_str()) {
                if let Some(old) = tags.get((r, t.as_str()))? {
                    return Err(immutable(policy, repo, t.as_str(), old.value()));
                }
            }
        }
        Reference::Digest(d) => {
            let d = d.to_string();
            for e in tags.range((r, "")..)? {
                let (k, v) = e?;
                let (kr, t) = k.value();
                if kr != r {
                    break;
                }
                if v.value() == d && policy.is_immutable(t) {
                    return Err(immutable(policy, repo, t, &d));
                }
            }
        }
    }
    Ok(())
}

fn immutable(policy: &Policy, repo: &RepoName, tag: &str, at: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::Denied,
        format!(
            "tag {repo}:{tag} is immutable (policy {}: immutable_tags) and stays at {at}; \
             push under a new tag instead",
            policy.pattern.as_str()
        ),
    )
    .with_status(409)
    .with_detail(json!({ "repository": repo.as_str(), "tag": tag, "digest": at }))
}

/// The unique blobs referenced by the manifests of every repository `in_scope` accepts, and
/// their total size: the figure a quota limits. Reads the `BLOB_USES` keys of those
/// repositories (one per (repository, blob) a manifest lists), so its cost grows with the
/// unique blobs of the namespace, not with its manifests.
pub fn usage(
    repos: &impl ReadableTable<&'static str, u64>,
    uses: &impl ReadableTable<(&'static str, &'static str), u64>,
    blobs: &impl ReadableTable<&'static str, &'static [u8]>,
    in_scope: &dyn Fn(&str) -> bool,
) -> Result<(HashSet<String>, u64), DbError> {
    let mut digests = HashSet::new();
    for e in repos.iter()? {
        let (k, _) = e?;
        let r = k.value();
        if !in_scope(r) {
            continue;
        }
        for u in uses.range((r, "")..)? {
            let (uk, _) = u?;
            let (ur, b) = uk.value();
            if ur != r {
                break;
            }
            digests.insert(b.to_string());
        }
    }
    let mut bytes = 0;
    for d in &digests {
        if let Some(v) = blobs.get(d.as_str())? {
            bytes += decode::<BlobRecord>(v.value())?.size;
        }
    }
    Ok((digests, bytes))
}
