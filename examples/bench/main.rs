//! Dockyard against CNCF Distribution, side by side on one machine.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench                  # full run
//! cargo run --release --example bench -- --quick --json bench.json                 # < 2 min
//! ```
//!
//! Starts the release `dockyard` binary that cargo built next to this example and, when
//! Debian's `docker-registry` (Distribution 2.8) is installed, a Distribution instance with
//! filesystem storage; each gets its own loopback port and an empty temporary root. Every
//! workload of issue 6 runs against both, alternating which goes first, and one table is
//! printed (and written as JSON with `--json`). `--tiny` is the test suite's smoke run.

mod client;
mod mirror;
mod portability;
mod s3;
mod servers;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use serde::Serialize;

use client::Result;
use servers::{machine_idle, own_cpu_seconds, Kind, Server};
use workloads::*;

#[derive(Parser)]
#[command(about = "Benchmark Dockyard against CNCF Distribution on this machine")]
struct Args {
    /// Smaller sizes and counts (a 256 MiB blob, 1,000 repositories, 1 s per load level):
    /// finishes in under two minutes.
    #[arg(long)]
    quick: bool,
    /// A smoke run of every workload at toy sizes, for the test suite; its figures mean nothing.
    #[arg(long, conflicts_with = "quick")]
    tiny: bool,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The dockyard binary [default: `dockyard` next to this example's directory, i.e. the
    /// one `cargo build --release` made].
    #[arg(long)]
    dockyard_bin: Option<PathBuf>,
    /// Also run this (older) dockyard binary, in a column of its own, and show how many
    /// times better the measured binary is than it: compares two builds in one run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Run only these workloads (comma-separated: push, images, small, catalog, startup,
    /// portability, mirror, s3); `push` includes the pull of workload 2.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How many small images workload 3 pushes [default: 200, 50 with --quick].
    #[arg(long)]
    images: Option<usize>,
    /// How many times workload 1 pushes each kind of blob to each registry [default: 2, 1
    /// with --quick]. Repetitions alternate the order of the registries.
    #[arg(long)]
    push_reps: Option<usize>,
    /// Run Dockyard alone even when Distribution is installed.
    #[arg(long)]
    no_distribution: bool,
}

/// How big each workload is in one mode.
struct Sizes {
    mode: &'static str,
    blob: usize,
    chunk: usize,
    push_reps: usize,
    range: usize,
    ranges: usize,
    images: usize,
    image_clients: usize,
    layer_max: usize,
    levels: [usize; 3],
    level_time: Duration,
    tags: usize,
    repos: usize,
    seed_clients: usize,
    startups: usize,
    /// Workload 8: repositories in the Distribution store, bytes of each of their two
    /// layers, and bytes of each of the two layers of the one big image beside them.
    port_repos: usize,
    port_layer: usize,
    port_big_layer: usize,
    /// Workload 9: the three layers of the mirrored image, how many cold and warm pulls
    /// each side gets, and how many clients pull at once in the herd.
    mirror_layers: [usize; 3],
    mirror_reps: usize,
    mirror_clients: usize,
}

const MIB: usize = 1 << 20;

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            mode: "full",
            blob: 1024 * MIB,
            chunk: 16 * MIB,
            push_reps: 2,
            range: 64 * MIB,
            ranges: 8,
            images: 200,
            image_clients: 16,
            layer_max: 100 * 1024,
            levels: [1, 16, 64],
            level_time: Duration::from_secs(3),
            tags: 20,
            repos: 10_000,
            seed_clients: 16,
            startups: 3,
            port_repos: 1_000,
            port_layer: 16 * 1024,
            port_big_layer: 256 * MIB,
            mirror_layers: [100 * MIB, 64 * MIB, 36 * MIB],
            mirror_reps: 2,
            mirror_clients: 50,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            mode: "quick",
            blob: 256 * MIB,
            push_reps: 1,
            ranges: 4,
            images: 50,
            level_time: Duration::from_secs(1),
            repos: 1_000,
            port_repos: 200,
            port_big_layer: 64 * MIB,
            mirror_layers: [32 * MIB, 20 * MIB, 12 * MIB],
            mirror_reps: 1,
            ..Sizes::full()
        }
    }

    fn tiny() -> Sizes {
        Sizes {
            mode: "tiny",
            blob: 3 * MIB + 12_345,
            chunk: MIB,
            push_reps: 1,
            range: 256 * 1024,
            ranges: 2,
            images: 6,
            image_clients: 3,
            layer_max: 8 * 1024,
            levels: [1, 16, 64],
            level_time: Duration::from_millis(150),
            tags: 3,
            repos: 30,
            seed_clients: 4,
            startups: 1,
            port_repos: 5,
            port_layer: 1024,
            port_big_layer: MIB,
            mirror_layers: [MIB, 512 * 1024, 256 * 1024],
            mirror_reps: 1,
            mirror_clients: 50,
        }
    }

    fn size_label(&self, n: usize) -> String {
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            format!("{} GiB", n >> 30)
        } else if n >= MIB && n.is_multiple_of(MIB) {
            format!("{} MiB", n >> 20)
        } else {
            format!("{n} B")
        }
    }
}

// ---------------------------------------------------------------------------------------
// The table

/// What a row promises, from the issue's targets.
#[derive(Clone, Copy)]
enum Goal {
    /// Dockyard at least this many times better than Distribution.
    Ratio(f64),
    /// As `Ratio`, and Dockyard at least this fraction of the limit.
    RatioAndLimit(f64, f64),
    /// Dockyard's figure under this value (in the row's unit); with zero errors.
    Under(f64),
    /// Zero errors and at least this ratio.
    RatioNoErrors(f64),
    /// Dockyard at most this fraction slower than the reference column (a time).
    AtMostSlower(f64),
    /// Dockyard at least this fraction of the limit, with zero errors.
    Limit(f64),
}

#[derive(Serialize, Default, Clone)]
struct Cell {
    /// The best of `samples`.
    value: Option<f64>,
    /// Every successful measurement, in the order taken.
    samples: Vec<f64>,
    errors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Serialize)]
struct Row {
    key: String,
    workload: String,
    unit: &'static str,
    higher_is_better: bool,
    dockyard: Cell,
    distribution: Cell,
    /// The `--baseline-bin` build's figures.
    baseline: Cell,
    /// How many times better Dockyard is than Distribution (>1: Dockyard ahead).
    ratio: Option<f64>,
    /// How many times better Dockyard is than the baseline build (>1: better now).
    vs_baseline: Option<f64>,
    limit: Option<f64>,
    limit_what: Option<String>,
    target: Option<String>,
    target_met: Option<bool>,
    #[serde(skip)]
    goal: Option<Goal>,
}

impl Row {
    fn cell(&mut self, kind: Kind) -> &mut Cell {
        match kind {
            Kind::Dockyard => &mut self.dockyard,
            Kind::Distribution => &mut self.distribution,
            Kind::Baseline => &mut self.baseline,
        }
    }

    fn finish(&mut self) {
        let better = |d: Option<f64>, r: Option<f64>| match (d, r) {
            (Some(d), Some(r)) if d > 0.0 && r > 0.0 => {
                Some(if self.higher_is_better { d / r } else { r / d })
            }
            _ => None,
        };
        self.ratio = better(self.dockyard.value, self.distribution.value);
        self.vs_baseline = better(self.dockyard.value, self.baseline.value);
        let Some(goal) = self.goal else { return };
        let d = self.dockyard.value;
        let clean = self.dockyard.errors == 0;
        let (text, met) = match goal {
            Goal::Ratio(x) => (format!(">= {x}x"), self.ratio.map(|r| r >= x && clean)),
            Goal::RatioNoErrors(x) => (
                format!(">= {x}x, 0 errors"),
                self.ratio.map(|r| r >= x && clean),
            ),
            Goal::RatioAndLimit(x, f) => (
                format!(">= {x}x, >= {:.0}% of limit", f * 100.0),
                match (self.ratio, d, self.limit) {
                    (Some(r), Some(d), Some(l)) => Some(r >= x && d >= f * l && clean),
                    (None, Some(d), Some(l)) => Some(d >= f * l && clean).filter(|m| !m),
                    _ => None,
                },
            ),
            Goal::Under(v) => (format!("< {v} {}", self.unit), d.map(|d| d < v && clean)),
            Goal::AtMostSlower(x) => (
                format!("<= {:.0}% slower", x * 100.0),
                self.ratio.map(|r| r >= 1.0 / (1.0 + x) && clean),
            ),
            Goal::Limit(f) => (
                format!(">= {:.0}% of limit", f * 100.0),
                match (d, self.limit) {
                    (Some(d), Some(l)) => Some(d >= f * l && clean),
                    _ => None,
                },
            ),
        };
        self.target = Some(text);
        self.target_met = met;
    }
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn row(&mut self, key: &str, workload: &str, unit: &'static str, higher: bool) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.key == key) {
            return &mut self.rows[i];
        }
        self.rows.push(Row {
            key: key.to_string(),
            workload: workload.to_string(),
            unit,
            higher_is_better: higher,
            dockyard: Cell::default(),
            distribution: Cell::default(),
            baseline: Cell::default(),
            ratio: None,
            vs_baseline: None,
            limit: None,
            limit_what: None,
            target: None,
            target_met: None,
            goal: None,
        });
        self.rows.last_mut().expect("just pushed")
    }

    fn get(&mut self, key: &str) -> &mut Row {
        self.rows
            .iter_mut()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("row {key} declared before use"))
    }

    /// Records one measurement (or failure) of `kind` in row `key`.
    fn record(
        &mut self,
        key: &str,
        kind: Kind,
        value: Option<f64>,
        errors: usize,
        err: Option<String>,
    ) {
        let row = self.get(key);
        let name = row.workload.clone();
        let higher = row.higher_is_better;
        let cell = row.cell(kind);
        if let Some(v) = value {
            cell.samples.push(v);
            cell.value = Some(match cell.value {
                // Repeated measurements keep the best: interference only ever slows a run.
                Some(old) if higher => old.max(v),
                Some(old) => old.min(v),
                None => v,
            });
        }
        cell.errors += errors;
        if let Some(e) = err {
            eprintln!("  !! {} / {name}: {e}", kind.name());
            cell.first_error.get_or_insert(e);
        }
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_cell(c: &Cell, present: bool) -> String {
    // Not run, or a row that measures Dockyard alone (nothing recorded, nothing failed).
    if !present || (c.value.is_none() && c.errors == 0) {
        return "-".into();
    }
    let mut s = c.value.map(fmt_num).unwrap_or_else(|| "failed".into());
    if c.errors > 0 {
        s.push_str(&format!(" ({} err)", c.errors));
    }
    s
}

// ---------------------------------------------------------------------------------------
// Machine facts

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu: String,
    mem_total_gib: f64,
    loadavg_start: String,
    loadavg_end: String,
    sha_ni: bool,
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(file).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> Machine {
    let mem_kib: f64 = proc_field("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_default(),
        mem_total_gib: mem_kib / (1024.0 * 1024.0),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        sha_ni: proc_field("/proc/cpuinfo", "flags")
            .is_some_and(|f| f.split(' ').any(|x| x == "sha_ni")),
    }
}

// ---------------------------------------------------------------------------------------
// The run

struct Bench {
    sizes: Sizes,
    servers: Vec<Server>,
    table: Table,
    step: usize,
}

impl Bench {
    /// Indices of the servers in the order of the next step: alternating who goes first, so
    /// neither always runs on the warmer (or more disturbed) machine.
    fn order(&mut self) -> Vec<usize> {
        self.step += 1;
        let mut v: Vec<usize> = (0..self.servers.len()).collect();
        if self.step.is_multiple_of(2) {
            v.reverse();
        }
        v
    }

    fn record(&mut self, key: &str, kind: Kind, r: Result<f64>) {
        match r {
            Ok(v) => self.table.record(key, kind, Some(v), 0, None),
            Err(e) => self.table.record(key, kind, None, 1, Some(e.to_string())),
        }
    }

    fn cpu_seconds(&self) -> Vec<Option<f64>> {
        self.servers.iter().map(|s| s.cpu_seconds().ok()).collect()
    }

    /// Records the CPU each server spent since `before`, per GiB moved.
    fn record_cpu(&mut self, key: &str, before: Vec<Option<f64>>, gib: f64) {
        let after = self.cpu_seconds();
        for (i, (a, b)) in before.into_iter().zip(after).enumerate() {
            let kind = self.servers[i].kind;
            let r = match (a, b) {
                (Some(a), Some(b)) => Ok((b - a) / gib),
                _ => Err("cannot read /proc/<pid>/stat".into()),
            };
            self.record(key, kind, r);
        }
    }

    fn memory_mib(&self, i: usize, peak: bool) -> Result<f64> {
        let (rss, hwm) = self.servers[i].memory()?;
        Ok(if peak { hwm } else { rss } as f64 / 1024.0)
    }
}

/// Starts a measurement on a disk with nothing left to write back (`sync`), and with
/// `drop_cache`, with the page cache's clean pages given back to the free list.
///
/// Why the cache: on this kind of VM, a page the guest has not touched recently costs a
/// fault in the hypervisor the first time it is used. Each push repetition fills GiBs of page
/// cache with new blob files, so the second repetition ran on untouched pages and took 1.5x
/// to 2x longer for every registry alike; best-of then always meant the first repetition,
/// with its one order. Dropping the cache first gives each repetition the pages the one
/// before used. Needs root; otherwise says so once and only syncs.
fn settle(drop_cache: bool) {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if drop_cache {
        static WARNED: std::sync::Once = std::sync::Once::new();
        if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1") {
            WARNED.call_once(|| {
                eprintln!("note: cannot drop the page cache between push repetitions ({e}); later repetitions may run on pages the VM has not touched");
            });
        }
    }
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / secs(d) / 1e6
}

async fn run(args: Args) -> Result<bool> {
    let sizes = if args.tiny {
        Sizes::tiny()
    } else if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let mut sizes = sizes;
    if let Some(n) = args.images {
        sizes.images = n;
    }
    if let Some(n) = args.push_reps {
        sizes.push_reps = n.max(1);
    }
    let started = Instant::now();
    let only = args.only.clone();
    let want = |w: &str| only.is_empty() || only.iter().any(|o| o == w);
    let mut machine = machine();
    let bin = match args.dockyard_bin {
        Some(b) => b,
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .and_then(Path::parent)
                .map(|d| d.join("dockyard"))
                .ok_or("cannot locate the dockyard binary")?
        }
    };
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run `cargo build --release` first (or pass --dockyard-bin)",
            bin.display()
        )
        .into());
    }
    let dist_bin = if args.no_distribution {
        None
    } else {
        servers::distribution_binary()
    };
    if dist_bin.is_none() {
        let why = if args.no_distribution {
            "--no-distribution was given"
        } else {
            "Debian's docker-registry package is not installed (apt-get install -y docker-registry)"
        };
        eprintln!(
            "\n{}\n!!! NO COMPARISON: {why};\n!!! only Dockyard's column will be filled.\n{}\n",
            "!".repeat(78),
            "!".repeat(78)
        );
    }

    println!(
        "== Dockyard vs Distribution, {} run: {} x {}, {} GiB RAM, load {}",
        sizes.mode,
        machine.nproc,
        machine.cpu,
        fmt_num(machine.mem_total_gib),
        machine.loadavg_start
    );
    println!("   dockyard: {}", bin.display());
    let mut servers = vec![];
    servers.push(Server::start(Kind::Dockyard, &bin).await?);
    if let Some(base) = &args.baseline_bin {
        println!("   baseline dockyard: {}", base.display());
        servers.push(Server::start(Kind::Baseline, base).await?);
    }
    if let Some(d) = &dist_bin {
        println!("   distribution: {}", d.display());
        servers.push(Server::start(Kind::Distribution, d).await?);
    }
    let mut b = Bench {
        servers,
        table: Table::default(),
        step: 0,
        sizes,
    };
    let kinds: Vec<Kind> = b.servers.iter().map(|s| s.kind).collect();
    let s = &b.sizes;
    let blob_label = s.size_label(s.blob);

    // Declare the rows in the order they print.
    let t = &mut b.table;
    t.row(
        "push.monolithic",
        &format!("1. push {blob_label} blob, monolithic (POST, PUT)"),
        "MB/s",
        true,
    )
    .goal = Some(Goal::RatioAndLimit(2.0, 0.6));
    t.row(
        "push.chunked",
        &format!(
            "1. push {blob_label} blob, chunked ({} PATCHes)",
            s.size_label(s.chunk)
        ),
        "MB/s",
        true,
    )
    .goal = Some(Goal::RatioAndLimit(2.0, 0.6));
    t.row(
        "cpu.push",
        "1. server CPU time per GiB pushed (user+sys)",
        "s",
        false,
    );
    t.row(
        "limit.sha256",
        "1. limit: sha256 of the same bytes, one core",
        "MB/s",
        true,
    );
    t.row(
        "limit.copy_fsync",
        "1. limit: file-to-file copy + fsync",
        "MB/s",
        true,
    );
    t.row(
        "pull.full",
        &format!("2. pull {blob_label} blob (GET)"),
        "MB/s",
        true,
    )
    .goal = Some(Goal::Ratio(1.5));
    t.row(
        "pull.range",
        &format!("2. pull {} ranges of it", s.size_label(s.range)),
        "MB/s",
        true,
    )
    .goal = Some(Goal::Ratio(1.5));
    t.row(
        "cpu.pull",
        "2. server CPU time per GiB pulled (user+sys)",
        "s",
        false,
    );
    t.row(
        "limit.loopback",
        "2. limit: one loopback TCP stream from memory",
        "MB/s",
        true,
    );
    t.row(
        "images",
        &format!(
            "3. {} small images by {} clients",
            s.images, s.image_clients
        ),
        "images/s",
        true,
    )
    .goal = Some(Goal::RatioNoErrors(3.0));
    for p in Probe::all() {
        for c in s.levels {
            let k = format!("small.{}.c{c}", p.key());
            let goal16 = c == 16;
            t.row(
                &format!("{k}.rps"),
                &format!("4. {} @{c}: rate", p.label()),
                "req/s",
                true,
            )
            .goal = goal16.then_some(Goal::Ratio(4.0));
            t.row(
                &format!("{k}.p50"),
                &format!("4. {} @{c}: p50", p.label()),
                "ms",
                false,
            );
            t.row(
                &format!("{k}.p99"),
                &format!("4. {} @{c}: p99", p.label()),
                "ms",
                false,
            )
            .goal = goal16.then_some(Goal::Ratio(1.0));
            t.row(
                &format!("{k}.cpu"),
                &format!("4. {} @{c}: server CPU per request", p.label()),
                "us",
                false,
            )
            .goal = goal16.then_some(Goal::Under(25.0));
            // Beside the server's CPU: what the load generator spent per request and how
            // much of the machine stayed idle. A faster server can only show in req/s while
            // the client has CPU to spare; an idle machine with few req/s means waiting.
            t.row(
                &format!("{k}.client"),
                &format!("4. {} @{c}: load generator CPU per request", p.label()),
                "us",
                false,
            );
            t.row(
                &format!("{k}.idle"),
                &format!("4. {} @{c}: machine CPU idle during the load", p.label()),
                "%",
                true,
            );
        }
    }
    t.row(
        "catalog.seed",
        &format!(
            "5. seed {} repos (mount + manifest PUT, {} clients)",
            s.repos, s.seed_clients
        ),
        "repos/s",
        true,
    );
    t.row(
        "catalog.full",
        &format!("5. _catalog, all {} repos (following Link)", s.repos),
        "ms",
        false,
    )
    .goal = Some(Goal::Ratio(20.0));
    t.row(
        "catalog.paged",
        &format!("5. _catalog, all {} repos in n=100 pages", s.repos),
        "ms",
        false,
    )
    .goal = Some(Goal::Ratio(20.0));
    t.row(
        "catalog.first_page",
        "5. _catalog?n=100, first page",
        "ms",
        false,
    );
    for (k, label) in [
        ("ui.list", "repository list page (/ui/, 50 of them)"),
        (
            "ui.filter",
            "repository list filtered by name (/ui/?q=r0999)",
        ),
        ("ui.tags", "a repository's tag page (/ui/r/cat/r05000)"),
    ] {
        for q in ["p50", "p99"] {
            t.row(
                &format!("{k}.{q}"),
                &format!("5. UI, {} repos: {label}, {q}", s.repos),
                "ms",
                false,
            )
            .goal = (q == "p99").then_some(Goal::Under(50.0));
        }
    }
    t.row("mem.idle", "6. RSS idle after start", "MiB", false)
        .goal = Some(Goal::Under(12.0));
    t.row(
        "mem.push",
        "6. peak RSS during workload 1 (push)",
        "MiB",
        false,
    )
    .goal = Some(Goal::Under(48.0));
    t.row(
        "mem.small",
        "6. peak RSS during workload 4 (<=64 conns)",
        "MiB",
        false,
    )
    .goal = Some(Goal::Under(48.0));
    t.row(
        "startup.empty",
        "7. start-up to first 200 on /v2/, empty root",
        "ms",
        false,
    );
    t.row(
        "startup.full",
        &format!("7. start-up to first 200 on /v2/, {}+ manifests", s.repos),
        "ms",
        false,
    )
    .goal = Some(Goal::Under(50.0));
    t.row(
        "portability.import",
        &format!(
            "8. import-distribution, {} repos (Distribution col.: skopeo sync)",
            s.port_repos
        ),
        "s",
        false,
    )
    .goal = Some(Goal::Ratio(10.0));
    t.row(
        "portability.backup_same",
        "8. backup of them + 1 big image, same fs (limit: cp -a)",
        "MB/s",
        true,
    );
    t.row(
        "portability.backup_copy",
        "8. backup of them to /dev/shm (limit: cp -a)",
        "MB/s",
        true,
    );
    t.row(
        "portability.backup_again",
        "8. backup again to /dev/shm, nothing new",
        "s",
        false,
    );
    let mirror_image = s.size_label(s.mirror_layers.iter().sum());
    t.row(
        "mirror.cold",
        &format!(
            "9. cold pull of a 3-layer {mirror_image} image via the mirror (Distribution col.: straight from the upstream)"
        ),
        "s",
        false,
    )
    .goal = Some(Goal::AtMostSlower(0.10));
    t.row(
        "mirror.cold_proxy",
        "9. the same cold pull, mirror vs Distribution's proxy",
        "s",
        false,
    );
    t.row(
        "mirror.warm",
        "9. warm pull of it, mirror vs Distribution's proxy",
        "MB/s",
        true,
    )
    .goal = Some(Goal::Ratio(1.5));
    let herd = format!("9. {} concurrent cold pulls of one image", s.mirror_clients);
    t.row("mirror.herd", &format!("{herd}: wall time"), "s", false);
    t.row(
        "mirror.herd_upstream",
        &format!("{herd}: upstream sent"),
        "x image",
        false,
    )
    .goal = Some(Goal::Under(1.01));
    t.row(
        "mem.mirror_herd",
        &format!("{herd}: peak RSS"),
        "MiB",
        false,
    )
    .goal = Some(Goal::Under(64.0));
    t.row(
        "mem.mirror_herd_anon",
        &format!("{herd}: peak anonymous RSS (RssAnon every 10 ms)"),
        "MiB",
        false,
    );
    t.row(
        "s3.push",
        &format!("10. S3 (Garage x3): push {blob_label} blob (POST, PUT)"),
        "MB/s",
        true,
    )
    .goal = Some(Goal::Ratio(2.0));
    t.row(
        "s3.pull",
        "10. S3: pull it, following the redirect (limit: Garage GET)",
        "MB/s",
        true,
    )
    .goal = Some(Goal::Limit(1.0));
    t.row(
        "s3.images",
        &format!(
            "10. S3: {} small images by {} clients",
            s.images, s.image_clients
        ),
        "images/s",
        true,
    )
    .goal = Some(Goal::RatioNoErrors(3.0));
    for p in [Probe::HeadBlob, Probe::Manifest] {
        t.row(
            &format!("s3.{}.c16", p.key()),
            &format!(
                "10. S3: {} @16: rate{}",
                p.label(),
                if matches!(p, Probe::HeadBlob) {
                    " (redirects followed)"
                } else {
                    ""
                }
            ),
            "req/s",
            true,
        )
        .goal = Some(Goal::Ratio(10.0));
    }
    t.row(
        "s3.gc",
        &format!(
            "10. S3: GC pass after deleting the {} images and the big blob",
            s.images
        ),
        "s",
        false,
    );

    // 6 (idle). Measured before anything ran, after a short settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, &kind) in kinds.iter().enumerate() {
        let m = b.memory_mib(i, false);
        b.record("mem.idle", kind, m);
    }
    for (i, &kind) in kinds.iter().enumerate() {
        let ms = b.servers[i].first_start.as_secs_f64() * 1e3;
        b.table.record("startup.empty", kind, Some(ms), 0, None);
    }
    if want("startup") {
        // The empty-root start as often as the restart (best of them): one sample is
        // mostly the luck of the directory fsyncs on a busy disk. Throwaway servers on
        // roots of their own, in alternating order.
        for _ in 1..b.sizes.startups {
            for i in b.order() {
                let (kind, bin) = (b.servers[i].kind, b.servers[i].bin().to_path_buf());
                let r = Server::start(kind, &bin)
                    .await
                    .map(|s| s.first_start.as_secs_f64() * 1e3);
                b.record("startup.empty", kind, r);
            }
        }
    }

    // Limits of workloads 1 and 2, on the bytes to be pushed.
    println!("-- generating {blob_label} of random bytes");
    let window = 64;
    let total_pushes = b.sizes.push_reps * 2;
    let data = Bytes::from(random_bytes(
        b.sizes.blob + window * total_pushes,
        0x5EED ^ std::process::id() as u64,
    ));
    let blob_len = b.sizes.blob;
    let blob_at = |k: usize| data.slice(k * window..k * window + blob_len);
    let mut digests = Vec::new();
    let mut best_hash = Duration::MAX;
    for k in 0..total_pushes {
        let (d, took) = hash_rate(&blob_at(k));
        best_hash = best_hash.min(took);
        digests.push(d);
    }
    let hash_mbps = mbps(b.sizes.blob, best_hash);
    let scratch = tempfile::Builder::new().prefix("bench-limits-").tempdir()?;
    // Best of the repetitions, as for the registries: interference only slows a run.
    let (mut copy, mut lo): (Result<f64>, Result<f64>) =
        (Err("not run".into()), Err("not run".into()));
    for _ in 0..b.sizes.push_reps {
        let c = copy_with_fsync(&blob_at(0), scratch.path()).map(|d| mbps(b.sizes.blob, d));
        copy = match (copy, c) {
            (Ok(a), Ok(c)) => Ok(a.max(c)),
            (_, c) => c,
        };
        // The loopback stream is cheap and the noisiest of the three: try it thrice as often.
        for _ in 0..3 {
            let l = loopback(blob_at(0)).await.map(|d| mbps(b.sizes.blob, d));
            lo = match (lo, l) {
                (Ok(a), Ok(l)) => Ok(a.max(l)),
                (_, l) => l,
            };
        }
    }
    drop(scratch);
    let limit_row = |t: &mut Table, key: &str, v: Result<f64>| {
        let r = t.get(key);
        match v {
            Ok(v) => {
                r.limit = Some(v);
                r.limit_what = Some("measured".into());
            }
            Err(e) => eprintln!("  !! limit {key}: {e}"),
        }
    };
    limit_row(&mut b.table, "limit.sha256", Ok(hash_mbps));
    limit_row(&mut b.table, "limit.copy_fsync", copy);
    limit_row(&mut b.table, "limit.loopback", lo);
    let push_limit = b.table.get("limit.sha256").limit;
    for k in ["push.monolithic", "push.chunked"] {
        let r = b.table.get(k);
        r.limit = push_limit;
        r.limit_what = Some("sha256, one core".into());
    }
    let pull_limit = b.table.get("limit.loopback").limit;
    for k in ["pull.full", "pull.range"] {
        let r = b.table.get(k);
        r.limit = pull_limit;
        r.limit_what = Some("one loopback TCP stream".into());
    }

    if want("push") {
        // 1. Push.
        println!(
            "-- 1. push {blob_label}: monolithic and chunked, best of {}",
            b.sizes.push_reps
        );
        for i in b.order() {
            b.servers[i].reset_peak()?;
        }
        let cpu_before = b.cpu_seconds();
        let mut k = 0;
        for _ in 0..b.sizes.push_reps {
            // Not in the test suite's smoke run: its figures mean nothing, and dropping the
            // machine's page cache would slow the tests running beside it.
            settle(b.sizes.mode != "tiny");
            // One order per repetition, reversed for the second kind: each kind runs in both
            // orders over two repetitions. (Alternating per push gave monolithic always one
            // order and chunked always the other, and the position shows in the figures.)
            let order = b.order();
            for (n, (key, chunk)) in [
                ("push.monolithic", None),
                ("push.chunked", Some(b.sizes.chunk)),
            ]
            .into_iter()
            .enumerate()
            {
                let mut order = order.clone();
                if n == 1 {
                    order.reverse();
                }
                for i in order {
                    let (blob, d) = (blob_at(k), digests[k].clone());
                    let r = push_blob(b.servers[i].addr, "big/blob", blob, &d, chunk).await;
                    b.record(key, kinds[i], r.map(|t| mbps(b.sizes.blob, t)));
                }
                k += 1;
            }
        }
        let pushed_gib = (b.sizes.blob * b.sizes.push_reps * 2) as f64 / (1u64 << 30) as f64;
        b.record_cpu("cpu.push", cpu_before, pushed_gib);
        for (i, &kind) in kinds.iter().enumerate() {
            let m = b.memory_mib(i, true);
            b.record("mem.push", kind, m);
        }

        // 2. Pull the last repetition's monolithic blob (its pages are cached, as a blob just
        // pushed is; `settle` dropped the earlier ones) whole, then ranges spread across it.
        let pulled = 2 * (b.sizes.push_reps - 1);
        println!("-- 2. pull: whole blob and {} ranges", b.sizes.ranges);
        let verify = b.sizes.mode == "tiny";
        let cpu_before = b.cpu_seconds();
        for _ in 0..b.sizes.push_reps {
            for i in b.order() {
                let want = blob_at(pulled);
                let r = pull_blob(
                    b.servers[i].addr,
                    "big/blob",
                    &digests[pulled],
                    None,
                    b.sizes.blob as u64,
                    verify.then_some(want.as_ref()),
                )
                .await;
                b.record("pull.full", kinds[i], r.map(|t| mbps(b.sizes.blob, t)));
            }
        }
        for i in b.order() {
            let (mut took, mut moved, mut failed) = (Duration::ZERO, 0, None);
            for j in 0..b.sizes.ranges {
                let span = b.sizes.blob - b.sizes.range;
                let start =
                    span / b.sizes.ranges.max(2).saturating_sub(1) * j.min(b.sizes.ranges - 1);
                let start = start.min(span);
                let end = start + b.sizes.range - 1;
                let want = blob_at(pulled).slice(start..=end);
                match pull_blob(
                    b.servers[i].addr,
                    "big/blob",
                    &digests[pulled],
                    Some((start as u64, end as u64)),
                    b.sizes.range as u64,
                    verify.then_some(want.as_ref()),
                )
                .await
                {
                    Ok(t) => {
                        took += t;
                        moved += b.sizes.range;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            let errors = failed.is_some() as usize;
            b.table.record(
                "pull.range",
                kinds[i],
                (moved > 0).then(|| mbps(moved, took)),
                errors,
                failed.map(|e| e.to_string()),
            );
        }
        let moved = b.sizes.blob * b.sizes.push_reps + b.sizes.range * b.sizes.ranges;
        b.record_cpu("cpu.pull", cpu_before, moved as f64 / (1u64 << 30) as f64);
    }

    if want("images") {
        // 3. Small images.
        println!(
            "-- 3. {} small images by {} clients",
            b.sizes.images, b.sizes.image_clients
        );
        // Two rounds of different images, in alternating order, best of each, each begun on a
        // disk with nothing left to write back: this workload is bound by fsyncs, and the
        // server that went first paid for the writeback and discards of what ran before it
        // (with one round, swapping the two binaries moved the ratio from 0.8x to 1.7x).
        for round in 0..2u64 {
            let mut images = make_images(b.sizes.images, b.sizes.layer_max, 0xA11CE + round);
            for img in &mut images {
                img.tag = format!("{}-r{round}", img.tag);
            }
            let images = Arc::new(images);
            for i in b.order() {
                settle(false);
                let batch =
                    push_images(b.servers[i].addr, images.clone(), b.sizes.image_clients).await;
                let rate = batch.ok as f64 / secs(batch.elapsed);
                b.table.record(
                    "images",
                    kinds[i],
                    Some(rate),
                    batch.errors,
                    batch.first_error,
                );
            }
        }
    }

    // The image workloads 4 and 5 read and mount from.
    let mut hots = Vec::new();
    for i in 0..b.servers.len() {
        hots.push(Arc::new(
            seed_hot(b.servers[i].addr, b.sizes.tags, 0xB0B).await?,
        ));
    }

    if want("small") {
        // 4. Small requests at 1, 16 and 64 connections.
        println!(
            "-- 4. small requests, {:?} connections, {:?} each",
            b.sizes.levels, b.sizes.level_time
        );
        for i in b.order() {
            b.servers[i].reset_peak()?;
        }
        for p in Probe::all() {
            for c in b.sizes.levels {
                let key = format!("small.{}.c{c}", p.key());
                for i in b.order() {
                    let cpu_before = b.servers[i].cpu_seconds();
                    let client_before = own_cpu_seconds();
                    let idle_before = machine_idle();
                    let load =
                        hammer(b.servers[i].addr, p, hots[i].clone(), c, b.sizes.level_time).await;
                    let idle = match (idle_before, machine_idle()) {
                        (Ok((i0, t0)), Ok((i1, t1))) if t1 > t0 => {
                            Ok((i1 - i0) as f64 * 100.0 / (t1 - t0) as f64)
                        }
                        (Err(e), _) | (_, Err(e)) => Err(e),
                        _ => Err("no ticks counted".into()),
                    };
                    b.record(&format!("{key}.idle"), kinds[i], idle);
                    let client = match (client_before, own_cpu_seconds()) {
                        (Ok(a), Ok(z)) if load.ok > 0 => Ok((z - a) * 1e6 / load.ok as f64),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                        _ => Err("no request succeeded".into()),
                    };
                    b.record(&format!("{key}.client"), kinds[i], client);
                    let ok = load.ok > 0;
                    // User+sys time of the server process over the load, per answered request
                    // (clock ticks of 10 ms: thousands of requests make it exact enough).
                    let cpu = match (cpu_before, b.servers[i].cpu_seconds()) {
                        (Ok(a), Ok(z)) if ok => Ok((z - a) * 1e6 / load.ok as f64),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                        _ => Err("no request succeeded".into()),
                    };
                    b.record(&format!("{key}.cpu"), kinds[i], cpu);
                    b.table.record(
                        &format!("{key}.rps"),
                        kinds[i],
                        ok.then_some(load.rps),
                        load.errors,
                        load.first_error,
                    );
                    b.table.record(
                        &format!("{key}.p50"),
                        kinds[i],
                        ok.then_some(load.p50_us / 1e3),
                        0,
                        None,
                    );
                    b.table.record(
                        &format!("{key}.p99"),
                        kinds[i],
                        ok.then_some(load.p99_us / 1e3),
                        0,
                        None,
                    );
                }
            }
        }
        for (i, &kind) in kinds.iter().enumerate() {
            let m = b.memory_mib(i, true);
            b.record("mem.small", kind, m);
        }
    }

    if want("catalog") {
        // 5. The catalog over many repositories.
        println!(
            "-- 5. seeding {} repositories, then listing the catalog",
            b.sizes.repos
        );
        for i in b.order() {
            let batch = seed_repos(
                b.servers[i].addr,
                hots[i].clone(),
                b.sizes.repos,
                b.sizes.seed_clients,
            )
            .await;
            let rate = batch.ok as f64 / secs(batch.elapsed);
            b.table.record(
                "catalog.seed",
                kinds[i],
                Some(rate),
                batch.errors,
                batch.first_error,
            );
        }
        // Every repository holding a manifest: the seeded ones, the 16 of workload 3 and hot/app
        // (Distribution also lists big/blob, which holds only a blob).
        let images_pushed = if want("images") {
            b.sizes.images.min(16)
        } else {
            0
        };
        let expected = b.sizes.repos + images_pushed + 1;
        let max_pages = expected / 100 + 10;
        for _ in 0..2 {
            for (key, n) in [("catalog.full", None), ("catalog.paged", Some(100))] {
                for i in b.order() {
                    let r = list_catalog(b.servers[i].addr, n, max_pages)
                        .await
                        .and_then(|(t, count, _)| {
                            if count < expected {
                                Err(format!(
                                    "catalog listed {count} repositories, {expected} exist"
                                )
                                .into())
                            } else {
                                Ok(t.as_secs_f64() * 1e3)
                            }
                        });
                    b.record(key, kinds[i], r);
                }
            }
            for i in b.order() {
                let r = first_page(b.servers[i].addr).await;
                b.record("catalog.first_page", kinds[i], r);
            }
        }
        // The web UI's pages over the same repositories (Dockyard only).
        let last = format!("cat/r{:05}", b.sizes.repos / 2);
        let filter = format!("r{:04}", (b.sizes.repos / 10).saturating_sub(1));
        let pages = [
            ("ui.list", "/ui/".to_string(), "cat/r00000".to_string()),
            (
                "ui.filter",
                format!("/ui/?q={filter}"),
                format!("cat/{filter}"),
            ),
            ("ui.tags", format!("/ui/r/{last}"), "v1".to_string()),
        ];
        for (i, &kind) in kinds.iter().enumerate() {
            if kind != Kind::Dockyard {
                continue;
            }
            for (key, path, needle) in &pages {
                let r = page_latency(b.servers[i].addr, path, 200, needle).await;
                let (p50, p99) = match r {
                    Ok((a, b)) => (Ok(a), Ok(b)),
                    Err(e) => (Err(e.to_string().into()), Err(e)),
                };
                b.record(&format!("{key}.p50"), kind, p50);
                b.record(&format!("{key}.p99"), kind, p99);
            }
        }
    }

    if want("portability") {
        // 8. The CLI's portability commands, on roots of their own (no server of the table).
        println!(
            "-- 8. import-distribution of {} repositories and backups, against skopeo sync and cp -a",
            b.sizes.port_repos
        );
        let (bin, dist) = (bin.clone(), dist_bin.clone());
        let (n, layer, big) = (
            b.sizes.port_repos,
            b.sizes.port_layer,
            b.sizes.port_big_layer,
        );
        let figures = tokio::task::spawn_blocking(move || {
            portability::run(&bin, dist.as_deref(), n, layer, big).map_err(|e| e.to_string())
        })
        .await?;
        match figures {
            Ok(f) => {
                let mb = f.root_bytes as f64 / 1e6;
                let t = &mut b.table;
                t.record(
                    "portability.import",
                    Kind::Dockyard,
                    Some(f.import_s),
                    0,
                    None,
                );
                match f.skopeo_s {
                    Some(Ok(s)) => {
                        t.record("portability.import", Kind::Distribution, Some(s), 0, None)
                    }
                    Some(Err(e)) => t.record(
                        "portability.import",
                        Kind::Distribution,
                        None,
                        1,
                        Some(e.to_string()),
                    ),
                    None => {}
                }
                for (key, backup, cp, what) in [
                    (
                        "portability.backup_same",
                        f.backup_same_s,
                        f.cp_same_s,
                        "cp -a + sync, same filesystem",
                    ),
                    (
                        "portability.backup_copy",
                        f.backup_copy_s,
                        f.cp_copy_s,
                        "cp -a to /dev/shm",
                    ),
                ] {
                    t.record(key, Kind::Dockyard, Some(mb / backup), 0, None);
                    let r = t.get(key);
                    r.limit = Some(mb / cp);
                    r.limit_what = Some(format!("{what}, {mb:.0} MB"));
                }
                t.record(
                    "portability.backup_again",
                    Kind::Dockyard,
                    Some(f.backup_again_s),
                    0,
                    None,
                );
                println!("   ({} repositories, root {mb:.0} MB)", f.repos);
            }
            Err(e) => b
                .table
                .record("portability.import", Kind::Dockyard, None, 1, Some(e)),
        }
    }

    if want("mirror") {
        // 9. The pull-through mirror, on registries of its own (none of the table's servers).
        let layers = b.sizes.mirror_layers;
        println!(
            "-- 9. pull-through mirror: a {} image via Dockyard's mirror, Distribution's proxy and straight from the upstream",
            b.sizes.size_label(layers.iter().sum())
        );
        match &dist_bin {
            None => eprintln!(
                "  !!! docker-registry is not installed: no upstream to mirror, workload 9 not run"
            ),
            Some(dist) => {
                match mirror::run(
                    &bin,
                    dist,
                    layers,
                    b.sizes.mirror_reps,
                    b.sizes.mirror_clients,
                )
                .await
                {
                    Ok(f) => record_mirror(&mut b.table, f),
                    Err(e) => {
                        b.table
                            .record("mirror.cold", Kind::Dockyard, None, 1, Some(e.to_string()))
                    }
                }
            }
        }
    }

    if want("s3") {
        // 10. Blobs on S3: a pair of registries of their own on the Garage cluster.
        match s3::garage() {
            None => {
                eprintln!(
                    "\n{}\n!!! NO S3 WORKLOAD: no Garage cluster (run `bash .ci/garage.sh start`;\n\
                     !!! its env file is read from DOCKYARD_S3_ENV or /tmp/dockyard-garage/env).\n{}\n",
                    "!".repeat(78),
                    "!".repeat(78)
                );
            }
            Some(g) => {
                let base = args.baseline_bin.as_deref();
                s3_workload(&mut b, &bin, base, dist_bin.as_deref(), &g).await?
            }
        }
    }

    if want("startup") {
        // 7. Start-up with everything stored so far.
        println!("-- 7. restarting each registry {} times", b.sizes.startups);
        for _ in 0..b.sizes.startups {
            for i in b.order() {
                let r = b.servers[i].restart().await.map(|d| d.as_secs_f64() * 1e3);
                b.record("startup.full", kinds[i], r);
            }
        }
    }

    let disk: Vec<String> = b
        .servers
        .iter()
        .map(|s| {
            format!(
                "{} {:.1} GiB",
                s.kind.name(),
                s.disk_usage() as f64 / (1u64 << 30) as f64
            )
        })
        .collect();
    for s in &mut b.servers {
        let _ = s.stop().await;
    }

    // The table.
    machine.loadavg_end = loadavg();
    let present = |k: Kind| kinds.contains(&k);
    for r in &mut b.table.rows {
        r.finish();
    }
    println!();
    println!(
        "== {} run on {} x {} ({} GiB RAM, sha_ni: {}), load avg {} -> {}, {:.0} s, disk used: {}",
        b.sizes.mode,
        machine.nproc,
        machine.cpu,
        fmt_num(machine.mem_total_gib),
        machine.sha_ni,
        machine.loadavg_start,
        machine.loadavg_end,
        started.elapsed().as_secs_f64(),
        disk.join(", ")
    );
    if b.sizes.mode != "full" {
        println!(
            "   ({} mode: smaller sizes and counts than the issue's, labelled in each row)",
            b.sizes.mode
        );
    }
    println!("   ratio: how many times better Dockyard is (> 1: Dockyard ahead). Figures: best of the repetitions.");
    let w = b
        .table
        .rows
        .iter()
        .map(|r| r.workload.len() + r.unit.len() + 3)
        .max()
        .unwrap_or(40);
    let with_base = present(Kind::Baseline);
    let base_head = if with_base {
        format!("  {:>14}  {:>7}", "Baseline", "vs base")
    } else {
        String::new()
    };
    println!(
        "{:<w$}  {:>14}  {:>14}  {:>7}{base_head}  {:>10}  target",
        "workload", "Dockyard", "Distribution", "ratio", "limit"
    );
    println!("{}", "-".repeat(w + 72 + base_head.len()));
    let (mut met, mut missed) = (0, 0);
    for r in &b.table.rows {
        let ran = r.dockyard.value.is_some() || r.dockyard.errors > 0 || r.limit.is_some();
        if !ran {
            continue; // a workload left out with --only
        }
        let name = format!("{} ({})", r.workload, r.unit);
        let limit = r.limit.map(fmt_num).unwrap_or_default();
        let is_limit = r.key.starts_with("limit.");
        let (d, dist) = if is_limit {
            (String::new(), String::new())
        } else {
            (
                fmt_cell(&r.dockyard, present(Kind::Dockyard)),
                fmt_cell(&r.distribution, present(Kind::Distribution)),
            )
        };
        let target = match (&r.target, r.target_met) {
            (Some(t), Some(true)) => {
                met += 1;
                format!("{t}: met")
            }
            (Some(t), Some(false)) => {
                missed += 1;
                format!("{t}: MISSED")
            }
            (Some(t), None) => format!("{t}: n/a"),
            _ => String::new(),
        };
        let times = |x: Option<f64>| x.map(|x| format!("{}x", fmt_num(x))).unwrap_or_default();
        let base = if !with_base {
            String::new()
        } else if is_limit {
            format!("  {:>14}  {:>7}", "", "")
        } else {
            format!(
                "  {:>14}  {:>7}",
                fmt_cell(&r.baseline, true),
                times(r.vs_baseline)
            )
        };
        println!(
            "{name:<w$}  {d:>14}  {dist:>14}  {:>7}{base}  {limit:>10}  {target}",
            times(r.ratio)
        );
    }
    println!("   targets: {met} met, {missed} missed");
    let errors: usize = b
        .table
        .rows
        .iter()
        .map(|r| r.dockyard.errors + r.distribution.errors + r.baseline.errors)
        .sum();
    if !present(Kind::Distribution) {
        eprintln!("\n!!! NO COMPARISON: Distribution was not run; ratios are empty.\n");
    }
    if errors > 0 {
        eprintln!("!!! {errors} failed requests or runs (not counted in any figure); see the `!!` lines above");
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "mode": b.sizes.mode,
            "machine": machine,
            "distribution": present(Kind::Distribution),
            "baseline": args.baseline_bin,
            "seconds": started.elapsed().as_secs_f64(),
            "rows": b.table.rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&json)?)?;
        println!("   JSON: {}", path.display());
    }
    // Dropping the servers removes their roots; on a filesystem mounted with `discard`,
    // unlinking gigabytes can take a while, so say what the wait is.
    eprintln!("-- removing the temporary roots ({})", disk.join(", "));
    drop(b);
    Ok(errors == 0)
}

/// Workload 9's figures into its rows. Times become MB/s for the warm pull (bytes of the
/// image per second), times of the upstream's bytes for the herd.
fn record_mirror(t: &mut Table, f: mirror::Figures) {
    fn put(t: &mut Table, key: &str, kind: Kind, rs: Vec<Result<f64>>, map: impl Fn(f64) -> f64) {
        for r in rs {
            match r {
                Ok(v) => t.record(key, kind, Some(map(v)), 0, None),
                Err(e) => t.record(key, kind, None, 1, Some(e.to_string())),
            }
        }
    }
    let mb = f.image_bytes as f64 / 1e6;
    let same = |v: f64| v;
    let rate = |v: f64| mb / v;
    let cold_mirror: Vec<Result<f64>> = f
        .cold_mirror
        .iter()
        .map(|r| r.as_ref().map(|v| *v).map_err(|e| e.to_string().into()))
        .collect();
    put(t, "mirror.cold", Kind::Dockyard, f.cold_mirror, same);
    put(t, "mirror.cold", Kind::Distribution, f.cold_direct, same);
    put(t, "mirror.cold_proxy", Kind::Dockyard, cold_mirror, same);
    put(
        t,
        "mirror.cold_proxy",
        Kind::Distribution,
        f.cold_proxy,
        same,
    );
    put(t, "mirror.warm", Kind::Dockyard, f.warm_mirror, rate);
    put(t, "mirror.warm", Kind::Distribution, f.warm_proxy, rate);
    let [hm, hp] = f.herd;
    for (kind, h) in [(Kind::Dockyard, hm), (Kind::Distribution, hp)] {
        match h.wall {
            Ok(v) => t.record("mirror.herd", kind, Some(v), h.errors, h.first_error),
            Err(e) => t.record(
                "mirror.herd",
                kind,
                None,
                h.errors.max(1),
                Some(h.first_error.unwrap_or_else(|| e.to_string())),
            ),
        }
        let times = h.upstream_bytes.map(|b| b as f64 / f.image_bytes as f64);
        put(t, "mirror.herd_upstream", kind, vec![times], same);
        put(t, "mem.mirror_herd", kind, vec![h.peak_rss_mib], same);
        put(t, "mem.mirror_herd_anon", kind, vec![h.peak_anon_mib], same);
    }
    let r = t.get("mirror.herd_upstream");
    r.limit = Some(1.0);
    r.limit_what = Some(format!("the image once, {mb:.0} MB"));
}

/// Workload 10 on the Garage cluster `g`; records into `b.table`.
/// With `base`, the baseline build runs beside them, on a prefix of its own.
async fn s3_workload(
    b: &mut Bench,
    bin: &Path,
    base: Option<&Path>,
    dist: Option<&Path>,
    g: &s3::Garage,
) -> Result<()> {
    let prefix = s3::run_prefix();
    println!("-- 10. S3: Dockyard (backend s3) and Distribution (s3 driver) on {} bucket {}, prefix {prefix}", g.endpoint, g.bucket);
    let secrets = tempfile::Builder::new().prefix("bench-s3-").tempdir()?;
    let mut servers =
        vec![s3::start_dockyard(Kind::Dockyard, bin, g, &prefix, secrets.path()).await?];
    if let Some(base) = base {
        servers.push(s3::start_dockyard(Kind::Baseline, base, g, &prefix, secrets.path()).await?);
    }
    if let Some(d) = dist {
        servers.push(s3::start_distribution(d, g, &prefix).await?);
    }
    let sz = &b.sizes;
    let (blob_len, images_n, clients, level_time, reps) = (
        sz.blob,
        sz.images,
        sz.image_clients,
        sz.level_time,
        // Two repetitions at full size, in alternating order, best of each: each pushed GiB
        // is three on the cluster's one disk, and a single sample with Dockyard always first
        // varied 1.7x-3.6x between runs. (Smaller sizes keep one.)
        if sz.blob >= 1 << 30 { 2 } else { 1 },
    );
    println!("   push and pull of {}", sz.size_label(blob_len));
    let mut big = Vec::new();
    let mut locations = Vec::new();
    for rep in 0..reps {
        // New bytes each repetition: an object already in the bucket would make a push free.
        let blob = Bytes::from(random_bytes(
            blob_len,
            0x53_33 ^ ((rep as u64) << 32) ^ std::process::id() as u64,
        ));
        let digest = sha256(&blob);
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..servers.len()).collect()
        } else {
            (0..servers.len()).rev().collect()
        };
        for &i in &order {
            // A fresh repository each time, so the registry cannot answer "already there".
            let repo = format!("s3big/r{rep}");
            let (blob, d) = (blob.clone(), digest.clone());
            let r = s3::push_big(servers[i].addr, &repo, blob, &d).await;
            b.record("s3.push", servers[i].kind, r.map(|t| mbps(blob_len, t)));
        }
        for &i in &order {
            let repo = format!("s3big/r{rep}");
            big.push((i, repo.clone(), digest.clone()));
            let r = s3::pull_following(servers[i].addr, &repo, &digest, blob_len as u64).await;
            let r = r.map(|(t, loc)| {
                if servers[i].kind == Kind::Dockyard {
                    locations.extend(loc);
                }
                mbps(blob_len, t)
            });
            b.record("s3.pull", servers[i].kind, r);
        }
    }
    // The push's limit: Garage's own multipart PUT of the same bytes, best of two.
    let mut put_limit: Option<f64> = None;
    for _ in 0..2 {
        let blob = Bytes::from(random_bytes(
            blob_len,
            0x0050_5554 ^ std::process::id() as u64,
        ));
        match s3::store_put(g, &prefix, blob).await {
            Ok(t) => put_limit = Some(put_limit.unwrap_or(0.0).max(mbps(blob_len, t))),
            Err(e) => eprintln!("  !! limit s3.push: {e}"),
        }
    }
    let row = b.table.get("s3.push");
    row.limit = put_limit;
    row.limit_what = Some("Garage multipart PUT of the same bytes".into());
    // The limit: Garage's own GET of the object Dockyard redirected to, best of as many.
    let mut limit: Option<f64> = None;
    for loc in &locations {
        match s3::store_get(loc, blob_len as u64).await {
            Ok(t) => limit = Some(limit.unwrap_or(0.0).max(mbps(blob_len, t))),
            Err(e) => eprintln!("  !! limit s3.pull: {e}"),
        }
    }
    if locations.is_empty() {
        eprintln!("  !! Dockyard answered no redirect: no Garage GET limit");
    }
    let row = b.table.get("s3.pull");
    row.limit = limit;
    row.limit_what = Some("Garage GET of the same object".into());

    println!("   {images_n} small images by {clients} clients");
    let images = Arc::new(make_images(images_n, b.sizes.layer_max, 0x5301));
    for s in &servers {
        let batch = push_images(s.addr, images.clone(), clients).await;
        let rate = batch.ok as f64 / secs(batch.elapsed);
        b.table.record(
            "s3.images",
            s.kind,
            Some(rate),
            batch.errors,
            batch.first_error,
        );
    }

    println!("   HEAD blob and GET manifest at 16 connections, {level_time:?} each");
    let mut hots = Vec::new();
    for s in &servers {
        hots.push(Arc::new(seed_hot(s.addr, b.sizes.tags, 0x5302).await?));
    }
    for p in [Probe::HeadBlob, Probe::Manifest] {
        for i in 0..servers.len() {
            let load = match p {
                // Distribution's s3 driver redirects HEAD to the store: followed, as a client
                // does.
                Probe::HeadBlob => {
                    s3::hammer_head(servers[i].addr, hots[i].clone(), 16, level_time).await
                }
                _ => hammer(servers[i].addr, p, hots[i].clone(), 16, level_time).await,
            };
            let ok = load.ok > 0;
            b.table.record(
                &format!("s3.{}.c16", p.key()),
                servers[i].kind,
                ok.then_some(load.rps),
                load.errors,
                load.first_error,
            );
        }
    }

    println!("   GC pass after deleting the {images_n} small images and the big blob");
    let manifests: Vec<(String, Bytes)> = images
        .iter()
        .map(|im| (im.repo.clone(), im.manifest.clone()))
        .collect();
    for (i, s) in servers.iter().enumerate() {
        let mut r = s3::delete_manifests(s.addr, &manifests).await;
        for (_, repo, d) in big.iter().filter(|(j, _, _)| *j == i) {
            if r.is_ok() {
                r = s3::delete_blob(s.addr, repo, d).await;
            }
        }
        if let Err(e) = r {
            b.table
                .record("s3.gc", s.kind, None, 1, Some(e.to_string()));
        }
    }
    // Dockyard keeps an unreferenced blob for [gc] grace (6 s here) after its count fell.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for s in servers.iter_mut() {
        let cli = match s.kind {
            Kind::Distribution => dist.unwrap_or(bin).to_path_buf(),
            Kind::Baseline => base.unwrap_or(bin).to_path_buf(),
            _ => bin.to_path_buf(),
        };
        match s3::gc_pass(s, &cli).await {
            Ok((took, last)) => {
                println!("   {} gc: {took:.2} s: {last}", s.kind.name());
                b.table.record("s3.gc", s.kind, Some(took), 0, None);
            }
            Err(e) => b
                .table
                .record("s3.gc", s.kind, None, 1, Some(e.to_string())),
        }
    }
    for s in servers.iter_mut() {
        let _ = s.stop().await;
    }
    drop(secrets);
    Ok(())
}

async fn first_page(addr: std::net::SocketAddr) -> Result<f64> {
    let mut c = client::Conn::connect(addr).await?;
    let t = Instant::now();
    c.get("/v2/_catalog?n=100", &[])
        .await?
        .expect(200, "GET _catalog?n=100")?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
