//! The control channel: the CLI's way into a running server.

use std::os::unix::fs::PermissionsExt;

use dockyard::admin::{self, Command, Outcome};

use crate::util::*;

#[tokio::test]
async fn a_running_server_answers_on_an_owner_only_socket_and_a_stopped_one_is_opened_directly() {
    let dir = tempfile::tempdir().unwrap();
    let r = TestRegistry::start_at(dir.path()).await;
    // The socket appears as the server starts; give the task a moment.
    let sock = admin::socket_path(dir.path());
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
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
