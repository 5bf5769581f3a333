//! Every table of `dockyard.redb`, the CBOR records stored in them, and the schema version.
//!
//! Reference counts (the GC's input) are kept exact by the write transactions in `db::ops`:
//! - a blob's `refcount` is the number of (repository, manifest) rows that list it as config
//!   or layer;
//! - a manifest's `refcount` is the number of tags in its repository that point at it plus
//!   the number of indexes in its repository that list it.
//!
//! A sparse index lists children that are not stored; each such (index, child) pair has an
//! `ABSENT_CHILDREN` row, which turns into one reference when the child is pushed.

use std::collections::BTreeMap;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

/// Bumped whenever a table or record changes shape, together with a step in `db::migrate`
/// that brings a database of the previous version up to it; `Db::open` refuses a newer file.
/// - 1: the first release.
/// - 2: push times (`TAG_PUSHED`, `ManifestRecord::pushed_ms`) and `ABSENT_CHILDREN` (sparse
///   indexes). A version 1 file has no sparse index, so that table starts empty; a version 1
///   binary must not open a file that has one (it would not count a child pushed after its
///   index), and it refuses it.
/// - 3: `BLOB_USES` (what a quota counts, without decoding every manifest) and the webhook
///   outbox (`OUTBOX`, `OUTBOX_STATE`).
pub const SCHEMA_VERSION: u64 = 3;

/// "schema_version" → u64.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// blob digest → `BlobRecord`.
pub const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (repository, blob digest): the blob may be read from that repository.
pub const REPO_BLOBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("repo_blobs");
/// (repository, manifest digest) → `ManifestRecord`.
pub const MANIFESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("manifests");
/// (repository, manifest digest) → the manifest exactly as pushed.
pub const MANIFEST_BODIES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("manifest_bodies");
/// (repository, tag) → manifest digest.
pub const TAGS: TableDefinition<(&str, &str), &str> = TableDefinition::new("tags");
/// (repository, tag) → when the tag was last pushed (PUT naming it), Unix milliseconds. Written
/// and removed with the `TAGS` row in the same transaction (schema 2). Milliseconds, because
/// retention ranks a pipeline's tags by it and a pipeline pushes several in one second.
pub const TAG_PUSHED: TableDefinition<(&str, &str), u64> = TableDefinition::new("tag_pushed");
/// repository → number of manifests in it; a repository exists while it has one.
pub const REPOS: TableDefinition<&str, u64> = TableDefinition::new("repos");
/// (repository, subject digest, referrer digest): the referrer's manifest names the subject.
pub const REFERRERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("referrers");
/// repository → Unix seconds of its last pull (a manifest GET), written at most once a minute
/// per repository (`db::pulls`). Added without a schema bump: an older binary never opens
/// it, leaves it as it is, and its pulls are simply not recorded.
pub const REPO_PULLS: TableDefinition<&str, u64> = TableDefinition::new("repo_pulls");
/// (repository, child digest, index digest): an index in the repository lists a child
/// manifest that is not stored there (a sparse index). Pushing the child turns its rows into
/// its reference count and removes them; deleting the index removes its rows.
pub const ABSENT_CHILDREN: TableDefinition<(&str, &str, &str), ()> =
    TableDefinition::new("absent_children");
/// (repository, blob digest) → how many manifests of the repository list the blob (config or
/// layer), never 0 (the row goes with the last one). Kept by `db::manifests::put`/`delete` in
/// the same transaction as the manifest row (schema 3), so a quota's usage is a range scan of
/// these keys per repository instead of a decode of every manifest; audited by fsck.
pub const BLOB_USES: TableDefinition<(&str, &str), u64> = TableDefinition::new("blob_uses");
/// (webhook endpoint id, sequence) → `EventRecord` (CBOR): events waiting for delivery to that
/// endpoint, in order. Appended in the transaction of the change an event describes, removed
/// once the endpoint answered 2xx (`db::events`, schema 3).
pub const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// webhook endpoint id → (next sequence, events queued, events dropped because the outbox was
/// full): kept with `OUTBOX` so appending and bounding cost no scan.
pub const OUTBOX_STATE: TableDefinition<&str, (u64, u64, u64)> =
    TableDefinition::new("outbox_state");
/// upload id → `UploadRecord`.
pub const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// user name → `UserRecord`.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// (subject, pattern) → `GrantRecord`. The subject is a user name or `anonymous`.
pub const ACLS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("acls");
/// name → secret bytes: "token_key", the HMAC key that signs bearer tokens (created on first
/// start, never shown).
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// Calls macro `$m` with every table but `META` (which `migrate` owns): `Db::open` creates
/// them, or checks that they exist. A new table is added here, beside its definition.
macro_rules! every_table {
    ($m:ident) => {
        $m!(
            BLOBS,
            REPO_BLOBS,
            MANIFESTS,
            MANIFEST_BODIES,
            TAGS,
            TAG_PUSHED,
            REPOS,
            REFERRERS,
            ABSENT_CHILDREN,
            UPLOADS,
            USERS,
            ACLS,
            SECRETS,
            REPO_PULLS,
            BLOB_USES,
            OUTBOX,
            OUTBOX_STATE
        )
    };
}
pub(crate) use every_table;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlobRecord {
    pub size: u64,
    pub refcount: u64,
    /// Unix seconds.
    pub created: u64,
    /// When `refcount` last became zero (or creation, for a blob never referenced).
    pub zero_since: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Config and layer digests this manifest counts (deduplicated).
    pub blobs: Vec<String>,
    /// Child manifest digests an index lists (deduplicated). It counts those stored in the
    /// repository; the others have `ABSENT_CHILDREN` rows.
    pub children: Vec<String>,
    pub subject: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub refcount: u64,
    /// First stored, Unix seconds.
    pub created: u64,
    pub zero_since: Option<u64>,
    /// Last PUT of these bytes to this repository (by tag or digest), Unix milliseconds
    /// (schema 2; the migration sets it to `created`).
    pub pushed_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UploadRecord {
    pub repo: String,
    pub started: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UserRecord {
    /// bcrypt, as `$2b$…` (or `$2y$…` when imported from htpasswd).
    pub hash: String,
    pub created: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GrantRecord {
    /// Action names (`pull`, `push`, `delete`, `admin`).
    pub actions: Vec<String>,
}

/// One webhook event, stored in `OUTBOX` as CBOR and sent as JSON: exactly the fields of
/// CNCF Distribution's notification `Event` (`notifications/event.go`), so a receiver written
/// for Distribution reads it unchanged. Empty strings and zero sizes are left out of the JSON,
/// as Go's `omitempty` does.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct EventRecord {
    pub id: String,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// `push`, `delete`, `pull` or `gc`.
    pub action: String,
    pub target: EventTarget,
    pub request: EventRequest,
    pub actor: EventActor,
    pub source: EventSource,
    /// Only on a `gc` event: what the pass freed (Distribution has no such event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<BTreeMap<String, u64>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct EventTarget {
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// The same as `size`; Distribution keeps it for older receivers.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub length: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct EventRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    pub method: String,
    pub useragent: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct EventActor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(
        rename = "instanceID",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub instance_id: String,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, super::DbError> {
    ciborium::from_reader(bytes).map_err(|e| super::DbError::Corrupt(e.to_string()))
}
