//! Manifest rows, their bodies and tags, and the reference counts they hold.
//!
//! Each public function is the body of one write or read transaction, so a check (does every
//! referenced blob exist?) and the update it guards (store, count) cannot be interleaved.

use redb::{ReadTransaction, ReadableTable, Table, WriteTransaction};
use serde_json::json;

use super::blobs;
use super::schema::*;
use super::{now, now_ms, DbError};
use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, ErrorCode, Reference, RegistryError, RepoName, Tag};

type ManifestTable<'t> = Table<'t, (&'static str, &'static str), &'static [u8]>;

fn read_record(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    repo: &str,
    digest: &str,
) -> Result<Option<ManifestRecord>, DbError> {
    match table.get((repo, digest))? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

/// A stored manifest: its digest, record, and (when asked for) its exact bytes.
pub type Found = (Digest, ManifestRecord, Option<Vec<u8>>);

/// Resolves a tag or digest to the stored manifest.
pub fn get(
    tx: &ReadTransaction,
    repo: &RepoName,
    reference: &Reference,
    with_body: bool,
) -> Result<Option<Found>, RegistryError> {
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => {
            let tags = tx.open_table(TAGS)?;
            let Some(d) = tags.get((repo.as_str(), t.as_str()))? else {
                return Ok(None);
            };
            d.value()
                .parse()
                .map_err(|_| DbError::Corrupt(format!("tag {repo}:{t} holds a bad digest")))?
        }
    };
    let d = digest.to_string();
    let Some(rec) = read_record(&tx.open_table(MANIFESTS)?, repo.as_str(), &d)? else {
        return Ok(None);
    };
    let body = if with_body {
        let bodies = tx.open_table(MANIFEST_BODIES)?;
        let b = bodies
            .get((repo.as_str(), d.as_str()))?
            .ok_or_else(|| DbError::Corrupt(format!("manifest {repo}@{d} has no body")))?;
        Some(b.value().to_vec())
    } else {
        None
    };
    Ok(Some((digest, rec, body)))
}

/// Adds `delta` to a manifest's reference count. A missing row is skipped, so that a damaged
/// database (which fsck reports) does not make every later push fail.
fn add_manifest_ref(
    table: &mut ManifestTable<'_>,
    repo: &str,
    digest: &str,
    delta: i64,
) -> Result<(), DbError> {
    let Some(mut rec) = read_record(table, repo, digest)? else {
        return Ok(());
    };
    rec.refcount = rec.refcount.saturating_add_signed(delta);
    rec.zero_since = if rec.refcount == 0 { Some(now()) } else { None };
    table.insert((repo, digest), encode(&rec).as_slice())?;
    Ok(())
}

/// Stores a manifest and points `tags` at it, in one transaction: every referenced blob must
/// be linked into the repository, and (unless `sparse`) every child manifest stored in it,
/// or nothing changes. Pushing the same bytes again only moves tags; the counts are taken
/// once per manifest.
///
/// A sparse index counts the children that are stored and leaves an `ABSENT_CHILDREN` row
/// for each of the others; a manifest pushed later starts with one reference per such row,
/// so it is protected exactly as if it had come before the index.
///
/// Every PUT stamps the manifest's and each named tag's push time.
pub fn put(
    tx: &WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
    parsed: &ParsedManifest,
    body: &[u8],
    tags: &[Tag],
    sparse: bool,
) -> Result<(), RegistryError> {
    let r = repo.as_str();
    let d = digest.to_string();
    let mut blob_table = tx.open_table(BLOBS)?;
    let mut manifests = tx.open_table(MANIFESTS)?;
    {
        let links = tx.open_table(REPO_BLOBS)?;
        for b in &parsed.blobs {
            let Some(rec) = blobs::linked(&blob_table, &links, repo, b)? else {
                return Err(unknown_reference(b));
            };
            if let Some((_, declared)) = parsed
                .blob_sizes
                .iter()
                .find(|(d, size)| d == b && *size != rec.size)
            {
                return Err(RegistryError::new(
                    ErrorCode::ManifestInvalid,
                    format!(
                        "the descriptor of {b} says {declared} bytes, but the blob has {}",
                        rec.size
                    ),
                )
                .with_detail(json!({ "digest": b.to_string(), "size": declared })));
            }
        }
    }
    let mut absent = Vec::new();
    for child in &parsed.children {
        let c = child.to_string();
        if manifests.get((r, c.as_str()))?.is_none() {
            if !sparse {
                return Err(unknown_reference(child));
            }
            absent.push(c);
        }
    }
    let pushed_ms = now_ms();
    if let Some(mut rec) = read_record(&manifests, r, &d)? {
        rec.pushed_ms = pushed_ms;
        manifests.insert((r, d.as_str()), encode(&rec).as_slice())?;
    } else {
        let t = now();
        // Indexes already stored that list this manifest: their rows become its references.
        let mut absent_table = tx.open_table(ABSENT_CHILDREN)?;
        let waiting = third_keys(&absent_table, r, &d)?;
        for index in &waiting {
            absent_table.remove((r, d.as_str(), index.as_str()))?;
        }
        for c in &absent {
            absent_table.insert((r, c.as_str(), d.as_str()), ())?;
        }
        let refcount = waiting.len() as u64;
        let rec = ManifestRecord {
            media_type: parsed.media_type.clone(),
            size: body.len() as u64,
            blobs: parsed.blobs.iter().map(|b| b.to_string()).collect(),
            children: parsed.children.iter().map(|c| c.to_string()).collect(),
            subject: parsed.subject.as_ref().map(|s| s.digest.to_string()),
            artifact_type: parsed.artifact_type.clone(),
            annotations: parsed.annotations.clone(),
            refcount,
            created: t,
            zero_since: (refcount == 0).then_some(t),
            pushed_ms,
        };
        let mut uses = tx.open_table(BLOB_USES)?;
        for b in &rec.blobs {
            blobs::add_ref(&mut blob_table, b, 1)?;
            add_use(&mut uses, r, b, 1)?;
        }
        for c in &rec.children {
            if !absent.contains(c) {
                add_manifest_ref(&mut manifests, r, c, 1)?;
            }
        }
        if let Some(s) = &rec.subject {
            tx.open_table(REFERRERS)?
                .insert((r, s.as_str(), d.as_str()), ())?;
        }
        manifests.insert((r, d.as_str()), encode(&rec).as_slice())?;
        tx.open_table(MANIFEST_BODIES)?
            .insert((r, d.as_str()), body)?;
        let mut repos = tx.open_table(REPOS)?;
        let n = repos.get(r)?.map(|v| v.value()).unwrap_or(0);
        repos.insert(r, n + 1)?;
    }
    let mut tag_table = tx.open_table(TAGS)?;
    let mut tag_pushed = tx.open_table(TAG_PUSHED)?;
    for tag in tags {
        tag_pushed.insert((r, tag.as_str()), pushed_ms)?;
        let old = tag_table
            .insert((r, tag.as_str()), d.as_str())?
            .map(|v| v.value().to_string());
        if old.as_deref() == Some(d.as_str()) {
            continue;
        }
        if let Some(old) = old {
            add_manifest_ref(&mut manifests, r, &old, -1)?;
        }
        add_manifest_ref(&mut manifests, r, &d, 1)?;
    }
    Ok(())
}

/// Adds `delta` to the number of manifests of `repo` listing blob `b` (`BLOB_USES`), removing
/// the row when it reaches zero.
fn add_use(
    uses: &mut Table<'_, (&'static str, &'static str), u64>,
    repo: &str,
    b: &str,
    delta: i64,
) -> Result<(), DbError> {
    let n = uses.get((repo, b))?.map(|v| v.value()).unwrap_or(0);
    match n.saturating_add_signed(delta) {
        0 => uses.remove((repo, b))?,
        m => uses.insert((repo, b), m)?,
    };
    Ok(())
}

/// The third components of the keys `(a, b, *)` of a (repository, digest, digest) table: the
/// indexes waiting for an absent child, the referrers of a subject.
fn third_keys(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), ()>,
    a: &str,
    b: &str,
) -> Result<Vec<String>, redb::StorageError> {
    table
        .range((a, b, "")..)?
        .map(|e| {
            e.map(|(k, _)| {
                (
                    k.value().0 == a && k.value().1 == b,
                    k.value().2.to_string(),
                )
            })
        })
        .take_while(|e| e.as_ref().map_or(true, |(same, _)| *same))
        .map(|e| e.map(|(_, third)| third))
        .collect()
}

fn unknown_reference(d: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::ManifestBlobUnknown,
        format!("manifest references {d}, which is not in this repository"),
    )
    .with_detail(json!({ "digest": d.to_string() }))
}

/// Deletes a manifest by digest with every tag in the repository that points at it, and
/// releases what it counted. Refused while an index in the repository still lists it, so
/// that no index is left pointing at nothing and the counts stay exact.
pub fn delete(
    tx: &WriteTransaction,
    repo: &RepoName,
    digest: &Digest,
) -> Result<bool, RegistryError> {
    let r = repo.as_str();
    let d = digest.to_string();
    let mut manifests = tx.open_table(MANIFESTS)?;
    let Some(rec) = read_record(&manifests, r, &d)? else {
        return Ok(false);
    };
    let mut tag_table = tx.open_table(TAGS)?;
    let pointing: Vec<String> = tag_table
        .range((r, "")..)?
        .map(|e| e.map(|(k, v)| (k.value().0 == r, k.value().1.to_string(), v.value() == d)))
        .take_while(|e| e.as_ref().map_or(true, |(same_repo, _, _)| *same_repo))
        .filter_map(|e| match e {
            Ok((_, tag, true)) => Some(Ok(tag)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    if rec.refcount > pointing.len() as u64 {
        return Err(RegistryError::new(
            ErrorCode::Denied,
            format!("{d} is listed by an index in {r}; delete the index first"),
        )
        .with_status(409));
    }
    let mut tag_pushed = tx.open_table(TAG_PUSHED)?;
    for tag in &pointing {
        tag_table.remove((r, tag.as_str()))?;
        tag_pushed.remove((r, tag.as_str()))?;
    }
    manifests.remove((r, d.as_str()))?;
    let mut blob_table = tx.open_table(BLOBS)?;
    let mut uses = tx.open_table(BLOB_USES)?;
    for b in &rec.blobs {
        blobs::add_ref(&mut blob_table, b, -1)?;
        add_use(&mut uses, r, b, -1)?;
    }
    // A child is stored now exactly when this index counted it: one that was absent gained
    // the reference when it came, and a counted one cannot be deleted while listed (above).
    let mut absent_table = tx.open_table(ABSENT_CHILDREN)?;
    for c in &rec.children {
        if absent_table.remove((r, c.as_str(), d.as_str()))?.is_none() {
            add_manifest_ref(&mut manifests, r, c, -1)?;
        }
    }
    let mut referrers = tx.open_table(REFERRERS)?;
    if let Some(s) = &rec.subject {
        referrers.remove((r, s.as_str(), d.as_str()))?;
    }
    // Referrers of this manifest lose their subject now: an unreferenced one starts the
    // clock after which `[gc] untagged` collects it.
    let orphaned = third_keys(&referrers, r, &d)?;
    let t = now();
    for referrer in &orphaned {
        if let Some(mut rr) = read_record(&manifests, r, referrer)? {
            if rr.refcount == 0 {
                rr.zero_since = Some(t);
                manifests.insert((r, referrer.as_str()), encode(&rr).as_slice())?;
            }
        }
    }
    tx.open_table(MANIFEST_BODIES)?.remove((r, d.as_str()))?;
    let mut repos = tx.open_table(REPOS)?;
    let n = repos.get(r)?.map(|v| v.value()).unwrap_or(0);
    if n <= 1 {
        repos.remove(r)?;
        super::pulls::forget(tx, r)?;
    } else {
        repos.insert(r, n - 1)?;
    }
    Ok(true)
}

/// Deletes one tag; the manifest it pointed at stays, one reference lighter.
pub fn delete_tag(
    tx: &WriteTransaction,
    repo: &RepoName,
    tag: &Tag,
) -> Result<bool, RegistryError> {
    let r = repo.as_str();
    let Some(old) = tx
        .open_table(TAGS)?
        .remove((r, tag.as_str()))?
        .map(|v| v.value().to_string())
    else {
        return Ok(false);
    };
    tx.open_table(TAG_PUSHED)?.remove((r, tag.as_str()))?;
    add_manifest_ref(&mut tx.open_table(MANIFESTS)?, r, &old, -1)?;
    Ok(true)
}

/// Sets when a tag was pushed, for imports that keep the source's times (and tests that need
/// controlled ones). False when the tag does not exist.
pub fn set_tag_pushed(
    tx: &WriteTransaction,
    repo: &RepoName,
    tag: &Tag,
    pushed_ms: u64,
) -> Result<bool, RegistryError> {
    let r = repo.as_str();
    if tx.open_table(TAGS)?.get((r, tag.as_str()))?.is_none() {
        return Ok(false);
    }
    tx.open_table(TAG_PUSHED)?
        .insert((r, tag.as_str()), pushed_ms)?;
    Ok(true)
}
