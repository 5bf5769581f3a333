//! `dockyard ls`, `show`, `rm` and `du --json`: through a running server (its admin socket)
//! and on a stopped root, with the same output.

use std::time::{Duration, Instant};

use crate::util::*;

fn cli(root: &str, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--root", root]);
    dockyard(&all)
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Runs the checks against whatever serves (or does not serve) `root`: demo/app holds v1
/// and v2 (different images), demo/other holds latest.
fn check_views(root: &str, v1: &str) {
    let (ok, out, err) = cli(root, &["ls"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("demo/app") && out.contains("demo/other"),
        "{out}"
    );
    assert!(out.contains("v1, v2"), "tags listed: {out}");
    let (ok, out, _) = cli(root, &["ls", "other"]);
    assert!(
        ok && out.contains("demo/other") && !out.contains("demo/app"),
        "{out}"
    );
    let (ok, out, _) = cli(root, &["ls", "demo/*", "--json"]);
    assert!(ok);
    let list = json(&out);
    assert_eq!(list["total"], 2);
    let app = &list["repos"][0];
    assert_eq!(app["name"], "demo/app");
    assert_eq!(app["tags"], serde_json::json!(["v1", "v2"]));
    assert!(app["unique_bytes"].as_u64().unwrap() > 3000, "{app}");

    let (ok, out, err) = cli(root, &["show", "demo/app:v1"]);
    assert!(ok, "{err}");
    assert!(out.contains(v1) && out.contains("layers (1,"), "{out}");
    let (ok, out, _) = cli(root, &["show", &format!("demo/app@{v1}"), "--json"]);
    assert!(ok);
    let m = json(&out);
    assert_eq!(m["digest"], v1);
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["config"]["platform"], "linux/amd64");
    let (ok, out, _) = cli(root, &["show", "demo/app", "--json"]);
    assert!(ok);
    assert_eq!(json(&out)["tags"].as_array().unwrap().len(), 2);
    let (ok, _, err) = cli(root, &["show", "demo/app:nope"]);
    assert!(!ok && err.contains("no such manifest"), "{err}");
    let (ok, _, err) = cli(root, &["show", "Bad Name"]);
    assert!(!ok && err.lines().count() == 1, "{err}");

    let (ok, out, _) = cli(root, &["du", "--json"]);
    assert!(ok);
    let du = json(&out);
    assert!(du["blob_bytes"].as_u64().unwrap() > 0);
    assert_eq!(du["repos"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_show_rm_through_a_running_server_and_on_a_stopped_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_string_lossy().into_owned();
    let conf = tempfile::tempdir().unwrap();
    let config = write_config(
        conf.path(),
        "registry.toml",
        "[[policy]]\npattern = \"demo/**\"\nquota = \"1MiB\"\n",
    );
    let p = Process::spawn_with_config(dir.path(), &config);
    let c = client();
    let (_, v1) = push_image(&c, &p, "demo/app", "v1", &[&random_bytes(4000)]).await;
    push_image(&c, &p, "demo/app", "v2", &[&random_bytes(4000)]).await;
    push_image(&c, &p, "demo/other", "latest", &[&random_bytes(100)]).await;

    // A pull is recorded (in the background, off the request's path).
    let resp = c
        .get(p.url("/v2/demo/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, out, _) = cli(&root, &["ls", "demo/app", "--json"]);
        if json(&out)["repos"][0]["last_pull"].is_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "no last pull recorded: {out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    check_views(&root, &v1);
    // The running server's quota, as `du` measures it, in text and JSON.
    let (ok, text, _) = cli(&root, &["du"]);
    assert!(ok);
    let line = text
        .lines()
        .find(|l| l.starts_with("quota demo/**: "))
        .unwrap_or_else(|| panic!("du shows the quota: {text}"));
    let (ok, out, _) = cli(&root, &["du", "--json"]);
    assert!(ok);
    let quotas = json(&out)["quotas"].clone();
    assert_eq!(quotas.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(quotas[0]["pattern"], "demo/**");
    assert_eq!(quotas[0]["quota"], 1 << 20);
    let used = quotas[0]["used"].as_u64().unwrap();
    // Three images of 4000 + 4000 + 100 layer bytes, plus their configs.
    assert!((8100..20_000).contains(&used), "{out}");
    assert!(
        line.contains(&format!(
            "{} used of 1.0 MiB",
            dockyard::gc::human_bytes(used)
        )),
        "text and JSON agree: {line} / {out}"
    );
    // rm asks first; without a terminal to ask on it refuses unless --yes.
    let (ok, _, err) = cli(&root, &["rm", "demo/app:v2"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, out, err) = cli(&root, &["rm", "demo/app:v2", "--yes"]);
    assert!(ok && out.contains("deleted tag demo/app:v2"), "{out}{err}");
    let resp = c
        .get(p.url("/v2/demo/app/manifests/v2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "the server sees the delete at once");
    let (ok, _, err) = cli(&root, &["rm", "demo/app:v2", "--yes"]);
    assert!(!ok && err.contains("no such"), "{err}");
    push_image(&c, &p, "demo/app", "v2", &[&random_bytes(4000)]).await;
    assert!(p.stop().success());

    // The same commands open the files when no server runs.
    check_views(&root, &v1);
    let (ok, out, err) = cli(&root, &["rm", &format!("demo/app@{v1}"), "-y"]);
    assert!(ok && out.contains("deleted manifest"), "{out}{err}");
    let (_, out, _) = cli(&root, &["ls", "--json"]);
    assert_eq!(json(&out)["repos"][0]["tags"], serde_json::json!(["v2"]));
}
