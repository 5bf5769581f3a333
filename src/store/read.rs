//! Reading a blob file out as a stream of large chunks for a response body.
//!
//! Each chunk is a read-only memory map of 1 MiB of the file, populated on the blocking pool
//! (so a page not in the page cache is read from disk there, never on an async thread), and
//! handed to hyper as a `Bytes` that unmaps itself when sent. The only copy a GET makes is
//! the kernel's, from the page cache into the socket; the next chunk is mapped while the
//! current one is being sent, and no thread is held while a slow client drains its socket.
//! Mapping is safe because blob files never change once renamed into place (GC unlinks,
//! which leaves a mapping valid); a file shorter than its record is refused before mapping.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::task::JoinHandle;

/// Bytes per body frame: large enough that per-chunk costs (a map, an unmap, a pool hop)
/// vanish; mapped page-cache pages, not heap, so they cost no memory of our own.
pub const CHUNK: usize = 1024 * 1024;

/// `len` bytes of `file` from `offset`, as a stream of chunks of at most `CHUNK` bytes.
pub struct FileChunks {
    file: Arc<File>,
    /// Where the next read to be started begins, and where the range ends.
    next_offset: u64,
    end: u64,
    pending: Option<JoinHandle<io::Result<Bytes>>>,
}

impl FileChunks {
    pub fn new(file: File, offset: u64, len: u64) -> FileChunks {
        let mut s = FileChunks {
            file: Arc::new(file),
            next_offset: offset,
            end: offset + len,
            pending: None,
        };
        s.pending = s.start_read();
        s
    }

    fn start_read(&mut self) -> Option<JoinHandle<io::Result<Bytes>>> {
        if self.next_offset >= self.end {
            return None;
        }
        let n = (self.end - self.next_offset).min(CHUNK as u64) as usize;
        let (file, offset) = (self.file.clone(), self.next_offset);
        self.next_offset += n as u64;
        let end = self.end;
        Some(tokio::task::spawn_blocking(move || {
            if file.metadata()?.len() < end {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file is shorter than its record",
                ));
            }
            map_chunk(&file, offset, n)
        }))
    }
}

/// A read-only shared mapping of part of a file, unmapped on drop.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; the bytes it shows do not
// change (blob files are immutable), so sharing it between threads is sound.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until `drop`.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region `mmap` returned, once.
        unsafe {
            libc::munmap(self.ptr, self.len);
        }
    }
}

/// Maps `len` bytes of `file` at `offset` (which need not be page-aligned) and faults them in.
fn map_chunk(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let start = offset - offset % page;
    let skip = (offset - start) as usize;
    #[cfg(target_os = "linux")]
    let flags = libc::MAP_SHARED | libc::MAP_POPULATE;
    #[cfg(not(target_os = "linux"))]
    let flags = libc::MAP_SHARED;
    // SAFETY: a fresh read-only mapping of a range the caller checked lies within the file.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            skip + len,
            libc::PROT_READ,
            flags,
            file.as_raw_fd(),
            start as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mapping = Mapping {
        ptr,
        len: skip + len,
    };
    Ok(Bytes::from_owner(mapping).slice(skip..))
}

impl Stream for FileChunks {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let chunk = ready!(Pin::new(pending).poll(cx)).map_err(io::Error::other)?;
        // Read ahead: the next chunk comes off the disk while this one goes to the socket.
        self.pending = match chunk {
            Ok(_) => self.start_read(),
            Err(_) => None,
        };
        Poll::Ready(Some(chunk))
    }
}

impl Drop for FileChunks {
    fn drop(&mut self) {
        // A client that goes away mid-download leaves at most one read to finish.
        if let Some(p) = self.pending.take() {
            p.abort();
        }
    }
}
