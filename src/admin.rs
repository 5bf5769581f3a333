//! The control channel: how `dockyard user …`, `dockyard gc` and friends reach an instance.
//!
//! redb lets one process hold the database, so when a server is running the CLI cannot open
//! the file itself. Instead the server listens on `<root>/admin.sock` (mode 0600: only the
//! owner of the data may connect) and runs the same [`execute`] the CLI would have run, so a
//! change takes effect at once. When no server holds the root, the CLI opens the files and
//! calls [`execute`] directly. Either way the command and its output are identical.
//!
//! Wire format: one JSON [`Command`] per line in, one JSON [`Outcome`] per line out; a long
//! command (`gc`, `fsck`, `du`, `backup`, `export`, the imports) may send `{"progress": …}` lines before its answer.

use std::future::Future;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::access;
use crate::auth::users::Secret;
use crate::events::RequestInfo;
use crate::gc::Progress;
use crate::views;
use crate::Core;

/// Everything the control channel can be asked to do. Each variant is handled in
/// [`execute`]; new subcommands add a variant and a match arm.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Answers with the instance's root; `dockyard status` uses it to tell whether a server runs.
    Ping,
    // Users and grants (`access`). Passwords and htpasswd contents are `Secret`s: they travel
    // over the socket only, and their `Debug` (what the server logs) hides them.
    UserAdd {
        name: String,
        password: Secret,
    },
    UserPasswd {
        name: String,
        password: Secret,
    },
    UserDel {
        name: String,
    },
    UserList,
    /// The contents of a Distribution htpasswd file (the CLI reads the file).
    UserImportHtpasswd {
        htpasswd: Secret,
    },
    AclGrant {
        subject: String,
        pattern: String,
        actions: String,
    },
    AclRevoke {
        subject: String,
        pattern: String,
    },
    AclList {
        subject: Option<String>,
    },
    /// One GC pass now (after the one running, if any).
    Gc {
        dry_run: bool,
    },
    /// Check the instance; fails with the list of problems if there are any.
    Fsck {
        verify_hashes: bool,
        repair: bool,
    },
    /// Bytes per repository, shared bytes, and what GC would reclaim now.
    Du {
        #[serde(default)]
        json: bool,
    },
    /// A consistent copy of the whole root into `dest` (an absolute path), see
    /// `portability::backup`.
    Backup {
        dest: PathBuf,
    },
    /// Write images into an OCI image layout at `to` (an absolute path).
    Export {
        refs: Vec<String>,
        to: PathBuf,
    },
    /// Read an OCI image layout at `dir` (an absolute path) into repositories.
    Import {
        dir: PathBuf,
        repo: Option<String>,
    },
    /// Migrate a CNCF Distribution filesystem store at `path` (an absolute path).
    ImportDistribution {
        path: PathBuf,
    },
    /// Repositories (whose names contain PATTERN, or match it as a grant pattern) with their
    /// tags and sizes.
    Ls {
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default)]
        json: bool,
    },
    /// A repository's tags, or one manifest: `NAME`, `NAME:TAG` or `NAME@DIGEST`.
    Show {
        target: String,
        #[serde(default)]
        json: bool,
    },
    /// The webhook outbox per endpoint: waiting, dropped, delivered and failed, and the
    /// oldest waiting events.
    Events {
        #[serde(default)]
        json: bool,
    },
    /// Deletes a tag (`NAME:TAG`) or a manifest with its tags (`NAME@DIGEST`), by the API's
    /// rules: a manifest an index lists is refused.
    Rm {
        target: String,
    },
    /// Fetch images into the mirror cache (`PREFIX/NAME:TAG` or `@DIGEST`), every platform
    /// of an index or only `platform` (`os/arch[/variant]`).
    MirrorPull {
        images: Vec<String>,
        #[serde(default)]
        platform: Option<String>,
    },
    /// The cached (mirrored) repositories: size, manifests, last pull.
    MirrorList {
        #[serde(default)]
        json: bool,
    },
}

/// What a command answered: text for the person at the terminal, or a one-line error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok(String),
    Err(String),
}

/// Not an answer: how far a long command has got, sent before its [`Outcome`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ProgressLine {
    progress: String,
}

impl<E: std::fmt::Display> From<Result<String, E>> for Outcome {
    fn from(r: Result<String, E>) -> Outcome {
        match r {
            Ok(text) => Outcome::Ok(text),
            Err(e) => Outcome::Err(e.to_string()),
        }
    }
}

/// Runs one command against an open instance. Errors are one line, for a person.
pub async fn execute(core: &Core, command: Command) -> Outcome {
    execute_with(core, command, None).await
}

/// [`execute`], sending progress lines of long commands to `progress`.
pub async fn execute_with(core: &Core, command: Command, progress: Option<Progress>) -> Outcome {
    match command {
        Command::Ping => Outcome::Ok(format!("serving {}", core.store.root().display())),
        Command::UserAdd { name, password } => access::user_add(core, &name, password).await.into(),
        Command::UserPasswd { name, password } => {
            access::user_passwd(core, &name, password).await.into()
        }
        Command::UserDel { name } => access::user_del(core, &name).await.into(),
        Command::UserList => access::user_list(core).await.into(),
        Command::UserImportHtpasswd { htpasswd } => {
            access::import_htpasswd(core, htpasswd).await.into()
        }
        Command::AclGrant {
            subject,
            pattern,
            actions,
        } => access::acl_grant(core, &subject, &pattern, &actions)
            .await
            .into(),
        Command::AclRevoke { subject, pattern } => {
            access::acl_revoke(core, &subject, &pattern).await.into()
        }
        Command::AclList { subject } => access::acl_list(core, subject.as_deref()).await.into(),
        Command::Gc { .. }
        | Command::Fsck { .. }
        | Command::Du { .. }
        | Command::Backup { .. }
        | Command::Export { .. }
        | Command::Import { .. }
        | Command::ImportDistribution { .. } => maintenance(core, command, progress).await,
        Command::Ls { pattern, json } => ls(core, pattern.as_deref().unwrap_or(""), json)
            .await
            .into(),
        Command::Show { target, json } => show(core, &target, json).await.into(),
        Command::Rm { target } => rm(core, &target).await.into(),
        Command::MirrorPull { images, platform } => {
            crate::mirror::seed::pull(core, &images, platform.as_deref())
                .await
                .into()
        }
        Command::MirrorList { json } => mirror_list(core, json).await.into(),
        Command::Events { json } => events(core, json).await.into(),
    }
}

async fn mirror_list(core: &Core, json: bool) -> Result<String, String> {
    let mirrors = core.mirrors.clone();
    let (repos, evictable) = core
        .db
        .read(move |tx| {
            let c = crate::gc::evict::cache(tx, &mirrors)?;
            let bytes = c.evictable_bytes(&mirrors);
            Ok((c.repos, bytes))
        })
        .await
        .map_err(|e| e.message)?;
    if json {
        return to_json(&serde_json::json!({ "repositories": repos, "cache_bytes": evictable }));
    }
    let mut out = format!(
        "{:<50} {:>12} {:>9}  LAST PULL\n",
        "REPOSITORY", "BYTES", "MANIFESTS"
    );
    for r in &repos {
        let when = r.last_pull.map_or("never".to_string(), |t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        });
        out.push_str(&format!(
            "{:<50} {:>12} {:>9}  {when}\n",
            r.name, r.bytes, r.manifests
        ));
    }
    let max = core
        .config
        .mirror_cache
        .max_size
        .map_or("unbounded".to_string(), |m| format!("max_size {m}"));
    out.push_str(&format!("cache: {evictable} bytes ({max})"));
    Ok(out)
}

fn to_json(v: &impl Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

async fn ls(core: &Core, pattern: &str, json: bool) -> Result<String, String> {
    let filter = views::NameFilter::parse(pattern)?;
    let list = core
        .db
        .read(move |tx| views::repositories(tx, &filter, 0, usize::MAX, |_| true))
        .await
        .map_err(|e| e.message)?;
    if json {
        to_json(&list)
    } else {
        Ok(views::text::repo_list(&list))
    }
}

async fn show(core: &Core, target: &str, json: bool) -> Result<String, String> {
    let store = core.store.clone();
    if let Some((name, reference)) = views::parse_target(target) {
        let view = core
            .db
            .read(move |tx| views::manifest(tx, &store, &name, &reference))
            .await
            .map_err(|e| e.message)?
            .ok_or_else(|| format!("{target}: no such manifest"))?;
        return if json {
            to_json(&view)
        } else {
            Ok(views::text::manifest(&view))
        };
    }
    let name = crate::oci::RepoName::parse(target).ok_or_else(|| {
        format!("{target:?} is not NAME, NAME:TAG or NAME@DIGEST with a valid name")
    })?;
    let detail = core
        .db
        .read(move |tx| views::repository(tx, name.as_str(), 0, usize::MAX))
        .await
        .map_err(|e| e.message)?
        .ok_or_else(|| format!("{target}: no such repository"))?;
    if json {
        to_json(&detail)
    } else {
        Ok(views::text::repository(&detail))
    }
}

/// `dockyard events`: every configured endpoint's outbox, then outboxes of endpoints no
/// longer configured (dropped at the next start).
async fn events(core: &Core, json: bool) -> Result<String, String> {
    const SHOW: usize = 5;
    let boxes = core
        .db
        .read(|tx| Ok(crate::db::events::outboxes(tx, SHOW)?))
        .await
        .map_err(|e| e.message)?;
    let hooks = core.config.webhooks.clone();
    #[derive(Serialize)]
    struct Endpoint {
        endpoint: String,
        configured: bool,
        events: Vec<&'static str>,
        queued: u64,
        dropped: u64,
        delivered: u64,
        failed: u64,
        oldest: Vec<serde_json::Value>,
    }
    let mut out = Vec::new();
    let find = |id: &str| {
        boxes
            .iter()
            .find(|b| b.id == id)
            .cloned()
            .unwrap_or_default()
    };
    for h in hooks.0.iter() {
        let b = find(&h.id);
        let (delivered, failed) = core.metrics.webhook_counts(&h.id);
        out.push((
            Endpoint {
                endpoint: h.id.clone(),
                configured: true,
                events: h.actions.iter().map(|a| a.as_str()).collect(),
                queued: b.queued,
                dropped: b.dropped,
                delivered,
                failed,
                oldest: vec![],
            },
            b.oldest,
        ));
    }
    for b in boxes
        .iter()
        .filter(|b| !hooks.0.iter().any(|h| h.id == b.id))
    {
        out.push((
            Endpoint {
                endpoint: b.id.clone(),
                configured: false,
                events: vec![],
                queued: b.queued,
                dropped: b.dropped,
                delivered: 0,
                failed: 0,
                oldest: vec![],
            },
            b.oldest.clone(),
        ));
    }
    let line = |seq: u64, e: &crate::db::schema::EventRecord| {
        let t = &e.target;
        let what = match (t.repository.as_str(), t.tag.as_str(), t.digest.as_str()) {
            ("", _, _) => e.gc.as_ref().map(|g| format!("{g:?}")).unwrap_or_default(),
            (r, "", d) => format!("{r}@{d}"),
            (r, tag, "") => format!("{r}:{tag}"),
            (r, tag, d) => format!("{r}:{tag} {d}"),
        };
        format!("  #{seq} {} {} {what}", e.timestamp, e.action)
    };
    if json {
        let list: Vec<Endpoint> = out
            .into_iter()
            .map(|(mut e, oldest)| {
                e.oldest = oldest
                    .iter()
                    .map(|(seq, ev)| serde_json::json!({ "seq": seq, "event": ev }))
                    .collect();
                e
            })
            .collect();
        return to_json(&list);
    }
    if out.is_empty() {
        return Ok("no webhooks configured and no events queued".to_string());
    }
    let mut text = Vec::new();
    for (e, oldest) in &out {
        if e.configured {
            text.push(format!(
                "endpoint {} ({}): {} queued, {} dropped; since this server started: {} \
                 delivered, {} failed attempts",
                e.endpoint,
                e.events.join(", "),
                e.queued,
                e.dropped,
                e.delivered,
                e.failed
            ));
        } else {
            text.push(format!(
                "endpoint {} (no longer configured: dropped at the next start): {} queued, {} \
                 dropped",
                e.endpoint, e.queued, e.dropped
            ));
        }
        for (seq, ev) in oldest {
            text.push(line(*seq, ev));
        }
        if e.queued > oldest.len() as u64 {
            text.push(format!("  … and {} more", e.queued - oldest.len() as u64));
        }
    }
    Ok(text.join("\n"))
}

async fn rm(core: &Core, target: &str) -> Result<String, String> {
    use crate::oci::Reference;
    let (name, reference) = views::parse_target(target)
        .ok_or_else(|| format!("{target:?} is not NAME:TAG or NAME@DIGEST"))?;
    let r = reference.clone();
    let (hub, hooks, policies) = (
        core.events.clone(),
        core.config.webhooks.clone(),
        core.config.policies.clone(),
    );
    // The API's rules (immutable tags are refused) and its delete event, in one transaction.
    let (removed, appended) = core
        .db
        .write(move |tx| {
            if !policies.is_empty() {
                crate::db::policy::check_delete(tx, &name, &r, &policies)?;
            }
            let removed = match &r {
                Reference::Digest(d) => crate::db::manifests::delete(tx, &name, d),
                Reference::Tag(t) => crate::db::manifests::delete_tag(tx, &name, t),
            }?;
            let appended = match removed && !hooks.is_empty() {
                true => {
                    hub.record_delete(tx, &hooks, &name, &r, &RequestInfo::local("", "DELETE"))?
                }
                false => Default::default(),
            };
            Ok((removed, appended))
        })
        .await
        .map_err(|e| e.message)?;
    core.events
        .committed(&core.config.webhooks, &core.metrics, &appended);
    match (removed, reference) {
        (false, _) => Err(format!("{target}: no such tag or manifest")),
        (true, Reference::Tag(_)) => Ok(format!("deleted tag {target}")),
        (true, Reference::Digest(_)) => Ok(format!("deleted manifest {target} and its tags")),
    }
}

/// `gc`, `fsck`, `du`, `backup`, `export` and the imports block on files and the database: they run on the blocking pool.
async fn maintenance(core: &Core, command: Command, progress: Option<Progress>) -> Outcome {
    use crate::gc::{self, fsck, usage};
    let core = core.clone();
    let ran = tokio::task::spawn_blocking(move || match command {
        Command::Gc { dry_run } => {
            let opts = gc::GcOptions {
                dry_run,
                progress,
                ..Default::default()
            };
            gc::run_once(&core, &opts).map(|r| Outcome::Ok(format!("gc: {r}")))
        }
        Command::Fsck {
            verify_hashes,
            repair,
        } => {
            let opts = fsck::FsckOptions {
                verify_hashes,
                repair,
                progress,
            };
            fsck::check(&core, &opts).map(|r| match r.clean() {
                true => Outcome::Ok(format!("fsck: {r}")),
                false => Outcome::Err(format!("fsck: {r}")),
            })
        }
        Command::Du { json: false } => usage::measure(&core).map(|u| Outcome::Ok(u.to_string())),
        Command::Du { json: true } => usage::measure(&core).map(|u| {
            let last = core
                .last_gc
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            to_json(&views::storage(&u, last.as_ref(), |_| true)).into()
        }),
        Command::Backup { dest } => {
            use crate::portability::backup;
            let opts = backup::BackupOptions {
                dest,
                mode: backup::Mode::Backup,
                progress,
            };
            backup::run(&core, &opts).map(|r| Outcome::Ok(r.to_string()))
        }
        Command::Export { refs, to } => {
            crate::portability::layout::export(&core, &refs, &to, progress)
                .map(|r| Outcome::Ok(r.to_string()))
        }
        Command::ImportDistribution { path } => {
            crate::portability::distribution::import(&core, &path, progress)
                .map(|r| Outcome::Ok(r.to_string()))
        }
        Command::Import { dir, repo } => {
            crate::portability::layout::import(&core, &dir, repo.as_deref(), progress)
                .map(|r| Outcome::Ok(r.to_string()))
        }
        // `execute_with` sends only gc, fsck and du here.
        other => Ok(Outcome::Err(format!(
            "not a maintenance command: {other:?}"
        ))),
    })
    .await;
    match ran {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Err(e.to_string()),
        Err(e) => Outcome::Err(format!("the command failed: {e}")),
    }
}

/// Progress shown on stderr, rewriting one line, when stderr is a terminal.
pub(crate) fn terminal_progress() -> Option<Progress> {
    io::stderr().is_terminal().then(|| {
        Arc::new(|line: &str| {
            let mut e = io::stderr();
            let _ = write!(e, "\r{line}\x1b[K");
            let _ = e.flush();
        }) as Progress
    })
}

pub(crate) fn clear_progress(shown: bool) {
    if shown && io::stderr().is_terminal() {
        let _ = write!(io::stderr(), "\r\x1b[K");
    }
}

pub fn socket_path(root: &Path) -> PathBuf {
    root.join("admin.sock")
}

/// The control channel's socket, bound at `<root>/admin.sock` but not yet answering. Binding
/// comes before the server says it is listening (and before it accepts a connection), so a
/// CLI command run the moment the listening line appears finds the socket; connections made
/// before [`serve`] runs wait in the backlog. Dropping it removes the socket file.
pub struct Listener {
    socket: std::os::unix::net::UnixListener,
    path: PathBuf,
}

/// Binds `<root>/admin.sock`. The socket is created under a temporary name, restricted to the
/// owner, and only then renamed into place, so there is no moment at which others could
/// connect. The caller must hold the database lock: a socket already at the path is then a
/// dead server's leftover, which this replaces.
pub fn bind(root: &Path) -> io::Result<Listener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(root);
    let staging = root.join(format!(".admin.sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let socket = std::os::unix::net::UnixListener::bind(&staging).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the admin socket {}: {e}", staging.display()),
        )
    })?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, &path))
        .and_then(|()| socket.set_nonblocking(true));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(Listener { socket, path })
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers on the bound control channel until `shutdown` completes; the socket file is
/// removed when it returns.
pub async fn serve(
    core: Core,
    bound: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = UnixListener::from_std(bound.socket.try_clone()?)?;
    let core = std::sync::Arc::new(core);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        continue;
                    }
                };
                let core = core.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(&core, stream).await {
                        tracing::warn!(error = %e, "admin connection failed");
                    }
                });
            }
        }
    }
    drop(listener);
    drop(bound);
    Ok(())
}

async fn handle(core: &Core, stream: UnixStream) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let outcome = match serde_json::from_str::<Command>(&line) {
            Ok(command) => {
                tracing::info!(?command, "admin command");
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let progress: Progress = Arc::new(move |line: &str| {
                    let _ = tx.send(line.to_string());
                });
                let run = execute_with(core, command, Some(progress));
                tokio::pin!(run);
                loop {
                    tokio::select! {
                        outcome = &mut run => break outcome,
                        Some(line) = rx.recv() => {
                            // A client that went away does not stop the command.
                            let _ = send(&mut write, &ProgressLine { progress: line }).await;
                        }
                    }
                }
            }
            Err(e) => Outcome::Err(format!("malformed admin command: {e}")),
        };
        send(&mut write, &outcome).await?;
    }
    Ok(())
}

async fn send(write: &mut (impl AsyncWriteExt + Unpin), line: &impl Serialize) -> io::Result<()> {
    let mut out = serde_json::to_vec(line).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// Sends `command` to the server running on `root`, if there is one. `Ok(None)` means no
/// server listens there, and the caller should open the files itself.
pub async fn call(root: &Path, command: &Command) -> io::Result<Option<Outcome>> {
    let path = socket_path(root);
    let stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot reach the server at {}: {e}", path.display()),
            ))
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(command).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut lines = BufReader::new(read).lines();
    let progress = terminal_progress();
    let mut shown = false;
    loop {
        let answer = lines.next_line().await?.ok_or_else(|| {
            io::Error::other("the server closed the admin connection without answering")
        });
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                clear_progress(shown);
                return Err(e);
            }
        };
        if let Ok(ProgressLine { progress: line }) = serde_json::from_str(&answer) {
            if let Some(p) = &progress {
                p(&line);
                shown = true;
            }
            continue;
        }
        clear_progress(shown);
        return serde_json::from_str(&answer)
            .map(Some)
            .map_err(|e| io::Error::other(format!("malformed admin answer: {e}")));
    }
}

/// Runs `command` on the instance at `config.root`: through the running server when there is
/// one, else by opening the files directly.
pub async fn run(config: crate::Config, command: Command) -> Result<Outcome, crate::Error> {
    if let Some(outcome) = call(&config.root, &command).await? {
        return Ok(outcome);
    }
    let core = Core::open(config)?;
    let progress = terminal_progress();
    let shown = progress.is_some();
    let outcome = execute_with(&core, command, progress).await;
    clear_progress(shown);
    Ok(outcome)
}
