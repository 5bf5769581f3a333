//! The side-by-side benchmark (`examples/bench`) builds, and a toy-sized run of every
//! workload completes without a failed request. Its timings decide nothing here.

use std::path::PathBuf;
use std::process::Command;

/// The bench example cargo built for this test run (`cargo test` builds examples), or a
/// fresh build of it when only this test binary was built.
fn bench_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/main-<hash> → target/<profile>/examples/bench
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let bench = profile_dir.join("examples").join("bench");
    if !bench.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        crate::util::run(Command::new(cargo).args(["build", "--example", "bench"]));
    }
    bench
}

#[test]
fn the_benchmark_runs_every_workload_at_tiny_size() {
    // Workload 10 lists the Garage cluster's objects: not while a test has a node down.
    let _garage = crate::util::garage_share();
    let json = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(bench_binary())
        .arg("--tiny")
        .arg("--json")
        .arg(json.path())
        .arg("--dockyard-bin")
        .arg(env!("CARGO_BIN_EXE_dockyard"))
        .output()
        .expect("run the bench example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench --tiny failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(json.path()).unwrap()).unwrap();
    let with_distribution = report["distribution"].as_bool().unwrap();
    if !with_distribution {
        // The side-by-side half is the point of the benchmark: CI installs the reference.
        assert!(
            !crate::util::in_ci(),
            "CI must run the benchmark against Distribution (.ci/run installs docker-registry)"
        );
        eprintln!("\n!!!!! docker-registry is not installed: the tiny benchmark ran Dockyard only !!!!!\n");
    }
    let rows = report["rows"].as_array().unwrap();
    let has_skopeo = Command::new("skopeo").arg("--version").output().is_ok();
    if !has_skopeo {
        assert!(!crate::util::in_ci(), "CI must install skopeo (.ci/run)");
        eprintln!("\n!!!!! skopeo is not installed: workload 8 ran without its skopeo sync reference !!!!!\n");
    }
    for workload in [
        "push.monolithic",
        "push.chunked",
        "pull.full",
        "pull.range",
        "images",
        "small.manifest.c64.rps",
        "small.head_blob.c16.p99",
        "small.tags.c1.rps",
        "catalog.full",
        "catalog.paged",
        "mem.idle",
        "mem.push",
        "mem.small",
        "startup.full",
        "portability.import",
    ] {
        let row = rows
            .iter()
            .find(|r| r["key"] == workload)
            .unwrap_or_else(|| panic!("no row {workload} in the report"));
        let mut columns = vec!["dockyard"];
        // Workload 8's reference column is skopeo sync (out of Distribution): it needs skopeo.
        let reference = with_distribution && (workload != "portability.import" || has_skopeo);
        if reference {
            columns.push("distribution");
        }
        for c in columns {
            assert!(
                row[c]["value"].as_f64().is_some_and(|v| v > 0.0),
                "{workload}: no {c} figure in {row}"
            );
            assert_eq!(row[c]["errors"], 0, "{workload}: {c} had errors: {row}");
        }
        if reference {
            assert!(row["ratio"].is_number(), "{workload}: no ratio in {row}");
        }
    }
    // Workload 8's backups are measured against `cp -a` of the same root, in the limit column.
    for key in [
        "portability.backup_same",
        "portability.backup_copy",
        "portability.backup_again",
    ] {
        let row = rows.iter().find(|r| r["key"] == key).unwrap();
        assert!(
            row["dockyard"]["value"].as_f64().is_some_and(|v| v > 0.0),
            "{row}"
        );
        assert_eq!(row["dockyard"]["errors"], 0, "{row}");
        if key != "portability.backup_again" {
            assert!(row["limit"].as_f64().is_some_and(|v| v > 0.0), "{row}");
        }
    }
    // Workload 9 mirrors a Distribution upstream: without docker-registry it does not run.
    if with_distribution {
        for key in [
            "mirror.cold",
            "mirror.cold_proxy",
            "mirror.warm",
            "mirror.herd",
            "mirror.herd_upstream",
            "mem.mirror_herd",
        ] {
            let row = rows
                .iter()
                .find(|r| r["key"] == key)
                .unwrap_or_else(|| panic!("no row {key} in the report"));
            for c in ["dockyard", "distribution"] {
                assert!(
                    row[c]["value"].as_f64().is_some_and(|v| v > 0.0),
                    "{key}: no {c} figure in {row}"
                );
                assert_eq!(row[c]["errors"], 0, "{key}: {c} had errors: {row}");
            }
        }
        // Not a timing: 50 clients pulling one uncached image made the mirror fetch each
        // blob from the upstream once (counted in the upstream's access log).
        let herd = rows
            .iter()
            .find(|r| r["key"] == "mirror.herd_upstream")
            .unwrap();
        let times = herd["dockyard"]["value"].as_f64().unwrap();
        assert!(
            (0.99..1.01).contains(&times),
            "the upstream sent the herd's image {times} times through the mirror: {herd}"
        );
    }
    // Workload 10 runs on the Garage cluster of .ci/garage.sh, side by side with Distribution's
    // s3 driver on the same bucket.
    if crate::util::require_s3().is_some() {
        for key in [
            "s3.push",
            "s3.pull",
            "s3.images",
            "s3.head_blob.c16",
            "s3.manifest.c16",
            "s3.gc",
        ] {
            let row = rows
                .iter()
                .find(|r| r["key"] == key)
                .unwrap_or_else(|| panic!("no row {key} in the report"));
            let mut columns = vec!["dockyard"];
            if with_distribution {
                columns.push("distribution");
            }
            for c in columns {
                assert!(
                    row[c]["value"].as_f64().is_some_and(|v| v > 0.0),
                    "{key}: no {c} figure in {row}"
                );
                assert_eq!(row[c]["errors"], 0, "{key}: {c} had errors: {row}");
            }
        }
        let pull = rows.iter().find(|r| r["key"] == "s3.pull").unwrap();
        assert!(
            pull["limit"].as_f64().is_some_and(|v| v > 0.0),
            "Garage's own GET of the object: {pull}"
        );
    }
    for limit in ["limit.sha256", "limit.copy_fsync", "limit.loopback"] {
        let row = rows.iter().find(|r| r["key"] == limit).unwrap();
        assert!(row["limit"].as_f64().is_some_and(|v| v > 0.0), "{row}");
    }
    assert!(
        stdout.contains("workload"),
        "the table is printed:\n{stdout}"
    );
}
