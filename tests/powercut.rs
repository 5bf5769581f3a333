//! Power cuts, not just SIGKILL: the server runs on a FUSE filesystem (`powercut_fs`) that,
//! when the power is cut, forgets every byte not fsynced and every directory change not
//! followed by an fsync of the directory, redb's own file included. The same pushes,
//! deletes and GC passes as `crash.rs` run against it, and after each cut and restart
//! everything acknowledged must be there (or gone) exactly, and fsck may find only what the
//! next GC removes. A build that skips one fsync (`DOCKYARD_TEST_SKIP_FSYNC`, test-only)
//! must fail the same check, which shows the filesystem really loses what it should.
//!
//! `cargo test` runs a few rounds; `examples/powercut.rs` runs as many as you ask for.

use std::path::Path;
use std::time::Instant;

use crate::crash::{chaos, Summary};
use crate::powercut_fs::{fuse_available, PowerCutFs};

/// Rounds in `cargo test`; `DOCKYARD_POWERCUT_ROUNDS` asks for more (the example sets it).
const ROUNDS: usize = 6;

fn rounds() -> usize {
    std::env::var("DOCKYARD_POWERCUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS)
}

/// Whether FUSE can be used here: a loud skip outside CI, a failure in CI.
fn require_fuse() -> bool {
    match fuse_available() {
        Ok(()) => true,
        Err(why) if crate::util::in_ci() => {
            panic!("the power-cut test needs FUSE in CI: {why} (.ci/run installs fuse3)")
        }
        Err(why) => {
            eprintln!("\n!!!!! SKIPPED: the power-cut test needs FUSE: {why} !!!!!\n");
            false
        }
    }
}

/// Mounts a power-cut filesystem in `dir/mnt` and makes a durable `data` directory in it.
fn mount(dir: &Path) -> (PowerCutFs, std::path::PathBuf) {
    let fs = PowerCutFs::mount(&dir.join("backing"), &dir.join("mnt")).expect("mount FUSE");
    let root = fs.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::File::open(fs.path()).unwrap().sync_all().unwrap();
    (fs, root)
}

/// Runs `rounds` rounds of chaos on a power-cut filesystem with the server's extra `env`.
async fn run(rounds: usize, env: &'static [(&'static str, &'static str)]) -> (Summary, PowerCutFs) {
    let dir = tempfile::tempdir().unwrap();
    let (mut fs, root) = mount(dir.path());
    let s = {
        let fs = &mut fs;
        chaos(rounds, dir.path(), &root, env, move |p| {
            // The power goes first, then the process: nothing it does after the cut lands.
            fs.cut();
            drop(p);
            fs.restart().expect("power back on");
        })
        .await
    };
    // Unmount before the temporary directory goes.
    let out = (s, fs);
    drop(dir);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_during_pushes_deletes_and_gc_lose_nothing_acknowledged() {
    if !require_fuse() {
        return;
    }
    let started = Instant::now();
    let n = rounds();
    let (s, fs) = run(n, &[]).await;
    let lost = fs.lost.clone();
    let (fsyncs, dir_fsyncs) = fs.fsyncs();
    drop(fs);
    eprintln!(
        "powercut: {n} power cuts (after {:?}), {} pushes, {} deletes and {} GC passes \
         acknowledged, {} tags at the end; {fsyncs} file and {dir_fsyncs} directory fsyncs; \
         lost per cut (entries, files): {:?}; {} leftovers for gc (at most {} after one \
         cut); {:.1?}",
        s.crashes,
        s.pushes,
        s.deletes,
        s.gc_passes,
        s.tags,
        lost.iter()
            .map(|l| (l.entries, l.files))
            .collect::<Vec<_>>(),
        s.leftovers,
        s.most_leftovers,
        started.elapsed()
    );
    assert!(s.pushes >= n, "every round acknowledges a push");
    // A cut may leave what was in flight: the two pushers' upload or promoted blob whose
    // row did not commit, the stalled upload. Before the GC fsynced the shard directories of
    // its unlinks, every pass's deleted files came back at each cut, piling up (3,872
    // leftovers over 40 cuts, 97 a cut on average and growing; with the fsync, 4 in all).
    assert!(
        s.most_leftovers <= 4,
        "one cut left {} leftovers (in all {}): deleted files came back?",
        s.most_leftovers,
        s.leftovers
    );
    assert!(
        lost.iter().any(|l| l.entries > 0 || l.files > 0),
        "the cuts threw something away (else they tested nothing)"
    );
}

/// The same rounds with the fsync that makes a blob's rename durable skipped: an
/// acknowledged blob must go missing, and the check must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_without_the_blob_directory_fsync_fails_the_power_cut_check() {
    if !require_fuse() {
        return;
    }
    let outcome = tokio::spawn(async {
        let _ = run(3, &[("DOCKYARD_TEST_SKIP_FSYNC", "blob-dir")]).await;
    })
    .await;
    let err = outcome.expect_err("the power-cut check passed without the blob directory fsync");
    let message = err
        .into_panic()
        .downcast::<String>()
        .map(|s| *s)
        .unwrap_or_default();
    eprintln!("powercut without the fsync failed as it must: {message}");
    assert!(
        message.contains("blob") || message.contains("fsck found"),
        "it failed for another reason: {message}"
    );
}
