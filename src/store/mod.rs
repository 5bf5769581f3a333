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

mod dir_sync;
pub mod read;
pub mod s3;
mod s3_sink;
pub mod upload;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::oci::Digest;

pub use upload::{BodyStream, Cursors, Sink};

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    /// Shard-directory fsyncs of concurrent promotes, batched.
    dirs: Arc<dir_sync::DirSync>,
    /// With `[storage] backend = "s3"`: where blobs live instead of `<root>/blobs/`. Uploads
    /// still spool in `<root>/uploads/`.
    bucket: Option<s3::Bucket>,
}

/// A blob's bytes, wherever they are.
pub enum BlobBytes {
    /// The open file under `<root>/blobs/` (filesystem backend).
    File(fs::File),
    /// An object in the bucket, read (or redirected to) once the caller is back on the async
    /// side.
    Object(s3::Bucket),
}

/// A stored blob's size and age (time since it was last written).
pub type SizeAge = (u64, std::time::Duration);

/// How [`Store::place_into`] got a blob into the other root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// A file of the right size was already there (an earlier backup).
    Present,
    Linked,
    Copied,
}

/// Every path under the root, in one place.
pub enum Location<'a> {
    Database,
    Blob(&'a Digest),
    Upload(&'a str),
}

impl Store {
    /// Creates the directory skeleton if it is missing, private to its owner (0700): the
    /// database holds the token signing key and password hashes, the blobs private images.
    pub fn open(root: &Path) -> io::Result<Store> {
        Store::open_with(root, &crate::config::Backend::Filesystem)
    }

    /// [`Store::open`] with blobs on `backend`; for S3 the client is built (no request is
    /// made: see [`s3::Bucket::check`]).
    pub fn open_with(root: &Path, backend: &crate::config::Backend) -> io::Result<Store> {
        let store = Store::open_unsynced(root, backend)?;
        sync_dir(root)?;
        Ok(store)
    }

    /// [`Store::open_with`] without the final fsync of the root: the caller must call
    /// [`Store::sync_root`] before it writes anything. The server does, once its database
    /// file exists, so one fsync makes `blobs/`, `uploads/` and `dockyard.redb` durable
    /// together (each directory fsync is a journal commit, which on a busy disk is most
    /// of a first start-up).
    pub fn open_unsynced(root: &Path, backend: &crate::config::Backend) -> io::Result<Store> {
        create_dirs(root, &["blobs", "uploads"])?;
        let bucket = match backend {
            crate::config::Backend::Filesystem => None,
            crate::config::Backend::S3(c) => {
                Some(s3::Bucket::connect(c).map_err(io::Error::other)?)
            }
        };
        Ok(Store {
            root: root.to_path_buf(),
            dirs: Arc::default(),
            bucket,
        })
    }

    /// The bucket blobs live in, with the S3 backend.
    pub fn bucket(&self) -> Option<&s3::Bucket> {
        self.bucket.as_ref()
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
    /// rename durable (the shard directory's fsync is shared with concurrent promotes, see
    /// `dir_sync`). If the blob is already there the upload file is simply dropped: the
    /// content is identical by construction.
    ///
    /// With the S3 backend the file is copied into the blob's object instead (a multipart
    /// upload for anything bigger than a part, see `s3::Bucket::put_file`) and removed once
    /// the object is complete; the caller commits the row after this returns: object before
    /// row. Blocking: call it from the blocking pool.
    pub fn promote(&self, upload_id: &str, digest: &Digest) -> io::Result<()> {
        let from = self.path_for(Location::Upload(upload_id));
        if let Some(bucket) = &self.bucket {
            return self.put_object(bucket, upload_id, digest, &from);
        }
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
        self.dirs.sync(dir)
    }

    /// [`Store::promote`] for many uploads at once (an import): every rename first, then one
    /// fsync per shard directory touched, instead of one per blob. Returns on the first
    /// failure; files already renamed are then blobs without rows, which the GC removes.
    pub fn promote_all<'a>(
        &self,
        uploads: impl IntoIterator<Item = (&'a str, &'a Digest)>,
    ) -> io::Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for (upload_id, digest) in uploads {
            let from = self.path_for(Location::Upload(upload_id));
            if let Some(bucket) = &self.bucket {
                self.put_object(bucket, upload_id, digest, &from)?;
                continue;
            }
            let to = self.path_for(Location::Blob(digest));
            if to.exists() {
                fs::remove_file(&from)?;
                continue;
            }
            let dir = to.parent().expect("blob paths have a shard directory");
            if dirs.insert(dir.to_path_buf()) {
                create_dir_durable(dir)?;
            }
            fs::rename(&from, &to)?;
        }
        for dir in &dirs {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The S3 side of a promote: the upload file into the bucket, then the file removed.
    fn put_object(
        &self,
        bucket: &s3::Bucket,
        upload_id: &str,
        digest: &Digest,
        from: &Path,
    ) -> io::Result<()> {
        let size = fs::metadata(from)?.len();
        let journal = self.journal_for(upload_id);
        let (b, f, d) = (bucket.clone(), from.to_path_buf(), digest.clone());
        s3::wait(async move { b.put_file(&f, &journal, &d, size).await })?;
        fs::remove_file(from)
    }

    /// Where the id of the multipart upload that copies upload `upload_id` into the bucket
    /// is written while it runs (see `s3`).
    pub fn journal_for(&self, upload_id: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{upload_id}{}", s3::JOURNAL_SUFFIX))
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

    /// What a GET of the blob reads: the open file, or (S3) the bucket, which the caller reads
    /// or redirects to on the async side. Blocking: call it from the blocking pool.
    pub fn blob_bytes(&self, digest: &Digest) -> io::Result<BlobBytes> {
        match &self.bucket {
            Some(b) => Ok(BlobBytes::Object(b.clone())),
            None => self.open_blob(digest).map(BlobBytes::File),
        }
    }

    /// Up to `max` bytes from the start of a blob (a config blob for the UI), from either
    /// backend. Blocking.
    pub fn read_head(&self, digest: &Digest, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        match &self.bucket {
            Some(b) => {
                let (b, d) = (b.clone(), digest.clone());
                s3::wait(async move {
                    let size = b.size(&d).await?.ok_or(io::ErrorKind::NotFound)?;
                    let mut stream = b.read(&d, 0, size.min(max)).await?;
                    let mut out = Vec::new();
                    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                        out.extend_from_slice(&chunk?);
                    }
                    Ok(out)
                })
            }
            None => {
                let mut out = Vec::new();
                self.open_blob(digest)?.take(max).read_to_end(&mut out)?;
                Ok(out)
            }
        }
    }

    /// Whether the blob's bytes are stored (a HEAD request to the bucket with S3). Blocking.
    pub fn has_blob(&self, digest: &Digest) -> io::Result<bool> {
        match &self.bucket {
            Some(b) => {
                let (b, d) = (b.clone(), digest.clone());
                Ok(s3::wait(async move { b.size(&d).await })?.is_some())
            }
            None => Ok(self.path_for(Location::Blob(digest)).is_file()),
        }
    }

    /// The digest a blob's stored bytes hash to (streamed, never held whole). Blocking.
    pub fn rehash_blob(&self, digest: &Digest) -> io::Result<Digest> {
        match &self.bucket {
            Some(b) => {
                let (b, d) = (b.clone(), digest.clone());
                s3::wait(async move {
                    let size = b.size(&d).await?.ok_or(io::ErrorKind::NotFound)?;
                    let mut hasher = crate::oci::Hasher::new(d.algorithm());
                    let mut stream = b.read(&d, 0, size).await?;
                    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
                        hasher.update(&chunk?);
                    }
                    Ok(hasher.finish())
                })
            }
            None => Ok(
                Sink::rehash(&self.path_for(Location::Blob(digest)), digest.algorithm())?.digest(),
            ),
        }
    }

    /// Removes a blob's bytes; `false` when they were already gone. Blocking.
    /// The directory a blob's file lives in, to fsync after unlinks there; `None` with S3,
    /// where a deleted object is gone once the DELETE is answered.
    pub fn blob_dir(&self, digest: &Digest) -> Option<PathBuf> {
        match &self.bucket {
            Some(_) => None,
            None => self
                .path_for(Location::Blob(digest))
                .parent()
                .map(Path::to_path_buf),
        }
    }

    pub fn remove_blob(&self, digest: &Digest) -> io::Result<bool> {
        match &self.bucket {
            Some(b) => {
                let (b, d) = (b.clone(), digest.clone());
                s3::wait(async move { b.delete(&d).await })?;
                Ok(true)
            }
            None => match fs::remove_file(self.path_for(Location::Blob(digest))) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// Every stored blob's digest, cheaply: the file names under `blobs/` (no `stat` of each:
    /// the GC's stray sweep reads sizes and ages only of the few without a row, see
    /// [`Store::blob_age`]), or (S3) the listing, which carries size and age anyway.
    pub fn blob_digests(&self) -> io::Result<Vec<(Digest, Option<SizeAge>)>> {
        match &self.bucket {
            Some(_) => Ok(self
                .list_blobs()?
                .into_iter()
                .map(|(d, size, age)| (d, Some((size, age))))
                .collect()),
            None => Ok(crate::gc::blob_files(&self.root)?
                .into_iter()
                .map(|(d, _)| (d, None))
                .collect()),
        }
    }

    /// A blob file's size and age (time since its last change); `None` when it is gone.
    pub fn blob_age(&self, digest: &Digest) -> Option<SizeAge> {
        let meta = fs::metadata(self.path_for(Location::Blob(digest))).ok()?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        Some((meta.len(), age))
    }

    /// Every stored blob: digest, size and age. The files under `blobs/`, or (S3) the objects
    /// under the prefix's `blobs/`. Blocking.
    pub fn list_blobs(&self) -> io::Result<Vec<(Digest, u64, std::time::Duration)>> {
        let now = std::time::SystemTime::now();
        match &self.bucket {
            Some(b) => {
                let b = b.clone();
                let objects = s3::wait(async move { b.list_blobs().await })?;
                let now = now
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                Ok(objects
                    .into_iter()
                    .map(|(d, size, modified)| {
                        let age = (now - modified).max(0) as u64;
                        (d, size, std::time::Duration::from_secs(age))
                    })
                    .collect())
            }
            None => Ok(crate::gc::blob_files(&self.root)?
                .into_iter()
                .filter_map(|(d, path)| {
                    let meta = fs::metadata(&path).ok()?;
                    let age = meta
                        .modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .unwrap_or_default();
                    Some((d, meta.len(), age))
                })
                .collect()),
        }
    }

    /// Puts the file of `digest` (`size` bytes) into another root `dest`: nothing when `dest`
    /// already has a file of that size (whose bytes match, with `verify`); a hard link when both roots share a filesystem (blob
    /// files never change once in place, so two names for one inode are safe); otherwise a
    /// copy written under `dest/uploads/`, fsynced, and renamed into place. With `verify`,
    /// the source is re-hashed first and a mismatch is an `InvalidData` error. Directories
    /// are made durable by [`Store::sync_blob_dirs`], once, after the last blob.
    pub fn place_into(
        &self,
        dest: &Store,
        digest: &Digest,
        size: u64,
        verify: bool,
    ) -> io::Result<Placed> {
        let to = dest.path_for(Location::Blob(digest));
        let staging = dest
            .root
            .join("uploads")
            .join(format!(".copy-{}", digest.hex()));
        self.place_at(digest, size, verify, &to, &staging)
    }

    /// [`Store::place_into`] for any target path (an OCI layout's `blobs/…`); a copy is
    /// written at `staging` first.
    pub fn place_at(
        &self,
        digest: &Digest,
        size: u64,
        verify: bool,
        to: &Path,
        staging: &Path,
    ) -> io::Result<Placed> {
        let from = self.path_for(Location::Blob(digest));
        let hashes_to = |path: &Path| -> io::Result<bool> {
            Ok(&Sink::rehash(path, digest.algorithm())?.digest() == digest)
        };
        if fs::metadata(to).is_ok_and(|m| m.len() == size) && (!verify || hashes_to(to)?) {
            return Ok(Placed::Present);
        }
        if let Some(bucket) = &self.bucket {
            // From the bucket: downloaded into `staging`, hashed on the way, renamed into place.
            fs::create_dir_all(to.parent().expect("blob paths have a shard directory"))?;
            let (b, d, st) = (bucket.clone(), digest.clone(), staging.to_path_buf());
            s3::wait(async move { b.download(&d, size, &st).await })?;
            fs::rename(staging, to)?;
            return Ok(Placed::Copied);
        }
        let on_disk = fs::metadata(&from)?.len();
        if on_disk != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {digest} is {on_disk} bytes on disk, {size} in the database"),
            ));
        }
        if verify && !hashes_to(&from)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {digest} is corrupt: its bytes do not hash to its digest"),
            ));
        }
        fs::create_dir_all(to.parent().expect("blob paths have a shard directory"))?;
        // A file of the wrong size (a torn copy from another tool) is replaced.
        let _ = fs::remove_file(to);
        match fs::hard_link(&from, to) {
            Ok(()) => return Ok(Placed::Linked),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Placed::Present),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)
                ) => {}
            Err(e) => return Err(e),
        }
        {
            let mut src = fs::File::open(&from)?;
            let mut out = fs::File::create(staging)?;
            // std uses copy_file_range here: no bytes pass through user space.
            io::copy(&mut src, &mut out)?;
            out.sync_all()?;
        }
        fs::rename(staging, to)?;
        Ok(Placed::Copied)
    }

    /// Brings a file from outside the root (an OCI layout, a Distribution store) into
    /// `uploads/` as a new upload: hard-linked when `link` and the filesystem allows it (for
    /// sources that, like blob files, are never rewritten in place), else copied and
    /// fsynced. The staged bytes are hashed; a digest other than `digest` removes them and
    /// is an `InvalidData` error. Returns the upload id for [`Store::promote`] and the size.
    pub fn stage(&self, from: &Path, digest: &Digest, link: bool) -> io::Result<(String, u64)> {
        let id = uuid::Uuid::new_v4().to_string();
        let path = self.path_for(Location::Upload(&id));
        let linked = link && fs::hard_link(from, &path).is_ok();
        if !linked {
            let mut src = fs::File::open(from)?;
            let mut out = fs::File::create(&path)?;
            io::copy(&mut src, &mut out)?;
            out.sync_all()?;
        }
        let sink = match Sink::rehash(&path, digest.algorithm()) {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let len = sink.len;
        let found = sink.digest();
        if &found != digest {
            let _ = fs::remove_file(&path);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} should hold {digest} but its bytes hash to {found}",
                    from.display()
                ),
            ));
        }
        Ok((id, len))
    }

    /// fsyncs the shard directories of `placed` (the blobs [`Store::place_into`] linked or
    /// copied here), then `blobs/…` and the root, making those links and renames durable.
    pub fn sync_blob_dirs<'a>(
        &self,
        placed: impl IntoIterator<Item = &'a Digest>,
    ) -> io::Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for d in placed {
            let path = self.path_for(Location::Blob(d));
            let shard = path.parent().expect("blob paths have a shard directory");
            dirs.insert(shard.to_path_buf());
            dirs.insert(
                shard
                    .parent()
                    .expect("shards are under an algorithm")
                    .to_path_buf(),
            );
        }
        dirs.insert(self.root.join("blobs"));
        dirs.insert(self.root.clone());
        // Deepest first, so that a directory is synced after what was created in it.
        let mut dirs: Vec<PathBuf> = dirs.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            fs::File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Makes unlinks (and renames) already done in the given directories durable: one fsync
    /// per directory, through the same batching as promotes (a promote's round that starts
    /// after the unlink covers it too), several directories at once. The GC calls it after
    /// the unlinks of a batch: without it a power cut brings deleted files back (as files
    /// without rows, which the next pass removes again).
    pub fn sync_dirs(&self, dirs: &std::collections::BTreeSet<PathBuf>) -> io::Result<()> {
        // Concurrent directory fsyncs share journal commits; a serial loop would not.
        const WORKERS: usize = 8;
        let dirs: Vec<&PathBuf> = dirs.iter().collect();
        if dirs.len() <= 1 {
            return dirs.iter().try_for_each(|d| self.dirs.sync(d));
        }
        let per = dirs.len().div_ceil(WORKERS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = dirs
                .chunks(per)
                .map(|share| scope.spawn(move || share.iter().try_for_each(|d| self.dirs.sync(d))))
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("directory fsync thread"))
        })
    }

    /// Removes every blob file whose digest is not in `keep`: what a new copy of the database
    /// no longer references. Only for a root no server is writing to (a backup). Returns the
    /// files and bytes removed.
    pub fn remove_blobs_except(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> io::Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for (digest, path) in crate::gc::blob_files(&self.root)? {
            if keep.contains(&digest.to_string()) {
                continue;
            }
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    n += 1;
                    bytes += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok((n, bytes))
    }

    /// The root and the database, if other users may read or enter them: what the server
    /// warns about at start (`fsck --repair` tightens them).
    pub fn exposed(&self) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        [self.root.clone(), self.path_for(Location::Database)]
            .into_iter()
            .filter_map(|p| {
                let mode = fs::metadata(&p).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then_some((p, mode))
            })
            .collect()
    }

    /// Takes every permission of group and others from everything under the root (and the
    /// root itself); returns how many paths changed. Symbolic links are left alone.
    pub fn tighten(&self) -> io::Result<u64> {
        use std::os::unix::fs::PermissionsExt;
        let mut changed = 0;
        let mut todo = vec![self.root.clone()];
        while let Some(p) = todo.pop() {
            let meta = fs::symlink_metadata(&p)?;
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                for entry in fs::read_dir(&p)? {
                    todo.push(entry?.path());
                }
            }
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & !0o077))?;
                changed += 1;
            }
        }
        Ok(changed)
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
    if !create_private_dir(dir)? {
        return Ok(());
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Creates the missing ones of `names` in `parent` (and `parent` itself, durably, if need
/// be). Their entries are durable only after an fsync of `parent`, which the caller makes
/// once for all of them.
fn create_dirs(parent: &Path, names: &[&str]) -> io::Result<()> {
    if names.iter().all(|n| parent.join(n).is_dir()) {
        return Ok(());
    }
    create_dir_durable(parent)?;
    for n in names {
        create_private_dir(&parent.join(n))?;
    }
    Ok(())
}

/// Creates `dir` private to the owner whatever the umask (see `Store::open`); false if it
/// was there already (made by another thread, say).
fn create_private_dir(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        r => r.map(|()| true),
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
