//! The redb database: one file holding every fact except blob bytes.
//!
//! redb's API is blocking and allows one writer at a time. `Db::read` runs a closure on
//! tokio's blocking pool, so no transaction ever lives across an `.await`, and a check and
//! the update it guards always share one write transaction. The requests' writes
//! (`Db::write`, `write_checked`, `write_unsynced`, `write_grouped`) go through the group
//! commit (`group`): whatever is waiting shares one transaction and one fsync.

pub mod blobs;
pub mod events;
mod group;
pub mod listing;
pub mod manifests;
mod memo;
pub mod migrate;
pub mod policy;
pub mod pulls;
pub mod schema;
pub mod snapshot;
pub mod uploads;
pub mod users;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::oci::RegistryError;
use schema::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this build understands \
         ({SCHEMA_VERSION}): it was written by a newer dockyard; run that release (or a later \
         one), or restore a backup taken before the upgrade. Nothing was changed"
    )]
    NewerSchema { found: u64 },
    #[error("database task failed: {0}")]
    Task(String),
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(e.into())
            }
        }
        // Lets a transaction body written against `RegistryError` use `?` on redb calls.
        impl From<$t> for RegistryError {
            fn from(e: $t) -> Self {
                DbError::from(e).into()
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A handle to the open database, cheap to clone.
#[derive(Clone)]
pub struct Db {
    shared: Arc<group::Shared>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds, for push times.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Db {
    /// Opens (creating if needed) the database and every table, checks the schema version and
    /// migrates an older database (see `migrate`), all in one transaction. redb holds an
    /// exclusive lock on the file, so a second process fails here.
    ///
    /// A database already at this schema with every table in place is only read: a restart
    /// commits nothing, so it pays no fsync before serving.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let db = Database::create(path)?;
        if !Self::is_current(&db)? {
            Self::create_or_migrate(&db)?;
        }
        Ok(Db {
            shared: Arc::new(group::Shared {
                db,
                queue: group::Queue::default(),
                commits: AtomicU64::new(0),
                memo: memo::Memo::default(),
            }),
        })
    }

    /// Whether the schema version is this release's and every table exists (read only).
    fn is_current(db: &Database) -> Result<bool, DbError> {
        let tx = db.begin_read()?;
        let version = match tx.open_table(META) {
            Ok(meta) => meta.get("schema_version")?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if version != Some(SCHEMA_VERSION) {
            // Older (migrate), newer (refused with its own message) or new: the write path.
            return Ok(false);
        }
        macro_rules! exists {
            ($($table:expr),*) => {
                $(match tx.open_table($table) {
                    Ok(_) => {}
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                    Err(e) => return Err(e.into()),
                })*
            };
        }
        every_table!(exists);
        Ok(true)
    }

    /// Creates a new database's version row and tables, or migrates an older one, in one
    /// write transaction; refuses a newer one.
    fn create_or_migrate(db: &Database) -> Result<(), DbError> {
        let tx = db.begin_write()?;
        let opened = migrate::run(&tx)?;
        macro_rules! create {
            ($($table:expr),*) => {
                $(tx.open_table($table)?;)*
            };
        }
        every_table!(create);
        tx.commit()?;
        if let migrate::Opened::Migrated { from, counts } = opened {
            tracing::warn!(
                manifests = counts.manifests,
                tags = counts.tags,
                "database migrated from schema version {from} to {SCHEMA_VERSION}; \
                 releases older than this one can no longer open it"
            );
        }
        Ok(())
    }

    /// Runs `f` in a read transaction on this thread, which must be allowed to block (the
    /// blocking pool, or a program without a runtime).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError>,
    {
        let tx = self.shared.db.begin_read()?;
        f(&tx)
    }

    /// Runs `f` in a write transaction of its own on this thread and commits it if `f`
    /// succeeds, outside the group commit: for the GC and fsck, whose bodies are large, try
    /// locks and are not to be run twice. Callers that hold blob locks take them before
    /// calling this.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, RegistryError>,
    {
        let tx = self.shared.db.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        self.shared.commits.fetch_add(1, Ordering::SeqCst);
        Ok(out)
    }

    /// How many transactions this process has committed: equal readings mean nothing changed
    /// in between (the database snapshots skip a tick that would copy the same state).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::SeqCst)
    }

    /// The answer remembered under `key` (see `memo`), if no commit happened since it was
    /// read. Never blocks on the database: callable on an async thread.
    pub fn remembered<V: Clone + 'static>(&self, key: &str) -> Option<V> {
        let g = self.shared.commits.load(Ordering::SeqCst);
        self.shared.memo.get(key, g)
    }

    /// `read_blocking`, remembering the answer under `key` (`weigh` estimates its bytes) until
    /// the next commit. `key` must name everything the answer depends on.
    pub fn read_remembered_blocking<V, F>(
        &self,
        key: String,
        weigh: fn(&V) -> usize,
        f: F,
    ) -> Result<V, RegistryError>
    where
        V: Clone + Send + Sync + 'static,
        F: FnOnce(&ReadTransaction) -> Result<V, RegistryError>,
    {
        if let Some(v) = self.remembered(&key) {
            return Ok(v);
        }
        // The generation before the transaction: a commit in between makes the entry stale.
        let g = self.shared.commits.load(Ordering::SeqCst);
        let tx = self.shared.db.begin_read()?;
        let v = f(&tx)?;
        self.shared.memo.put(key, g, weigh(&v), v.clone());
        Ok(v)
    }

    /// [`Db::read`] for hot requests: answered on this (async) thread when remembered, else
    /// read on the blocking pool and remembered until the next commit.
    pub async fn read_remembered<V, F>(
        &self,
        key: String,
        weigh: fn(&V) -> usize,
        f: F,
    ) -> Result<V, RegistryError>
    where
        V: Clone + Send + Sync + 'static,
        F: FnOnce(&ReadTransaction) -> Result<V, RegistryError> + Send + 'static,
    {
        if let Some(v) = self.remembered(&key) {
            return Ok(v);
        }
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.read_remembered_blocking(key, weigh, f))
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` in a read transaction on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let tx = shared.db.begin_read()?;
            f(&tx)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` in a durable write transaction shared with whatever other requests are
    /// waiting (see `group`), and answers once that transaction is committed and fsynced. If
    /// `f` fails, nothing it did is committed, so a failed request changes nothing; `f` may
    /// run more than once (when another body in its batch fails), so it must not act outside
    /// the transaction.
    pub async fn write<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        self.grouped(f, true, |_| true).await
    }

    /// Like [`Db::write`], for bodies whose refusals are answers rather than failures (a user
    /// that already exists, say): commits only on `Ok(Ok(_))`, so a refused command changes
    /// nothing.
    pub async fn write_checked<T, E, F>(&self, f: F) -> Result<Result<T, E>, RegistryError>
    where
        F: FnMut(&WriteTransaction) -> Result<Result<T, E>, RegistryError> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        self.grouped(f, true, Result::is_ok).await
    }

    /// Like `write`, but the commit need not be fsynced: it becomes durable with the next
    /// durable commit, and a crash before that loses it (redb rolls back to the last durable
    /// commit; nothing is corrupted). Only for rows whose loss makes a client start over and
    /// nothing worse: upload sessions. A batch with any durable body is fsynced as a whole.
    pub async fn write_unsynced<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        self.grouped(f, false, |_| true).await
    }

    /// [`Db::write`] for a caller on a thread that may block (one holding a blob lock on the
    /// blocking pool): waits for the group commit on this thread.
    pub fn write_grouped<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let (task, rx) = group::Task::new(f, true, |_: &T| true);
        self.shared.submit_blocking(Box::new(task), rx)
    }

    async fn grouped<T, F>(
        &self,
        f: F,
        durable: bool,
        keep: fn(&T) -> bool,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let (task, rx) = group::Task::new(f, durable, keep);
        self.shared.submit(Box::new(task));
        rx.await
            .map_err(|_| DbError::Task("the commit leader went away".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart of a current database only reads; a missing table takes the write path,
    /// which puts it back. (A newer database is still refused: `tests/migrate.rs`.)
    #[test]
    fn open_writes_only_when_a_table_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dockyard.redb");
        drop(Db::open(&path).unwrap());
        let db = Database::create(&path).unwrap();
        assert!(Db::is_current(&db).unwrap());

        let tx = db.begin_write().unwrap();
        assert!(tx.delete_table(OUTBOX).unwrap());
        tx.commit().unwrap();
        assert!(!Db::is_current(&db).unwrap());
        drop(db);
        drop(Db::open(&path).unwrap());
        let db = Database::create(&path).unwrap();
        assert!(Db::is_current(&db).unwrap());
        assert!(db.begin_read().unwrap().open_table(OUTBOX).is_ok());
    }
}
