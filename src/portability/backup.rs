//! `dockyard backup DEST` and `dockyard restore SRC`: a copy of a whole root as it was at one
//! instant, taken while the registry serves.
//!
//! The copy, in order (each step leaves DEST usable if the process dies there):
//! 1. DEST is checked (not inside the root, not a directory of something else, not served)
//!    and marked as a backup (`.dockyard-backup`) before anything is written into it.
//! 2. `Core::maintenance` is taken: GC passes and `fsck --repair`, the only code that deletes
//!    blob files, wait until every blob of the snapshot is in DEST. Pushes, deletes and pulls
//!    go on; what they commit after the snapshot is simply not in this backup.
//! 3. One read transaction is the snapshot: every table is copied into
//!    `DEST/dockyard.redb.new` (`db::snapshot`) and the list of its blobs taken from it.
//! 4. Every listed blob is put into DEST (`Store::place_into`): skipped when DEST already has
//!    it (the incremental part), hard-linked when DEST shares the root's filesystem, else
//!    copied and fsynced. Then the maintenance turn is released and the directories fsynced.
//! 5. `dockyard.redb.new` is renamed over `dockyard.redb`, and the directory fsynced: this is
//!    the instant the new backup replaces the previous one.
//! 6. Blob files the new database does not reference are removed (rename first, then delete).
//!
//! So a crash before step 5 leaves the previous database with all of its blobs (new blobs
//! beside them are files without rows, which the next backup or a `gc` of DEST removes), and
//! a crash after it leaves the new one with all of its blobs. DEST is itself a root:
//! `dockyard serve --root DEST` serves it. A restore is the same copy from a backup (opened
//! as a root) into a stopped, empty root, with every blob re-hashed on the way.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{resolve, served, Throttle};
use crate::db::snapshot;
use crate::gc::{human_bytes, Progress};
use crate::oci::Digest;
use crate::store::{Location, Placed, Store};
use crate::{Core, Error};

/// Marks a directory as a Dockyard backup, so that a second backup may write into it and no
/// backup overwrites a directory that holds something else.
pub const MARKER: &str = ".dockyard-backup";
const NEW_DB: &str = "dockyard.redb.new";

#[derive(Clone)]
pub enum Mode {
    /// Into a backup directory: new, empty, or an earlier backup.
    Backup,
    /// Into a root that no server runs on: new or empty, or anything with `force`. Every
    /// blob is re-hashed before it is placed.
    Restore { force: bool },
}

#[derive(Clone)]
pub struct BackupOptions {
    pub dest: PathBuf,
    pub mode: Mode,
    pub progress: Option<Progress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupReport {
    pub restore: bool,
    pub repositories: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub copied: u64,
    pub copied_bytes: u64,
    pub linked: u64,
    pub linked_bytes: u64,
    pub present: u64,
    pub removed: u64,
    pub removed_bytes: u64,
    pub rows: u64,
    pub elapsed: Duration,
}

impl fmt::Display for BackupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} repositories, {} manifests, {} blobs ({}) as of one instant: \
             {} copied ({}), {} linked ({}), {} already there, {} removed ({}) as no longer \
             needed; {} database rows; {:.2?}",
            if self.restore { "restore" } else { "backup" },
            self.repositories,
            self.manifests,
            self.blobs,
            human_bytes(self.bytes),
            self.copied,
            human_bytes(self.copied_bytes),
            self.linked,
            human_bytes(self.linked_bytes),
            self.present,
            self.removed,
            human_bytes(self.removed_bytes),
            self.rows,
            self.elapsed,
        )
    }
}

/// What `.dockyard-backup` holds.
#[derive(Serialize, Deserialize)]
struct Marker {
    dockyard_backup: u32,
    source: PathBuf,
    /// Unix seconds of the last completed backup; `None` while the first is in progress.
    completed: Option<u64>,
    summary: Option<String>,
}

fn fail(message: String) -> Error {
    Error::Command(message)
}

/// Copies the root of `core` into `opts.dest`, as described in the module documentation.
/// Blocking: run it on the blocking pool.
pub fn run(core: &Core, opts: &BackupOptions) -> Result<BackupReport, Error> {
    let started = Instant::now();
    if core.store.bucket().is_some() {
        // The copy places blob files; with the S3 backend there are none under the root.
        return Err(Error::Command(
            "backup/restore copy blob files, but [storage] backend is \"s3\": the blobs are \
             in the bucket; back the bucket up with the object store's own tools"
                .into(),
        ));
    }
    let root = resolve(core.store.root())?;
    let dest = resolve(&opts.dest)?;
    check_dest(&root, &dest, &opts.mode)?;
    let restore = matches!(opts.mode, Mode::Restore { .. });
    create_dir(&dest)?;
    if !restore && !dest.join(MARKER).exists() {
        write_marker(&dest, &root, None)?;
    }
    let out = Store::open(&dest)?;
    // Leftovers of a copy interrupted in an earlier run; and on a forced restore, uploads of
    // the root being replaced, whose sessions go with its database.
    for entry in fs::read_dir(dest.join("uploads"))? {
        let entry = entry?;
        let name = entry.file_name();
        if restore || name.to_string_lossy().starts_with(".copy-") {
            let _ = fs::remove_file(entry.path());
        }
    }
    let new_db = dest.join(NEW_DB);
    let mut report = BackupReport {
        restore,
        ..Default::default()
    };
    let keep = {
        let _turn = core.maintenance.lock().unwrap_or_else(|e| e.into_inner());
        let (stats, blobs, (manifests, repos)) = core.db.read_blocking(|tx| {
            let stats = snapshot::copy_into(tx, &new_db)?;
            Ok((stats, snapshot::blobs(tx)?, snapshot::counts(tx)?))
        })?;
        report.rows = stats.rows;
        report.manifests = manifests;
        report.repositories = repos;
        report.blobs = blobs.len() as u64;
        let mut throttle = Throttle::new();
        let mut keep = HashSet::with_capacity(blobs.len());
        let mut placed_here = Vec::new();
        for (i, (d, size)) in blobs.iter().enumerate() {
            if let Some(p) = &opts.progress {
                if throttle.due() {
                    p(&format!(
                        "{}: blobs {i}/{} ({} copied, {} linked)",
                        if restore { "restore" } else { "backup" },
                        blobs.len(),
                        human_bytes(report.copied_bytes),
                        human_bytes(report.linked_bytes)
                    ));
                }
            }
            let digest: Digest = d
                .parse()
                .map_err(|_| fail(format!("the database lists a bad blob digest {d:?}")))?;
            let placed = core
                .store
                .place_into(&out, &digest, *size, restore)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => fail(format!(
                        "blob {d} is in the database but its file is missing from {}: \
                         run `dockyard fsck`; the previous backup is untouched",
                        root.display()
                    )),
                    _ => fail(format!("blob {d}: {e}; the previous backup is untouched")),
                })?;
            report.bytes += size;
            match placed {
                Placed::Present => report.present += 1,
                Placed::Linked => {
                    report.linked += 1;
                    report.linked_bytes += size;
                    placed_here.push(digest);
                }
                Placed::Copied => {
                    report.copied += 1;
                    report.copied_bytes += size;
                    placed_here.push(digest);
                }
            }
            keep.insert(d.clone());
        }
        (keep, placed_here)
    };
    let (keep, placed_here) = keep;
    out.sync_blob_dirs(&placed_here)?;
    fs::rename(&new_db, out.path_for(Location::Database))?;
    fs::File::open(&dest)?.sync_all()?;
    let (removed, removed_bytes) = out.remove_blobs_except(&keep)?;
    report.removed = removed;
    report.removed_bytes = removed_bytes;
    report.elapsed = started.elapsed();
    if !restore {
        write_marker(&dest, &root, Some(report.to_string()))?;
    }
    Ok(report)
}

/// Refuses a DEST that would make the copy unsafe or destroy something, before anything is
/// written.
fn check_dest(root: &Path, dest: &Path, mode: &Mode) -> Result<(), Error> {
    if dest.starts_with(root) || root.starts_with(dest) {
        return Err(fail(format!(
            "{} is inside the registry root {} (or holds it): choose a directory outside it",
            dest.display(),
            root.display()
        )));
    }
    if !dest.exists() {
        return Ok(());
    }
    if !dest.is_dir() {
        return Err(fail(format!("{} is not a directory", dest.display())));
    }
    if served(dest) {
        return Err(fail(format!(
            "a server is running on {}: stop it first",
            dest.display()
        )));
    }
    let empty = fs::read_dir(dest)?.next().is_none();
    match mode {
        Mode::Backup if empty || dest.join(MARKER).is_file() => Ok(()),
        Mode::Backup => Err(fail(format!(
            "{} holds something other than a Dockyard backup (no {MARKER}): \
             choose a new or empty directory",
            dest.display()
        ))),
        Mode::Restore { force: true } => Ok(()),
        Mode::Restore { force: false } if empty => Ok(()),
        Mode::Restore { force: false } => Err(fail(format!(
            "{} is not empty: restore into an empty root, or pass --force to replace it",
            dest.display()
        ))),
    }
}

/// Creates DEST (readable by its owner only: a backup holds password hashes and the token
/// signing key).
fn create_dir(dest: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if !dest.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)?;
    }
    Ok(())
}

fn write_marker(dest: &Path, root: &Path, summary: Option<String>) -> Result<(), Error> {
    let marker = Marker {
        dockyard_backup: 1,
        source: root.to_path_buf(),
        completed: summary.as_ref().map(|_| crate::db::now()),
        summary,
    };
    let tmp = dest.join(format!("{MARKER}.new"));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&marker).map_err(io::Error::other)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dest.join(MARKER))?;
    fs::File::open(dest)?.sync_all()?;
    Ok(())
}
