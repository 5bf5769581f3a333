//! Data in and out of a root, as files: `backup` (a consistent copy of a running registry,
//! incremental; `restore` is the same copy in the other direction, verified), `layout` (OCI
//! image layouts: `export` and `import`) and `distribution` (`import-distribution`, from a
//! CNCF Distribution filesystem store).
//!
//! None of them knows redb or where blob files live: a snapshot of the database is a
//! `db::snapshot` function, and links and copies of blob files are `store` functions.

pub mod backup;
pub mod distribution;
pub mod ingest;
pub mod layout;
pub mod migrate_storage;
pub mod snapshots;

use std::path::{Path, PathBuf};

use crate::Error;

/// Whether a server is listening on `root`'s control channel right now.
pub fn served(root: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(crate::admin::socket_path(root)).is_ok()
}

/// `path` made absolute and with every existing component resolved (symlinks, `..`), so that
/// two paths can be compared for containment even when the last components do not exist yet.
pub fn resolve(path: &Path) -> Result<PathBuf, Error> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::Command(format!("{}: {e}", path.display())))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return Ok(out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(name)) => {
                rest.push(name.to_os_string());
                existing = p;
            }
            _ => return Ok(abs),
        }
    }
}

/// One line a few times a second, not one per item.
pub(crate) struct Throttle {
    last: Option<std::time::Instant>,
}

impl Throttle {
    pub fn new() -> Throttle {
        Throttle { last: None }
    }

    pub fn due(&mut self) -> bool {
        let now = std::time::Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < std::time::Duration::from_millis(200) => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}
