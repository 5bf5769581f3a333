//! Reference counting against a small in-memory model (proptest): random sequences of image
//! and index pushes (sparse indexes included), tagging, untagging, manifest and blob deletes,
//! cross-repository mounts and GC passes with zero grace, all through the real server. After
//! every step the stored rows and counts equal the model's, fsck is clean, and every tag
//! pulls byte for byte (blobs deleted from a repository answer 404 there, as they should).
//!
//! Bounded so that `cargo test` stays quick: `DOCKYARD_PROPTEST_CASES` (default 12) cases of
//! up to 24 steps over two repositories, four images and three indexes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dockyard::config::Untagged;
use dockyard::db::schema::*;
use dockyard::gc::fsck::{self, FsckOptions};
use dockyard::gc::{self, GcOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redb::ReadableTable;

use crate::util::*;

const REPOS: [&str; 2] = ["a", "b/c"];
const TAGS: [&str; 3] = ["t0", "t1", "t2"];
/// Layers of each image (indexes into the layer pool).
const IMAGES: [&[usize]; 4] = [&[0, 1], &[1], &[2, 3], &[0, 3]];
/// Children of each index (indexes into `IMAGES`).
const INDEXES: [&[usize]; 3] = [&[0, 1], &[1, 2, 3], &[3]];
const LAYERS: usize = 4;

/// Every blob and manifest of the universe, with its bytes and digest. Blobs 0..4 are the
/// images' configs, 4..8 the layers; manifests 0..4 are images, 4..7 indexes.
struct Universe {
    blobs: Vec<(Vec<u8>, String)>,
    manifests: Vec<(Vec<u8>, String)>,
}

impl Universe {
    fn new() -> Universe {
        let mut blobs = Vec::new();
        for i in 0..IMAGES.len() {
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": format!("arch{i}"), "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": []},
            }))
            .unwrap();
            blobs.push(config);
        }
        for l in 0..LAYERS {
            blobs.push(format!("layer {l} ").repeat(50 + l).into_bytes());
        }
        let mut manifests = Vec::new();
        for (i, layers) in IMAGES.iter().enumerate() {
            let layers: Vec<&[u8]> = layers
                .iter()
                .map(|l| blobs[IMAGES.len() + l].as_slice())
                .collect();
            manifests.push(image_manifest(&blobs[i], &layers));
        }
        for children in INDEXES {
            let list: Vec<serde_json::Value> = children
                .iter()
                .map(|c| {
                    let mut d = descriptor(OCI_MANIFEST, &manifests[*c]);
                    d["platform"] =
                        serde_json::json!({"architecture": format!("arch{c}"), "os": "linux"});
                    d
                })
                .collect();
            manifests.push(
                serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list,
                }))
                .unwrap(),
            );
        }
        let with_digest = |v: Vec<Vec<u8>>| {
            v.into_iter()
                .map(|b| {
                    let d = sha256(&b);
                    (b, d)
                })
                .collect()
        };
        Universe {
            blobs: with_digest(blobs),
            manifests: with_digest(manifests),
        }
    }
}

fn is_index(m: usize) -> bool {
    m >= IMAGES.len()
}

/// Blobs (universe numbers) a manifest counts.
fn blobs_of(m: usize) -> Vec<usize> {
    if is_index(m) {
        return vec![];
    }
    let mut out = vec![m];
    out.extend(IMAGES[m].iter().map(|l| IMAGES.len() + l));
    out
}

/// Children (manifest numbers) an index lists.
fn children_of(m: usize) -> Vec<usize> {
    if is_index(m) {
        INDEXES[m - IMAGES.len()].to_vec()
    } else {
        vec![]
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Uploads the image's config and layers, then PUTs it (under a tag, or by digest).
    PushImage {
        repo: usize,
        image: usize,
        tag: Option<usize>,
    },
    /// PUTs an index: children that are not in the repository make it sparse.
    PushIndex {
        repo: usize,
        index: usize,
        tag: Option<usize>,
    },
    /// PUTs a manifest under a tag without uploading anything first.
    Tag {
        repo: usize,
        manifest: usize,
        tag: usize,
    },
    Untag {
        repo: usize,
        tag: usize,
    },
    DeleteManifest {
        repo: usize,
        manifest: usize,
    },
    DeleteBlob {
        repo: usize,
        blob: usize,
    },
    Mount {
        from: usize,
        to: usize,
        blob: usize,
    },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let repo = 0..REPOS.len();
    let tag = proptest::option::of(0..TAGS.len());
    prop_oneof![
        4 => (repo.clone(), 0..IMAGES.len(), tag.clone())
            .prop_map(|(repo, image, tag)| Op::PushImage { repo, image, tag }),
        3 => (repo.clone(), 0..INDEXES.len(), tag)
            .prop_map(|(repo, index, tag)| Op::PushIndex { repo, index, tag }),
        2 => (repo.clone(), 0..IMAGES.len() + INDEXES.len(), 0..TAGS.len())
            .prop_map(|(repo, manifest, tag)| Op::Tag { repo, manifest, tag }),
        2 => (repo.clone(), 0..TAGS.len()).prop_map(|(repo, tag)| Op::Untag { repo, tag }),
        3 => (repo.clone(), 0..IMAGES.len() + INDEXES.len())
            .prop_map(|(repo, manifest)| Op::DeleteManifest { repo, manifest }),
        1 => (repo.clone(), 0..IMAGES.len() + LAYERS)
            .prop_map(|(repo, blob)| Op::DeleteBlob { repo, blob }),
        2 => (repo.clone(), repo, 0..IMAGES.len() + LAYERS)
            .prop_map(|(from, to, blob)| Op::Mount { from, to, blob }),
        2 => Just(Op::Gc),
    ]
}

/// What the registry should hold.
#[derive(Default, Debug)]
struct Model {
    /// Blob rows.
    rows: BTreeSet<usize>,
    /// (repository, blob) links.
    links: BTreeSet<(usize, usize)>,
    /// (repository, manifest) stored.
    manifests: BTreeSet<(usize, usize)>,
    /// (repository, tag) → manifest.
    tags: BTreeMap<(usize, usize), usize>,
}

impl Model {
    fn manifest_count(&self, repo: usize, m: usize) -> u64 {
        let tags = self
            .tags
            .iter()
            .filter(|((r, _), t)| *r == repo && **t == m)
            .count();
        tags as u64 + self.listed_by(repo, m)
    }

    /// Stored indexes in `repo` that list `m`.
    fn listed_by(&self, repo: usize, m: usize) -> u64 {
        self.manifests
            .iter()
            .filter(|(r, i)| *r == repo && children_of(*i).contains(&m))
            .count() as u64
    }

    fn blob_count(&self, b: usize) -> u64 {
        self.manifests
            .iter()
            .filter(|(_, m)| blobs_of(*m).contains(&b))
            .count() as u64
    }

    fn upload(&mut self, repo: usize, b: usize) {
        self.rows.insert(b);
        self.links.insert((repo, b));
    }

    /// A manifest PUT: the status it gets, and its effect.
    fn put(&mut self, repo: usize, m: usize, tag: Option<usize>) -> u16 {
        if !blobs_of(m).iter().all(|b| self.links.contains(&(repo, *b))) {
            return 400;
        }
        self.manifests.insert((repo, m));
        if let Some(t) = tag {
            self.tags.insert((repo, t), m);
        }
        201
    }

    fn delete_manifest(&mut self, repo: usize, m: usize) -> u16 {
        if !self.manifests.contains(&(repo, m)) {
            return 404;
        }
        if self.listed_by(repo, m) > 0 {
            return 409;
        }
        self.manifests.remove(&(repo, m));
        self.tags.retain(|(r, _), t| !(*r == repo && *t == m));
        202
    }

    fn gc(&mut self) {
        loop {
            let zero: Vec<(usize, usize)> = self
                .manifests
                .iter()
                .copied()
                .filter(|(r, m)| self.manifest_count(*r, *m) == 0)
                .collect();
            if zero.is_empty() {
                break;
            }
            for k in zero {
                self.manifests.remove(&k);
            }
        }
        let dead: Vec<usize> = self
            .rows
            .iter()
            .copied()
            .filter(|b| self.blob_count(*b) == 0)
            .collect();
        for b in dead {
            self.rows.remove(&b);
            self.links.retain(|(_, l)| *l != b);
        }
    }
}

struct Run<'a> {
    r: &'a TestRegistry,
    c: reqwest::Client,
    u: &'a Universe,
    model: Model,
}

impl Run<'_> {
    fn url(&self, repo: usize, rest: &str) -> String {
        self.r.url(&format!("/v2/{}/{rest}", REPOS[repo]))
    }

    async fn put(&self, repo: usize, m: usize, reference: &str) -> u16 {
        let media_type = if is_index(m) { OCI_INDEX } else { OCI_MANIFEST };
        self.c
            .put(self.url(repo, &format!("manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(self.u.manifests[m].0.clone())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn put_manifest(&mut self, repo: usize, m: usize, tag: Option<usize>) {
        let reference = tag.map_or(self.u.manifests[m].1.clone(), |t| TAGS[t].to_string());
        let got = self.put(repo, m, &reference).await;
        let want = self.model.put(repo, m, tag);
        assert_eq!(
            got, want,
            "PUT manifest {m} as {reference} in {}",
            REPOS[repo]
        );
    }

    async fn delete(&self, url: String) -> u16 {
        self.c.delete(url).send().await.unwrap().status().as_u16()
    }

    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::PushImage { repo, image, tag } => {
                for b in blobs_of(image) {
                    push_blob(&self.c, self.r, REPOS[repo], &self.u.blobs[b].0).await;
                    self.model.upload(repo, b);
                }
                self.put_manifest(repo, image, tag).await;
            }
            Op::PushIndex { repo, index, tag } => {
                self.put_manifest(repo, IMAGES.len() + index, tag).await
            }
            Op::Tag {
                repo,
                manifest,
                tag,
            } => self.put_manifest(repo, manifest, Some(tag)).await,
            Op::Untag { repo, tag } => {
                let got = self
                    .delete(self.url(repo, &format!("manifests/{}", TAGS[tag])))
                    .await;
                let want = if self.model.tags.remove(&(repo, tag)).is_some() {
                    202
                } else {
                    404
                };
                assert_eq!(got, want, "untag");
            }
            Op::DeleteManifest { repo, manifest } => {
                let got = self
                    .delete(self.url(repo, &format!("manifests/{}", self.u.manifests[manifest].1)))
                    .await;
                assert_eq!(got, self.model.delete_manifest(repo, manifest), "delete");
            }
            Op::DeleteBlob { repo, blob } => {
                let got = self
                    .delete(self.url(repo, &format!("blobs/{}", self.u.blobs[blob].1)))
                    .await;
                let want = if self.model.links.remove(&(repo, blob)) {
                    202
                } else {
                    404
                };
                assert_eq!(got, want, "delete blob");
            }
            Op::Mount { from, to, blob } => {
                let resp = self
                    .c
                    .post(self.url(
                        to,
                        &format!(
                            "blobs/uploads/?mount={}&from={}",
                            self.u.blobs[blob].1, REPOS[from]
                        ),
                    ))
                    .send()
                    .await
                    .unwrap();
                if self.model.links.contains(&(from, blob)) {
                    assert_eq!(resp.status(), 201, "mount");
                    self.model.links.insert((to, blob));
                } else {
                    assert_eq!(resp.status(), 202, "mount falls back");
                    let location = resp.headers()["location"].to_str().unwrap().to_string();
                    assert_eq!(self.delete(self.r.url(&location)).await, 204);
                }
            }
            Op::Gc => {
                let core = self.r.core.clone();
                tokio::task::spawn_blocking(move || gc::run_once(&core, &GcOptions::default()))
                    .await
                    .unwrap()
                    .expect("gc pass");
                self.model.gc();
            }
        }
    }

    /// The stored rows and counts equal the model's, fsck is clean, and every tag pulls.
    async fn check(&self, step: &str) {
        let stored = self.stored().await;
        let (u, m) = (self.u, &self.model);
        let want_rows: BTreeMap<String, u64> = m
            .rows
            .iter()
            .map(|b| (u.blobs[*b].1.clone(), m.blob_count(*b)))
            .collect();
        assert_eq!(stored.blobs, want_rows, "{step}: blob rows and counts");
        let want_links: BTreeSet<(String, String)> = m
            .links
            .iter()
            .map(|(r, b)| (REPOS[*r].to_string(), u.blobs[*b].1.clone()))
            .collect();
        assert_eq!(stored.links, want_links, "{step}: repository links");
        let want_manifests: BTreeMap<(String, String), u64> = m
            .manifests
            .iter()
            .map(|(r, x)| {
                (
                    (REPOS[*r].to_string(), u.manifests[*x].1.clone()),
                    m.manifest_count(*r, *x),
                )
            })
            .collect();
        assert_eq!(
            stored.manifests, want_manifests,
            "{step}: manifests and counts"
        );
        let want_tags: BTreeMap<(String, String), String> = m
            .tags
            .iter()
            .map(|((r, t), x)| {
                (
                    (REPOS[*r].to_string(), TAGS[*t].to_string()),
                    u.manifests[*x].1.clone(),
                )
            })
            .collect();
        assert_eq!(stored.tags, want_tags, "{step}: tags");
        let want_absent: BTreeSet<(String, String, String)> = m
            .manifests
            .iter()
            .flat_map(|(r, i)| children_of(*i).into_iter().map(move |c| (*r, c, *i)))
            .filter(|(r, c, _)| !m.manifests.contains(&(*r, *c)))
            .map(|(r, c, i)| {
                (
                    REPOS[r].to_string(),
                    u.manifests[c].1.clone(),
                    u.manifests[i].1.clone(),
                )
            })
            .collect();
        assert_eq!(stored.absent, want_absent, "{step}: absent children");

        let core = self.r.core.clone();
        let report =
            tokio::task::spawn_blocking(move || fsck::check(&core, &FsckOptions::default()))
                .await
                .unwrap()
                .expect("fsck");
        assert!(report.clean(), "{step}: fsck: {report}");

        for ((r, _), x) in &m.tags {
            self.pulls(*r, *x, step).await;
        }
    }

    async fn pulls(&self, repo: usize, m: usize, step: &str) {
        let (bytes, digest) = &self.u.manifests[m];
        let resp = self
            .c
            .get(self.url(repo, &format!("manifests/{digest}")))
            .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{step}: GET {digest}");
        assert_eq!(
            &resp.bytes().await.unwrap()[..],
            bytes,
            "{step}: manifest bytes"
        );
        for b in blobs_of(m) {
            let (bytes, digest) = &self.u.blobs[b];
            let resp = self
                .c
                .get(self.url(repo, &format!("blobs/{digest}")))
                .send()
                .await
                .unwrap();
            if self.model.links.contains(&(repo, b)) {
                assert_eq!(resp.status(), 200, "{step}: GET blob {b}");
                assert_eq!(&resp.bytes().await.unwrap()[..], bytes, "{step}: blob {b}");
            } else {
                assert_eq!(resp.status(), 404, "{step}: blob {b} was deleted here");
            }
        }
    }

    async fn stored(&self) -> Stored {
        let core = self.r.core.clone();
        tokio::task::spawn_blocking(move || {
            core.db
                .read_blocking(|tx| {
                    let mut s = Stored::default();
                    for e in tx.open_table(BLOBS)?.iter()? {
                        let (k, v) = e?;
                        let rec: BlobRecord = decode(v.value())?;
                        s.blobs.insert(k.value().to_string(), rec.refcount);
                    }
                    for e in tx.open_table(REPO_BLOBS)?.iter()? {
                        let (k, _) = e?;
                        let (r, d) = k.value();
                        s.links.insert((r.to_string(), d.to_string()));
                    }
                    for e in tx.open_table(MANIFESTS)?.iter()? {
                        let (k, v) = e?;
                        let (r, d) = k.value();
                        let rec: ManifestRecord = decode(v.value())?;
                        s.manifests
                            .insert((r.to_string(), d.to_string()), rec.refcount);
                    }
                    for e in tx.open_table(dockyard::db::schema::TAGS)?.iter()? {
                        let (k, v) = e?;
                        let (r, t) = k.value();
                        s.tags
                            .insert((r.to_string(), t.to_string()), v.value().to_string());
                    }
                    for e in tx.open_table(ABSENT_CHILDREN)?.iter()? {
                        let (k, _) = e?;
                        let (r, c, i) = k.value();
                        s.absent
                            .insert((r.to_string(), c.to_string(), i.to_string()));
                    }
                    Ok(s)
                })
                .expect("read tables")
        })
        .await
        .unwrap()
    }
}

#[derive(Default)]
struct Stored {
    blobs: BTreeMap<String, u64>,
    links: BTreeSet<(String, String)>,
    manifests: BTreeMap<(String, String), u64>,
    tags: BTreeMap<(String, String), String>,
    absent: BTreeSet<(String, String, String)>,
}

async fn run_case(u: &Universe, ops: &[Op]) {
    let r = TestRegistry::start_configured(|c| {
        c.gc.interval = None;
        c.gc.grace = Duration::ZERO;
        c.gc.push_window = Duration::ZERO;
        c.gc.untagged = Untagged::After(Duration::ZERO);
    })
    .await;
    let mut run = Run {
        r: &r,
        c: client(),
        u,
        model: Model::default(),
    };
    for (i, op) in ops.iter().enumerate() {
        run.apply(op).await;
        run.check(&format!("step {i} ({op:?})")).await;
    }
    r.stop().await;
}

#[test]
fn reference_counts_match_a_model_through_random_pushes_deletes_mounts_and_gc() {
    let cases = std::env::var("DOCKYARD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let u = Universe::new();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..24), |ops| {
        rt.block_on(run_case(&u, &ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
