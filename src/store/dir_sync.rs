//! Batched directory fsyncs: a rename into a shard directory is durable only once the
//! directory is fsynced, and concurrent pushes rename into the same directories.
//!
//! Per directory, a caller waits for a round that starts after its rename: whoever finds no
//! round of that directory running leads the next one (one fsync), while later callers queue
//! up for the round after. So N renames into one directory during one fsync cost two fsyncs,
//! not N. Different directories are synced in parallel by their own callers (the journal
//! joins concurrent fsyncs into one commit; a serial loop over them would not).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

#[derive(Default)]
pub struct DirSync {
    state: Mutex<HashMap<PathBuf, Rounds>>,
    finished: Condvar,
}

#[derive(Default)]
struct Rounds {
    /// Rounds started and finished so far; a round is running when they differ.
    started: u64,
    done: u64,
    /// Callers still waiting on this directory (the entry goes when none is left).
    waiting: usize,
    /// Failed rounds and their errors, while anyone may still ask: everyone in a failed
    /// round gets its error.
    failed: Vec<(u64, io::ErrorKind, String)>,
}

impl std::fmt::Debug for DirSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirSync")
    }
}

impl DirSync {
    /// Makes everything done to `dir` before this call durable (blocking).
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut all = self.state.lock().expect("dir sync lock");
        let r = all.entry(dir.to_path_buf()).or_default();
        r.waiting += 1;
        // A running round may have begun its fsync before this call's rename: wait for the
        // next one.
        let mine = r.started + 1;
        loop {
            let r = all.get_mut(dir).expect("entry kept while waited on");
            if r.done >= mine {
                let result = match r.failed.iter().find(|(round, _, _)| *round == mine) {
                    Some((_, kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
                    None => Ok(()),
                };
                r.waiting -= 1;
                if r.waiting == 0 && r.started == r.done {
                    all.remove(dir);
                }
                return result;
            }
            if r.started == r.done {
                r.started += 1;
                let round = r.started;
                drop(all);
                let result = File::open(dir).and_then(|f| f.sync_all());
                all = self.state.lock().expect("dir sync lock");
                let r = all.get_mut(dir).expect("entry kept while waited on");
                r.done = round;
                if let Err(e) = result {
                    r.failed.push((round, e.kind(), e.to_string()));
                }
                self.finished.notify_all();
                continue;
            }
            all = self.finished.wait(all).expect("dir sync lock");
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
