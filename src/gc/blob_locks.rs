//! Per-digest locks, and when a client last saw each blob: how pushes and the GC agree on
//! which blobs may go.
//!
//! The digest space is split into a fixed number of stripes, each a mutex over the "last seen"
//! times of the digests that hash to it. Whatever tells a client that a blob exists, or makes
//! it exist (HEAD/GET, mount, the end of an upload), holds the blob's stripe across its
//! database work and stamps the blob as seen before letting go. The GC holds the stripes of
//! the blobs it deletes from the moment it re-checks them until their files are unlinked.
//! So each of those requests happens wholly before a deletion (and the GC then sees the stamp
//! and keeps the blob) or wholly after it (and the request finds no blob, and the client
//! uploads it again).
//!
//! The times live in memory only: a restart forgets them. They are consulted by the GC of the
//! same process, which is the only GC that can run while clients are served (redb lets one
//! process open the database).
//!
//! Lock order: whoever waits for a stripe takes it before its redb write transaction begins;
//! inside a write transaction stripes are only tried (the GC takes what is free and leaves
//! the rest for later), so no one holding the writer ever waits for a stripe. A read that
//! decides whether a blob exists begins after its stripe is held.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::oci::Digest;

const STRIPES: usize = 8192;
/// A stripe's map is swept of stale entries when it grows past this.
const SWEEP_AT: usize = 64;

/// Digest (as its canonical string) → when a client last saw it.
type Seen = HashMap<String, Instant>;

pub struct BlobLocks {
    stripes: Box<[Mutex<Seen>]>,
    /// How long a sighting protects a blob; older entries may be forgotten.
    lease: Duration,
    /// When the running GC pass took its snapshot: entries newer than that must be kept
    /// until it ends, whatever their age (see `gc`).
    pass_started: Mutex<Option<Instant>>,
}

/// One held stripe.
pub struct BlobGuard<'a> {
    seen: MutexGuard<'a, Seen>,
    locks: &'a BlobLocks,
}

/// Several held stripes, taken in index order (so two holders of many cannot deadlock).
pub struct BlobGuards<'a> {
    held: Vec<(usize, BlobGuard<'a>)>,
}

pub(crate) fn stripe_of(digest: &str) -> usize {
    // Digests are uniformly random; the first hex digits after the colon spread them evenly.
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    let prefix = hex.get(..6).unwrap_or(hex);
    usize::from_str_radix(prefix, 16).unwrap_or(0) % STRIPES
}

impl BlobLocks {
    pub fn new(lease: Duration) -> BlobLocks {
        BlobLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(Seen::new())).collect(),
            lease,
            pass_started: Mutex::new(None),
        }
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lock_index(&self, i: usize) -> BlobGuard<'_> {
        // A panic while a stripe was held leaves plain data behind; keep going.
        let seen = self.stripes[i].lock().unwrap_or_else(|e| e.into_inner());
        BlobGuard { seen, locks: self }
    }

    /// Holds the stripe of `digest`. Blocks while the GC is deleting a blob of that stripe.
    pub fn lock(&self, digest: &Digest) -> BlobGuard<'_> {
        self.lock_index(stripe_of(&digest.to_string()))
    }

    /// Holds the stripe of `digest` if it is free right now: for an async thread, which must
    /// not wait for the GC.
    pub fn try_lock(&self, digest: &Digest) -> Option<BlobGuard<'_>> {
        let seen = match self.stripes[stripe_of(&digest.to_string())].try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(BlobGuard { seen, locks: self })
    }

    /// Holds the stripes of all `digests`.
    pub fn lock_all<'d>(&self, digests: impl IntoIterator<Item = &'d str>) -> BlobGuards<'_> {
        let mut idx: Vec<usize> = digests.into_iter().map(stripe_of).collect();
        idx.sort_unstable();
        idx.dedup();
        BlobGuards {
            held: idx.into_iter().map(|i| (i, self.lock_index(i))).collect(),
        }
    }

    /// Holds whichever stripes of `digests` are free right now, without waiting: for a holder
    /// of the redb writer (see the lock order above).
    pub fn try_lock_all<'d>(&self, digests: impl IntoIterator<Item = &'d str>) -> BlobGuards<'_> {
        let mut idx: Vec<usize> = digests.into_iter().map(stripe_of).collect();
        idx.sort_unstable();
        idx.dedup();
        let held = idx
            .into_iter()
            .filter_map(|i| {
                let seen = match self.stripes[i].try_lock() {
                    Ok(g) => g,
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => return None,
                };
                Some((i, BlobGuard { seen, locks: self }))
            })
            .collect();
        BlobGuards { held }
    }

    /// Marks the start of a GC pass whose snapshot is taken now.
    pub(crate) fn begin_pass(&self) -> Instant {
        let now = Instant::now();
        *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
        now
    }

    /// Ends a pass and forgets sightings older than the lease.
    pub(crate) fn end_pass(&self) {
        *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for i in 0..STRIPES {
            self.lock_index(i).sweep();
        }
    }

    /// Sightings before this instant can be forgotten: they are older than the lease, and
    /// older than the snapshot of a pass in progress.
    fn forget_before(&self) -> Option<Instant> {
        let by_age = Instant::now().checked_sub(self.lease)?;
        Some(
            match *self.pass_started.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(p) => by_age.min(p),
                None => by_age,
            },
        )
    }

    /// How many sightings are remembered (for tests and the GC report).
    pub fn remembered(&self) -> usize {
        (0..STRIPES).map(|i| self.lock_index(i).seen.len()).sum()
    }
}

impl BlobGuard<'_> {
    /// Records that a client saw (or created) `digest` now. The caller holds its stripe.
    pub fn touch(&mut self, digest: &Digest) {
        if self.seen.len() >= SWEEP_AT {
            self.sweep();
        }
        self.seen.insert(digest.to_string(), Instant::now());
    }

    pub fn last_seen(&self, digest: &str) -> Option<Instant> {
        self.seen.get(digest).copied()
    }

    fn sweep(&mut self) {
        if let Some(cutoff) = self.locks.forget_before() {
            self.seen.retain(|_, t| *t >= cutoff);
        }
    }
}

impl<'a> BlobGuards<'a> {
    fn position(&self, digest: &str) -> Option<usize> {
        let i = stripe_of(digest);
        self.held.binary_search_by_key(&i, |(k, _)| *k).ok()
    }

    /// Whether the stripe of `digest` is among those held.
    pub fn holds(&self, digest: &str) -> bool {
        self.position(digest).is_some()
    }

    /// When a client last saw `digest`, whose stripe must be among those held.
    pub fn last_seen(&self, digest: &str) -> Option<Instant> {
        let pos = self
            .position(digest)
            .expect("the stripe of a digest the caller locked");
        self.held[pos].1.last_seen(digest)
    }

    /// Records that `digest`, whose stripe must be among those held, was created or seen now.
    pub fn touch(&mut self, digest: &Digest) {
        let pos = self
            .position(&digest.to_string())
            .expect("the stripe of a digest the caller locked");
        self.held[pos].1.touch(digest);
    }

    /// The held stripes in index order, to be released one at a time.
    pub fn into_stripes(self) -> impl Iterator<Item = (usize, BlobGuard<'a>)> {
        self.held.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    #[test]
    fn touches_are_remembered_per_digest_and_swept_when_stale() {
        let locks = BlobLocks::new(Duration::ZERO);
        {
            let mut g = locks.lock(&d(1));
            g.touch(&d(1));
            assert!(g.last_seen(&d(1).to_string()).is_some());
        }
        // A pass in progress keeps what was seen after its snapshot, however old.
        locks.begin_pass();
        locks.lock(&d(2)).touch(&d(2));
        for i in 0..STRIPES {
            locks.lock_index(i).sweep();
        }
        assert!(locks.lock(&d(2)).last_seen(&d(2).to_string()).is_some());
        locks.end_pass();
        assert_eq!(locks.remembered(), 0);
    }

    #[test]
    fn trying_takes_only_free_stripes() {
        let locks = BlobLocks::new(Duration::from_secs(60));
        let (a, b) = (d(1).to_string(), d(2).to_string());
        assert_ne!(stripe_of(&a), stripe_of(&b));
        let held = locks.lock(&d(1));
        let tried = locks.try_lock_all([a.as_str(), b.as_str()]);
        assert!(!tried.holds(&a) && tried.holds(&b));
        drop(held);
    }

    #[test]
    fn many_stripes_are_taken_once_each_in_order() {
        let locks = BlobLocks::new(Duration::from_secs(60));
        let ds: Vec<String> = (0..200).map(|n| d(n).to_string()).collect();
        locks.lock(&d(7)).touch(&d(7));
        let all = locks.lock_all(ds.iter().map(String::as_str).chain([ds[0].as_str()]));
        assert!(all.held.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(all.last_seen(&ds[7]).is_some());
        assert!(all.last_seen(&ds[8]).is_none());
    }
}
