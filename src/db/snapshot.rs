//! A consistent copy of the whole database: every table, as one read transaction sees it,
//! written into a new database file (what `dockyard backup` and `restore` put in place).
//!
//! redb has no public way to read a table whose types it is not told, so the copy names each
//! table here with its types. A table this list does not know makes the copy fail loudly
//! (never a backup that silently lacks it), and a unit test opens a fresh database and checks
//! that every table it creates is in the list: whoever adds a table adds it here.

use std::collections::BTreeSet;
use std::path::Path;

use redb::{
    Database, Key, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle, Value,
};

use super::schema::*;
use super::DbError;

/// Rows copied per table, for the summary.
#[derive(Clone, Debug, Default)]
pub struct CopyStats {
    pub tables: usize,
    pub rows: u64,
}

/// The blobs a snapshot references (every blob row: the ones no manifest counts are still
/// linked into repositories), with their recorded sizes.
pub fn blobs(tx: &ReadTransaction) -> Result<Vec<(String, u64)>, DbError> {
    let mut out = Vec::new();
    for row in tx.open_table(BLOBS)?.iter()? {
        let (k, v) = row?;
        let rec: BlobRecord = decode(v.value())?;
        out.push((k.value().to_string(), rec.size));
    }
    Ok(out)
}

/// The recorded size of a blob, if the database has its row.
pub fn blob_size(tx: &ReadTransaction, digest: &str) -> Result<Option<u64>, DbError> {
    match tx.open_table(BLOBS)?.get(digest)? {
        Some(v) => Ok(Some(decode::<BlobRecord>(v.value())?.size)),
        None => Ok(None),
    }
}

/// Manifests and repositories in the snapshot, for the summary.
pub fn counts(tx: &ReadTransaction) -> Result<(u64, u64), DbError> {
    Ok((
        tx.open_table(MANIFESTS)?.len()?,
        tx.open_table(REPOS)?.len()?,
    ))
}

/// Writes every table of `tx` into a new database at `dest` (replacing any file there) and
/// commits it durably. Upload sessions are not copied: their bytes are not part of a
/// snapshot, so a copy starts with none (a client resumes by starting over).
pub fn copy_into(tx: &ReadTransaction, dest: &Path) -> Result<CopyStats, DbError> {
    let present: BTreeSet<String> = tx.list_tables()?.map(|t| t.name().to_string()).collect();
    if let Some(unknown) = present.iter().find(|n| !TABLES.contains(&n.as_str())) {
        return Err(DbError::Corrupt(format!(
            "table {unknown:?} is not known to the copy (db::snapshot): refusing an incomplete copy"
        )));
    }
    match std::fs::remove_file(dest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DbError::Corrupt(format!(
                "cannot replace {}: {e}",
                dest.display()
            )))
        }
        _ => {}
    }
    let db = Database::create(dest)?;
    let out = db.begin_write()?;
    let mut stats = CopyStats::default();
    {
        let mut copy = |name: &str, rows: Result<u64, DbError>| -> Result<(), DbError> {
            if present.contains(name) {
                stats.tables += 1;
                stats.rows += rows?;
            }
            Ok(())
        };
        copy("meta", table(tx, &out, META, &present))?;
        copy("blobs", table(tx, &out, BLOBS, &present))?;
        copy("repo_blobs", table(tx, &out, REPO_BLOBS, &present))?;
        copy("manifests", table(tx, &out, MANIFESTS, &present))?;
        copy(
            "manifest_bodies",
            table(tx, &out, MANIFEST_BODIES, &present),
        )?;
        copy("tags", table(tx, &out, TAGS, &present))?;
        copy("tag_pushed", table(tx, &out, TAG_PUSHED, &present))?;
        copy("repos", table(tx, &out, REPOS, &present))?;
        copy("referrers", table(tx, &out, REFERRERS, &present))?;
        copy(
            "absent_children",
            table(tx, &out, ABSENT_CHILDREN, &present),
        )?;
        copy("repo_pulls", table(tx, &out, REPO_PULLS, &present))?;
        copy("blob_uses", table(tx, &out, BLOB_USES, &present))?;
        // Events not yet delivered are part of the instant the copy shows: a restored root
        // delivers them (at least once).
        copy("outbox", table(tx, &out, OUTBOX, &present))?;
        copy("outbox_state", table(tx, &out, OUTBOX_STATE, &present))?;
        copy("users", table(tx, &out, USERS, &present))?;
        copy("acls", table(tx, &out, ACLS, &present))?;
        copy("secrets", table(tx, &out, SECRETS, &present))?;
        // Created empty: see above.
        out.open_table(UPLOADS)?;
    }
    out.commit()?;
    drop(db);
    Ok(stats)
}

/// Every table `copy_into` knows, by name.
const TABLES: [&str; 18] = [
    "meta",
    "blobs",
    "repo_blobs",
    "manifests",
    "manifest_bodies",
    "tags",
    "tag_pushed",
    "repos",
    "referrers",
    "absent_children",
    "repo_pulls",
    "blob_uses",
    "outbox",
    "outbox_state",
    "uploads",
    "users",
    "acls",
    "secrets",
];

fn table<K: Key + 'static, V: Value + 'static>(
    tx: &ReadTransaction,
    out: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
    present: &BTreeSet<String>,
) -> Result<u64, DbError> {
    if !present.contains(def.name()) {
        return Ok(0);
    }
    let from = tx.open_table(def)?;
    let mut to = out.open_table(def)?;
    let mut n = 0;
    for row in from.iter()? {
        let (k, v) = row?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_knows_every_table_a_database_has() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::Db::open(&dir.path().join("d.redb")).unwrap();
        let names: Vec<String> = db
            .read_blocking(|tx| {
                Ok(tx
                    .list_tables()
                    .map_err(DbError::from)?
                    .map(|t| t.name().to_string())
                    .collect())
            })
            .unwrap();
        assert!(names.len() >= 11, "{names:?}");
        for n in &names {
            assert!(
                TABLES.contains(&n.as_str()),
                "table {n} is not copied by db::snapshot::copy_into"
            );
        }
    }
}
