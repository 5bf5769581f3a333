//! The redb database: one file holding every fact except blob bytes.
//!
//! redb's API is blocking and allows one writer at a time. `Db::read`/`Db::write` run a
//! closure on tokio's blocking pool, so no transaction ever lives across an `.await`, and a
//! check and the update it guards always share one write transaction.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod schema;
pub mod uploads;
pub mod users;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction,
};

use crate::oci::RegistryError;
use schema::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error(
        "database schema version {found} is newer than this build understands ({SCHEMA_VERSION})"
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
    inner: Arc<Database>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Db {
    /// Opens (creating if needed) the database and every table, and checks the schema version.
    /// redb holds an exclusive lock on the file, so a second process fails here.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(DbError::NewerSchema { found: v }),
                Some(SCHEMA_VERSION) => {}
                // Migrations, each in this one transaction: 1 → 2 adds `ABSENT_CHILDREN`,
                // which the `open_table` calls below create empty.
                Some(_) | None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            tx.open_table(BLOBS)?;
            tx.open_table(REPO_BLOBS)?;
            tx.open_table(MANIFESTS)?;
            tx.open_table(MANIFEST_BODIES)?;
            tx.open_table(TAGS)?;
            tx.open_table(REPOS)?;
            tx.open_table(REFERRERS)?;
            tx.open_table(ABSENT_CHILDREN)?;
            tx.open_table(UPLOADS)?;
            tx.open_table(USERS)?;
            tx.open_table(ACLS)?;
            tx.open_table(SECRETS)?;
        }
        tx.commit()?;
        Ok(Db {
            inner: Arc::new(db),
        })
    }

    /// Runs `f` in a read transaction on this thread, which must be allowed to block (the
    /// blocking pool, or a program without a runtime).
    pub fn read_blocking<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError>,
    {
        let tx = self.inner.begin_read()?;
        f(&tx)
    }

    /// Runs `f` in a write transaction on this thread and commits it if `f` succeeds; see
    /// [`Db::write`]. Callers that hold blob locks take them before calling this.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, RegistryError>,
    {
        let tx = self.inner.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a read transaction on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&ReadTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read()?;
            f(&tx)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` in a write transaction on the blocking pool and commits it if `f` succeeds;
    /// on error the transaction is dropped, which aborts it, so a failed request changes nothing.
    pub async fn write<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Like [`Db::write`], for bodies whose refusals are answers rather than failures (a user
    /// that already exists, say): commits only on `Ok(Ok(_))`, so a refused command changes
    /// nothing.
    pub async fn write_checked<T, E, F>(&self, f: F) -> Result<Result<T, E>, RegistryError>
    where
        F: FnOnce(&WriteTransaction) -> Result<Result<T, E>, RegistryError> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let db = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write()?;
            let out = f(&tx)?;
            if out.is_ok() {
                tx.commit()?;
            }
            Ok(out)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Like `write`, but the commit is not fsynced: it becomes durable with the next durable
    /// commit, and a crash before that loses it (redb rolls back to the last durable commit;
    /// nothing is corrupted). Only for rows whose loss makes a client start over and nothing
    /// worse: upload sessions. Saves one fsync on the write lock per upload.
    pub async fn write_unsynced<T, F>(&self, f: F) -> Result<T, RegistryError>
    where
        F: FnOnce(&WriteTransaction) -> Result<T, RegistryError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None)
                .map_err(|e| DbError::Task(e.to_string()))?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}
