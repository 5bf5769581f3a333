//! Versioned schema: the steps that bring a database written by an older release up to
//! `SCHEMA_VERSION`.
//!
//! `Db::open` reads `meta.schema_version` and runs every step from that version on, in order,
//! inside the one write transaction that opens the tables, then stores the new version and
//! commits: a crash mid-migration leaves the old database untouched, and the next open starts
//! over. A database newer than this build is refused before anything is written, and so was
//! one by every release since schema 1, so an older binary never misreads a newer file.
//!
//! Each step reads the records of its `from` version through a frozen copy of their shape
//! (below), never through today's structs, so later changes to `schema.rs` cannot change what
//! an old step does. Adding a step: bump `SCHEMA_VERSION`, freeze the old shape here, append
//! to `STEPS`, and commit a fixture written by the previous release under `tests/fixtures/`.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

use super::schema::*;
use super::DbError;

/// One migration: turns a database of version `from` into version `from + 1`.
pub struct Step {
    pub from: u64,
    pub what: &'static str,
    pub run: fn(&WriteTransaction) -> Result<Counts, DbError>,
}

/// What a step rewrote, for the log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub manifests: u64,
    pub tags: u64,
}

pub const STEPS: &[Step] = &[
    Step {
        from: 1,
        what: "push times per tag (table tag_pushed) and per manifest (ManifestRecord.pushed_ms); \
               table absent_children for sparse indexes (created empty by Db::open: a schema 1 \
               database holds no sparse index)",
        run: v1_to_v2,
    },
    Step {
        from: 2,
        what: "table blob_uses (manifests per repository listing each blob, for quotas) built \
               from the manifests; the webhook outbox (tables outbox, outbox_state, created \
               empty by Db::open)",
        run: v2_to_v3,
    },
];

/// The outcome of opening a database, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Created,
    Current,
    Migrated { from: u64, counts: Counts },
}

/// Runs inside `Db::open`'s transaction, before any table is used: creates the version row of
/// a new database, migrates an older one, refuses a newer one.
pub fn run(tx: &WriteTransaction) -> Result<Opened, DbError> {
    let mut meta = tx.open_table(META)?;
    let found = meta.get("schema_version")?.map(|v| v.value());
    let Some(found) = found else {
        meta.insert("schema_version", SCHEMA_VERSION)?;
        return Ok(Opened::Created);
    };
    if found > SCHEMA_VERSION {
        return Err(DbError::NewerSchema { found });
    }
    if found == SCHEMA_VERSION {
        return Ok(Opened::Current);
    }
    let mut total = Counts::default();
    for v in found..SCHEMA_VERSION {
        let step = STEPS
            .iter()
            .find(|s| s.from == v)
            .ok_or_else(|| DbError::Corrupt(format!("no migration from schema version {v}")))?;
        let c = (step.run)(tx)?;
        tracing::info!(from = v, to = v + 1, "database migration: {}", step.what);
        total.manifests += c.manifests;
        total.tags += c.tags;
    }
    meta.insert("schema_version", SCHEMA_VERSION)?;
    Ok(Opened::Migrated {
        from: found,
        counts: total,
    })
}

/// `ManifestRecord` as schema 1 stored it (frozen).
#[derive(Deserialize)]
struct ManifestRecordV1 {
    media_type: String,
    size: u64,
    blobs: Vec<String>,
    children: Vec<String>,
    subject: Option<String>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    refcount: u64,
    created: u64,
    zero_since: Option<u64>,
}

/// Schema 2 records when each tag and each manifest was last pushed. Schema 1 knew only when a
/// manifest was first stored, so that is what both get: a tag's push time becomes the first
/// push of the manifest it points at (a lower bound: a tag moved to an old manifest looks as
/// old as that manifest, which `dockyard gc --dry-run` shows before retention acts on it).
fn v1_to_v2(tx: &WriteTransaction) -> Result<Counts, DbError> {
    let mut counts = Counts::default();
    let mut manifests = tx.open_table(MANIFESTS)?;
    let mut created_ms = BTreeMap::new();
    let old: Vec<((String, String), Vec<u8>)> = manifests
        .iter()?
        .map(|e| {
            e.map(|(k, v)| {
                let (r, d) = k.value();
                ((r.to_string(), d.to_string()), v.value().to_vec())
            })
        })
        .collect::<Result<_, _>>()?;
    for ((r, d), bytes) in old {
        let v1: ManifestRecordV1 = ciborium::from_reader(bytes.as_slice())
            .map_err(|e| DbError::Corrupt(format!("manifest {r}@{d} (schema 1): {e}")))?;
        let pushed_ms = v1.created.saturating_mul(1000);
        let rec = ManifestRecord {
            media_type: v1.media_type,
            size: v1.size,
            blobs: v1.blobs,
            children: v1.children,
            subject: v1.subject,
            artifact_type: v1.artifact_type,
            annotations: v1.annotations,
            refcount: v1.refcount,
            created: v1.created,
            zero_since: v1.zero_since,
            pushed_ms,
        };
        manifests.insert((r.as_str(), d.as_str()), encode(&rec).as_slice())?;
        created_ms.insert((r, d), pushed_ms);
        counts.manifests += 1;
    }
    let tags = tx.open_table(TAGS)?;
    let mut pushed = tx.open_table(TAG_PUSHED)?;
    for e in tags.iter()? {
        let (k, v) = e?;
        let (r, t) = k.value();
        // A tag whose manifest is gone (fsck reports it) gets no push time: retention then
        // ranks it as the oldest.
        if let Some(ms) = created_ms.get(&(r.to_string(), v.value().to_string())) {
            pushed.insert((r, t), *ms)?;
            counts.tags += 1;
        }
    }
    Ok(counts)
}

/// What schema 2's `ManifestRecord` says about blobs (frozen; serde skips the other fields).
#[derive(Deserialize)]
struct ManifestBlobsV2 {
    blobs: Vec<String>,
}

/// Schema 3 counts, per (repository, blob), the manifests of the repository that list the
/// blob, so a quota check reads keys instead of decoding every manifest. Built here from every
/// manifest row; the outbox starts empty (a schema 2 database has no webhooks).
fn v2_to_v3(tx: &WriteTransaction) -> Result<Counts, DbError> {
    let mut counts = Counts::default();
    let manifests = tx.open_table(MANIFESTS)?;
    let mut uses: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in manifests.iter()? {
        let (k, v) = e?;
        let (r, d) = k.value();
        let rec: ManifestBlobsV2 = ciborium::from_reader(v.value())
            .map_err(|e| DbError::Corrupt(format!("manifest {r}@{d} (schema 2): {e}")))?;
        for b in rec.blobs {
            *uses.entry((r.to_string(), b)).or_default() += 1;
        }
        counts.manifests += 1;
    }
    let mut table = tx.open_table(BLOB_USES)?;
    for ((r, b), n) in &uses {
        table.insert((r.as_str(), b.as_str()), *n)?;
    }
    Ok(counts)
}
