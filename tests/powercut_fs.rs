//! A FUSE filesystem that can lose power.
//!
//! It keeps every file's bytes in a backing directory and every directory in memory, and it
//! remembers, per file and per directory, what has been made durable: a file's bytes and
//! length as of its last `fsync`/`fdatasync`, a directory's entries as of its last `fsync`.
//! A [`PowerCutFs::cut`] freezes that (every later operation fails with EIO, as on a dead
//! disk); [`PowerCutFs::restart`] unmounts, throws away everything that was not durable and
//! mounts again, as a machine does when the power comes back:
//!
//! - bytes written and truncations since a file's last fsync are gone: the file holds what
//!   its last fsync saw (a file never fsynced is empty);
//! - creates, links, unlinks, renames and mkdirs since a directory's last fsync are undone in
//!   that directory (a rename between two directories can therefore leave the file in both,
//!   or in neither, as POSIX allows); whatever is no longer reachable from the root is gone.
//!
//! This is the harshest state POSIX allows after a power loss short of torn writes, which it
//! does not model: a real disk may keep more (ext4 commits directories with its journal),
//! never less. The kernel's page cache goes with the unmount, so nothing read after the
//! restart comes from before the cut.
//!
//! Single-threaded (fuser's session loop), and slow next to a real filesystem: test sizes only.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

enum Kind {
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
    File {
        /// Byte ranges written since the last fsync, `[start, end)`.
        dirty: Vec<(u64, u64)>,
    },
    /// A socket or fifo: a name and nothing else (Dockyard's `admin.sock`).
    Special(FileType),
}

struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    /// For directories and special files; a file's times are its backing file's.
    mtime: SystemTime,
}

/// How much each cut threw away, for the test's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lost {
    /// Directory entries (creates, renames, unlinks, mkdirs) undone.
    pub entries: usize,
    /// Files whose bytes or length went back to their last fsync.
    pub files: usize,
}

struct State {
    backing: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open backing files (live copy), by inode.
    open: HashMap<u64, File>,
    dead: bool,
    fsyncs: u64,
    dir_fsyncs: u64,
}

impl State {
    fn live_path(&self, ino: u64) -> PathBuf {
        self.backing.join("live").join(ino.to_string())
    }

    fn durable_path(&self, ino: u64) -> PathBuf {
        self.backing.join("durable").join(ino.to_string())
    }

    fn file(&mut self, ino: u64) -> std::io::Result<&File> {
        if !self.open.contains_key(&ino) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.live_path(ino))?;
            self.open.insert(ino, f);
        }
        Ok(&self.open[&ino])
    }

    fn attr(&mut self, ino: u64) -> Option<FileAttr> {
        let node = self.nodes.get(&ino)?;
        let (perm, uid, gid, mtime) = (node.perm, node.uid, node.gid, node.mtime);
        let (kind, size, mtime, nlink) = match &node.kind {
            Kind::Dir { .. } => (FileType::Directory, 0, mtime, 2),
            Kind::Special(t) => (*t, 0, mtime, 1),
            Kind::File { .. } => {
                let md = self.file(ino).ok()?.metadata().ok()?;
                (
                    FileType::RegularFile,
                    md.len(),
                    md.modified().unwrap_or(mtime),
                    1,
                )
            }
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink,
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn entries(&mut self, dir: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match &mut self.nodes.get_mut(&dir)?.kind {
            Kind::Dir { live, .. } => Some(live),
            _ => None,
        }
    }

    fn lookup(&mut self, dir: u64, name: &OsStr) -> Option<u64> {
        self.entries(dir)?.get(name).copied()
    }

    fn add(
        &mut self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        req: &Request<'_>,
    ) -> Result<FileAttr, i32> {
        if self.lookup(parent, name).is_some() {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        if let Kind::File { .. } = kind {
            for path in [self.live_path(ino), self.durable_path(ino)] {
                File::create(path).map_err(|_| libc::EIO)?;
            }
        }
        self.nodes.insert(
            ino,
            Node {
                kind,
                perm,
                uid: req.uid(),
                gid: req.gid(),
                mtime: SystemTime::now(),
            },
        );
        self.entries(parent)
            .ok_or(libc::ENOTDIR)?
            .insert(name.to_os_string(), ino);
        self.attr(ino).ok_or(libc::EIO)
    }

    /// Makes a file's bytes and length durable: copies the dirty ranges to the durable copy.
    fn sync_file(&mut self, ino: u64) -> std::io::Result<()> {
        let Some(Node {
            kind: Kind::File { dirty },
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return Ok(());
        };
        let ranges = std::mem::take(dirty);
        let durable = OpenOptions::new()
            .write(true)
            .open(self.durable_path(ino))?;
        let live = self.file(ino)?;
        let len = live.metadata()?.len();
        durable.set_len(len)?;
        let mut buf = Vec::new();
        for (start, end) in ranges {
            let end = end.min(len);
            if start >= end {
                continue;
            }
            buf.resize((end - start) as usize, 0);
            live.read_exact_at(&mut buf, start)?;
            durable.write_all_at(&buf, start)?;
        }
        self.fsyncs += 1;
        Ok(())
    }

    fn mark_dirty(&mut self, ino: u64, start: u64, end: u64) {
        if let Some(Node {
            kind: Kind::File { dirty },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            // Appends (the common case) extend the last range.
            match dirty.last_mut() {
                Some(last) if last.0 <= start && start <= last.1 => last.1 = last.1.max(end),
                _ => dirty.push((start, end)),
            }
        }
    }

    /// The power comes back: every file and directory as of its last fsync, and whatever
    /// that leaves unreachable from the root removed.
    fn rewind(&mut self) -> std::io::Result<Lost> {
        self.open.clear();
        let mut lost = Lost::default();
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in &inos {
            let (live_path, durable_path) = (self.live_path(*ino), self.durable_path(*ino));
            match &mut self.nodes.get_mut(ino).unwrap().kind {
                Kind::Dir { live, durable } => {
                    if live != durable {
                        let names: HashSet<&OsString> = live.keys().chain(durable.keys()).collect();
                        lost.entries += names
                            .into_iter()
                            .filter(|n| live.get(*n) != durable.get(*n))
                            .count();
                        *live = durable.clone();
                    }
                }
                Kind::File { dirty } => {
                    let same_len = std::fs::metadata(&live_path)?.len()
                        == std::fs::metadata(&durable_path)?.len();
                    if !dirty.is_empty() || !same_len {
                        lost.files += 1;
                        dirty.clear();
                        std::fs::copy(&durable_path, &live_path)?;
                    }
                }
                Kind::Special(_) => {}
            }
        }
        let mut reachable = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            if let Some(Node {
                kind: Kind::Dir { live, .. },
                ..
            }) = self.nodes.get(&dir)
            {
                for ino in live.values() {
                    if reachable.insert(*ino) {
                        todo.push(*ino);
                    }
                }
            }
        }
        for ino in inos {
            if !reachable.contains(&ino) {
                if let Some(Node {
                    kind: Kind::File { .. },
                    ..
                }) = self.nodes.remove(&ino)
                {
                    let _ = std::fs::remove_file(self.live_path(ino));
                    let _ = std::fs::remove_file(self.durable_path(ino));
                }
            }
        }
        self.dead = false;
        Ok(lost)
    }
}

/// The mounted filesystem; unmounted on drop.
pub struct PowerCutFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    pub lost: Vec<Lost>,
}

impl PowerCutFs {
    /// Mounts an empty filesystem at `mountpoint`, keeping its bytes under `backing`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<PowerCutFs> {
        std::fs::create_dir_all(backing.join("live"))?;
        std::fs::create_dir_all(backing.join("durable"))?;
        std::fs::create_dir_all(mountpoint)?;
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: Kind::Dir {
                    live: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: SystemTime::now(),
            },
        );
        let state = Arc::new(Mutex::new(State {
            backing: backing.to_path_buf(),
            nodes,
            next_ino: ROOT + 1,
            open: HashMap::new(),
            dead: false,
            fsyncs: 0,
            dir_fsyncs: 0,
        }));
        let mut fs = PowerCutFs {
            state,
            mountpoint: mountpoint.to_path_buf(),
            session: None,
            lost: Vec::new(),
        };
        fs.session = Some(fs.spawn()?);
        Ok(fs)
    }

    fn spawn(&self) -> std::io::Result<fuser::BackgroundSession> {
        let options = [
            MountOption::FSName("powercut".into()),
            MountOption::DefaultPermissions,
        ];
        fuser::spawn_mount2(Fuse(self.state.clone()), &self.mountpoint, &options)
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes: from now on every operation fails, and what is durable is frozen.
    pub fn cut(&self) {
        self.state.lock().unwrap().dead = true;
    }

    /// The power comes back: unmounts (every process using the filesystem must be gone),
    /// throws away what was not durable, mounts again.
    pub fn restart(&mut self) -> std::io::Result<Lost> {
        self.cut();
        self.unmount();
        let lost = self.state.lock().unwrap().rewind()?;
        self.lost.push(lost);
        self.session = Some(self.spawn()?);
        Ok(lost)
    }

    /// (file fsyncs, directory fsyncs) served so far.
    pub fn fsyncs(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        (s.fsyncs, s.dir_fsyncs)
    }

    fn unmount(&mut self) {
        if let Some(session) = self.session.take() {
            // Lazily, in case the kernel still holds a reference for a moment; the session
            // thread ends when the connection does.
            let c = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
                .expect("mountpoint without NUL");
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            // Not `join()`, which panics if the session ended with an error: this also runs
            // while a failed test unwinds.
            let guard = session.guard;
            let _ = guard.join();
        }
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// What fuser drives: the shared state behind a lock.
struct Fuse(Arc<Mutex<State>>);

impl Fuse {
    /// The state, unless the power is off.
    fn live(&self) -> Result<MutexGuard<'_, State>, i32> {
        let s = self.0.lock().unwrap();
        if s.dead {
            Err(libc::EIO)
        } else {
            Ok(s)
        }
    }
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Fuse {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        match s.lookup(parent, name).and_then(|ino| s.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        match s.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let Some(node) = s.nodes.get_mut(&ino) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(m) = mode {
            node.perm = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            node.uid = u;
        }
        if let Some(g) = gid {
            node.gid = g;
        }
        if let Some(t) = mtime {
            node.mtime = time(t);
        }
        let is_file = matches!(node.kind, Kind::File { .. });
        if is_file {
            let r = (|| {
                let f = s.file(ino)?;
                if let Some(len) = size {
                    f.set_len(len)?;
                }
                if let Some(t) = mtime {
                    f.set_modified(time(t))?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                return reply.error(errno(e));
            }
            if let Some(len) = size {
                // A length change is undone by a cut like a write: mark an empty range.
                s.mark_dirty(ino, len, len);
            }
        }
        match s.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File { dirty: vec![] },
            libc::S_IFSOCK => Kind::Special(FileType::Socket),
            libc::S_IFIFO => Kind::Special(FileType::NamedPipe),
            _ => return reply.error(libc::EPERM),
        };
        match s.add(parent, name, kind, (mode & !umask & 0o7777) as u16, req) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let kind = Kind::Dir {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        match s.add(parent, name, kind, (mode & !umask & 0o7777) as u16, req) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        if let Some(ino) = s.lookup(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return reply.error(libc::EEXIST);
            }
            if flags & libc::O_TRUNC != 0 {
                if let Err(e) = s.file(ino).and_then(|f| f.set_len(0)) {
                    return reply.error(errno(e));
                }
                s.mark_dirty(ino, 0, 0);
            }
            return match s.attr(ino) {
                Some(attr) => reply.created(&TTL, &attr, 0, 0, 0),
                None => reply.error(libc::EIO),
            };
        }
        let kind = Kind::File { dirty: vec![] };
        match s.add(parent, name, kind, (mode & !umask & 0o7777) as u16, req) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let Some(ino) = s.lookup(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        if matches!(s.nodes[&ino].kind, Kind::Dir { .. }) {
            return reply.error(libc::EISDIR);
        }
        s.entries(parent).unwrap().remove(name);
        reply.ok()
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let Some(ino) = s.lookup(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        match s.entries(ino) {
            None => return reply.error(libc::ENOTDIR),
            Some(e) if !e.is_empty() => return reply.error(libc::ENOTEMPTY),
            Some(_) => {}
        }
        s.entries(parent).unwrap().remove(name);
        reply.ok()
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL);
        }
        let Some(ino) = s.lookup(parent, name) else {
            return reply.error(libc::ENOENT);
        };
        if let Some(target) = s.lookup(newparent, newname) {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return reply.error(libc::EEXIST);
            }
            if let Some(e) = s.entries(target) {
                if !e.is_empty() {
                    return reply.error(libc::ENOTEMPTY);
                }
            }
        }
        s.entries(parent).unwrap().remove(name);
        match s.entries(newparent) {
            Some(e) => {
                e.insert(newname.to_os_string(), ino);
                reply.ok()
            }
            None => reply.error(libc::ENOTDIR),
        }
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        if s.lookup(newparent, newname).is_some() {
            return reply.error(libc::EEXIST);
        }
        match s.entries(newparent) {
            Some(e) => {
                e.insert(newname.to_os_string(), ino);
            }
            None => return reply.error(libc::ENOTDIR),
        }
        match s.attr(ino) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.live() {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let r = s.file(ino).and_then(|f| {
            let mut n = 0;
            while n < buf.len() {
                match f.read_at(&mut buf[n..], offset as u64 + n as u64)? {
                    0 => break,
                    k => n += k,
                }
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let offset = offset as u64;
        match s.file(ino).and_then(|f| f.write_all_at(data, offset)) {
            Ok(()) => {
                s.mark_dirty(ino, offset, offset + data.len() as u64);
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        match s.sync_file(ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.live() {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        let Some(entries) = s.entries(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let mut all: Vec<(u64, FileType, OsString)> = vec![
            (ino, FileType::Directory, ".".into()),
            (ino, FileType::Directory, "..".into()),
        ];
        let listed: Vec<(OsString, u64)> = entries.iter().map(|(n, i)| (n.clone(), *i)).collect();
        for (name, child) in listed {
            let kind = match &s.nodes[&child].kind {
                Kind::Dir { .. } => FileType::Directory,
                Kind::File { .. } => FileType::RegularFile,
                Kind::Special(t) => *t,
            };
            all.push((child, kind, name));
        }
        for (i, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        let mut s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        if let Some(Node {
            kind: Kind::Dir { live, durable },
            ..
        }) = s.nodes.get_mut(&ino)
        {
            *durable = live.clone();
        }
        s.dir_fsyncs += 1;
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let backing = self.0.lock().unwrap().backing.clone();
        let c = std::ffi::CString::new(backing.as_os_str().as_encoded_bytes()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a properly sized out-param.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return reply.error(libc::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        )
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok()
    }
}

/// Whether this machine can mount a FUSE filesystem (root, `/dev/fuse`).
pub fn fuse_available() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("mounting needs root".into());
    }
    Ok(())
}
