//! One garbage-collection pass → a [`GcReport`]. The timer that runs a pass every
//! `[gc] interval` lives in `Registry::serve`; `dockyard gc` runs one on demand. Both call
//! [`run_once`], and passes (and `fsck --repair`) take turns on `Core::maintenance`.
//!
//! A pass, in order:
//! 0. Retention (`[[policy]]` with `keep_last`/`keep_within`): the tags `policy::retention`
//!    expires are deleted one by one with `db::manifests::delete_tag`, each re-checked in the
//!    write transaction (a tag pushed again since the pass chose it is kept), so counts move
//!    as for any tag delete and the manifests left untagged follow the untagged rule below.
//! 0b. Mirror cache (`[mirror_cache] max_size`, see `evict`): above the bound, the least
//!    recently pulled cached repositories are deleted whole; their blobs follow in step 2.
//! 1. Untagged manifests (unless `[gc] untagged = "keep"`): a manifest with reference count
//!    zero (no tag, no index listing it) and no live subject, unreferenced for longer than
//!    `untagged` (and `push_window`), is deleted by `db::manifests::delete`, which releases
//!    its blobs and children; repeated while that frees more (an index, then its children).
//! 2. Blobs: a blob whose count has been zero for longer than `grace`, and that no client has
//!    seen (HEAD/GET, mount, upload) within `max(grace, push_window)`, nor since this pass
//!    took its snapshot, loses its row and every repository link in a committed transaction,
//!    then its file. Its stripe (`blob_locks`) is held from the re-check, inside the write
//!    transaction, through the unlink; a stripe busy at that moment defers the blob. The
//!    shard directories of a batch's unlinks are fsynced (`Store::sync_dirs`) once its
//!    stripes are released, so a power cut cannot bring deleted files back.
//! 3. Upload sessions untouched (row start, file mtime) for longer than `upload_expiry`:
//!    rows first, then files.
//! 4. Leftovers of crashes: files in `blobs/` without a row, older than `grace` (never one a
//!    manifest names), and files in `uploads/` without a session, older than the lease.
//!
//! Each tag (step 0) and manifest (step 1) the pass deletes gets the API's delete event,
//! appended in the deleting transaction (`events`, actor `events::GC_ACTOR`).
//!
//! Beside the pass: `blob_locks` (where pushes and the GC meet), `fsck` (the audit and its
//! repair) and `usage` (`dockyard du`).

pub mod blob_locks;
pub mod evict;
pub mod fsck;
pub mod usage;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use redb::ReadableTable;

use crate::config::Untagged;
use crate::db::{self, schema::*};
use crate::events::Appended;
use crate::gc::blob_locks::stripe_of;
use crate::oci::{Digest, RegistryError, RepoName};
use crate::store::Location;
use crate::{Core, Error};

/// Blobs re-checked and deleted per write transaction. Each transaction waits for the writer
/// behind the pushes' commits, so fewer is faster under load; its stripes are held from the
/// re-check until each stripe's files are unlinked.
const BATCH: usize = 4096;
/// Rounds for blobs whose stripe a push held when their batch was tried.
const BUSY_RETRIES: usize = 3;
/// Manifests deleted per write transaction: a bound on how long a push waits for the writer.
const MANIFEST_BATCH: usize = 512;
/// Rounds of manifest deletion per pass (index → children → their referrers …).
const MAX_ROUNDS: usize = 16;

/// Receives progress lines ("gc: blobs 1200/10000") a few times a second.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// For tests: called where a pass has decided and not yet acted, so that a request can be
/// interleaved exactly there. Runs on the pass's thread, which may block.
pub type Hook = Arc<dyn Fn(Stage, &str) + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A blob was chosen from the snapshot; its stripe is not held yet.
    BlobChosen,
    /// A blob's row and links are committed gone; its stripe is held and its file is next.
    BlobRowRemoved,
}

#[derive(Clone, Default)]
pub struct GcOptions {
    /// Count what would go; delete nothing.
    pub dry_run: bool,
    pub progress: Option<Progress>,
    /// Set to stop the pass between batches (`Core::stopping` stops it too).
    pub stop: Option<Arc<AtomicBool>>,
    pub hook: Option<Hook>,
}

/// What a pass freed (or, dry, would free).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub dry_run: bool,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub manifests: u64,
    pub uploads: u64,
    pub upload_bytes: u64,
    /// Files without rows in `blobs/` and `uploads/`.
    pub stray_files: u64,
    pub stray_bytes: u64,
    /// Unreferenced blobs kept because their count fell to zero less than `grace` ago.
    pub kept_young: u64,
    pub kept_young_bytes: u64,
    /// Unreferenced blobs past their grace, kept because a client saw them (HEAD/GET, mount,
    /// upload) within `max(grace, push_window)`.
    pub kept_seen: u64,
    pub kept_seen_bytes: u64,
    /// When the first and the last of the kept unreferenced blobs become collectable (Unix
    /// seconds): a pass from then on frees them unless something references them again.
    pub kept_due: Option<(u64, u64)>,
    /// Stray blob files kept because a manifest names them (`fsck --repair` restores them).
    pub kept_named: u64,
    /// Tags deleted (or, dry, that would be) by retention: `repo:tag digest (rule)`.
    pub expired_tags: Vec<String>,
    /// Cached (mirrored) repositories evicted (or, dry, that would be) to fit
    /// `[mirror_cache] max_size`.
    pub evicted: Vec<String>,
    pub elapsed: Duration,
    /// The pass was asked to stop before it finished.
    pub stopped: bool,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.blob_bytes + self.upload_bytes + self.stray_bytes
    }

    /// Notes a kept unreferenced blob that becomes collectable at `due` (Unix seconds).
    fn kept(&mut self, seen: bool, size: u64, due: u64) {
        if seen {
            self.kept_seen += 1;
            self.kept_seen_bytes += size;
        } else {
            self.kept_young += 1;
            self.kept_young_bytes += size;
        }
        self.kept_due = Some(match self.kept_due {
            None => (due, due),
            Some((first, last)) => (first.min(due), last.max(due)),
        });
    }
}

/// `at` (Unix seconds) as "2026-11-30T11:58:02Z (in 59m 58s)", counted from `now`.
fn when(at: u64, now: u64) -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(at));
    let left = Duration::from_secs(at.saturating_sub(now));
    format!("{stamp} (in {})", humantime::format_duration(left))
}

fn plural(n: u64, one: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {one}s")
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}), {}, {} ({}), {} ({}): {} in {:.2?}",
            if self.dry_run { "would free" } else { "freed" },
            plural(self.blobs, "blob"),
            human_bytes(self.blob_bytes),
            plural(self.manifests, "manifest"),
            plural(self.uploads, "upload"),
            human_bytes(self.upload_bytes),
            plural(self.stray_files, "stray file"),
            human_bytes(self.stray_bytes),
            human_bytes(self.bytes()),
            self.elapsed,
        )?;
        if !self.evicted.is_empty() {
            write!(
                f,
                "; {} {} cached repositor{} ({})",
                if self.dry_run {
                    "would evict"
                } else {
                    "evicted"
                },
                self.evicted.len(),
                if self.evicted.len() == 1 { "y" } else { "ies" },
                self.evicted.join(", ")
            )?;
        }
        // Why nothing (or less than expected) was freed: what is unreferenced but still
        // protected, and from when a pass will take it.
        let kept = self.kept_young + self.kept_seen;
        if kept > 0 {
            let mut why = Vec::new();
            if self.kept_young > 0 {
                why.push(format!("{} within the grace period", self.kept_young));
            }
            if self.kept_seen > 0 {
                why.push(format!("{} used by a client recently", self.kept_seen));
            }
            write!(
                f,
                "; kept {} ({}: {})",
                plural(kept, "unreferenced blob"),
                human_bytes(self.kept_young_bytes + self.kept_seen_bytes),
                why.join(", ")
            )?;
            if let Some((first, last)) = self.kept_due {
                let now = db::now();
                if first == last {
                    write!(f, ", collectable at {}", when(first, now))?;
                } else {
                    write!(
                        f,
                        ", collectable from {} to {}",
                        when(first, now),
                        when(last, now)
                    )?;
                }
            }
        }
        if self.kept_named > 0 {
            write!(
                f,
                "; kept {} that manifests name (run `dockyard fsck --repair`)",
                plural(self.kept_named, "blob file without a row")
            )?;
        }
        if !self.expired_tags.is_empty() {
            write!(
                f,
                "; {} {} by retention",
                if self.dry_run {
                    "would delete"
                } else {
                    "deleted"
                },
                plural(self.expired_tags.len() as u64, "tag")
            )?;
        }
        if self.stopped {
            write!(f, "; stopped early")?;
        }
        if self.dry_run {
            for t in &self.expired_tags {
                write!(f, "\n  would delete tag {t}")?;
            }
        }
        Ok(())
    }
}

/// Throttles progress lines to a few per second.
struct Ticker<'a> {
    progress: Option<&'a Progress>,
    last: Instant,
}

impl<'a> Ticker<'a> {
    fn new(progress: Option<&'a Progress>) -> Self {
        Ticker {
            progress,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, line: impl FnOnce() -> String) {
        if let Some(p) = self.progress {
            if self.last.elapsed() >= Duration::from_millis(200) {
                self.last = Instant::now();
                p(&line());
            }
        }
    }
}

/// Runs one pass. Waits for a pass (or a repair) already running to finish first.
pub fn run_once(core: &Core, opts: &GcOptions) -> Result<GcReport, Error> {
    let _turn = core.maintenance.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let snapshot = core.blob_locks.begin_pass();
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let who = crate::events::RequestInfo::gc_pass();
    let result = Pass {
        core,
        opts,
        snapshot,
        who: &who,
        report: &mut report,
        ticker: Ticker::new(opts.progress.as_ref()),
    }
    .run();
    core.blob_locks.end_pass();
    result?;
    report.elapsed = started.elapsed();
    if !opts.dry_run {
        record_gc_event(core, &report, &who);
        core.metrics.gc_run(report.bytes());
        *core.last_gc.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((crate::db::now(), report.clone()));
    }
    Ok(report)
}

/// Tells the endpoints that take `gc` events what the pass freed. The pass spans many
/// transactions, so its summary is written in one of its own when the pass ends: a crash
/// during a pass loses that pass's summary (the deletions themselves are durable, each with
/// its own delete event).
fn record_gc_event(core: &Core, report: &GcReport, who: &crate::events::RequestInfo) {
    let hooks = &core.config.webhooks;
    if !hooks.any(crate::events::Action::Gc) {
        return;
    }
    let summary: std::collections::BTreeMap<String, u64> = [
        ("blobs", report.blobs),
        ("blob_bytes", report.blob_bytes),
        ("manifests", report.manifests),
        ("uploads", report.uploads),
        ("upload_bytes", report.upload_bytes),
        ("stray_files", report.stray_files),
        ("stray_bytes", report.stray_bytes),
        ("expired_tags", report.expired_tags.len() as u64),
        ("evicted_repositories", report.evicted.len() as u64),
        ("elapsed_ms", report.elapsed.as_millis() as u64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let r = core
        .db
        .write_blocking(|tx| core.events.record_gc(tx, hooks, summary, who));
    match r {
        Ok(appended) => core.events.committed(hooks, &core.metrics, &appended),
        Err(e) => tracing::error!(error = %e.message, "cannot record the gc event"),
    }
}

struct Pass<'a> {
    core: &'a Core,
    opts: &'a GcOptions,
    /// Taken before the pass's first read: a blob seen after it may have links the pass did
    /// not read, so it is kept.
    snapshot: Instant,
    /// The pass as the `request` and `actor` of the delete events it appends.
    who: &'a crate::events::RequestInfo,
    report: &'a mut GcReport,
    ticker: Ticker<'a>,
}

/// Whether a record unreferenced since `zero_since` (whole Unix seconds, truncated) has
/// surely been so for at least `age` at `now`. Both stamps are truncated, so the time that
/// passed may be up to a second less than `now - since`: the test is strict, with `age`
/// rounded up. Zero means at once.
fn aged(zero_since: Option<u64>, created: u64, age: Duration, now: u64) -> bool {
    if age.is_zero() {
        return true;
    }
    let age = age.as_secs() + u64::from(age.subsec_nanos() > 0);
    zero_since.unwrap_or(created).saturating_add(age) < now
}

/// The first whole second at which `aged` holds.
fn aged_at(zero_since: Option<u64>, created: u64, age: Duration) -> u64 {
    let age = age.as_secs() + u64::from(age.subsec_nanos() > 0);
    zero_since.unwrap_or(created).saturating_add(age) + 1
}

fn parse_digest(s: &str) -> Result<Digest, Error> {
    s.parse()
        .map_err(|_| Error::Command(format!("database holds a bad digest {s:?}")))
}

fn file_age(meta: &fs::Metadata) -> Duration {
    meta.modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO)
}

/// Removes a file; false if it was already gone (a push renamed its upload away, say).
fn remove_file(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Pass<'_> {
    fn stopped(&mut self) -> bool {
        let stop = self.core.stopping.load(Ordering::Relaxed)
            || self
                .opts
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed));
        if stop {
            self.report.stopped = true;
        }
        stop
    }

    fn hook(&self, stage: Stage, digest: &str) {
        if let Some(h) = &self.opts.hook {
            h(stage, digest);
        }
    }

    fn run(mut self) -> Result<(), Error> {
        if self
            .core
            .config
            .policies
            .0
            .iter()
            .any(|p| p.has_retention())
        {
            self.retention()?;
        }
        if let Some(max) = self.core.config.mirror_cache.max_size {
            if !self.stopped() {
                self.report.evicted = evict::run(self.core, max, self.opts.dry_run)?;
            }
        }
        if let Untagged::After(age) = self.core.config.gc.untagged {
            self.manifests(age.max(self.core.config.gc.push_window))?;
        }
        if !self.stopped() {
            self.blobs()?;
        }
        if !self.stopped() {
            self.uploads()?;
        }
        if !self.stopped() {
            self.stray_blobs()?;
        }
        if !self.stopped() {
            self.stray_uploads()?;
        }
        Ok(())
    }

    /// Step 0: chooses from one snapshot, then deletes each chosen tag in a transaction that
    /// first checks it still points where it did and has not been pushed since.
    fn retention(&mut self) -> Result<(), Error> {
        let policies = &self.core.config.policies;
        let now_ms = db::now_ms();
        let chosen: Vec<(String, crate::policy::retention::Expired)> =
            self.core.db.read_blocking(|tx| {
                let repos: Vec<String> = tx
                    .open_table(REPOS)?
                    .iter()?
                    .map(|e| e.map(|(k, _)| k.value().to_string()))
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::new();
                for repo in repos {
                    let Some(p) = policies.for_repo(&repo).filter(|p| p.has_retention()) else {
                        continue;
                    };
                    let tags = db::listing::tag_details(tx, &repo)?;
                    for e in crate::policy::retention::expired(&tags, p, now_ms) {
                        out.push((repo.clone(), e));
                    }
                }
                Ok(out)
            })?;
        let line = |repo: &str, e: &crate::policy::retention::Expired| {
            format!("{repo}:{} {} ({})", e.tag.tag, e.tag.digest, e.rule)
        };
        if self.opts.dry_run {
            self.report.expired_tags = chosen.iter().map(|(r, e)| line(r, e)).collect();
            return Ok(());
        }
        for batch in chosen.chunks(MANIFEST_BATCH) {
            if self.stopped() {
                return Ok(());
            }
            let batch = batch.to_vec();
            let (hub, hooks, who) = (&self.core.events, &self.core.config.webhooks, self.who);
            let (deleted, appended) = self.core.db.write_blocking(move |tx| {
                let mut deleted = Vec::new();
                let mut appended = Appended::default();
                for (repo, e) in batch {
                    let (Some(name), Some(tag)) =
                        (RepoName::parse(&repo), crate::oci::Tag::parse(&e.tag.tag))
                    else {
                        continue;
                    };
                    let now = db::listing::tag_details_one(tx, &repo, &e.tag.tag)?;
                    if now.as_ref() != Some(&e.tag) {
                        continue; // Pushed (or deleted) since the snapshot.
                    }
                    if db::manifests::delete_tag(tx, &name, &tag)? {
                        // The API's tag delete event, committed with the delete.
                        let r = crate::oci::Reference::Tag(tag);
                        appended.merge(hub.record_delete(tx, hooks, &name, &r, who)?);
                        deleted.push((repo, e));
                    }
                }
                Ok((deleted, appended))
            })?;
            hub.committed(hooks, &self.core.metrics, &appended);
            for (repo, e) in &deleted {
                tracing::info!("gc: retention deleted tag {}", line(repo, e));
                self.report.expired_tags.push(line(repo, e));
            }
        }
        Ok(())
    }

    fn manifests(&mut self, age: Duration) -> Result<(), Error> {
        let db = &self.core.db;
        for _ in 0..MAX_ROUNDS {
            let now = db::now();
            let chosen: Vec<(String, String)> = db.read_blocking(|tx| {
                let table = tx.open_table(MANIFESTS)?;
                let mut out = Vec::new();
                for e in table.iter()? {
                    let (k, v) = e?;
                    let (repo, digest) = k.value();
                    let rec: ManifestRecord = decode(v.value())?;
                    if orphan(&table, repo, &rec, age, now)? {
                        out.push((repo.to_string(), digest.to_string()));
                    }
                }
                Ok(out)
            })?;
            if chosen.is_empty() {
                return Ok(());
            }
            if self.opts.dry_run {
                // Only the first level: what a cascade releases starts its own clock now.
                self.report.manifests += chosen.len() as u64;
                return Ok(());
            }
            let mut deleted = 0;
            for batch in chosen.chunks(MANIFEST_BATCH) {
                let batch = batch
                    .iter()
                    .map(|(r, d)| {
                        let repo = RepoName::parse(r)
                            .ok_or_else(|| Error::Command(format!("bad repository {r:?}")))?;
                        Ok((repo, parse_digest(d)?))
                    })
                    .collect::<Result<Vec<_>, Error>>()?;
                let (hub, hooks, who) = (&self.core.events, &self.core.config.webhooks, self.who);
                let (n, appended) = db.write_blocking(|tx| {
                    let now = db::now();
                    let mut n = 0;
                    let mut appended = Appended::default();
                    for (repo, digest) in &batch {
                        // Re-checked in the deleting transaction: a tag or index may have
                        // claimed it since the snapshot.
                        let still = {
                            let table = tx.open_table(MANIFESTS)?;
                            let d = digest.to_string();
                            let v = table.get((repo.as_str(), d.as_str()))?;
                            match v {
                                Some(v) => {
                                    let rec: ManifestRecord = decode(v.value())?;
                                    drop(v);
                                    orphan(&table, repo.as_str(), &rec, age, now)?
                                }
                                None => false,
                            }
                        };
                        if still && db::manifests::delete(tx, repo, digest)? {
                            // The API's manifest delete event, committed with the delete.
                            let r = crate::oci::Reference::Digest(digest.clone());
                            appended.merge(hub.record_delete(tx, hooks, repo, &r, who)?);
                            n += 1;
                        }
                    }
                    Ok((n, appended))
                })?;
                hub.committed(hooks, &self.core.metrics, &appended);
                deleted += n;
                let done = self.report.manifests + deleted;
                self.ticker.tick(|| format!("gc: manifests {done}"));
                if self.stopped() {
                    break;
                }
            }
            self.report.manifests += deleted;
            if deleted == 0 || self.report.stopped {
                return Ok(());
            }
        }
        Ok(())
    }

    fn blobs(&mut self) -> Result<(), Error> {
        let core = self.core;
        let gc = &core.config.gc;
        let lease = core.blob_locks.lease();
        let now = db::now();
        // Candidates from one snapshot, with every repository link they had in it. A link
        // added later comes with a sighting after `self.snapshot`, which keeps the blob.
        // Unreferenced blobs still within their grace are not candidates, but the report
        // says how many there are and when they become collectable.
        let (candidates, young, mut links) = core.db.read_blocking(|tx| {
            let mut candidates = Vec::new();
            let mut young = Vec::new();
            for e in tx.open_table(BLOBS)?.iter()? {
                let (k, v) = e?;
                let rec: BlobRecord = decode(v.value())?;
                if rec.refcount != 0 {
                    continue;
                }
                if aged(rec.zero_since, rec.created, gc.grace, now) {
                    candidates.push((k.value().to_string(), rec.size));
                } else {
                    let due = aged_at(rec.zero_since, rec.created, gc.grace);
                    young.push((k.value().to_string(), rec.size, due));
                }
            }
            let mut links: HashMap<String, Vec<String>> = HashMap::new();
            if !candidates.is_empty() {
                let wanted: HashSet<&str> = candidates.iter().map(|(d, _)| d.as_str()).collect();
                for e in tx.open_table(REPO_BLOBS)?.iter()? {
                    let (k, _) = e?;
                    let (repo, digest) = k.value();
                    if wanted.contains(digest) {
                        links
                            .entry(digest.to_string())
                            .or_default()
                            .push(repo.to_string());
                    }
                }
            }
            Ok((candidates, young, links))
        })?;
        let total = candidates.len();
        let snapshot = self.snapshot;
        let recent =
            |seen: Option<Instant>| seen.is_some_and(|t| t.elapsed() < lease || t >= snapshot);
        // When a sighting at `t` stops protecting its blob, in whole seconds rounded up.
        let seen_until = |t: Instant| {
            let left = lease.saturating_sub(t.elapsed());
            db::now() + left.as_secs() + u64::from(left.subsec_nanos() > 0)
        };
        for batch in young.chunks(BATCH) {
            let guards = core
                .blob_locks
                .lock_all(batch.iter().map(|(d, _, _)| d.as_str()));
            for (d, size, due) in batch {
                let due = match guards.last_seen(d).filter(|t| recent(Some(*t))) {
                    Some(t) => (*due).max(seen_until(t)),
                    None => *due,
                };
                self.report.kept(false, *size, due);
            }
        }
        if self.opts.dry_run {
            for batch in candidates.chunks(BATCH) {
                let guards = core
                    .blob_locks
                    .lock_all(batch.iter().map(|(d, _)| d.as_str()));
                for (d, size) in batch {
                    if let Some(t) = guards.last_seen(d).filter(|t| recent(Some(*t))) {
                        self.report.kept(true, *size, seen_until(t));
                    } else {
                        self.report.blobs += 1;
                        self.report.blob_bytes += size;
                    }
                }
            }
            return Ok(());
        }
        let mut pending = candidates;
        let mut done = 0;
        for _attempt in 0..BUSY_RETRIES {
            let mut busy = Vec::new();
            for batch in pending.chunks(BATCH) {
                for (d, _) in batch {
                    self.hook(Stage::BlobChosen, d);
                }
                let mut kept = Vec::new();
                // The writer first, then whichever stripes are free: the pass never holds a
                // stripe while it waits for the writer (behind the pushes' commits), and never
                // waits for a stripe while it holds the writer. A blob whose stripe a push
                // holds right now is tried again after this round.
                let (removed, guards) = core.db.write_blocking(|tx| {
                    let guards = core
                        .blob_locks
                        .try_lock_all(batch.iter().map(|(d, _)| d.as_str()));
                    let now = db::now();
                    let mut blobs = tx.open_table(BLOBS)?;
                    let mut link_table = tx.open_table(REPO_BLOBS)?;
                    let mut removed = Vec::new();
                    for (d, size) in batch {
                        if !guards.holds(d) {
                            busy.push((d.clone(), *size));
                            continue;
                        }
                        let rec: BlobRecord = match blobs.get(d.as_str())? {
                            Some(v) => decode(v.value())?,
                            None => continue,
                        };
                        // The decision again, where nothing can change under it: the count in
                        // the one write transaction, the sightings under the held stripe.
                        if rec.refcount != 0 || !aged(rec.zero_since, rec.created, gc.grace, now) {
                            continue;
                        }
                        if let Some(t) = guards.last_seen(d).filter(|t| recent(Some(*t))) {
                            kept.push((rec.size, seen_until(t)));
                            continue;
                        }
                        blobs.remove(d.as_str())?;
                        for repo in links.remove(d).unwrap_or_default() {
                            link_table.remove((repo.as_str(), d.as_str()))?;
                        }
                        removed.push((d.clone(), rec.size));
                    }
                    Ok((removed, guards))
                })?;
                for (size, due) in kept {
                    self.report.kept(true, size, due);
                }
                // Row before file: the rows are committed gone; now the files, each stripe
                // released as soon as its files are.
                let mut by_stripe: HashMap<usize, Vec<(String, u64)>> = HashMap::new();
                for (d, size) in removed {
                    by_stripe.entry(stripe_of(&d)).or_default().push((d, size));
                }
                let mut unlinked = BTreeSet::new();
                for (stripe, guard) in guards.into_stripes() {
                    for (d, size) in by_stripe.remove(&stripe).unwrap_or_default() {
                        self.hook(Stage::BlobRowRemoved, &d);
                        let digest = parse_digest(&d)?;
                        // A file under `blobs/`, or (S3) the object: row before bytes.
                        core.store.remove_blob(&digest)?;
                        unlinked.extend(core.store.blob_dir(&digest));
                        self.report.blobs += 1;
                        self.report.blob_bytes += size;
                    }
                    drop(guard);
                }
                // The batch's unlinks made durable, stripes released: a power cut now cannot
                // bring the files back as leftovers.
                core.store.sync_dirs(&unlinked)?;
                done += batch.len();
                self.ticker.tick(|| format!("gc: blobs {done}/{total}"));
                if self.stopped() {
                    return Ok(());
                }
            }
            if busy.is_empty() {
                break;
            }
            pending = busy;
        }
        Ok(())
    }

    fn uploads(&mut self) -> Result<(), Error> {
        let core = self.core;
        let expiry = core.config.upload_expiry;
        let now = SystemTime::now();
        let sessions: Vec<(String, UploadRecord)> = core.db.read_blocking(|tx| {
            tx.open_table(UPLOADS)?
                .iter()?
                .map(|e| {
                    let (k, v) = e?;
                    Ok((k.value().to_string(), decode(v.value())?))
                })
                .collect()
        })?;
        let mut expired = Vec::new();
        for (id, rec) in sessions {
            let path = core.store.path_for(Location::Upload(&id));
            let started = now
                .duration_since(SystemTime::UNIX_EPOCH + Duration::from_secs(rec.started))
                .unwrap_or(Duration::ZERO);
            // A chunk appended renews the session: its file's mtime moves.
            let (idle, size) = match fs::metadata(&path) {
                Ok(m) => (started.min(file_age(&m)), m.len()),
                Err(_) => (started, 0),
            };
            if idle >= expiry {
                expired.push((id, path, size));
            }
        }
        if expired.is_empty() {
            return Ok(());
        }
        let gone: Vec<(PathBuf, u64)> = if self.opts.dry_run {
            expired.into_iter().map(|(_, p, s)| (p, s)).collect()
        } else {
            core.db
                .write_blocking(|tx| {
                    let mut table = tx.open_table(UPLOADS)?;
                    let mut gone = Vec::new();
                    for (id, path, size) in expired {
                        if table.remove(id.as_str())?.is_some() {
                            gone.push((id, path, size));
                        }
                    }
                    Ok(gone)
                })?
                .into_iter()
                .map(|(id, path, size)| {
                    // The session is gone: its hash state too (a late chunk finds no row first).
                    core.cursors.lock().expect("cursor map lock").remove(&id);
                    (path, size)
                })
                .collect()
        };
        let mut unlinked = BTreeSet::new();
        for (path, size) in gone {
            if !self.opts.dry_run {
                remove_file(&path)?;
                unlinked.extend(path.parent().map(Path::to_path_buf));
                if let Some(bucket) = core.store.bucket().cloned() {
                    // An S3 session's bytes are a multipart upload: aborted with the session.
                    let id = path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                        .to_string();
                    let journal = core.store.journal_for(&id);
                    crate::store::s3::wait(
                        async move { bucket.discard_upload(&id, journal).await },
                    );
                }
            }
            // The session is gone either way: its row went first.
            self.report.uploads += 1;
            self.report.upload_bytes += size;
        }
        core.store.sync_dirs(&unlinked)?;
        Ok(())
    }

    /// Files in `blobs/` (objects in the bucket, with S3) whose digest has no row, older than
    /// the grace period.
    fn stray_blobs(&mut self) -> Result<(), Error> {
        let core = self.core;
        let grace = core.config.gc.grace;
        let files = core.store.blob_digests()?;
        let strays: Vec<(Digest, Option<(u64, Duration)>)> = core.db.read_blocking(|tx| {
            let blobs = tx.open_table(BLOBS)?;
            let mut out = Vec::new();
            for (digest, meta) in files {
                if blobs.get(digest.to_string().as_str())?.is_none() {
                    out.push((digest, meta));
                }
            }
            Ok(out)
        })?;
        if strays.is_empty() {
            return Ok(());
        }
        // Never delete bytes a manifest names, even if their row is lost: fsck restores it.
        let named = named_blobs(core)?;
        let mut unlinked = BTreeSet::new();
        for (digest, meta) in strays {
            let d = digest.to_string();
            if named.contains(&d) {
                self.report.kept_named += 1;
                continue;
            }
            let Some((size, age)) = meta.or_else(|| core.store.blob_age(&digest)) else {
                continue;
            };
            if age < grace {
                continue;
            }
            // Under the stripe a push is either before its promote or past its record.
            let _guard = core.blob_locks.lock(&digest);
            let has_row = core
                .db
                .read_blocking(|tx| Ok(tx.open_table(BLOBS)?.get(d.as_str())?.is_some()))?;
            if has_row {
                continue;
            }
            if self.opts.dry_run || core.store.remove_blob(&digest)? {
                if !self.opts.dry_run {
                    unlinked.extend(core.store.blob_dir(&digest));
                }
                self.report.stray_files += 1;
                self.report.stray_bytes += size;
            }
        }
        core.store.sync_dirs(&unlinked)?;
        Ok(())
    }

    /// A journal of a multipart upload into the bucket (`store::s3`) older than the lease: a
    /// promote that crashed, unless one is still running, which holds the blob's stripe
    /// until its journal is gone. Aborts the multipart upload (its parts are stored bytes
    /// no object names) and removes the journal.
    fn stale_multipart(&mut self, journal: &Path) -> Result<(), Error> {
        let core = self.core;
        let Some(bucket) = core.store.bucket() else {
            // Written under the S3 backend, now on the filesystem one: nothing to abort here.
            if self.opts.dry_run || remove_file(journal)? {
                self.report.stray_files += 1;
            }
            return Ok(());
        };
        let digest = crate::store::s3::journal_digest(journal);
        let _guard = digest.as_ref().map(|d| core.blob_locks.lock(d));
        if !journal.exists() {
            return Ok(());
        }
        if !self.opts.dry_run {
            let (b, j) = (bucket.clone(), journal.to_path_buf());
            crate::store::s3::wait(async move { b.abort_journaled(&j).await })?;
            tracing::info!(journal = %journal.display(), "gc: aborted a stale multipart upload");
        }
        self.report.stray_files += 1;
        Ok(())
    }

    /// Files in `uploads/` that belong to no session, untouched for the lease: monolithic
    /// uploads cut off by a crash, or sessions whose row went first.
    fn stray_uploads(&mut self) -> Result<(), Error> {
        let core = self.core;
        let age = core.config.gc.lease();
        let mut unlinked = BTreeSet::new();
        for (id, path) in upload_files(core.store.root())? {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if file_age(&meta) < age {
                continue;
            }
            if let Some(session) = id.strip_suffix(crate::store::s3::JOURNAL_SUFFIX) {
                // A live session's upload is its own (aborted when the session expires).
                let live = core
                    .db
                    .read_blocking(|tx| Ok(tx.open_table(UPLOADS)?.get(session)?.is_some()))?;
                if !live {
                    self.stale_multipart(&path)?;
                }
                continue;
            }
            let has_row = core
                .db
                .read_blocking(|tx| Ok(tx.open_table(UPLOADS)?.get(id.as_str())?.is_some()))?;
            if has_row {
                continue;
            }
            if self.opts.dry_run || remove_file(&path)? {
                if !self.opts.dry_run {
                    unlinked.extend(path.parent().map(Path::to_path_buf));
                }
                self.report.stray_files += 1;
                self.report.stray_bytes += meta.len();
            }
        }
        core.store.sync_dirs(&unlinked)?;
        Ok(())
    }
}

/// A manifest no tag or index references, whose subject (if any) is gone, unreferenced for
/// at least `age`.
fn orphan(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    repo: &str,
    rec: &ManifestRecord,
    age: Duration,
    now: u64,
) -> Result<bool, RegistryError> {
    if rec.refcount != 0 || !aged(rec.zero_since, rec.created, age, now) {
        return Ok(false);
    }
    Ok(match &rec.subject {
        Some(s) => table.get((repo, s.as_str()))?.is_none(),
        None => true,
    })
}

/// Every digest a manifest row lists as config or layer.
pub(crate) fn named_blobs(core: &Core) -> Result<HashSet<String>, Error> {
    Ok(core.db.read_blocking(|tx| {
        let mut named = HashSet::new();
        for e in tx.open_table(MANIFESTS)?.iter()? {
            let (_, v) = e?;
            let rec: ManifestRecord = decode(v.value())?;
            named.extend(rec.blobs);
        }
        Ok(named)
    })?)
}

/// Every file under `blobs/<algorithm>/<xx>/` whose name is a digest of that algorithm.
/// Anything else there is not ours to judge and is left alone.
pub(crate) fn blob_files(root: &Path) -> io::Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for alg in read_dir(&root.join("blobs"))? {
        let Some(alg_name) = alg.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        for shard in read_dir(&alg)? {
            for file in read_dir(&shard)? {
                let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if let Ok(d) = format!("{alg_name}:{name}").parse::<Digest>() {
                    if shard.file_name().and_then(|n| n.to_str()) == Some(&d.hex()[..2]) {
                        out.push((d, file));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every file directly under `uploads/`, with its name.
pub(crate) fn upload_files(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    Ok(read_dir(&root.join("uploads"))?
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            Some((name, p))
        })
        .collect())
}

/// The entries of a directory; none if it does not exist.
fn read_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes() {
        // Regression: stamped at 100.9 s (truncated to 100), a one-second window was over
        // at 101.0 s, and an index child pushed 0.1 s earlier was collected under its index.
        assert!(!aged(Some(100), 0, Duration::from_secs(1), 101));
        assert!(aged(Some(100), 0, Duration::from_secs(1), 102));
        assert!(!aged(Some(100), 0, Duration::from_secs(10), 110));
        assert!(aged(Some(100), 0, Duration::from_secs(10), 111));
        assert!(!aged(Some(100), 0, Duration::from_millis(1500), 102));
        assert!(aged(None, 5, Duration::ZERO, 5));
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_report_says_what_it_kept_and_until_when() {
        let now = db::now();
        let mut r = GcReport {
            dry_run: true,
            ..Default::default()
        };
        r.kept(false, 1024, now + 3600);
        let s = r.to_string();
        assert!(s.starts_with("would free 0 blobs (0 B)"), "{s}");
        assert!(
            s.contains(
                "; kept 1 unreferenced blob (1.0 KiB: 1 within the grace period), collectable at "
            ),
            "{s}"
        );
        assert!(s.ends_with("(in 1h)") || s.ends_with("(in 59m 59s)"), "{s}");
        r.kept(true, 2048, now + 60);
        let s = r.to_string();
        assert!(
            s.contains("kept 2 unreferenced blobs (3.0 KiB: 1 within the grace period, 1 used by a client recently), collectable from "),
            "{s}"
        );
        assert_eq!(r.kept_due, Some((now + 60, now + 3600)));
        assert_eq!(aged_at(Some(100), 0, Duration::from_secs(10)), 111);
        assert!(aged(Some(100), 0, Duration::from_secs(10), 111));
        assert!(!aged(Some(100), 0, Duration::from_secs(10), 110));
    }

    #[test]
    fn report_reads_as_a_sentence() {
        let r = GcReport {
            blobs: 1,
            blob_bytes: 2048,
            manifests: 2,
            elapsed: Duration::from_millis(5),
            ..Default::default()
        };
        let s = r.to_string();
        assert!(
            s.starts_with("freed 1 blob (2.0 KiB), 2 manifests, 0 uploads"),
            "{s}"
        );
    }
}
