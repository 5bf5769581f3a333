//! Blob bytes on disk: the sharded content-addressed layout and the upload files that become
//! blobs. This module never touches the database; callers order file and row operations.
//!
//! ```text
//! <root>/
//! ├── dockyard.redb                 the database (see db::schema)
//! ├── blobs/
//! │   ├── sha256/ab/abcdef…         one file per blob, named by its digest, sharded by the
//! │   └── sha512/0f/0f12…           first two hex digits so no directory grows too large
//! └── uploads/
//!     └── <uuid>                    bytes of an upload in progress (or of a monolithic PUT)
//! ```

pub mod read;
pub mod upload;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::oci::Digest;

pub use upload::{BodyStream, Cursors, Sink};

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Every path under the root, in one place.
pub enum Location<'a> {
    Database,
    Blob(&'a Digest),
    Upload(&'a str),
}

impl Store {
    /// Creates the directory skeleton if it is missing.
    pub fn open(root: &Path) -> io::Result<Store> {
        create_dir_durable(&root.join("blobs"))?;
        create_dir_durable(&root.join("uploads"))?;
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path_for(&self, loc: Location<'_>) -> PathBuf {
        match loc {
            Location::Database => self.root.join("dockyard.redb"),
            Location::Blob(d) => self
                .root
                .join("blobs")
                .join(d.algorithm().as_str())
                .join(&d.hex()[..2])
                .join(d.hex()),
            // Upload ids are uuids we minted; callers parse them before they get here.
            Location::Upload(id) => self.root.join("uploads").join(id),
        }
    }

    /// Moves a finished, fsynced upload file into its content-addressed place and makes the
    /// rename durable. If the blob is already there the upload file is simply dropped: the
    /// content is identical by construction.
    pub fn promote(&self, upload_id: &str, digest: &Digest) -> io::Result<()> {
        let from = self.path_for(Location::Upload(upload_id));
        let to = self.path_for(Location::Blob(digest));
        if to.exists() {
            fs::remove_file(&from)?;
            return Ok(());
        }
        let dir = to.parent().expect("blob paths have a shard directory");
        create_dir_durable(dir)?;
        fs::rename(&from, &to)?;
        if skip_fsync_for_tests("blob-dir") {
            return Ok(());
        }
        fs::File::open(dir)?.sync_all()
    }

    /// Makes the skeleton durable once the database file exists in it: the root's entries
    /// (`dockyard.redb`, `blobs/`, `uploads/`) are only on disk after an fsync of the root,
    /// and a power loss before one would lose the whole instance.
    pub fn sync_root(&self) -> io::Result<()> {
        sync_dir(&self.root)
    }

    /// Bytes available to us on the filesystem holding the root.
    pub fn free_space(&self) -> io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "root path contains NUL"))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid NUL-terminated string and `st` a properly sized out-param.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }

    /// Proves the root is writable by creating, syncing and removing a small file.
    pub fn probe_writable(&self) -> io::Result<()> {
        let probe = self.root.join(".write-probe");
        fs::write(&probe, b"probe")?;
        fs::remove_file(&probe)
    }

    /// Opens a blob's file for reading (blocking: call it from the blocking pool).
    pub fn open_blob(&self, digest: &Digest) -> io::Result<fs::File> {
        fs::File::open(self.path_for(Location::Blob(digest)))
    }

    pub fn remove_upload(&self, upload_id: &str) -> io::Result<()> {
        match fs::remove_file(self.path_for(Location::Upload(upload_id))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// `create_dir_all`, and an fsync of the parent of every directory it created, so that a
/// rename into the new directory survives a power loss together with the directory itself.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        r => r?,
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// TEST-ONLY: `DOCKYARD_TEST_SKIP_FSYNC=blob-dir` makes [`Store::promote`] skip the fsync
/// that makes a blob's rename durable. It exists so that `tests/powercut.rs` can show that
/// its power-cut filesystem catches one missing fsync; nothing else may set it. Read once.
fn skip_fsync_for_tests(which: &str) -> bool {
    static SKIP: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| std::env::var("DOCKYARD_TEST_SKIP_FSYNC").ok())
        .as_deref()
        == Some(which)
}
