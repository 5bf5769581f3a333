//! `dockyard fsck`: recomputes every reference count from the manifests and compares, matches
//! blob rows against blob files, and (with `--verify-hashes`) re-hashes every blob and
//! manifest body. `--repair` fixes what can be fixed from the data itself and removes
//! orphans; it never deletes a blob a manifest names, and leaves corrupt blobs for a person.
//!
//! The audit is a pure function of one consistent snapshot of the tables plus the list of
//! blob files. A discrepancy between rows and files that a concurrent push or GC could cause
//! for an instant is re-checked under the blob's lock before it is reported. A repair
//! re-audits inside its write transaction, so it acts on the state it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::time::{Duration, Instant, SystemTime};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use crate::db::{self, schema::*};
use crate::gc::{human_bytes, upload_files, Progress};
use crate::oci::{Digest, RegistryError};
use crate::store::Location;
use crate::{Core, Error};

#[derive(Clone, Default)]
pub struct FsckOptions {
    /// Re-hash every blob file and manifest body.
    pub verify_hashes: bool,
    /// Fix counts and indexes, restore rows of named blobs whose files exist, remove orphans.
    pub repair: bool,
    pub progress: Option<Progress>,
}

/// Who can make a problem go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// `fsck --repair`.
    Repair,
    /// The next GC pass (a leftover of a crash).
    Gc,
    /// Nothing automatic: bytes are lost or corrupt.
    Person,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BlobCount,
    ManifestCount,
    RepoCount,
    DanglingTag,
    /// A manifest lists a blob that has no row.
    MissingBlobRow,
    /// An index lists a child that is neither stored nor recorded as absent, so a push of
    /// the child would not count the index.
    MissingChild,
    /// An `ABSENT_CHILDREN` row that no stored index calls for.
    AbsentChildIndex,
    /// A repository link to a blob that has no row.
    DanglingLink,
    RowWithoutFile,
    FileWithoutRow,
    StrayUpload,
    SizeMismatch,
    CorruptBlob,
    MissingBody,
    OrphanBody,
    CorruptBody,
    ReferrerIndex,
    BadRecord,
    /// A tag without a push time (retention would take it for the oldest), or a push time
    /// without a tag.
    TagPushTime,
    /// A `BLOB_USES` row missing, extra, or with the wrong count (a quota would count wrong).
    BlobUses,
    /// A webhook outbox whose `OUTBOX_STATE` disagrees with its rows (the bound would be
    /// applied wrong, or new events would overwrite waiting ones).
    OutboxState,
}

#[derive(Clone, Debug)]
pub struct Problem {
    pub kind: Kind,
    pub remedy: Remedy,
    pub message: String,
    /// The blob a row/file problem is about.
    pub blob: Option<String>,
    fix: Option<Fix>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.remedy {
            Remedy::Repair => "fsck --repair fixes it",
            Remedy::Gc => "the next gc removes it",
            Remedy::Person => "needs a person",
        };
        write!(f, "{} ({who})", self.message)
    }
}

/// A change that makes one problem go away, applied inside the repairing transaction.
#[derive(Clone, Debug)]
enum Fix {
    BlobCount {
        digest: String,
        actual: u64,
    },
    ManifestCount {
        repo: String,
        digest: String,
        actual: u64,
    },
    RepoCount {
        repo: String,
        actual: u64,
    },
    RemoveTag {
        repo: String,
        tag: String,
    },
    /// Stamp a tag that has no push time with its manifest's.
    StampTag {
        repo: String,
        tag: String,
        pushed_ms: u64,
    },
    RemoveTagTime {
        repo: String,
        tag: String,
    },
    /// Set an outbox's waiting count and, if needed, its next sequence past its last row.
    OutboxState {
        id: String,
        queued: u64,
        next_at_least: u64,
    },
    /// Set (or, with 0, remove) a `BLOB_USES` row.
    SetUses {
        repo: String,
        digest: String,
        actual: u64,
    },
    RestoreBlob {
        digest: String,
        size: u64,
        repos: Vec<String>,
        actual: u64,
    },
    RemoveLink {
        repo: String,
        digest: String,
    },
    RemoveBlobRow {
        digest: String,
    },
    RemoveBody {
        repo: String,
        digest: String,
    },
    AddReferrer {
        repo: String,
        subject: String,
        referrer: String,
    },
    RemoveReferrer {
        repo: String,
        subject: String,
        referrer: String,
    },
    AddAbsent {
        repo: String,
        child: String,
        index: String,
    },
    RemoveAbsent {
        repo: String,
        child: String,
        index: String,
    },
    RemoveFile {
        digest: Option<Digest>,
        upload: Option<String>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// What is wrong after the run (after the repair, with `--repair`).
    pub problems: Vec<Problem>,
    /// What `--repair` fixed.
    pub repaired: Vec<Problem>,
    /// Facts worth knowing that are not inconsistencies.
    pub notes: Vec<String>,
    pub blobs: u64,
    pub manifests: u64,
    pub repositories: u64,
    pub hashed_bytes: u64,
    pub verified: bool,
    pub elapsed: Duration,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn kinds(&self) -> Vec<Kind> {
        self.problems.iter().map(|p| p.kind).collect()
    }
}

impl fmt::Display for FsckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = format!(
            "{} blobs, {} manifests, {} repositories{}",
            self.blobs,
            self.manifests,
            self.repositories,
            if self.verified {
                format!(", {} re-hashed", human_bytes(self.hashed_bytes))
            } else {
                String::new()
            }
        );
        if self.problems.is_empty() {
            write!(f, "consistent: {checked} in {:.2?}", self.elapsed)?;
        } else {
            let by = |r: Remedy| self.problems.iter().filter(|p| p.remedy == r).count();
            write!(
                f,
                "{} found in {checked} ({} for fsck --repair, {} for gc, {} for a person):",
                match self.problems.len() {
                    1 => "1 problem".to_string(),
                    n => format!("{n} problems"),
                },
                by(Remedy::Repair),
                by(Remedy::Gc),
                by(Remedy::Person),
            )?;
            for p in &self.problems {
                write!(f, "\n  {p}")?;
            }
        }
        if !self.repaired.is_empty() {
            write!(f, "\nrepaired {}:", self.repaired.len())?;
            for p in &self.repaired {
                write!(f, "\n  {}", p.message)?;
            }
        }
        for n in &self.notes {
            write!(f, "\nnote: {n}")?;
        }
        Ok(())
    }
}

/// Every table, read into memory from one transaction.
#[derive(Default)]
struct Snapshot {
    blobs: BTreeMap<String, BlobRecord>,
    links: BTreeSet<(String, String)>,
    manifests: BTreeMap<(String, String), ManifestRecord>,
    bodies: BTreeSet<(String, String)>,
    corrupt_bodies: Vec<(String, String)>,
    tags: Vec<(String, String, String)>,
    /// (repository, tag) rows of `tag_pushed`.
    tag_times: BTreeSet<(String, String)>,
    /// `blob_uses` rows.
    uses: BTreeMap<(String, String), u64>,
    /// Per webhook endpoint: (rows in `outbox`, last sequence + 1).
    outbox: BTreeMap<String, (u64, u64)>,
    /// `outbox_state` rows: endpoint → (next sequence, queued, dropped).
    outbox_state: BTreeMap<String, (u64, u64, u64)>,
    repos: BTreeMap<String, u64>,
    referrers: BTreeSet<(String, String, String)>,
    /// (repository, child, index) rows of `ABSENT_CHILDREN`.
    absent: BTreeSet<(String, String, String)>,
    uploads: BTreeSet<String>,
    bad: Vec<String>,
}

macro_rules! load_snapshot {
    ($tx:expr, $verify:expr) => {{
        let tx = $tx;
        let mut s = Snapshot::default();
        for e in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = e?;
            match decode::<BlobRecord>(v.value()) {
                Ok(r) => {
                    s.blobs.insert(k.value().to_string(), r);
                }
                Err(e) => s.bad.push(format!("blob row {}: {e}", k.value())),
            }
        }
        for e in tx.open_table(REPO_BLOBS)?.iter()? {
            let (k, _) = e?;
            let (r, d) = k.value();
            s.links.insert((r.to_string(), d.to_string()));
        }
        for e in tx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = e?;
            let (r, d) = k.value();
            match decode::<ManifestRecord>(v.value()) {
                Ok(m) => {
                    s.manifests.insert((r.to_string(), d.to_string()), m);
                }
                Err(e) => s.bad.push(format!("manifest row {r}@{d}: {e}")),
            }
        }
        for e in tx.open_table(MANIFEST_BODIES)?.iter()? {
            let (k, v) = e?;
            let (r, d) = k.value();
            if $verify {
                let ok = d
                    .parse::<Digest>()
                    .is_ok_and(|dg| Digest::of(dg.algorithm(), v.value()) == dg);
                if !ok {
                    s.corrupt_bodies.push((r.to_string(), d.to_string()));
                }
            }
            s.bodies.insert((r.to_string(), d.to_string()));
        }
        for e in tx.open_table(TAGS)?.iter()? {
            let (k, v) = e?;
            let (r, t) = k.value();
            s.tags
                .push((r.to_string(), t.to_string(), v.value().to_string()));
        }
        for e in tx.open_table(TAG_PUSHED)?.iter()? {
            let (k, _) = e?;
            let (r, t) = k.value();
            s.tag_times.insert((r.to_string(), t.to_string()));
        }
        for e in tx.open_table(REPOS)?.iter()? {
            let (k, v) = e?;
            s.repos.insert(k.value().to_string(), v.value());
        }
        for e in tx.open_table(OUTBOX)?.iter()? {
            let (k, _) = e?;
            let (id, seq) = k.value();
            let o = s.outbox.entry(id.to_string()).or_default();
            o.0 += 1;
            o.1 = o.1.max(seq + 1);
        }
        for e in tx.open_table(OUTBOX_STATE)?.iter()? {
            let (k, v) = e?;
            s.outbox_state.insert(k.value().to_string(), v.value());
        }
        for e in tx.open_table(BLOB_USES)?.iter()? {
            let (k, v) = e?;
            let (r, d) = k.value();
            s.uses.insert((r.to_string(), d.to_string()), v.value());
        }
        for e in tx.open_table(REFERRERS)?.iter()? {
            let (k, _) = e?;
            let (r, sub, d) = k.value();
            s.referrers
                .insert((r.to_string(), sub.to_string(), d.to_string()));
        }
        for e in tx.open_table(ABSENT_CHILDREN)?.iter()? {
            let (k, _) = e?;
            let (r, c, i) = k.value();
            s.absent
                .insert((r.to_string(), c.to_string(), i.to_string()));
        }
        for e in tx.open_table(UPLOADS)?.iter()? {
            let (k, _) = e?;
            s.uploads.insert(k.value().to_string());
        }
        Ok::<Snapshot, RegistryError>(s)
    }};
}

fn snapshot_read(tx: &ReadTransaction, verify: bool) -> Result<Snapshot, RegistryError> {
    load_snapshot!(tx, verify)
}

fn snapshot_write(tx: &WriteTransaction) -> Result<Snapshot, RegistryError> {
    load_snapshot!(tx, false)
}

/// Blob files on disk: digest → size.
type Files = HashMap<String, u64>;

fn problem(kind: Kind, remedy: Remedy, message: String, fix: Option<Fix>) -> Problem {
    Problem {
        kind,
        remedy,
        message,
        blob: None,
        fix,
    }
}

fn blob_problem(kind: Kind, remedy: Remedy, d: &str, message: String, fix: Option<Fix>) -> Problem {
    Problem {
        blob: Some(d.to_string()),
        ..problem(kind, remedy, message, fix)
    }
}

/// Everything wrong with `s` and `files`, each with the fix that `--repair` would apply.
fn audit(s: &Snapshot, files: &Files) -> Vec<Problem> {
    let mut out = Vec::new();
    for b in &s.bad {
        out.push(problem(
            Kind::BadRecord,
            Remedy::Person,
            format!("undecodable {b}"),
            None,
        ));
    }
    // What the counts must be.
    let mut blob_refs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut named_in: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut manifest_refs: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut repo_counts: BTreeMap<&str, u64> = BTreeMap::new();
    for ((r, d), m) in &s.manifests {
        *repo_counts.entry(r).or_default() += 1;
        for b in &m.blobs {
            *blob_refs.entry(b).or_default() += 1;
            named_in.entry(b).or_default().insert(r);
        }
        for c in &m.children {
            if s.manifests.contains_key(&(r.clone(), c.clone())) {
                *manifest_refs.entry((r, c)).or_default() += 1;
            } else if !s.absent.contains(&(r.clone(), c.clone(), d.clone())) {
                out.push(problem(
                    Kind::MissingChild,
                    Remedy::Repair,
                    format!(
                        "index {r}@{d} lists {c}, which is neither stored nor recorded as absent"
                    ),
                    Some(Fix::AddAbsent {
                        repo: r.clone(),
                        child: c.clone(),
                        index: d.clone(),
                    }),
                ));
            }
        }
        if !s.bodies.contains(&(r.clone(), d.clone())) {
            out.push(problem(
                Kind::MissingBody,
                Remedy::Person,
                format!("manifest {r}@{d} has no stored body"),
                None,
            ));
        }
        if let Some(sub) = &m.subject {
            if !s.referrers.contains(&(r.clone(), sub.clone(), d.clone())) {
                out.push(problem(
                    Kind::ReferrerIndex,
                    Remedy::Repair,
                    format!("referrer {r}@{d} of {sub} is missing from the referrers index"),
                    Some(Fix::AddReferrer {
                        repo: r.clone(),
                        subject: sub.clone(),
                        referrer: d.clone(),
                    }),
                ));
            }
        }
    }
    let mut tagged = BTreeSet::new();
    for (r, t, d) in &s.tags {
        tagged.insert((r.clone(), t.clone()));
        if let Some(m) = s.manifests.get(&(r.clone(), d.clone())) {
            *manifest_refs.entry((r, d)).or_default() += 1;
            if !s.tag_times.contains(&(r.clone(), t.clone())) {
                out.push(problem(
                    Kind::TagPushTime,
                    Remedy::Repair,
                    format!("tag {r}:{t} has no push time; retention would rank it oldest"),
                    Some(Fix::StampTag {
                        repo: r.clone(),
                        tag: t.clone(),
                        pushed_ms: m.pushed_ms,
                    }),
                ));
            }
        } else {
            out.push(problem(
                Kind::DanglingTag,
                Remedy::Repair,
                format!("tag {r}:{t} points at {d}, which is not stored"),
                Some(Fix::RemoveTag {
                    repo: r.clone(),
                    tag: t.clone(),
                }),
            ));
        }
    }
    let mut uses: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for ((r, _), m) in &s.manifests {
        for b in &m.blobs {
            *uses.entry((r, b)).or_default() += 1;
        }
    }
    let keys: BTreeSet<(&str, &str)> = uses
        .keys()
        .copied()
        .chain(s.uses.keys().map(|(r, d)| (r.as_str(), d.as_str())))
        .collect();
    for (r, d) in keys {
        let actual = uses.get(&(r, d)).copied().unwrap_or(0);
        let stored = s
            .uses
            .get(&(r.to_string(), d.to_string()))
            .copied()
            .unwrap_or(0);
        if actual != stored {
            out.push(problem(
                Kind::BlobUses,
                Remedy::Repair,
                format!(
                    "blob {d} is listed by {actual} manifests of {r}, but blob_uses says {stored} \
                     (quota usage would be wrong)"
                ),
                Some(Fix::SetUses {
                    repo: r.to_string(),
                    digest: d.to_string(),
                    actual,
                }),
            ));
        }
    }
    let ids: BTreeSet<&String> = s.outbox.keys().chain(s.outbox_state.keys()).collect();
    for id in ids {
        let (rows, end) = s.outbox.get(id).copied().unwrap_or((0, 0));
        let (next, queued, _) = s.outbox_state.get(id).copied().unwrap_or((0, 0, 0));
        if rows != queued || next < end {
            out.push(problem(
                Kind::OutboxState,
                Remedy::Repair,
                format!(
                    "webhook outbox {id}: {rows} events wait but its state says {queued} (next \
                     sequence {next}, last row {})",
                    end.saturating_sub(1)
                ),
                Some(Fix::OutboxState {
                    id: id.clone(),
                    queued: rows,
                    next_at_least: end,
                }),
            ));
        }
    }
    for (r, t) in s.tag_times.difference(&tagged) {
        out.push(problem(
            Kind::TagPushTime,
            Remedy::Repair,
            format!("push time of {r}:{t}, which is no tag"),
            Some(Fix::RemoveTagTime {
                repo: r.clone(),
                tag: t.clone(),
            }),
        ));
    }
    for ((r, d), m) in &s.manifests {
        let actual = manifest_refs
            .get(&(r.as_str(), d.as_str()))
            .copied()
            .unwrap_or(0);
        if m.refcount != actual || (actual == 0) != m.zero_since.is_some() {
            out.push(problem(
                Kind::ManifestCount,
                Remedy::Repair,
                format!(
                    "manifest {r}@{d} counts {} references, tags and indexes make {actual}",
                    m.refcount
                ),
                Some(Fix::ManifestCount {
                    repo: r.clone(),
                    digest: d.clone(),
                    actual,
                }),
            ));
        }
    }
    let repos: BTreeSet<&str> = s
        .repos
        .keys()
        .map(String::as_str)
        .chain(repo_counts.keys().copied())
        .collect();
    for r in repos {
        let stored = s.repos.get(r).copied().unwrap_or(0);
        let actual = repo_counts.get(r).copied().unwrap_or(0);
        if stored != actual {
            out.push(problem(
                Kind::RepoCount,
                Remedy::Repair,
                format!("repository {r} counts {stored} manifests, holds {actual}"),
                Some(Fix::RepoCount {
                    repo: r.to_string(),
                    actual,
                }),
            ));
        }
    }
    for (d, rec) in &s.blobs {
        let actual = blob_refs.get(d.as_str()).copied().unwrap_or(0);
        if rec.refcount != actual || (actual == 0) != rec.zero_since.is_some() {
            out.push(problem(
                Kind::BlobCount,
                Remedy::Repair,
                format!(
                    "blob {d} counts {} references, manifests list it {actual} times",
                    rec.refcount
                ),
                Some(Fix::BlobCount {
                    digest: d.clone(),
                    actual,
                }),
            ));
        }
        match files.get(d) {
            None if actual == 0 => out.push(blob_problem(
                Kind::RowWithoutFile,
                Remedy::Repair,
                d,
                format!("blob {d} has a row but no file; no manifest lists it"),
                Some(Fix::RemoveBlobRow { digest: d.clone() }),
            )),
            None => out.push(blob_problem(
                Kind::RowWithoutFile,
                Remedy::Person,
                d,
                format!("blob {d} is listed by {actual} manifests but its file is gone"),
                None,
            )),
            Some(&size) if size != rec.size => out.push(problem(
                Kind::SizeMismatch,
                Remedy::Person,
                format!(
                    "blob {d} should hold {} bytes, its file holds {size}",
                    rec.size
                ),
                None,
            )),
            Some(_) => {}
        }
    }
    for (d, repos) in &named_in {
        if s.blobs.contains_key(*d) {
            continue;
        }
        let n = blob_refs[d];
        match files.get(*d) {
            Some(&size) => out.push(blob_problem(
                Kind::MissingBlobRow,
                Remedy::Repair,
                d,
                format!(
                    "blob {d} is listed by {n} manifests and its file exists, but it has no row"
                ),
                Some(Fix::RestoreBlob {
                    digest: d.to_string(),
                    size,
                    repos: repos.iter().map(|r| r.to_string()).collect(),
                    actual: n,
                }),
            )),
            None => out.push(blob_problem(
                Kind::MissingBlobRow,
                Remedy::Person,
                d,
                format!("blob {d} is listed by {n} manifests but has neither row nor file"),
                None,
            )),
        }
    }
    for (r, d) in &s.links {
        if !s.blobs.contains_key(d) && !named_in.contains_key(d.as_str()) {
            out.push(problem(
                Kind::DanglingLink,
                Remedy::Repair,
                format!("repository {r} links blob {d}, which has no row"),
                Some(Fix::RemoveLink {
                    repo: r.clone(),
                    digest: d.clone(),
                }),
            ));
        }
    }
    for d in files.keys() {
        if !s.blobs.contains_key(d) && !named_in.contains_key(d.as_str()) {
            out.push(blob_problem(
                Kind::FileWithoutRow,
                Remedy::Gc,
                d,
                format!("blob file {d} has no row"),
                Some(Fix::RemoveFile {
                    digest: d.parse().ok(),
                    upload: None,
                }),
            ));
        }
    }
    for (r, d) in &s.bodies {
        if !s.manifests.contains_key(&(r.clone(), d.clone())) {
            out.push(problem(
                Kind::OrphanBody,
                Remedy::Repair,
                format!("manifest body {r}@{d} has no manifest row"),
                Some(Fix::RemoveBody {
                    repo: r.clone(),
                    digest: d.clone(),
                }),
            ));
        }
    }
    for (r, d) in &s.corrupt_bodies {
        out.push(problem(
            Kind::CorruptBody,
            Remedy::Person,
            format!("manifest body {r}@{d} does not hash to its digest"),
            None,
        ));
    }
    for (r, c, i) in &s.absent {
        let listed = s
            .manifests
            .get(&(r.clone(), i.clone()))
            .is_some_and(|m| m.children.contains(c));
        if !listed || s.manifests.contains_key(&(r.clone(), c.clone())) {
            out.push(problem(
                Kind::AbsentChildIndex,
                Remedy::Repair,
                format!("{r}@{c} is recorded as an absent child of index {i}, which is wrong"),
                Some(Fix::RemoveAbsent {
                    repo: r.clone(),
                    child: c.clone(),
                    index: i.clone(),
                }),
            ));
        }
    }
    for (r, sub, d) in &s.referrers {
        let ok = s
            .manifests
            .get(&(r.clone(), d.clone()))
            .is_some_and(|m| m.subject.as_deref() == Some(sub.as_str()));
        if !ok {
            out.push(problem(
                Kind::ReferrerIndex,
                Remedy::Repair,
                format!("referrers index lists {r}@{d} under {sub}, which it does not refer to"),
                Some(Fix::RemoveReferrer {
                    repo: r.clone(),
                    subject: sub.clone(),
                    referrer: d.clone(),
                }),
            ));
        }
    }
    out
}

/// Facts that are not inconsistencies but explain what a person sees.
fn notes(s: &Snapshot, out: &mut Vec<String>) {
    let unlinked = s
        .manifests
        .iter()
        .filter(|((r, _), m)| {
            m.blobs
                .iter()
                .any(|b| s.blobs.contains_key(b) && !s.links.contains(&(r.clone(), b.clone())))
        })
        .count();
    if unlinked > 0 {
        out.push(format!(
            "{unlinked} manifests list blobs that were deleted from their repository (DELETE \
             /v2/<name>/blobs/<digest>); pulls of them fail until the blobs are pushed again"
        ));
    }
}

fn blob_file_sizes(core: &Core) -> Result<Files, Error> {
    // The files under `blobs/`, or (S3) one listing of the bucket's blob objects.
    let mut files = Files::new();
    for (d, size, _) in core.store.list_blobs()? {
        files.insert(d.to_string(), size);
    }
    Ok(files)
}

/// Checks the instance and, with `repair`, fixes it. Holds `Core::maintenance` while repairing.
pub fn check(core: &Core, opts: &FsckOptions) -> Result<FsckReport, Error> {
    let started = Instant::now();
    let mut report = FsckReport {
        verified: opts.verify_hashes,
        ..Default::default()
    };
    let _turn = opts
        .repair
        .then(|| core.maintenance.lock().unwrap_or_else(|e| e.into_inner()));
    if opts.repair {
        report.repaired = repair(core)?;
        let tightened = core.store.tighten()?;
        if tightened > 0 {
            report.notes.push(format!(
                "took group and other permissions from {tightened} paths under the root"
            ));
        }
    }
    for (path, mode) in core.store.exposed() {
        report.notes.push(format!(
            "{} is readable by other users (mode {mode:o}); --repair makes it private",
            path.display()
        ));
    }
    let files = blob_file_sizes(core)?;
    let snap = core
        .db
        .read_blocking(|tx| snapshot_read(tx, opts.verify_hashes))?;
    report.blobs = snap.blobs.len() as u64;
    report.manifests = snap.manifests.len() as u64;
    report.repositories = snap.repos.len() as u64;
    let mut problems = audit(&snap, &files);
    problems.retain(|p| still_there(core, p));
    notes(&snap, &mut report.notes);
    uploads(core, &snap, &mut problems, &mut report.notes)?;
    if opts.verify_hashes {
        report.hashed_bytes = verify(core, &snap, &files, opts.progress.as_ref(), &mut problems)?;
    }
    report.problems = problems;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Files in `uploads/` that belong to no session: leftovers once older than the lease, else
/// uploads in flight (monolithic ones never have a session row).
fn uploads(
    core: &Core,
    snap: &Snapshot,
    problems: &mut Vec<Problem>,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let lease = core.config.gc.lease();
    let mut in_flight = 0;
    for (name, path) in upload_files(core.store.root())? {
        let session = name
            .strip_suffix(crate::store::s3::JOURNAL_SUFFIX)
            .unwrap_or(&name);
        if snap.uploads.contains(session) {
            continue;
        }
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        if age < lease {
            in_flight += 1;
            continue;
        }
        if name.ends_with(crate::store::s3::JOURNAL_SUFFIX) {
            // No fix here: removing the journal would forget the upload's id, not abort it.
            problems.push(problem(
                Kind::StrayUpload,
                Remedy::Gc,
                format!(
                    "a multipart upload into the bucket was cut off (journal {name}); the \
                     next GC pass aborts it"
                ),
                None,
            ));
            continue;
        }
        let has_row = core
            .db
            .read_blocking(|tx| Ok(tx.open_table(UPLOADS)?.get(name.as_str())?.is_some()))?;
        if !has_row {
            problems.push(problem(
                Kind::StrayUpload,
                Remedy::Gc,
                format!("upload file {name} belongs to no session"),
                Some(Fix::RemoveFile {
                    digest: None,
                    upload: Some(name),
                }),
            ));
        }
    }
    if in_flight > 0 {
        notes.push(format!(
            "{in_flight} files in uploads/ without a session are recent: uploads in flight"
        ));
    }
    Ok(())
}

/// Re-checks a row/file discrepancy under the blob's lock with a fresh read: a push between
/// its rename and its commit, or a GC between its commit and its unlink, shows one for an
/// instant, and neither can be in that window while the lock is held.
fn still_there(core: &Core, p: &Problem) -> bool {
    if !matches!(
        p.kind,
        Kind::RowWithoutFile | Kind::FileWithoutRow | Kind::MissingBlobRow
    ) {
        return true;
    }
    let Some(d) = p.blob.as_deref().and_then(|d| d.parse::<Digest>().ok()) else {
        return true;
    };
    let _g = core.blob_locks.lock(&d);
    let has_row = core
        .db
        .read_blocking(|tx| Ok(tx.open_table(BLOBS)?.get(d.to_string().as_str())?.is_some()))
        .unwrap_or(true);
    // An unreadable bucket says nothing: keep the problem only if it was "no bytes".
    let has_file = core
        .store
        .has_blob(&d)
        .unwrap_or(p.kind != Kind::RowWithoutFile);
    match p.kind {
        Kind::RowWithoutFile => has_row && !has_file,
        Kind::FileWithoutRow => has_file && !has_row,
        _ => !has_row,
    }
}

/// Re-hashes every blob file that has a row; a mismatch is corruption, reported, never fixed.
fn verify(
    core: &Core,
    snap: &Snapshot,
    files: &Files,
    progress: Option<&Progress>,
    problems: &mut Vec<Problem>,
) -> Result<u64, Error> {
    let total: u64 = snap.blobs.keys().filter_map(|d| files.get(d)).sum();
    let mut hashed = 0u64;
    let mut last = Instant::now();
    for d in snap.blobs.keys() {
        let Some(size) = files.get(d) else {
            continue;
        };
        let Ok(digest) = d.parse::<Digest>() else {
            continue;
        };
        match core.store.rehash_blob(&digest) {
            Ok(actual) => {
                if actual != digest {
                    problems.push(problem(
                        Kind::CorruptBlob,
                        Remedy::Person,
                        format!("blob {d} is corrupt: its bytes hash to {actual}"),
                        None,
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        }
        hashed += size;
        if let Some(p) = progress {
            if last.elapsed() >= Duration::from_millis(200) {
                last = Instant::now();
                p(&format!(
                    "fsck: hashed {} of {}",
                    human_bytes(hashed),
                    human_bytes(total)
                ));
            }
        }
    }
    Ok(hashed)
}

/// Applies every fix the audit of the current state offers; returns the problems fixed.
fn repair(core: &Core) -> Result<Vec<Problem>, Error> {
    // Which blobs' rows the repair may create or remove: their stripes are taken before the
    // write transaction (lock order), and each decision is re-made inside it.
    let files = blob_file_sizes(core)?;
    let pre = core.db.read_blocking(|tx| snapshot_read(tx, false))?;
    let row_changes: Vec<String> = audit(&pre, &files)
        .into_iter()
        .filter_map(|p| match p.fix {
            Some(Fix::RestoreBlob { digest, .. }) | Some(Fix::RemoveBlobRow { digest }) => {
                Some(digest)
            }
            _ => None,
        })
        .collect();
    let guards = core
        .blob_locks
        .lock_all(row_changes.iter().map(String::as_str));
    let files = blob_file_sizes(core)?;
    let fixed = core.db.write_blocking(|tx| {
        let snap = snapshot_write(tx)?;
        let mut fixed = Vec::new();
        for p in audit(&snap, &files) {
            let Some(fix) = &p.fix else { continue };
            let applied = match fix {
                Fix::RestoreBlob { digest, .. } | Fix::RemoveBlobRow { digest } => {
                    row_changes.contains(digest) && apply(tx, fix)?
                }
                Fix::RemoveFile { .. } => false,
                _ => apply(tx, fix)?,
            };
            if applied {
                fixed.push(p);
            }
        }
        Ok(fixed)
    })?;
    drop(guards);
    let mut fixed = fixed;
    // Orphan files, each under its lock with a fresh look (as the GC removes them, but
    // whatever their age: a file without a row under the lock is no push's).
    let snap = core.db.read_blocking(|tx| snapshot_read(tx, false))?;
    let lease = core.config.gc.lease();
    let named = crate::gc::named_blobs(core)?;
    // Unlinks are made durable once per directory at the end, as the GC does: otherwise a
    // power cut could bring a removed file back (harmless, but fixed twice).
    let mut unlinked = BTreeSet::new();
    for p in audit(&snap, &blob_file_sizes(core)?) {
        if let Some(Fix::RemoveFile {
            digest: Some(d), ..
        }) = &p.fix
        {
            let _g = core.blob_locks.lock(d);
            let ds = d.to_string();
            let has_row = core
                .db
                .read_blocking(|tx| Ok(tx.open_table(BLOBS)?.get(ds.as_str())?.is_some()))?;
            if !has_row && !named.contains(&ds) {
                if core.store.remove_blob(d).unwrap_or(false) {
                    unlinked.extend(core.store.blob_dir(d));
                }
                fixed.push(p);
            }
        }
    }
    let mut strays = Vec::new();
    uploads(core, &snap, &mut strays, &mut Vec::new())?;
    for p in strays {
        if let Some(Fix::RemoveFile {
            upload: Some(id), ..
        }) = &p.fix
        {
            let path = core.store.path_for(Location::Upload(id));
            let old = fs::metadata(&path)
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age >= lease);
            if old {
                if fs::remove_file(&path).is_ok() {
                    unlinked.extend(path.parent().map(std::path::Path::to_path_buf));
                }
                fixed.push(p);
            }
        }
    }
    core.store.sync_dirs(&unlinked)?;
    Ok(fixed)
}

/// Applies one fix in the repairing transaction. False when the state no longer calls for it.
fn apply(tx: &WriteTransaction, fix: &Fix) -> Result<bool, RegistryError> {
    let now = db::now();
    let stamp = |actual: u64, old: Option<u64>| {
        if actual == 0 {
            Some(old.unwrap_or(now))
        } else {
            None
        }
    };
    match fix {
        Fix::BlobCount { digest, actual } => {
            let mut t = tx.open_table(BLOBS)?;
            let Some(mut rec) = t
                .get(digest.as_str())?
                .map(|v| decode::<BlobRecord>(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            rec.refcount = *actual;
            rec.zero_since = stamp(*actual, rec.zero_since);
            t.insert(digest.as_str(), encode(&rec).as_slice())?;
        }
        Fix::ManifestCount {
            repo,
            digest,
            actual,
        } => {
            let mut t = tx.open_table(MANIFESTS)?;
            let key = (repo.as_str(), digest.as_str());
            let Some(mut rec) = t
                .get(key)?
                .map(|v| decode::<ManifestRecord>(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            rec.refcount = *actual;
            rec.zero_since = stamp(*actual, rec.zero_since);
            t.insert(key, encode(&rec).as_slice())?;
        }
        Fix::RepoCount { repo, actual } => {
            let mut t = tx.open_table(REPOS)?;
            if *actual == 0 {
                t.remove(repo.as_str())?;
            } else {
                t.insert(repo.as_str(), *actual)?;
            }
        }
        Fix::RemoveTag { repo, tag } => {
            tx.open_table(TAGS)?.remove((repo.as_str(), tag.as_str()))?;
            tx.open_table(TAG_PUSHED)?
                .remove((repo.as_str(), tag.as_str()))?;
        }
        Fix::RestoreBlob {
            digest,
            size,
            repos,
            actual,
        } => {
            let mut t = tx.open_table(BLOBS)?;
            if t.get(digest.as_str())?.is_some() {
                return Ok(false);
            }
            let rec = BlobRecord {
                size: *size,
                refcount: *actual,
                created: now,
                zero_since: stamp(*actual, None),
            };
            t.insert(digest.as_str(), encode(&rec).as_slice())?;
            let mut links = tx.open_table(REPO_BLOBS)?;
            for r in repos {
                links.insert((r.as_str(), digest.as_str()), ())?;
            }
        }
        Fix::RemoveLink { repo, digest } => {
            tx.open_table(REPO_BLOBS)?
                .remove((repo.as_str(), digest.as_str()))?;
        }
        Fix::RemoveBlobRow { digest } => {
            let mut t = tx.open_table(BLOBS)?;
            if t.remove(digest.as_str())?.is_none() {
                return Ok(false);
            }
            let mut links = tx.open_table(REPO_BLOBS)?;
            let repos: Vec<String> = links
                .iter()?
                .filter_map(|e| e.ok())
                .filter(|(k, _)| k.value().1 == digest)
                .map(|(k, _)| k.value().0.to_string())
                .collect();
            for r in repos {
                links.remove((r.as_str(), digest.as_str()))?;
            }
        }
        Fix::RemoveBody { repo, digest } => {
            tx.open_table(MANIFEST_BODIES)?
                .remove((repo.as_str(), digest.as_str()))?;
        }
        Fix::AddReferrer {
            repo,
            subject,
            referrer,
        } => {
            tx.open_table(REFERRERS)?
                .insert((repo.as_str(), subject.as_str(), referrer.as_str()), ())?;
        }
        Fix::RemoveReferrer {
            repo,
            subject,
            referrer,
        } => {
            tx.open_table(REFERRERS)?.remove((
                repo.as_str(),
                subject.as_str(),
                referrer.as_str(),
            ))?;
        }
        Fix::StampTag {
            repo,
            tag,
            pushed_ms,
        } => {
            let key = (repo.as_str(), tag.as_str());
            if tx.open_table(TAGS)?.get(key)?.is_none() {
                return Ok(false);
            }
            let mut times = tx.open_table(TAG_PUSHED)?;
            if times.get(key)?.is_some() {
                return Ok(false);
            }
            times.insert(key, *pushed_ms)?;
        }
        Fix::RemoveTagTime { repo, tag } => {
            let key = (repo.as_str(), tag.as_str());
            if tx.open_table(TAGS)?.get(key)?.is_some() {
                return Ok(false);
            }
            tx.open_table(TAG_PUSHED)?.remove(key)?;
        }
        Fix::OutboxState {
            id,
            queued,
            next_at_least,
        } => {
            let mut t = tx.open_table(OUTBOX_STATE)?;
            let (next, _, dropped) = t.get(id.as_str())?.map(|v| v.value()).unwrap_or_default();
            t.insert(id.as_str(), (next.max(*next_at_least), *queued, dropped))?;
        }
        Fix::SetUses {
            repo,
            digest,
            actual,
        } => {
            let mut t = tx.open_table(BLOB_USES)?;
            let key = (repo.as_str(), digest.as_str());
            match actual {
                0 => t.remove(key)?,
                n => t.insert(key, *n)?,
            };
        }
        Fix::AddAbsent { repo, child, index } => {
            tx.open_table(ABSENT_CHILDREN)?
                .insert((repo.as_str(), child.as_str(), index.as_str()), ())?;
        }
        Fix::RemoveAbsent { repo, child, index } => {
            tx.open_table(ABSENT_CHILDREN)?.remove((
                repo.as_str(),
                child.as_str(),
                index.as_str(),
            ))?;
        }
        Fix::RemoveFile { .. } => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(refcount: u64) -> BlobRecord {
        BlobRecord {
            size: 3,
            refcount,
            created: 1,
            zero_since: (refcount == 0).then_some(1),
        }
    }

    fn manifest(blobs: &[&str], refcount: u64) -> ManifestRecord {
        ManifestRecord {
            media_type: "m".into(),
            size: 1,
            blobs: blobs.iter().map(|b| b.to_string()).collect(),
            children: vec![],
            subject: None,
            artifact_type: None,
            annotations: None,
            refcount,
            created: 1,
            zero_since: (refcount == 0).then_some(1),
            pushed_ms: 1000,
        }
    }

    fn consistent() -> (Snapshot, Files) {
        let mut s = Snapshot::default();
        s.blobs.insert("sha256:a".into(), blob(1));
        s.blobs.insert("sha256:b".into(), blob(0));
        s.links.insert(("r".into(), "sha256:a".into()));
        s.manifests
            .insert(("r".into(), "sha256:m".into()), manifest(&["sha256:a"], 1));
        s.bodies.insert(("r".into(), "sha256:m".into()));
        s.tags.push(("r".into(), "v1".into(), "sha256:m".into()));
        s.tag_times.insert(("r".into(), "v1".into()));
        s.uses.insert(("r".into(), "sha256:a".into()), 1);
        s.repos.insert("r".into(), 1);
        let files = [("sha256:a".to_string(), 3), ("sha256:b".to_string(), 3)]
            .into_iter()
            .collect();
        (s, files)
    }

    #[test]
    fn a_consistent_snapshot_has_no_problems() {
        let (s, f) = consistent();
        assert!(audit(&s, &f).is_empty());
    }

    #[test]
    fn tag_push_times_missing_or_orphaned_are_repairable() {
        let (mut s, f) = consistent();
        s.tag_times.clear();
        s.tag_times.insert(("r".into(), "gone".into()));
        let p = audit(&s, &f);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p
            .iter()
            .all(|p| (p.kind, p.remedy) == (Kind::TagPushTime, Remedy::Repair)));
    }

    #[test]
    fn an_outbox_state_that_disagrees_with_its_rows_is_repairable() {
        let (mut s, f) = consistent();
        s.outbox.insert("hook".into(), (2, 8));
        s.outbox_state.insert("hook".into(), (8, 2, 5));
        assert!(audit(&s, &f).is_empty());
        s.outbox_state.insert("hook".into(), (8, 3, 5));
        s.outbox_state.insert("gone".into(), (4, 1, 0));
        s.outbox.insert("lost".into(), (1, 3));
        let p = audit(&s, &f);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p
            .iter()
            .all(|p| (p.kind, p.remedy) == (Kind::OutboxState, Remedy::Repair)));
    }

    #[test]
    fn blob_uses_missing_extra_or_wrong_are_repairable() {
        let (mut s, f) = consistent();
        s.uses.clear();
        s.uses.insert(("r".into(), "sha256:b".into()), 2);
        s.uses.insert(("other".into(), "sha256:a".into()), 1);
        let p = audit(&s, &f);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p
            .iter()
            .all(|p| (p.kind, p.remedy) == (Kind::BlobUses, Remedy::Repair)));
        let (mut s, f) = consistent();
        s.uses.insert(("r".into(), "sha256:a".into()), 5);
        assert_eq!(audit(&s, &f).len(), 1);
    }

    #[test]
    fn a_sparse_index_needs_an_absent_row_for_each_missing_child_and_no_other() {
        let (mut s, f) = consistent();
        let mut index = manifest(&[], 0);
        index.children = vec!["sha256:m".into(), "sha256:gone".into()];
        s.manifests.insert(("r".into(), "sha256:i".into()), index);
        s.bodies.insert(("r".into(), "sha256:i".into()));
        s.repos.insert("r".into(), 2);
        s.manifests
            .get_mut(&("r".to_string(), "sha256:m".to_string()))
            .unwrap()
            .refcount = 2;
        let absent = (
            "r".to_string(),
            "sha256:gone".to_string(),
            "sha256:i".to_string(),
        );
        s.absent.insert(absent.clone());
        assert!(audit(&s, &f).is_empty(), "{:?}", audit(&s, &f));
        // Without its row, a child pushed later would not count the index.
        s.absent.remove(&absent);
        let p = audit(&s, &f);
        assert_eq!(
            p.iter().map(|p| (p.kind, p.remedy)).collect::<Vec<_>>(),
            [(Kind::MissingChild, Remedy::Repair)]
        );
        // A row for a child that is stored, or that no index lists, is wrong.
        s.absent.insert(absent);
        s.absent
            .insert(("r".into(), "sha256:m".into(), "sha256:i".into()));
        s.absent
            .insert(("r".into(), "sha256:x".into(), "sha256:i".into()));
        let p = audit(&s, &f);
        assert_eq!(
            p.iter().map(|p| (p.kind, p.remedy)).collect::<Vec<_>>(),
            [
                (Kind::AbsentChildIndex, Remedy::Repair),
                (Kind::AbsentChildIndex, Remedy::Repair)
            ]
        );
    }

    #[test]
    fn each_kind_of_damage_is_found_with_its_remedy() {
        let (mut s, mut f) = consistent();
        s.blobs.get_mut("sha256:a").unwrap().refcount = 5;
        s.tags.push(("r".into(), "gone".into(), "sha256:x".into()));
        f.insert("sha256:stray".into(), 1);
        f.remove("sha256:b");
        s.repos.insert("r".into(), 2);
        let mut kinds: Vec<(Kind, Remedy)> =
            audit(&s, &f).iter().map(|p| (p.kind, p.remedy)).collect();
        kinds.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(
            kinds,
            vec![
                (Kind::BlobCount, Remedy::Repair),
                (Kind::DanglingTag, Remedy::Repair),
                (Kind::FileWithoutRow, Remedy::Gc),
                (Kind::RepoCount, Remedy::Repair),
                (Kind::RowWithoutFile, Remedy::Repair),
            ]
        );
        // A named blob whose file is gone is for a person, never "fixed" away.
        let (s, mut f) = consistent();
        f.remove("sha256:a");
        let p = audit(&s, &f);
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].kind, p[0].remedy),
            (Kind::RowWithoutFile, Remedy::Person)
        );
        // A named blob whose row is lost but whose file is there gets its row back.
        let (mut s, f) = consistent();
        s.blobs.remove("sha256:a");
        let p = audit(&s, &f);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].kind, p[0].remedy),
            (Kind::MissingBlobRow, Remedy::Repair)
        );
    }
}
