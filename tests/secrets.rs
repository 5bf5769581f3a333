//! No secret is ever logged: the server's whole output (every line it printed, at debug
//! level, in the text and the JSON format) through a session with wrong and right
//! passwords, Basic and token auth, and `user add`/`passwd` over the admin socket, must not
//! contain a password, a Basic credential, a bcrypt hash, a token or the signing key.

use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use dockyard::db::schema::{decode, UserRecord, SECRETS, USERS};

use crate::util::*;

const FIRST: &str = "first-Pa55word-4f1d";
const SECOND: &str = "second-Pa55word-9c2e";
const WRONG: &str = "wrong-Pa55word-77ab";

/// `dockyard ARGS --root ROOT` with `stdin` piped in; asserts success.
async fn cli(root: &Path, args: &[&str], stdin: &str) {
    let (ok, _, err) = dockyard_at(root, args, stdin).await;
    assert!(ok, "dockyard {args:?}: {err}");
}

/// One session against a server in `mode` logging in `format`; returns what it printed and
/// the secrets it must not have printed.
async fn session(mode: &str, format: &str) -> (String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let config = write_config(
        dir.path(),
        "registry.toml",
        &format!(
            "[storage]\nroot = {:?}\n[log]\nlevel = \"debug\"\nformat = \"{format}\"\n\
             [auth]\nmode = \"{mode}\"\nbcrypt_cost = 4\n",
            root.display().to_string()
        ),
    );
    let p = Process::spawn_with_config_env(&root, &config, &[("RUST_LOG", "debug")]);
    let base = p.url("");
    cli(&root, &["user", "add", "alice", "--password-stdin"], FIRST).await;
    cli(&root, &["acl", "grant", "alice", "**", "pull,push"], "").await;
    let mut tokens = Vec::new();

    for (pw, want) in [(WRONG, 401), (FIRST, 200)] {
        let c = client_as("alice", pw);
        let resp = c.get(format!("{base}/v2/")).send().await.unwrap();
        if mode == "basic" {
            assert_eq!(resp.status(), want, "Basic {pw}");
        }
        let resp = c
            .get(format!("{base}/token"))
            .query(&[
                ("service", "dockyard"),
                ("scope", "repository:s/x:push,pull"),
            ])
            .send()
            .await
            .unwrap();
        if mode == "token" {
            assert_eq!(resp.status(), want, "token with {pw}");
            if want == 200 {
                let v: serde_json::Value = resp.json().await.unwrap();
                tokens.push(v["token"].as_str().unwrap().to_string());
            }
        }
    }
    let authorization = match mode {
        "basic" => basic("alice", FIRST),
        _ => format!("Bearer {}", tokens[0]),
    };
    let c = client_with(&authorization);
    push_image(&c, base.as_str(), "s/x", "v1", &[&random_bytes(100)]).await;
    if mode == "token" {
        // A tampered token is refused, and not echoed either.
        let mut bad = tokens[0].clone();
        bad.push('A');
        let resp = bearer_get(&base, &bad).await;
        assert_eq!(resp, 401);
        tokens.push(bad);
    }

    cli(
        &root,
        &["user", "passwd", "alice", "--password-stdin"],
        SECOND,
    )
    .await;
    let resp = client_as("alice", FIRST)
        .get(format!("{base}/v2/s/x/tags/list"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the old password is gone");
    if mode == "basic" {
        let resp = client_as("alice", SECOND)
            .get(format!("{base}/v2/s/x/tags/list"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let output = p.output.clone();
    assert!(p.stop().success());
    let log = output.lock().unwrap().join("\n");

    // What the database holds: the bcrypt hash and the token signing key.
    let core = dockyard::Core::open(dockyard::Config::load(&config).unwrap()).unwrap();
    let (hash, key) = core
        .db
        .read(|tx| {
            let users = tx.open_table(USERS)?;
            let rec: UserRecord = decode(users.get("alice")?.unwrap().value())?;
            let key = tx
                .open_table(SECRETS)?
                .get("token_key")?
                .map(|v| v.value().to_vec());
            Ok((rec.hash, key))
        })
        .await
        .unwrap();
    drop(core);
    let mut secrets = vec![
        FIRST.to_string(),
        SECOND.to_string(),
        WRONG.to_string(),
        hash.clone(),
        // The salt and digest part of the hash, in case a log cut its prefix.
        hash[7..].to_string(),
        "$2b$".to_string(),
        "$2y$".to_string(),
    ];
    for pw in [FIRST, SECOND, WRONG] {
        secrets.push(STANDARD.encode(format!("alice:{pw}")));
    }
    for t in &tokens {
        secrets.push(t.clone());
        // The signature alone.
        secrets.push(t.rsplit('.').next().unwrap().to_string());
    }
    if let Some(k) = key {
        secrets.push(hex::encode(&k));
        secrets.push(STANDARD.encode(&k));
        secrets.push(URL_SAFE_NO_PAD.encode(&k));
    } else {
        assert_eq!(mode, "basic", "token mode made a signing key");
    }
    (log, secrets)
}

#[tokio::test]
async fn no_password_hash_token_or_key_reaches_the_log_in_any_format_or_mode() {
    for (mode, format) in [
        ("basic", "text"),
        ("basic", "json"),
        ("token", "text"),
        ("token", "json"),
    ] {
        let (log, secrets) = session(mode, format).await;
        // The log is real and complete enough to have shown them: it has the access lines
        // of the failed and the good logins and the admin commands.
        assert!(log.lines().count() > 10, "{mode}/{format}: {log}");
        assert!(
            log.contains("alice"),
            "{mode}/{format}: the user is named: {log}"
        );
        if format == "json" {
            for line in log.lines().filter(|l| l.starts_with('{')) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("{mode}/{format}: not JSON: {line}: {e}"));
            }
        }
        for s in &secrets {
            assert!(
                !log.contains(s.as_str()),
                "{mode}/{format}: the log shows the secret {s:?}:\n{log}"
            );
        }
    }
}

async fn bearer_get(base: &str, token: &str) -> u16 {
    client_with(&format!("Bearer {token}"))
        .get(format!("{base}/v2/s/x/tags/list"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
