//! Dockyard: a private OCI container registry whose whole state is one redb file plus one
//! directory of content-addressed blobs.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - `oci`: the protocol's vocabulary (digests, names, manifests, error codes), pure.
//! - `config`: `registry.toml` → `Config`.
//! - `db`: the redb tables and the transactions that keep reference counts exact.
//! - `store`: blob and upload files on disk.
//! - `http`: the warp routes of the distribution API, health and metrics endpoints.
//! - `server`: the accept loop: TLS, request ids, access log, graceful shutdown.
//! - `metrics`: counters and histograms (prometheus-client), in the Prometheus text format.
//! - `auth`: who may do what: `users` (names, bcrypt passwords, patterns, policy, pure),
//!   `token` (bearer tokens, pure), `access` (users and grants of a running instance).
//! - `gc`: one garbage-collection pass, with `blob_locks` (per-digest locks and "last seen"
//!   times shared by pushes and the GC), `fsck` (consistency check and repair), `usage` (`du`).
//! - `events`: webhooks (`[[webhook]]`): the outbox written with each change, Distribution's
//!   envelope and its signature, and one delivery task per endpoint.
//! - `policy`: `[[policy]]` rules, pure: immutable tags, quotas, and which tags retention
//!   expires (enforced by `db::manifests` and the GC pass).
//! - `portability`: data in and out as files: `backup`/`restore`, OCI-layout `export`/`import`,
//!   `import-distribution`.
//! - `views`: what the web UI and `dockyard ls`/`show` display, built from database reads.
//! - `admin`: the control channel (a Unix socket) through which the CLI reaches a server.
//! - `cli`: the `dockyard` command line.
//!
//! Embedding: build a [`Config`], open a [`Registry`], and serve it on a listener you bound:
//!
//! ```no_run
//! # async fn demo() -> Result<(), dockyard::Error> {
//! let config = dockyard::Config { root: "/tmp/registry".into(), ..Default::default() };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let registry = dockyard::Registry::open(config)?;
//! registry.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod gc;
pub mod http;
pub mod http_client;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod policy;
pub mod portability;
pub mod server;
pub mod store;
pub mod views;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use config::Config;

use auth::access;
use db::Db;
use gc::blob_locks;
use store::{Location, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("config: {0}")]
    Config(#[from] config::ConfigError),
    /// Another process (or this one) has the database open: a server, perhaps one still
    /// starting or one whose `admin.sock` was removed, or another offline command.
    #[error(
        "{} is held by another dockyard process (a server, still starting or without its \
         admin.sock, or another command); retry once it is up, or stop it first",
        .0.display()
    )]
    Held(std::path::PathBuf),
    /// A command refused or failed; the message is for the person at the terminal.
    #[error("{0}")]
    Command(String),
}

impl From<oci::RegistryError> for Error {
    fn from(e: oci::RegistryError) -> Self {
        Error::Command(e.message)
    }
}

/// What every entry point works on: the configuration, the database and the blob store of
/// one root directory. Cheap to clone (the database handle is shared).
#[derive(Clone)]
pub struct Core {
    pub config: Config,
    pub db: Db,
    pub store: Store,
    pub metrics: Arc<metrics::Metrics>,
    /// Users and grants as requests see them (shared with the control channel).
    pub access: Arc<access::Access>,
    /// Shared by the requests that make or show a blob and the GC that deletes blobs.
    pub blob_locks: Arc<blob_locks::BlobLocks>,
    /// Held by a GC pass or an `fsck --repair`, so they take turns.
    pub maintenance: Arc<Mutex<()>>,
    /// Hash state of uploads in progress (see `store::Cursors`).
    pub cursors: Arc<store::Cursors>,
    /// Set when the server starts shutting down: a GC pass (timer or admin) stops between
    /// two batches.
    pub stopping: Arc<AtomicBool>,
    /// When the last GC pass of this process ended (Unix seconds) and what it freed, for the
    /// UI's storage page; not kept across restarts.
    pub last_gc: Arc<Mutex<Option<(u64, gc::GcReport)>>>,
    /// The `[[mirror]]` upstreams and what the mirror keeps in memory.
    pub mirrors: Arc<mirror::Mirrors>,
    /// Webhooks' running side: wakes delivery tasks after a commit (see `events`).
    pub events: Arc<events::Hub>,
}

impl Core {
    /// Opens the root named by `config`, creating it on first use. Fails if another process
    /// holds the database.
    pub fn open(config: Config) -> Result<Core, Error> {
        // The skeleton and the database file are made durable together, by `sync_root`
        // below, before anything is served.
        let store = Store::open_unsynced(&config.root, &config.backend)?;
        let db = match Db::open(&store.path_for(Location::Database)) {
            Err(db::DbError::Redb(redb::Error::DatabaseAlreadyOpen)) => {
                return Err(Error::Held(config.root.clone()))
            }
            opened => opened?,
        };
        store.sync_root()?;
        let blob_locks = Arc::new(blob_locks::BlobLocks::new(config.gc.lease()));
        let mirrors = Arc::new(mirror::Mirrors::new(&config.mirrors).map_err(Error::Command)?);
        Ok(Core {
            mirrors,
            db,
            store,
            metrics: Arc::default(),
            access: Arc::default(),
            blob_locks,
            maintenance: Arc::new(Mutex::new(())),
            cursors: Arc::default(),
            stopping: Arc::new(AtomicBool::new(false)),
            last_gc: Arc::default(),
            events: Arc::new(events::Hub::new(&config.webhooks)),
            config,
        })
    }
}

/// An opened registry, ready to serve.
pub struct Registry {
    core: Core,
    tls: Option<Arc<server::Tls>>,
    /// The control channel, once [`Registry::bind_admin`] bound it.
    admin: Option<admin::Listener>,
}

impl Registry {
    /// Opens the root named by `config` (see [`Core::open`]) and loads the TLS certificate if
    /// one is configured, so that a bad certificate fails here rather than at the first client.
    pub fn open(config: Config) -> Result<Registry, Error> {
        config.check_snapshot_grace().map_err(Error::Command)?;
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(server::Tls::load(&files.cert, &files.key)?)),
            None => None,
        };
        let core = Core::open(config)?;
        for (path, mode) in core.store.exposed() {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "readable by other users: the database holds the token signing key and \
                 password hashes; run `chmod -R go= {}` or `dockyard fsck --repair`",
                core.store.root().display()
            );
        }
        Ok(Registry {
            core,
            tls,
            admin: None,
        })
    }

    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// Binds the control channel (`<root>/admin.sock`) now, so that it exists before the
    /// caller announces the server: a CLI command run at once reaches it (and waits for
    /// [`Registry::serve`] to answer) instead of finding the database locked. `serve` binds
    /// it itself when this was not called.
    pub fn bind_admin(&mut self) -> std::io::Result<()> {
        if self.admin.is_none() {
            self.admin = Some(admin::bind(self.core.store.root())?);
        }
        Ok(())
    }

    /// The loaded certificate, to [`reload`](server::Tls::reload) on SIGHUP.
    pub fn tls(&self) -> Option<Arc<server::Tls>> {
        self.tls.clone()
    }

    /// Says in the log how requests are authenticated; warns when the API is open to more
    /// than this machine. In token mode, creates the signing key on first start.
    async fn check_auth(&self, listener: &tokio::net::TcpListener) {
        let mode = self.core.config.auth.mode;
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        match mode {
            config::AuthMode::None if !loopback => tracing::warn!(
                "auth.mode is \"none\" and the API listens beyond loopback: anyone who can \
                 reach it may pull, push and delete everything"
            ),
            config::AuthMode::None => {}
            config::AuthMode::Token => {
                if let Err(e) = self.core.access.token_key(&self.core.db).await {
                    tracing::error!(error = %e, "cannot create the token signing key");
                }
                tracing::info!("auth: token (token service at /token)");
            }
            config::AuthMode::Basic => tracing::info!("auth: basic"),
        }
    }

    /// The opened root, shared with the server once it serves: for embedding programs and
    /// tests that run `gc::run_once` or `fsck::check` beside it.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Serves the API on `listener` (and `/metrics` on `[metrics] listen` when set), the
    /// control channel on `<root>/admin.sock`, and a GC pass every `[gc] interval`, until
    /// `shutdown` completes; then stops accepting, lets requests in flight finish up to
    /// `[server] shutdown_timeout`, and stops the GC between two batches.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        // Before anything accepts: the control channel is there by the time the API answers.
        // The API serves even if the control channel cannot (say, a root path too long for a
        // Unix socket); the CLI then reports that it cannot reach the server.
        if let Err(e) = self.bind_admin() {
            tracing::error!(error = %e, "no control channel: CLI commands cannot reach this server");
        }
        let metrics_listener = match self.core.config.metrics_listen {
            Some(addr) if self.core.config.metrics_enabled => {
                let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr} for metrics: {e}"),
                    )
                })?;
                tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
                Some(l)
            }
            _ => None,
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let timeout = self.core.config.shutdown_timeout;
        let limits = self.core.config.limits;
        let metrics = self.core.metrics.clone();
        self.check_auth(&listener).await;
        if let Some(bucket) = self.core.store.bucket().cloned() {
            // A wrong endpoint, bucket or key fails the start, not the first pull.
            let b = bucket.clone();
            store::s3::io(async move { b.check().await })
                .await
                .map_err(|e| Error::Command(format!("storage.s3: {e}")))?;
            tracing::info!(bucket = ?bucket, redirect = bucket.config().redirect, "blobs in S3");
            let local = gc::blob_files(self.core.store.root()).map_or(0, |f| f.len());
            if local > 0 {
                tracing::warn!(
                    files = local,
                    "blob files under blobs/ are not served with backend \"s3\": stop the \
                     server and run `dockyard migrate-storage --to s3`"
                );
            }
        }
        let gc_stop = self.core.stopping.clone();
        if let Ok(a) = listener.local_addr() {
            self.core.events.set_source_addr(a.to_string());
        }
        let hooks = start_webhooks(&self.core, &stop_rx).await?;
        let gc_timer = tokio::spawn(gc_timer(self.core.clone(), stopped(stop_rx.clone())));
        // With the S3 backend: the database into the bucket, at start, every interval, and
        // once more after the last request has been answered.
        let (served_tx, served_rx) = tokio::sync::watch::channel(false);
        let snapshots = tokio::spawn(portability::snapshots::timer(
            self.core.clone(),
            stopped(served_rx),
        ));
        let admin = self.admin.take().map(|bound| {
            tokio::spawn(admin::serve(
                self.core.clone(),
                bound,
                stopped(stop_rx.clone()),
            ))
        });
        let state = Arc::new(http::State::new(self.core));
        let metrics_server = metrics_listener.map(|l| {
            let svc = warp::service(http::metrics_only(state.clone()));
            tokio::spawn(server::run(
                l,
                None,
                svc,
                metrics.clone(),
                stopped(stop_rx.clone()),
                timeout,
                limits,
            ))
        });
        let api = server::run(
            listener,
            self.tls,
            warp::service(http::routes(state)),
            metrics,
            stopped(stop_rx),
            timeout,
            limits,
        );
        tokio::pin!(api);
        tokio::select! {
            _ = &mut api => {}
            _ = shutdown => {
                let _ = stop_tx.send(true);
                gc_stop.store(true, std::sync::atomic::Ordering::Relaxed);
                api.await;
            }
        }
        let _ = stop_tx.send(true);
        gc_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = served_tx.send(true);
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        for h in hooks {
            let _ = h.await;
        }
        if let Err(e) = gc_timer.await {
            tracing::error!(error = %e, "gc timer task failed");
        }
        if let Err(e) = snapshots.await {
            tracing::error!(error = %e, "snapshot timer task failed");
        }
        if let Some(task) = admin {
            match task.await {
                Ok(Err(e)) => tracing::error!(error = %e, "admin socket failed"),
                Err(e) => tracing::error!(error = %e, "admin socket task failed"),
                Ok(Ok(())) => {}
            }
        }
        Ok(())
    }
}

/// Drops the outbox of every endpoint no longer configured (saying so), then starts one
/// delivery task per `[[webhook]]`, each ending when `stop` turns true.
async fn start_webhooks(
    core: &Core,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, Error> {
    let hooks = core.config.webhooks.clone();
    let ids: Vec<String> = hooks.0.iter().map(|h| h.id.clone()).collect();
    // Looked at first, so that the usual start (no endpoint removed) commits nothing: a
    // durable commit is an fsync, which on a busy disk costs more than the rest of start-up.
    // A read of one small table, on this thread like the database's opening before it.
    let stale = core.db.read_blocking(|tx| {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        Ok(db::events::any_unconfigured(tx, &ids)?)
    })?;
    let gone = if stale {
        core.db
            .write(move |tx| {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                Ok(db::events::prune(tx, &ids)?)
            })
            .await?
    } else {
        Vec::new()
    };
    for (id, n) in gone {
        tracing::warn!(
            endpoint = %id,
            dropped = n,
            "webhook endpoint no longer in the config: its {n} queued events are dropped"
        );
    }
    let mut tasks = Vec::new();
    for i in 0..hooks.0.len() {
        let mut rx = stop.clone();
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tasks.push(tokio::spawn(events::deliver::run(core.clone(), i, stopped)));
    }
    if !hooks.is_empty() {
        tracing::info!("webhooks: {} endpoints", hooks.0.len());
    }
    Ok(tasks)
}

/// Runs a GC pass every `[gc] interval` until `shutdown`. The pass runs on the blocking pool;
/// `Core::stopping` ends one in progress between two batches.
async fn gc_timer(core: Core, shutdown: impl Future<Output = ()>) {
    let Some(every) = core.config.gc.interval else {
        return;
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (c, opts) = (core.clone(), gc::GcOptions::default());
        match tokio::task::spawn_blocking(move || gc::run_once(&c, &opts)).await {
            Ok(Ok(report)) if report.bytes() > 0 || report.manifests > 0 => {
                tracing::info!("gc: {report}")
            }
            Ok(Ok(report)) => tracing::debug!("gc: {report}"),
            Ok(Err(e)) => tracing::error!(error = %e, "gc pass failed"),
            Err(e) => tracing::error!(error = %e, "gc task failed"),
        }
    }
}
