//! Batched directory fsyncs: a rename into a shard directory is durable only once the
//! directory is fsynced, and concurrent pushes rename into the same few directories.
//!
//! A caller adds its directory to the pending set and waits for a round that starts after
//! that: whoever finds no round running leads the next one, taking every pending directory
//! and fsyncing each once, while later callers queue up for the round after. So N renames
//! that arrive during one round cost one fsync per distinct directory, not N.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// Failed rounds remembered for the waiters that have not looked yet.
const REMEMBERED_FAILURES: usize = 64;

#[derive(Default)]
pub struct DirSync {
    state: Mutex<Rounds>,
    finished: Condvar,
}

#[derive(Default)]
struct Rounds {
    pending: BTreeSet<PathBuf>,
    /// Rounds started and finished so far; a round is running when they differ.
    started: u64,
    done: u64,
    /// Recent rounds that failed, with their errors: everyone in the round gets the error.
    failures: VecDeque<(u64, io::ErrorKind, String)>,
}

impl std::fmt::Debug for DirSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirSync")
    }
}

impl DirSync {
    /// Makes everything done to `dir` before this call durable (blocking).
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock().expect("dir sync lock");
        s.pending.insert(dir.to_path_buf());
        // A running round took its set before this; the next one to start covers `dir`.
        let mine = s.started + 1;
        loop {
            if s.done >= mine {
                return match s.failures.iter().find(|(r, _, _)| *r == mine) {
                    Some((_, kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
                    None => Ok(()),
                };
            }
            if s.started == s.done {
                s.started += 1;
                let round = s.started;
                let dirs = std::mem::take(&mut s.pending);
                drop(s);
                let result = dirs
                    .iter()
                    .try_for_each(|d| File::open(d).and_then(|f| f.sync_all()));
                s = self.state.lock().expect("dir sync lock");
                s.done = round;
                if let Err(e) = result {
                    if s.failures.len() == REMEMBERED_FAILURES {
                        s.failures.pop_front();
                    }
                    s.failures.push_back((round, e.kind(), e.to_string()));
                }
                self.finished.notify_all();
                continue;
            }
            s = self.finished.wait(s).expect("dir sync lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_syncs_all_return_and_a_missing_directory_fails_its_round() {
        let root = std::env::temp_dir().join(format!("dockyard-dirsync-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        let syncs = Arc::new(DirSync::default());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (syncs, dir) = (syncs.clone(), root.join("a"));
                std::thread::spawn(move || syncs.sync(&dir))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        assert!(syncs.sync(&root.join("missing")).is_err());
        syncs.sync(&root.join("a")).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }
}
