//! When each repository was last pulled, for the UI and `dockyard ls`. A pull must stay a
//! read, so the time is written at most once a minute per repository, by a background task,
//! without fsync: a crash loses at most the last minute's times, which nothing depends on.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{ReadTransaction, WriteTransaction};

use super::schema::REPO_PULLS;
use crate::oci::RegistryError;

/// The longest a recorded pull time lags behind the real last pull.
pub const RESOLUTION: Duration = Duration::from_secs(60);
/// Entries the clock keeps at most; past this it starts over (costing one extra write each).
const LIMIT: usize = 100_000;

/// Decides which pulls are written: the first of each repository in every minute.
#[derive(Default)]
pub struct PullClock {
    written: Mutex<HashMap<String, Instant>>,
}

impl PullClock {
    /// Whether a pull of `repo` now should be written (and, if so, notes that it is).
    pub fn due(&self, repo: &str) -> bool {
        let now = Instant::now();
        let mut written = self.written.lock().expect("pull clock lock");
        match written.get(repo) {
            Some(t) if now.duration_since(*t) < RESOLUTION => false,
            _ => {
                if written.len() >= LIMIT {
                    written.clear();
                }
                written.insert(repo.to_string(), now);
                true
            }
        }
    }
}

pub fn record(tx: &WriteTransaction, repo: &str, at: u64) -> Result<(), RegistryError> {
    tx.open_table(REPO_PULLS)?.insert(repo, at)?;
    Ok(())
}

pub fn last(tx: &ReadTransaction, repo: &str) -> Result<Option<u64>, RegistryError> {
    Ok(tx.open_table(REPO_PULLS)?.get(repo)?.map(|v| v.value()))
}

/// Drops the times of repositories that no longer exist (called when a repository's last
/// manifest goes).
pub fn forget(tx: &WriteTransaction, repo: &str) -> Result<(), RegistryError> {
    tx.open_table(REPO_PULLS)?.remove(repo)?;
    Ok(())
}
