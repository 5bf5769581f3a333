//! Power cuts at scale: the power-cut check of `tests/powercut.rs` (a FUSE filesystem that
//! forgets what was not fsynced, under pushes, deletes and GC passes) with as many rounds as
//! you ask for, instead of the few `cargo test` runs. Needs root and `/dev/fuse`.
//!
//! ```sh
//! cargo run --example powercut -- 200      # 200 power cuts (default 100)
//! ```
//!
//! It runs the test itself (through `cargo test`), so the check is the same code: a round
//! count is the only difference. Each round is about half a second on an idle machine.

use std::process::{exit, Command};

const TEST: &str = "powercut::power_cuts_during_pushes_deletes_and_gc_lose_nothing_acknowledged";

fn main() {
    let rounds = std::env::args().nth(1).unwrap_or_else(|| "100".to_string());
    if rounds.parse::<usize>().map_or(true, |n| n == 0) {
        eprintln!("powercut: the round count must be a positive number, not {rounds:?}");
        exit(2);
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "test",
            "--test",
            "main",
            TEST,
            "--",
            "--exact",
            "--nocapture",
        ])
        .env("DOCKYARD_POWERCUT_ROUNDS", &rounds)
        .status()
        .unwrap_or_else(|e| {
            eprintln!("powercut: cannot run cargo: {e}");
            exit(1)
        });
    exit(status.code().unwrap_or(1));
}
