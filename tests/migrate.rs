//! Upgrades keep data: a root written by the schema-1 release (tests/fixtures/v1, made by
//! tests/fixtures/make_v1.py with main at 4f253bd) opens with this build, is migrated once,
//! and keeps every manifest, blob, tag, user and grant; so do roots of the schema-2 release
//! (tests/fixtures/v2) and of the previous release at this schema (tests/fixtures/v3); a
//! database newer than this build is refused with a clear message and left as it was.

use std::path::Path;

use dockyard::config::AuthMode;
use dockyard::db::listing::tag_details;
use dockyard::db::schema::{MANIFESTS, META, SCHEMA_VERSION};
use redb::{ReadableDatabase, TableHandle};

use crate::util::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1");
const FIXTURE_V2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v2");
const FIXTURE_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v3");

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A private copy of the fixture: the checked-in file must never be opened for writing.
fn fixture_copy() -> (tempfile::TempDir, serde_json::Value) {
    fixture_copy_of(FIXTURE, 1)
}

/// A private copy of `fixture`, whose database must be at `schema`.
fn fixture_copy_of(fixture: &str, schema: u64) -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(fixture), dir.path());
    assert_eq!(
        schema_version(dir.path()),
        schema,
        "{fixture} is a schema-{schema} database"
    );
    let contents = std::fs::read(dir.path().join("CONTENTS.json")).unwrap();
    (dir, serde_json::from_slice(&contents).unwrap())
}

/// Every manifest of the fixture's CONTENTS.json, byte for byte with its media type; every
/// tag, naming its manifest; every blob, byte for byte (as `user`, when auth is on).
async fn assert_serves_everything(
    c: &reqwest::Client,
    r: &TestRegistry,
    contents: &serde_json::Value,
    user: Option<(&str, &str)>,
) {
    let get = |method: reqwest::Method, path: String| {
        let req = c.request(method, r.url(&path));
        match user {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    };
    for m in contents["manifests"].as_array().unwrap() {
        let (repo, digest) = (m["repo"].as_str().unwrap(), m["digest"].as_str().unwrap());
        let resp = get(
            reqwest::Method::GET,
            format!("/v2/{repo}/manifests/{digest}"),
        )
        .header("Accept", "*/*")
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), 200, "{repo}@{digest}");
        assert_eq!(
            resp.headers()["content-type"],
            m["media_type"].as_str().unwrap()
        );
        assert_eq!(sha256(&resp.bytes().await.unwrap()), digest);
    }
    for (repo, tags) in contents["tags"].as_object().unwrap() {
        for (tag, digest) in tags.as_object().unwrap() {
            let resp = get(reqwest::Method::HEAD, format!("/v2/{repo}/manifests/{tag}"))
                .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{repo}:{tag}");
            assert_eq!(
                resp.headers()["docker-content-digest"],
                digest.as_str().unwrap()
            );
        }
    }
    for b in contents["blobs"].as_array().unwrap() {
        let (repo, digest) = (b["repo"].as_str().unwrap(), b["digest"].as_str().unwrap());
        let resp = get(reqwest::Method::GET, format!("/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{repo}@{digest}");
        assert_eq!(sha256(&resp.bytes().await.unwrap()), digest);
    }
}

/// Every user of the fixture's CONTENTS.json is listed by `user ls`.
async fn assert_keeps_users(r: &TestRegistry, contents: &serde_json::Value) {
    let users = r.admin(dockyard::admin::Command::UserList).await.unwrap();
    for u in contents["users"].as_object().unwrap().keys() {
        assert!(users.contains(u.as_str()), "user {u} kept: {users}");
    }
}

/// Every grant of the fixture's CONTENTS.json is listed by `acl ls`.
async fn assert_keeps_grants(r: &TestRegistry, contents: &serde_json::Value) {
    let grants = r
        .admin(dockyard::admin::Command::AclList { subject: None })
        .await
        .unwrap();
    for g in contents["grants"].as_array().unwrap() {
        let (who, pattern) = (g[0].as_str().unwrap(), g[1].as_str().unwrap());
        assert!(
            grants.contains(who) && grants.contains(pattern),
            "grant {g} kept: {grants}"
        );
    }
}

/// fsck of the running registry's root finds nothing to report.
async fn assert_fsck_clean(r: &TestRegistry, what: &str) {
    let report = r.fsck(false).await;
    assert!(report.clean(), "fsck {what}: {report}");
}

fn schema_version(root: &Path) -> u64 {
    let db = redb::Database::open(root.join("dockyard.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    let v = meta.get("schema_version").unwrap().unwrap().value();
    v
}

#[tokio::test]
async fn a_schema_1_root_is_migrated_once_and_keeps_everything() {
    let (dir, contents) = fixture_copy();
    let root = dir.path();

    let mut config = dockyard::Config {
        root: root.to_path_buf(),
        ..Default::default()
    };
    config.auth.mode = AuthMode::Basic;
    let r = TestRegistry::start_with(config.clone()).await;
    let c = client();
    let (bob, bob_pw) = ("bob", contents["users"]["bob"].as_str().unwrap());

    assert_serves_everything(&c, &r, &contents, Some((bob, bob_pw))).await;

    // Users and grants: alice may push to team-a/** only, anonymous may pull library/**.
    let alice_pw = contents["users"]["alice"].as_str().unwrap();
    let tags_of = |repo: &str, user: Option<(&str, &str)>| {
        let mut req = c.get(r.url(&format!("/v2/{repo}/tags/list")));
        if let Some((u, p)) = user {
            req = req.basic_auth(u, Some(p));
        }
        req.send()
    };
    assert_eq!(
        tags_of("team-a/app", Some(("alice", alice_pw)))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        tags_of("library/alpine", Some(("alice", "wrong")))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(tags_of("library/alpine", None).await.unwrap().status(), 200);
    assert_eq!(tags_of("team-a/app", None).await.unwrap().status(), 401);
    assert_keeps_grants(&r, &contents).await;

    // Push times: every tag got its manifest's first push time, in milliseconds.
    let details = r
        .core
        .db
        .read(|tx| {
            let mut out = Vec::new();
            for repo in ["library/alpine", "team-a/app"] {
                for t in tag_details(tx, repo)? {
                    let m = tx.open_table(MANIFESTS)?;
                    let rec: dockyard::db::schema::ManifestRecord = dockyard::db::schema::decode(
                        m.get((repo, t.digest.as_str()))?.unwrap().value(),
                    )?;
                    out.push((repo.to_string(), t, rec));
                }
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert_eq!(details.len(), 5, "{details:?}");
    for (repo, t, rec) in &details {
        assert!(rec.created > 1_700_000_000, "{repo}:{}", t.tag);
        assert_eq!(t.pushed_ms, rec.created * 1000, "{repo}:{}", t.tag);
        assert_eq!(rec.pushed_ms, rec.created * 1000, "{repo}:{}", t.tag);
    }
    assert_fsck_clean(&r, "after migration").await;

    // A push after the migration stamps its tag with the time of the push.
    let before = dockyard::db::now_ms();
    let resp = c
        .get(r.url("/v2/library/alpine/manifests/latest"))
        .basic_auth(bob, Some(bob_pw))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let body = resp.bytes().await.unwrap();
    let resp = c
        .put(r.url("/v2/library/alpine/manifests/edge"))
        .basic_auth(bob, Some(bob_pw))
        .header("Content-Type", OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    r.stop().await;
    assert_eq!(schema_version(root), SCHEMA_VERSION);

    // Opened again: already current, nothing rewritten (the old tags keep their times).
    let r = TestRegistry::start_with(config).await;
    let after = r
        .core
        .db
        .read(|tx| tag_details(tx, "library/alpine"))
        .await
        .unwrap();
    let by_tag = |name: &str| after.iter().find(|t| t.tag == name).unwrap().pushed_ms;
    assert!(by_tag("edge") >= before, "{after:?}");
    let old = details
        .iter()
        .find(|(repo, t, _)| repo == "library/alpine" && t.tag == "latest")
        .unwrap();
    assert_eq!(by_tag("latest"), old.1.pushed_ms);
    r.stop().await;
}

#[tokio::test]
async fn a_database_newer_than_this_build_is_refused_and_left_alone() {
    let (dir, _) = fixture_copy();
    let root = dir.path();
    {
        let db = redb::Database::create(root.join("dockyard.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", SCHEMA_VERSION + 1)
            .unwrap();
        tx.commit().unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockyard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "database schema version {} is newer than this build understands ({SCHEMA_VERSION})",
        SCHEMA_VERSION + 1
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
    assert_eq!(schema_version(root), SCHEMA_VERSION + 1);
    // Nothing was migrated (redb itself may rewrite its header on open; no table changed).
    let db = redb::Database::open(root.join("dockyard.redb")).unwrap();
    let tables: Vec<String> = db
        .begin_read()
        .unwrap()
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(tables.contains(&"manifests".to_string()), "{tables:?}");
    assert!(
        !tables.contains(&"tag_pushed".to_string()),
        "the refused database was not migrated: {tables:?}"
    );
}

/// Schema 3: a root written by the schema-2 release (tests/fixtures/v2) gains `blob_uses`,
/// built from its manifests, and an empty webhook outbox; everything else is kept, quota usage
/// is what decoding every manifest gives, and fsck is clean.
#[tokio::test]
async fn a_schema_2_root_gains_blob_uses_and_an_outbox_and_keeps_everything() {
    use dockyard::db::schema::{BLOBS, BLOB_USES, OUTBOX, OUTBOX_STATE};
    use redb::{ReadableTable, ReadableTableMetadata};
    use std::collections::{BTreeMap, BTreeSet};

    let (dir, contents) = fixture_copy_of(FIXTURE_V2, 2);
    let root = dir.path();
    let config = dockyard::Config {
        root: root.to_path_buf(),
        policies: dockyard::Config::from_toml(
            "[[policy]]\npattern = \"team-a/**\"\nquota = \"1GiB\"\n",
        )
        .unwrap()
        .policies,
        ..Default::default()
    };
    let r = TestRegistry::start_with(config.clone()).await;
    let c = client();
    assert_serves_everything(&c, &r, &contents, None).await;
    assert_keeps_users(&r, &contents).await;
    assert_keeps_grants(&r, &contents).await;

    // blob_uses holds, per (repository, blob), the manifests listing it; the outbox is empty;
    // team-a's quota usage equals the sum over the blobs its manifests list.
    let (uses, expected, quota_bytes, outbox) = r
        .core
        .db
        .read(|tx| {
            let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
            let mut team_a = BTreeSet::new();
            for e in tx.open_table(MANIFESTS)?.iter()? {
                let (k, v) = e?;
                let (repo, _) = k.value();
                let rec: dockyard::db::schema::ManifestRecord =
                    dockyard::db::schema::decode(v.value())?;
                for b in rec.blobs {
                    if repo == "team-a/app" {
                        team_a.insert(b.clone());
                    }
                    *expected.entry((repo.to_string(), b)).or_default() += 1;
                }
            }
            let mut uses = BTreeMap::new();
            for e in tx.open_table(BLOB_USES)?.iter()? {
                let (k, v) = e?;
                let (repo, b) = k.value();
                uses.insert((repo.to_string(), b.to_string()), v.value());
            }
            let blobs = tx.open_table(BLOBS)?;
            let mut bytes = 0;
            for b in &team_a {
                let rec: dockyard::db::schema::BlobRecord =
                    dockyard::db::schema::decode(blobs.get(b.as_str())?.unwrap().value())?;
                bytes += rec.size;
            }
            let outbox = tx.open_table(OUTBOX)?.len()? + tx.open_table(OUTBOX_STATE)?.len()?;
            Ok((uses, expected, bytes, outbox))
        })
        .await
        .unwrap();
    assert!(!uses.is_empty());
    assert_eq!(uses, expected);
    assert_eq!(outbox, 0);
    let usage = {
        let core = r.core.clone();
        tokio::task::spawn_blocking(move || dockyard::gc::usage::measure(&core))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(usage.quotas[0].used, quota_bytes);
    assert!(quota_bytes > 0);
    assert_fsck_clean(&r, "after migration").await;
    r.stop().await;
    assert_eq!(schema_version(root), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 3);
}

/// A root written by the previous release at this schema (tests/fixtures/v3, main at b1a004c,
/// whose `Db::open` always committed) opens through the read-only path of `Db::open` (a
/// current version and every table in place) and keeps everything: nothing to migrate, and
/// the same schema version after it has been served.
#[tokio::test]
async fn a_root_written_by_the_previous_release_at_this_schema_opens_and_keeps_everything() {
    let (dir, contents) = fixture_copy_of(FIXTURE_V3, SCHEMA_VERSION);
    let root = dir.path();
    let r = TestRegistry::start_with(dockyard::Config {
        root: root.to_path_buf(),
        ..Default::default()
    })
    .await;
    let c = client();
    assert_serves_everything(&c, &r, &contents, None).await;
    assert_keeps_users(&r, &contents).await;
    assert_keeps_grants(&r, &contents).await;
    assert_fsck_clean(&r, "of the previous release's root").await;
    r.stop().await;
    assert_eq!(schema_version(root), SCHEMA_VERSION);
}
