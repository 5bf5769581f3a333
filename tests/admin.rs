//! The control channel: the CLI's way into a running server.

use std::os::unix::fs::PermissionsExt;

use dockyard::admin::{self, Command, Outcome};

use crate::util::*;

#[tokio::test]
async fn a_running_server_answers_on_an_owner_only_socket_and_a_stopped_one_is_opened_directly() {
    let dir = tempfile::tempdir().unwrap();
    let r = TestRegistry::start_at(dir.path()).await;
    // Bound before the server accepts anything, so it is there as soon as `start_at` returns.
    let sock = admin::socket_path(dir.path());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the owner may use the control channel");
    let answer = admin::call(dir.path(), &Command::Ping).await.unwrap();
    assert!(
        matches!(answer, Some(Outcome::Ok(ref s)) if s.starts_with("serving")),
        "{answer:?}"
    );
    r.stop().await;

    assert!(!sock.exists(), "the socket is removed on shutdown");
    assert_eq!(admin::call(dir.path(), &Command::Ping).await.unwrap(), None);
    let config = dockyard::Config {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let direct = admin::run(config, Command::Ping).await.unwrap();
    assert!(matches!(direct, Outcome::Ok(_)), "{direct:?}");
}

/// The listening line comes after the control channel is bound: a CLI command run the moment
/// it appears reaches the server (before, it found no socket, opened the database itself and
/// failed with redb's "Database already open").
#[test]
fn a_cli_command_run_right_after_the_listening_line_goes_through_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root_arg = root.to_str().unwrap();
    // A few starts, since the old order failed only when the CLI won the race.
    for _ in 0..3 {
        let p = Process::spawn(&root);
        let (ok, out, err) = dockyard(&["user", "list", "--root", root_arg]);
        assert!(
            ok,
            "user list right after the listening line: {err}\n{}",
            p.output()
        );
        assert!(!out.contains("Database"), "{out}");
        let line = p.wait_for_line("admin command");
        assert!(line.contains("UserList"), "answered by the server: {line}");
        assert!(p.stop().success());
    }
}

/// With the database held and no socket to reach (a server starting, one whose admin.sock was
/// removed, or another command), the CLI says so in one line instead of redb's message.
#[test]
fn a_cli_command_on_a_held_root_without_a_socket_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dockyard::Config {
        root: dir.path().to_path_buf(),
        ..Default::default()
    };
    let held = dockyard::Core::open(config).unwrap();
    assert!(!admin::socket_path(dir.path()).exists());
    let (ok, out, err) = dockyard(&["du", "--root", dir.path().to_str().unwrap()]);
    assert!(!ok, "du must fail while the root is held: {out}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.starts_with("dockyard: ") && err.contains("held by another dockyard process"),
        "{err}"
    );
    assert!(!err.contains("Database already open"), "{err}");
    drop(held);
    let (ok, _, err) = dockyard(&["du", "--root", dir.path().to_str().unwrap()]);
    assert!(ok, "du once the root is free: {err}");
}
