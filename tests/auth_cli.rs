//! `dockyard user …` and `dockyard acl …`, the real binary: against a running server (over
//! its admin socket, taking effect at once) and against a stopped one (opening the files).

use std::path::Path;

use dockyard::config::AuthMode;

use crate::util::*;

async fn ok(root: &Path, args: &[&str], stdin: &str) -> String {
    let (success, out, err) = dockyard_at(root, args, stdin).await;
    assert!(success, "dockyard {args:?} failed: {err}");
    out
}

/// Asserts the command fails with exactly one line, `dockyard: …` containing `want`.
async fn refused(root: &Path, args: &[&str], stdin: &str, want: &str) {
    let (success, out, err) = dockyard_at(root, args, stdin).await;
    assert!(!success, "dockyard {args:?} should fail; printed {out}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("dockyard: "), "{err:?}");
    assert!(
        err.contains(want),
        "dockyard {args:?}: {err:?} lacks {want:?}"
    );
}

async fn start(root: &Path) -> TestRegistry {
    let config = dockyard::Config {
        root: root.to_path_buf(),
        auth: dockyard::config::AuthConfig {
            mode: AuthMode::Basic,
            bcrypt_cost: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = TestRegistry::start_with(config).await;
    r.admin(dockyard::admin::Command::Ping).await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_changes_a_running_server_at_once_and_a_stopped_one_directly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let r = start(root).await;

    let out = ok(
        root,
        &["user", "add", "alice", "--password-stdin"],
        "pw-1\n",
    )
    .await;
    assert_eq!(out.trim(), "added user alice");
    ok(
        root,
        &["acl", "grant", "alice", "alice/**", "pull,push"],
        "",
    )
    .await;
    // No restart: the running server knows alice now.
    let alice = client_as("alice", "pw-1");
    push_image(&alice, &r, "alice/app", "v1", &[b"x"]).await;
    assert_eq!(ok(root, &["user", "list"], "").await.trim(), "alice");
    let listed = ok(root, &["acl", "list", "alice"], "").await;
    assert!(
        listed.contains("alice/**") && listed.contains("pull,push"),
        "{listed}"
    );

    ok(
        root,
        &["user", "passwd", "alice", "--password-stdin"],
        "pw-2\r\n",
    )
    .await;
    let head = |c: reqwest::Client| {
        let url = r.url("/v2/alice/app/manifests/v1");
        async move { c.head(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(head(client_as("alice", "pw-1")).await, 401);
    assert_eq!(head(client_as("alice", "pw-2")).await, 200);
    ok(root, &["acl", "revoke", "alice", "alice/**"], "").await;
    assert_eq!(head(client_as("alice", "pw-2")).await, 403);

    // Clear one-line refusals, through the socket.
    refused(
        root,
        &["user", "add", "alice", "--password-stdin"],
        "x\n",
        "user \"alice\" exists",
    )
    .await;
    refused(
        root,
        &["user", "add", "bob", "--password-stdin"],
        "\n",
        "empty password",
    )
    .await;
    refused(
        root,
        &["user", "del", "nobody"],
        "",
        "unknown user \"nobody\"",
    )
    .await;
    refused(
        root,
        &["user", "passwd", "nobody", "--password-stdin"],
        "x\n",
        "unknown user",
    )
    .await;
    refused(
        root,
        &["acl", "grant", "alice", "a/***", "pull"],
        "",
        "bad pattern",
    )
    .await;
    refused(
        root,
        &["acl", "grant", "alice", "a/*", "pull,fly"],
        "",
        "bad action \"fly\"",
    )
    .await;
    refused(
        root,
        &["acl", "grant", "nobody", "a/*", "pull"],
        "",
        "unknown user",
    )
    .await;
    // Not a terminal and no --password-stdin: no prompt, a hint instead.
    refused(root, &["user", "add", "bob"], "", "--password-stdin").await;
    r.stop().await;

    // Stopped: the CLI opens the files itself, with the same commands and answers.
    assert!(!dockyard::admin::socket_path(root).exists());
    let out = ok(root, &["user", "add", "bob", "--password-stdin"], "pw-b\n").await;
    assert_eq!(out.trim(), "added user bob");
    ok(root, &["acl", "grant", "bob", "alice/*", "pull"], "").await;
    refused(root, &["user", "del", "nobody"], "", "unknown user").await;
    refused(root, &["acl", "grant", "bob", "x", "pul"], "", "bad action").await;
    let listed = ok(root, &["user", "list"], "").await;
    assert_eq!(listed.lines().collect::<Vec<_>>(), vec!["alice", "bob"]);

    // And the restarted server sees what was done while it was down.
    let r = start(root).await;
    let resp = client_as("bob", "pw-b")
        .head(r.url("/v2/alice/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let out = ok(root, &["user", "del", "bob"], "").await;
    assert_eq!(out.trim(), "deleted user bob and its grant");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_htpasswd_moves_bcrypt_users_over_with_their_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let r = start(root).await;
    ok(
        root,
        &["user", "add", "carol", "--password-stdin"],
        "carol-pw\n",
    )
    .await;
    // What `htpasswd -B` writes: $2y$ hashes.
    let hash = |pw: &str| bcrypt::hash(pw, 4).unwrap().replacen("$2b$", "$2y$", 1);
    let file = dir.path().join("htpasswd");
    std::fs::write(
        &file,
        format!(
            "alice:{}\nbob:{}\n\ncarol:{}\ndave:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
            hash("alice-pw"),
            hash("bob-pw"),
            hash("other")
        ),
    )
    .unwrap();
    let out = ok(
        root,
        &["user", "import-htpasswd", file.to_str().unwrap()],
        "",
    )
    .await;
    assert!(out.contains("imported 2 users: alice, bob"), "{out}");
    assert!(out.contains("skipped carol: user exists"), "{out}");
    assert!(out.contains("skipped dave: not a bcrypt hash"), "{out}");
    ok(root, &["acl", "grant", "alice", "**", "pull"], "").await;
    let v2 = |c: reqwest::Client| {
        let url = r.url("/v2/");
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(v2(client_as("alice", "alice-pw")).await, 200);
    assert_eq!(v2(client_as("bob", "bob-pw")).await, 200);
    assert_eq!(
        v2(client_as("carol", "carol-pw")).await,
        200,
        "carol kept hers"
    );
    assert_eq!(v2(client_as("dave", "anything")).await, 401);
    refused(
        root,
        &["user", "import-htpasswd", "/nonexistent/htpasswd"],
        "",
        "cannot read /nonexistent/htpasswd",
    )
    .await;
    r.stop().await;
}

/// Empty listings print nothing on stdout (scripts stay right) and say so on stderr; commands
/// refuse flags they would ignore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_listings_say_so_and_unused_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (args, want) in [
        (&["user", "list"][..], "no users yet"),
        (&["acl", "list"][..], "no grants yet"),
    ] {
        let (success, out, err) = dockyard_at(root, args, "").await;
        assert!(success, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert!(err.contains(want), "{args:?}: {err:?}");
    }
    ok(
        root,
        &["user", "add", "alice", "--password-stdin"],
        "pw-1\n",
    )
    .await;
    let (_, out, err) = dockyard_at(root, &["user", "list"], "").await;
    assert_eq!((out.trim(), err.as_str()), ("alice", ""));
    let (success, out, err) = dockyard_at(root, &["acl", "list", "alice"], "").await;
    assert!(success, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("no grants for alice"), "{err:?}");

    for cmd in [
        &["gc"][..],
        &["fsck"],
        &["du"],
        &["user", "list"],
        &["acl", "list"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--listen", "127.0.0.1:5000"]);
        let (success, _, err) = dockyard_at(root, &args, "").await;
        assert!(!success, "{args:?} accepted --listen");
        assert!(
            err.contains("unexpected argument '--listen'"),
            "{args:?}: {err}"
        );
    }
}
