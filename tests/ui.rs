//! The web UI in a real browser: Debian's chromium, headless, driven through chromedriver by
//! fantoccini. Images are pushed with skopeo (an image with history and labels, a
//! multi-platform index) and an artifact referring to one is PUT over HTTP (skopeo does not
//! push referrers). Screenshots of the main pages land in `target/ui-screenshots/`.
//!
//! The checks that need no browser (CSRF, forged POSTs, escaping, cookies) are plain HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::util::*;

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// chromedriver on a free loopback port, and a headless chromium session through it.
struct Browser {
    driver: std::process::Child,
    client: Option<Client>,
}

impl Browser {
    async fn start() -> Option<Browser> {
        if !require_tool("chromium") || !require_tool("chromedriver") {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps.as_object().expect("object").clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("webdriver session");
        Some(Browser {
            driver,
            client: Some(client),
        })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("client")
    }

    /// The text of the first element `css` matches, waiting (up to 20 s) for the page that
    /// a click started to show it.
    async fn text(&self, css: &str) -> String {
        self.c()
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// The text of the first element the XPath `xp` matches on the page shown now.
    async fn xpath_text(&self, xp: &str) -> String {
        self.c()
            .find(Locator::XPath(xp))
            .await
            .unwrap_or_else(|e| panic!("{xp}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// Waits (up to 20 s) until the browser shows a page at `path`.
    async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.c().current_url().await.expect("current url");
            if url.path() == path {
                return;
            }
            assert!(Instant::now() < deadline, "still at {url}, not {path}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shoot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("screenshot");
        std::fs::write(screenshots().join(name), png).expect("write screenshot");
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The one time `text` shows (as pages print it: `2026-01-02 03:04:05 UTC`) lies within
/// `[from, to]` (Unix seconds; pages show whole seconds, rounded down like `from` and `to`).
fn assert_pushed_between(text: &str, from: u64, to: u64) {
    let times: Vec<u64> = text
        .match_indices(" UTC")
        .filter_map(|(i, _)| text.get(i.checked_sub(19)?..i))
        .map(|t| {
            let rfc = format!("{}Z", t.replacen(' ', "T", 1));
            humantime::parse_rfc3339(&rfc)
                .unwrap_or_else(|e| panic!("{t:?} is not a time ({e}) in {text:?}"))
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        })
        .collect();
    assert_eq!(times.len(), 1, "one push time in {text:?}");
    assert!(
        (from..=to).contains(&times[0]),
        "push time {} not within the push window [{from}, {to}]: {text:?}",
        times[0]
    );
}

/// An OCI layout holding one image with two layers, a config with history, env and labels
/// (one label is markup), tagged `tag`.
fn app_layout(dir: &Path, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        std::fs::write(blobs.join(&d[7..]), bytes).unwrap();
        d
    };
    let (t1, t2) = (rootfs_tar(2, 30_000), rootfs_tar(3, 40_000));
    let (l1, l2) = (gzip(&t1), gzip(&t2));
    put(&l1);
    put(&l2);
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2026-11-30T10:00:00Z",
        "author": "Dockyard tests",
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/usr/bin", "GREETING=<b>hi</b>"],
            "Entrypoint": ["/app/bin"],
            "Labels": {"evil": "<script>alert('x')</script>", "org.opencontainers.image.title": "demo"},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(&t1), sha256(&t2)]},
        "history": [
            {"created": "2026-11-30T09:00:00Z", "created_by": "ADD rootfs.tar /"},
            {"created": "2026-11-30T09:01:00Z", "created_by": "ENV GREETING=<b>hi</b>", "empty_layer": true},
            {"created": "2026-11-30T09:02:00Z", "created_by": "COPY app /app # buildkit"},
        ],
    }))
    .unwrap();
    put(&config);
    let manifest = image_manifest(&config, &[&l1, &l2]);
    let d = put(&manifest);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": d, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn skopeo(policy: &str, args: &[&str]) -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--policy").arg(policy).args(args);
    c
}

const SIGNATURE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// Pushes demo/app:v1 and :old (history, labels), demo/multi:latest (two platforms) with
/// skopeo, and a signature referring to demo/app:v1. Returns the app's digest and the
/// referrer's.
async fn seed(host: &str, c: &reqwest::Client, r: &(impl Serves + ?Sized)) -> (String, String) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let policy = w.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let policy = policy.to_string_lossy().into_owned();
    app_layout(&w.join("app"), "v1");
    for tag in ["v1", "old"] {
        run_async(skopeo(
            &policy,
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", w.join("app").display()),
                &format!("docker://{host}/demo/app:{tag}"),
            ],
        ))
        .await;
    }
    oci_layout(&w.join("multi"), "multi", &["amd64", "arm64"]);
    run_async(skopeo(
        &policy,
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", w.join("multi").display()),
            &format!("docker://{host}/demo/multi:latest"),
        ],
    ))
    .await;
    let subject = c
        .get(r.url("/v2/demo/app/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let empty = push_blob(c, r, "demo/app", b"{}").await;
    let sig = random_bytes(300);
    let sig_digest = push_blob(c, r, "demo/app", &sig).await;
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": SIGNATURE, "digest": sig_digest, "size": sig.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": sha256(&subject), "size": subject.len()},
    }))
    .unwrap();
    let rd = sha256(&referrer);
    put_manifest(c, r, "demo/app", &rd, &referrer).await;
    (sha256(&subject), rd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_repositories_tags_manifests_referrers_and_deletes_a_tag() {
    if !require_tool("skopeo") {
        return;
    }
    let Some(b) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        dockyard::Config::from_toml("[[policy]]\npattern = \"demo/**\"\nquota = \"1GiB\"\n")
            .expect("policy config");
    config.root = dir.path().to_path_buf();
    let r = TestRegistry::start_with(config).await;
    let host = r.addr.to_string();
    let before = unix_now();
    let (app, referrer) = seed(&host, &client(), &r).await;
    let after = unix_now();

    b.c().goto(&r.url("/")).await.unwrap();
    assert_eq!(b.c().current_url().await.unwrap().path(), "/ui/");
    let repos = b.text("#repos").await;
    assert!(
        repos.contains("demo/app") && repos.contains("demo/multi"),
        "{repos}"
    );
    b.shoot("repositories.png").await;

    b.c().goto(&r.url("/ui/?q=multi")).await.unwrap();
    let filtered = b.text("#repos").await;
    assert!(
        filtered.contains("demo/multi") && !filtered.contains("demo/app"),
        "{filtered}"
    );

    b.c().goto(&r.url("/ui/r/demo/multi")).await.unwrap();
    let tags = b.text("#tags").await;
    assert!(
        tags.contains("latest") && tags.contains("linux/amd64") && tags.contains("linux/arm64"),
        "{tags}"
    );
    assert!(tags.contains("KiB"), "sizes shown: {tags}");
    let pull = b
        .c()
        .find(Locator::Css(".pull input"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(pull, format!("docker pull {host}/demo/multi:latest"));
    let shown = b
        .xpath_text("//table[@id='tags']//tr[td/a[text()='latest']]")
        .await;
    assert_pushed_between(&shown, before, after);
    b.shoot("repository.png").await;

    b.c().goto(&r.url("/ui/m/demo/app:v1")).await.unwrap();
    let shown = b
        .xpath_text("//dl[contains(@class,'facts')]/dt[text()='Pushed']/following-sibling::dd[1]")
        .await;
    assert_pushed_between(&shown, before, after);
    assert_eq!(
        b.c()
            .find_all(Locator::Css("#layers tbody tr"))
            .await
            .unwrap()
            .len(),
        2
    );
    let layers = b.text("#layers").await;
    assert!(layers.contains("COPY app /app # buildkit"), "{layers}");
    let history = b.text("#history").await;
    assert!(history.contains("ENV GREETING=<b>hi</b>"), "{history}");
    let referrers = b.text("#referrers").await;
    assert!(
        referrers.contains(SIGNATURE) && referrers.contains(&referrer[..19]),
        "{referrers}"
    );
    // The label is markup; it must arrive as text (and so run nothing).
    let labels = b.text("#labels").await;
    assert!(
        labels.contains("<script>alert('x')</script>"),
        "label shown as text: {labels}"
    );
    let source = b.c().source().await.unwrap();
    assert!(
        !source.contains("<script>alert"),
        "label escaped in the page"
    );
    b.shoot("manifest.png").await;

    // The referrer's link leads to its own page, which links back to its subject.
    b.c()
        .find(Locator::Css("#referrers a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_path(&format!("/ui/m/demo/app@{referrer}")).await;
    assert!(b.text("main").await.contains(&app));

    b.c().goto(&r.url("/ui/storage")).await.unwrap();
    assert!(b.text("#usage").await.contains("demo/multi"));
    assert!(b.text("#reclaimable").await.contains("blobs"));
    // The quota row shows what `du` prints for it (the same measurement, not a second one).
    let du = r
        .admin(dockyard::admin::Command::Du { json: false })
        .await
        .unwrap();
    let line = du
        .lines()
        .find_map(|l| l.strip_prefix("quota demo/**: "))
        .unwrap_or_else(|| panic!("du shows the quota: {du}"));
    let (used, rest) = line.split_once(" used of ").expect("du quota line");
    let (quota, percent) = rest.rsplit_once(" ").expect("du quota line");
    assert_eq!(quota, "1.0 GiB");
    assert!(!used.starts_with("0 "), "the pushed images count: {line}");
    let row = b.text("#quotas tbody tr").await;
    let percent = percent.trim_matches(|c| c == '(' || c == ')');
    for want in ["demo/**", used, quota, percent] {
        assert!(
            row.contains(want),
            "{want:?} in the quota row {row:?}; du: {line}"
        );
    }
    b.shoot("storage.png").await;

    // Delete demo/app:old through the page, with its confirmation step.
    b.c().goto(&r.url("/ui/r/demo/app")).await.unwrap();
    b.c()
        .find(Locator::XPath(
            "//table[@id='tags']//tr[td/a[text()='old']]//a[text()='Delete']",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_path("/ui/delete/demo/app:old").await;
    assert!(b.text("h1").await.contains("demo/app:old"));
    b.c()
        .find(Locator::Css("button.danger"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_path("/ui/r/demo/app").await;
    let tags = b.text("#tags").await;
    assert!(!tags.contains("old") && tags.contains("v1"), "{tags}");
    b.close().await;

    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/demo/app:old"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the deleted tag is gone for skopeo");
    let out = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{host}/demo/app:v1"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "the other tag stays");
    r.stop().await;
}

/// The value of `name="csrf"` in a page.
fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[i..].split('"').next().unwrap().to_string()
}

fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

/// An `application/x-www-form-urlencoded` body, as a browser sends a form.
trait FormBody {
    fn form_body<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_body<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            body.append_pair(k.as_ref(), v.as_ref());
        }
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.finish())
    }
}

fn no_redirects() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Logs in through the form with plain HTTP; returns the Cookie header to send.
async fn http_login(r: &TestRegistry, user: &str, password: &str) -> Result<String, u16> {
    let c = no_redirects();
    let page = c.get(r.url("/ui/login")).send().await.unwrap();
    let nonce = set_cookie(&page, "dockyard_csrf").expect("nonce cookie");
    let nonce = nonce.split(';').next().unwrap().to_string();
    let csrf = csrf_of(&page.text().await.unwrap());
    let resp = c
        .post(r.url("/ui/login"))
        .header("Cookie", &nonce)
        .form_body(&[
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    if resp.status() != 303 {
        return Err(resp.status().as_u16());
    }
    let session = set_cookie(&resp, "dockyard_session").expect("session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(session.contains("Max-Age=43200"), "{session}");
    assert!(!session.contains("Secure"), "no TLS here: {session}");
    Ok(session.split(';').next().unwrap().to_string())
}

async fn status_of(r: &TestRegistry, repo: &str, tag: &str) -> u16 {
    client_as("root", "rootpw")
        .get(r.url(&format!("/v2/{repo}/manifests/{tag}")))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_a_user_sees_only_their_repositories_and_deletes_need_the_grant_and_token() {
    let r = TestRegistry::start_auth(dockyard::config::AuthMode::Basic, |_| {}).await;
    r.add_user("root", "rootpw").await;
    r.add_user("alice", "alicepw").await;
    r.add_user("bob", "bobpw").await;
    r.grant("root", "**", "admin").await;
    r.grant("alice", "alice/**", "pull,push,delete").await;
    r.grant("bob", "bob/**", "pull").await;
    let root = client_as("root", "rootpw");
    push_image(&root, &r, "alice/app", "v1", &[&random_bytes(2000)]).await;
    push_image(&root, &r, "alice/app", "v2", &[&random_bytes(2000)]).await;
    push_image(&root, &r, "bob/app", "v1", &[&random_bytes(2000)]).await;

    // Anonymous visitors see nothing, and no page tells them a repository exists.
    let anon = no_redirects();
    let list = anon.get(r.url("/ui/")).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let html = list.text().await.unwrap();
    assert!(html.contains("0 repositories") && !html.contains("alice/app"));
    let page = anon.get(r.url("/ui/r/alice/app")).send().await.unwrap();
    assert_eq!(page.status(), 404);
    let page = anon.get(r.url("/ui/admin")).send().await.unwrap();
    assert_eq!(page.status(), 403);

    assert_eq!(http_login(&r, "bob", "wrong").await, Err(401));
    let bob = http_login(&r, "bob", "bobpw").await.expect("bob logs in");
    let get = |path: &str, cookie: &str| anon.get(r.url(path)).header("Cookie", cookie).send();
    let html = get("/ui/", &bob).await.unwrap().text().await.unwrap();
    assert!(
        html.contains("bob/app") && !html.contains("alice/app"),
        "{html}"
    );
    assert_eq!(get("/ui/r/alice/app", &bob).await.unwrap().status(), 404);
    let page = get("/ui/r/bob/app", &bob)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("/ui/delete/"), "no delete for bob");
    // A forged POST with bob's valid token: refused, nothing deleted.
    let csrf = csrf_of(&page);
    let forged = anon
        .post(r.url("/ui/delete/bob/app:v1"))
        .header("Cookie", &bob)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(status_of(&r, "bob/app", "v1").await, 200);

    let alice = http_login(&r, "alice", "alicepw")
        .await
        .expect("alice logs in");
    let page = get("/ui/r/alice/app", &alice)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("/ui/delete/alice/app:v2"));
    let csrf = csrf_of(&page);
    // Without the token, or with bob's, the same POST is refused.
    for form in [
        vec![],
        vec![(
            "csrf",
            csrf_of(&get("/ui/", &bob).await.unwrap().text().await.unwrap()),
        )],
    ] {
        let resp = anon
            .post(r.url("/ui/delete/alice/app:v2"))
            .header("Cookie", &alice)
            .form_body(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }
    assert_eq!(status_of(&r, "alice/app", "v2").await, 200);
    let ok = anon
        .post(r.url("/ui/delete/alice/app:v2"))
        .header("Cookie", &alice)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(status_of(&r, "alice/app", "v2").await, 404);
    assert_eq!(status_of(&r, "alice/app", "v1").await, 200);

    // A password change ends the session.
    r.admin(dockyard::admin::Command::UserPasswd {
        name: "alice".to_string(),
        password: dockyard::auth::users::Secret::new("newpw"),
    })
    .await
    .unwrap();
    let html = get("/ui/", &alice).await.unwrap().text().await.unwrap();
    assert!(!html.contains("alice/app") && html.contains("Sign in"));

    // The same in a browser: sign in as bob, see bob's repository only, no delete button.
    if let Some(b) = Browser::start().await {
        b.c().goto(&r.url("/ui/login")).await.unwrap();
        let user = b
            .c()
            .find(Locator::Css("input[name=username]"))
            .await
            .unwrap();
        user.send_keys("bob").await.unwrap();
        let pw = b
            .c()
            .find(Locator::Css("input[name=password]"))
            .await
            .unwrap();
        pw.send_keys("bobpw").await.unwrap();
        b.c()
            .find(Locator::Css("form.login button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait_path("/ui/").await;
        assert!(b.text("header .who strong").await.contains("bob"));
        let repos = b.text("#repos").await;
        assert!(
            repos.contains("bob/app") && !repos.contains("alice"),
            "{repos}"
        );
        b.shoot("signed-in.png").await;
        b.c().goto(&r.url("/ui/r/bob/app")).await.unwrap();
        let deletes = b.c().find_all(Locator::LinkText("Delete")).await.unwrap();
        assert!(deletes.is_empty(), "bob may not delete");
        b.close().await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_csrf_token_is_refused_even_with_auth_off() {
    let r = TestRegistry::start().await;
    let c = client();
    push_image(&c, &r, "x/y", "v1", &[&random_bytes(100)]).await;
    let anon = no_redirects();
    let resp = anon
        .post(r.url("/ui/delete/x/y:v1"))
        .form_body(&[("csrf", "00")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let page = anon.get(r.url("/ui/r/x/y")).send().await.unwrap();
    let nonce = set_cookie(&page, "dockyard_csrf").unwrap();
    let nonce = nonce.split(';').next().unwrap().to_string();
    // The token is on the confirmation page, for this browser (its nonce cookie) only.
    let confirm = anon
        .get(r.url("/ui/delete/x/y:v1"))
        .header("Cookie", &nonce)
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 200);
    let csrf = csrf_of(&confirm.text().await.unwrap());
    let no_token = anon
        .post(r.url("/ui/delete/x/y:v1"))
        .header("Cookie", &nonce)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 403);
    let other_browser = anon
        .post(r.url("/ui/delete/x/y:v1"))
        .header("Cookie", "dockyard_csrf=someoneelse")
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(other_browser.status(), 403);
    let get = c.get(r.url("/v2/x/y/manifests/v1")).send().await.unwrap();
    assert_eq!(get.status(), 200, "nothing deleted");
    let ok = anon
        .post(r.url("/ui/delete/x/y:v1"))
        .header("Cookie", &nonce)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    let get = c.get(r.url("/v2/x/y/manifests/v1")).send().await.unwrap();
    assert_eq!(get.status(), 404);
    // Pages carry the headers that keep them out of frames and caches.
    let page = anon.get(r.url("/ui/")).send().await.unwrap();
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["cache-control"], "no-store");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_can_be_turned_off() {
    let r = TestRegistry::start_configured(|c| c.ui.enabled = false).await;
    let anon = no_redirects();
    for path in ["/", "/ui/", "/ui/style.css"] {
        let resp = anon.get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    r.stop().await;
}
