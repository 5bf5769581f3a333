//! `dockyard migrate-storage --to s3`: moves a root's blobs from `<root>/blobs/` into the
//! bucket of `[storage.s3]`, with the server stopped (it opens the database itself, so a
//! running server makes it fail; a stopped server keeps it simple: no push can add a file
//! behind the copy, no GC can delete one).
//!
//! The config already says `backend = "s3"`: the user edits it first, runs this, then starts
//! the server. For every blob row, in the database's order: re-hash the local file (a corrupt
//! file is never uploaded), upload it (`Store::promote`'s S3 path: multipart, journaled),
//! then read the object back and hash it (the bucket holds exactly those bytes). An object
//! already there is verified and kept, so a migration that was interrupted is simply run
//! again. Local files are removed only with `--delete-local`, after every blob is verified.

use std::io;
use std::time::Instant;

use crate::db::snapshot;
use crate::gc::human_bytes;
use crate::oci::Digest;
use crate::store::{s3, Location, Sink};
use crate::{Core, Error};

#[derive(Debug, Default)]
pub struct Report {
    pub blobs: u64,
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Already in the bucket (verified).
    pub present: u64,
    pub deleted_local: u64,
    pub failed: Vec<String>,
    pub elapsed: std::time::Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blobs: {} uploaded ({}), {} already in the bucket, all verified; {} local \
             files removed; {} failed ({:.1}s)",
            self.blobs,
            self.uploaded,
            human_bytes(self.uploaded_bytes),
            self.present,
            self.deleted_local,
            self.failed.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Copies and verifies every blob of `core` (opened with the S3 backend) into its bucket.
pub fn run(
    core: &Core,
    delete_local: bool,
    progress: Option<&crate::gc::Progress>,
) -> Result<Report, Error> {
    let started = Instant::now();
    let Some(bucket) = core.store.bucket().cloned() else {
        return Err(Error::Command(
            "migrate-storage --to s3: the config's [storage] backend is not \"s3\"; set it \
             and [storage.s3] first, then run this with the server stopped"
                .into(),
        ));
    };
    s3::wait({
        let b = bucket.clone();
        async move { b.check().await }
    })
    .map_err(Error::Command)?;
    let blobs = core.db.read_blocking(|tx| Ok(snapshot::blobs(tx)?))?;
    let mut report = Report {
        blobs: blobs.len() as u64,
        ..Default::default()
    };
    let mut done = Vec::new();
    for (i, (d, size)) in blobs.iter().enumerate() {
        if let Some(p) = progress {
            p(&format!("migrate-storage: blob {}/{}", i + 1, blobs.len()));
        }
        let Ok(digest) = d.parse::<Digest>() else {
            report.failed.push(format!("{d}: not a digest"));
            continue;
        };
        match migrate_one(core, &bucket, &digest, *size) {
            Ok(true) => {
                report.uploaded += 1;
                report.uploaded_bytes += size;
                done.push(digest);
            }
            Ok(false) => {
                report.present += 1;
                done.push(digest);
            }
            Err(e) => report.failed.push(format!("{d}: {e}")),
        }
    }
    if delete_local && report.failed.is_empty() {
        for d in &done {
            match std::fs::remove_file(core.store.path_for(Location::Blob(d))) {
                Ok(()) => report.deleted_local += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One blob into the bucket, verified; `true` when it was uploaded, `false` when a correct
/// object was already there.
fn migrate_one(core: &Core, bucket: &s3::Bucket, digest: &Digest, size: u64) -> io::Result<bool> {
    let corrupt = |what: &str, actual: Digest| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} hashes to {actual}, not {digest}"),
        )
    };
    let (b, d) = (bucket.clone(), digest.clone());
    let present = s3::wait(async move { b.size(&d).await })? == Some(size);
    if present {
        let actual = core.store.rehash_blob(digest)?;
        if &actual == digest {
            return Ok(false);
        }
        // A wrong object (a torn copy by another tool) is replaced below.
    }
    let path = core.store.path_for(Location::Blob(digest));
    let meta = std::fs::metadata(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the local file {} is unreadable: {e}", path.display()),
        )
    })?;
    if meta.len() != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the local file is {} bytes, the row says {size}",
                meta.len()
            ),
        ));
    }
    let local = Sink::rehash(&path, digest.algorithm())?.digest();
    if &local != digest {
        return Err(corrupt("the local file", local));
    }
    if present {
        let (b, d) = (bucket.clone(), digest.clone());
        s3::wait(async move { b.delete(&d).await })?;
    }
    let journal = core.store.journal_for(&format!("migrate-{}", digest.hex()));
    let (b, d, p) = (bucket.clone(), digest.clone(), path.clone());
    s3::wait(async move { b.put_file(&p, &journal, &d, size).await })?;
    let stored = core.store.rehash_blob(digest)?;
    if &stored != digest {
        return Err(corrupt("the uploaded object", stored));
    }
    Ok(true)
}
