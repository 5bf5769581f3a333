//! The database's durability beyond this machine, with `[storage] backend = "s3"`: the server
//! writes a consistent snapshot of the database (only the database: the blobs are already in
//! the bucket) into the bucket every `[storage.s3] snapshot_interval`, and
//! `dockyard restore --from-bucket` recreates a root on another machine from the latest one.
//!
//! ```text
//! <bucket>/<prefix>/snapshots/
//! ├── 20261130T140102.123Z.redb   one object per snapshot (time-sortable names), the last
//! ├── 20261130T141602.456Z.redb   `KEEP` kept
//! └── latest                      JSON naming the newest complete one, with its sha256
//! ```
//!
//! A snapshot, in order: one read transaction copied table by table into a file beside the
//! database (`db::snapshot`, as `dockyard backup` does; upload sessions are not copied), the
//! file hashed and uploaded as a new object, then `latest` overwritten to name it (a PUT
//! replaces an object atomically, so a reader sees the old pointer or the new one, and the
//! pointer never names an incomplete object), then objects older than the newest `KEEP` are
//! deleted. A crash at any step leaves `latest` naming a complete snapshot.
//!
//! What a takeover loses: everything committed after the snapshot it restores: pushes
//! (manifests and tags; their blobs are in the bucket without rows, which the new root's GC
//! removes after `[gc] grace`), deletes (which come back), new users and grants. At most one
//! `snapshot_interval` of them while snapshots succeed; a failed snapshot is logged as an
//! error and the next tick tries again. A stopped server takes one last snapshot on its way
//! out, so a planned move loses nothing.
//!
//! Why `[gc] grace` must exceed the interval (`config::check_snapshot_grace`): a blob that a
//! manifest of the snapshot names was referenced at the snapshot's instant; its count can
//! fall to zero only after it, and the GC deletes its object `grace` later still, by which
//! time a newer snapshot (taken within one interval) no longer names it. So a restored
//! `latest` never names a deleted object.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::config::{Backend, Config};
use crate::db::snapshot;
use crate::store::s3::{self, Bucket};
use crate::{Core, Error};

/// Snapshot objects kept in the bucket (the newest ones).
pub const KEEP: usize = 8;
/// Under the bucket's prefix.
const DIR: &str = "snapshots";
const LATEST: &str = "snapshots/latest";
/// The local copy being made, beside the database (removed once uploaded).
const LOCAL: &str = "snapshot.redb.tmp";
/// What a restore downloads into before renaming it over `dockyard.redb`.
const DOWNLOAD: &str = "dockyard.redb.download";
/// Bytes read from the file per upload part request.
const CHUNK: usize = 8 << 20;

/// What `latest` holds: the newest complete snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pointer {
    /// The object, relative to the prefix (`snapshots/….redb`).
    pub object: String,
    /// When its read transaction began, Unix milliseconds: what it holds is everything
    /// committed before this instant.
    pub taken_ms: u64,
    pub bytes: u64,
    /// Of the object's bytes, checked by the restore.
    pub sha256: String,
    pub manifests: u64,
    pub repositories: u64,
    pub blobs: u64,
}

#[derive(Clone, Debug)]
pub struct SnapshotReport {
    pub pointer: Pointer,
    /// Older snapshot objects deleted (beyond `KEEP`).
    pub pruned: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for SnapshotReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "snapshot {}: {} repositories, {} manifests, {} blobs, {} bytes of database; \
             {} older removed; {:.2?}",
            self.pointer.object,
            self.pointer.repositories,
            self.pointer.manifests,
            self.pointer.blobs,
            self.pointer.bytes,
            self.pruned,
            self.elapsed
        )
    }
}

fn fail(message: String) -> Error {
    Error::Command(message)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `20261130T140102.123Z`: sorts by time as text, no `:` in the key.
fn object_name(taken_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(taken_ms);
    let stamp = humantime::format_rfc3339_millis(t)
        .to_string()
        .replace(['-', ':'], "");
    format!("{DIR}/{stamp}.redb")
}

/// Takes one snapshot of `core`'s database into its bucket. Blocking: run it on the blocking
/// pool. Fails when the backend is not S3.
pub fn take(core: &Core) -> Result<SnapshotReport, Error> {
    let started = Instant::now();
    let bucket = core
        .store
        .bucket()
        .ok_or_else(|| fail("snapshots need [storage] backend = \"s3\"".into()))?
        .clone();
    let local = core.store.root().join(LOCAL);
    let taken_ms = now_ms();
    let (blobs, (manifests, repositories)) = core.db.read_blocking(|tx| {
        snapshot::copy_into(tx, &local)?;
        Ok((snapshot::blobs(tx)?.len(), snapshot::counts(tx)?))
    })?;
    let result = (|| {
        let (bytes, sha256) = hash_file(&local)?;
        let pointer = Pointer {
            object: object_name(taken_ms),
            taken_ms,
            bytes,
            sha256,
            manifests,
            repositories,
            blobs: blobs as u64,
        };
        let (b, p, path) = (bucket.clone(), pointer.clone(), local.clone());
        let pruned = s3::wait(async move { upload(&b, &path, &p).await })
            .map_err(|e| fail(format!("snapshot into bucket: {e}")))?;
        Ok(SnapshotReport {
            pointer,
            pruned,
            elapsed: started.elapsed(),
        })
    })();
    let _ = std::fs::remove_file(&local);
    result
}

fn hash_file(path: &Path) -> Result<(u64, String), Error> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Uploads the file as the snapshot object, then `latest`, then prunes; returns how many
/// old snapshot objects it deleted.
async fn upload(bucket: &Bucket, path: &Path, pointer: &Pointer) -> object_store::Result<usize> {
    let store = bucket.object_store();
    let key = bucket.key(&pointer.object);
    // A multipart upload once past one chunk; never the whole database in memory.
    let mut w = object_store::buffered::BufWriter::with_capacity(store.clone(), key, CHUNK)
        .with_max_concurrency(2);
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| generic(e.into()))?;
    loop {
        use tokio::io::AsyncReadExt;
        let mut buf = Vec::with_capacity(CHUNK);
        let n = (&mut file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| generic(e.into()))?;
        if n == 0 {
            break;
        }
        if let Err(e) = w.put(Bytes::from(buf)).await {
            let _ = w.abort().await;
            return Err(e);
        }
    }
    {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = w.shutdown().await {
            let _ = w.abort().await;
            return Err(generic(e.into()));
        }
    }
    let json = serde_json::to_vec_pretty(pointer).expect("a pointer serializes");
    store
        .put(&bucket.key(LATEST), PutPayload::from(json))
        .await?;
    prune(bucket, &store, &pointer.object).await
}

fn generic(e: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
    object_store::Error::Generic {
        store: "snapshot",
        source: e,
    }
}

/// Deletes snapshot objects beyond the newest `KEEP` (never `current`).
async fn prune(
    bucket: &Bucket,
    store: &std::sync::Arc<dyn ObjectStore>,
    current: &str,
) -> object_store::Result<usize> {
    let mut names = list(bucket, store).await?;
    names.sort();
    let current = bucket.key(current);
    let old = names.len().saturating_sub(KEEP);
    let mut pruned = 0;
    for key in names.into_iter().take(old) {
        if key == current {
            continue;
        }
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => pruned += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(pruned)
}

/// Every snapshot object's key (not `latest`).
async fn list(
    bucket: &Bucket,
    store: &std::sync::Arc<dyn ObjectStore>,
) -> object_store::Result<Vec<object_store::path::Path>> {
    let mut out = Vec::new();
    let mut listing = store.list(Some(&bucket.key(DIR)));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if meta.location.as_ref().ends_with(".redb") {
            out.push(meta.location);
        }
    }
    Ok(out)
}

/// The newest complete snapshot named by `latest`, if any.
pub fn latest(bucket: &Bucket) -> Result<Option<Pointer>, Error> {
    let b = bucket.clone();
    let got = s3::wait(async move {
        let store = b.object_store();
        match store.get(&b.key(LATEST)).await {
            Ok(r) => r.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    })
    .map_err(|e| fail(format!("reading {LATEST} from the bucket: {e}")))?;
    match got {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            fail(format!(
                "{LATEST} in the bucket is not a snapshot pointer: {e}"
            ))
        }),
    }
}

/// How many snapshot objects the bucket holds now.
pub fn count(bucket: &Bucket) -> Result<usize, Error> {
    let b = bucket.clone();
    s3::wait(async move {
        let store = b.object_store();
        list(&b, &store).await.map(|v| v.len())
    })
    .map_err(|e| fail(format!("listing snapshots: {e}")))
}

/// Takes a snapshot every `[storage.s3] snapshot_interval`, starting with one when the server
/// starts, and a last one at `shutdown`; skips a tick when nothing was committed since the
/// last snapshot. A failed snapshot is logged as an error and tried again at the next tick.
pub async fn timer(core: Core, shutdown: impl std::future::Future<Output = ()>) {
    let (Backend::S3(s3c), Some(_)) = (&core.config.backend, core.store.bucket()) else {
        return;
    };
    let Some(every) = s3c.snapshot_interval else {
        tracing::warn!(
            "storage.s3.snapshot_interval is \"off\": the database is on this machine only, \
             and `restore --from-bucket` cannot take over from it"
        );
        return;
    };
    let mut taken_at: Option<u64> = None;
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let stopping = if first {
            first = false;
            false
        } else {
            tokio::select! {
                _ = &mut shutdown => true,
                _ = tokio::time::sleep(every) => false,
            }
        };
        let generation = core.db.commits();
        if taken_at != Some(generation) {
            let c = core.clone();
            match tokio::task::spawn_blocking(move || take(&c)).await {
                Ok(Ok(report)) => {
                    taken_at = Some(generation);
                    tracing::info!("{report}");
                }
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "database snapshot into the bucket failed: a takeover would restore an \
                     older one; trying again in {}",
                    humantime::format_duration(every)
                ),
                Err(e) => tracing::error!(error = %e, "snapshot task failed"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub pointer: Pointer,
    pub root: PathBuf,
    /// Blobs the snapshot lists whose object is not in the bucket (should be none).
    pub missing: Vec<String>,
    /// Blob objects in the bucket the snapshot has no row for (pushed after it): the GC
    /// removes them after `[gc] grace`.
    pub unrecorded: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let age = now_ms().saturating_sub(self.pointer.taken_ms) / 1000;
        write!(
            f,
            "restored {} into {} ({} repositories, {} manifests, {} blobs; taken {} ago, at {}): \
             what was committed after it is not in this root; {} objects in the bucket have no \
             row (pushed after the snapshot: the GC removes them after [gc] grace); {:.2?}",
            self.pointer.object,
            self.root.display(),
            self.pointer.repositories,
            self.pointer.manifests,
            self.pointer.blobs,
            humantime::format_duration(Duration::from_secs(age)),
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_millis(self.pointer.taken_ms)
            ),
            self.unrecorded,
            self.elapsed
        )
    }
}

/// `dockyard restore --from-bucket`: recreates `config.root` (new, empty, or replaced with
/// `force`; no server running on it) from the latest snapshot in the configured bucket. The
/// download is checked against the pointer's sha256, fsynced and renamed into place; then the
/// root is opened (migrating an older schema) and every blob row checked against the bucket.
pub fn restore_from_bucket(config: &Config, force: bool) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    let Backend::S3(s3c) = &config.backend else {
        return Err(fail(
            "restore --from-bucket needs [storage] backend = \"s3\" and [storage.s3] in the \
             config: the bucket the old server wrote its snapshots to"
                .into(),
        ));
    };
    let root = config.root.clone();
    if super::served(&root) {
        return Err(fail(format!(
            "a server is running on {}: stop it before restoring into it",
            root.display()
        )));
    }
    let db_path = root.join("dockyard.redb");
    if db_path.exists() && !force {
        return Err(fail(format!(
            "{} already holds a database: restore into a new or empty root, or pass --force \
             to replace it",
            root.display()
        )));
    }
    let bucket = Bucket::connect(s3c).map_err(fail)?;
    let pointer = latest(&bucket)?.ok_or_else(|| {
        fail(format!(
            "no snapshot in bucket {:?} under {:?}: a server with this [storage.s3] writes \
             one at start and every snapshot_interval",
            s3c.bucket,
            bucket.key(LATEST).to_string()
        ))
    })?;
    // The root's skeleton (0700) without a database yet.
    crate::store::Store::open(&root)?;
    let download = root.join(DOWNLOAD);
    let (b, p, d) = (bucket.clone(), pointer.clone(), download.clone());
    let (bytes, sha256) = s3::wait(async move { fetch(&b, &p.object, &d).await })
        .map_err(|e| fail(format!("downloading {}: {e}", pointer.object)))?;
    if bytes != pointer.bytes || sha256 != pointer.sha256 {
        let _ = std::fs::remove_file(&download);
        return Err(fail(format!(
            "{} does not match latest: {bytes} bytes with sha256 {sha256}, expected {} bytes \
             with sha256 {}; nothing was changed",
            pointer.object, pointer.bytes, pointer.sha256
        )));
    }
    // The previous root's upload sessions go with its database.
    if force {
        for entry in std::fs::read_dir(root.join("uploads"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
    }
    std::fs::rename(&download, &db_path)?;
    std::fs::File::open(&root)?.sync_all()?;
    // Opening migrates a snapshot of an older schema; a newer one is refused with both
    // versions named.
    let core = Core::open(config.clone())?;
    let rows = core.db.read_blocking(|tx| Ok(snapshot::blobs(tx)?))?;
    let b = bucket.clone();
    let objects = s3::wait(async move { b.list_blobs().await })
        .map_err(|e| fail(format!("listing the bucket's blobs: {e}")))?;
    let present: std::collections::HashSet<String> =
        objects.iter().map(|(d, _, _)| d.to_string()).collect();
    let recorded: std::collections::HashSet<&str> = rows.iter().map(|(d, _)| d.as_str()).collect();
    let missing: Vec<String> = rows
        .iter()
        .filter(|(d, _)| !present.contains(d))
        .map(|(d, _)| d.clone())
        .collect();
    let unrecorded = present
        .iter()
        .filter(|d| !recorded.contains(d.as_str()))
        .count();
    Ok(RestoreReport {
        pointer,
        root,
        missing,
        unrecorded,
        elapsed: started.elapsed(),
    })
}

/// Streams an object into `dest` (created, fsynced), hashing it; returns (bytes, sha256).
async fn fetch(bucket: &Bucket, object: &str, dest: &Path) -> Result<(u64, String), Error> {
    use tokio::io::AsyncWriteExt;
    let got = bucket
        .object_store()
        .get(&bucket.key(object))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut stream = got.into_stream();
    let mut f = tokio::fs::File::create(dest).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fail(e.to_string()))?;
        h.update(&chunk);
        f.write_all(&chunk).await?;
        n += chunk.len() as u64;
    }
    f.sync_all().await?;
    Ok((n, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_by_time_and_carry_no_colon() {
        let a = object_name(1_764_511_262_123);
        let b = object_name(1_764_511_262_124);
        let c = object_name(1_764_600_000_000);
        assert_eq!(a, "snapshots/20251130T140102.123Z.redb");
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(!a.contains(':'));
    }
}
