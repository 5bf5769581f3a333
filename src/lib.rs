//! Dockyard: a private OCI container registry whose whole state is one redb file plus one
//! directory of content-addressed blobs.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - `oci`: the protocol's vocabulary (digests, names, manifests, error codes), pure.
//! - `config`: `registry.toml` → `Config`.
//! - `db`: the redb tables and the transactions that keep reference counts exact.
//! - `store`: blob and upload files on disk.
//! - `blob_locks`: per-digest locks and "last seen" times shared by pushes and the GC.
//! - `gc`: one garbage-collection pass; `fsck`: consistency check and repair; `usage`: `du`.
//! - `http`: the warp routes of the distribution API.
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
//! registry.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod blob_locks;
pub mod cli;
pub mod config;
pub mod db;
pub mod fsck;
pub mod gc;
pub mod http;
pub mod oci;
pub mod store;
pub mod usage;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use config::Config;

use db::Db;
use store::{Location, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Db(#[from] db::DbError),
    #[error("config: {0}")]
    Config(#[from] config::ConfigError),
    /// A command ran and reports failure (a GC pass that could not finish, an fsck that
    /// found problems): the message is for a person.
    #[error("{0}")]
    Failed(String),
}

impl From<oci::RegistryError> for Error {
    fn from(e: oci::RegistryError) -> Self {
        Error::Failed(e.message)
    }
}

/// What every entry point works on: the configuration, the database and the blob store of
/// one root directory. Cheap to clone (the database handle is shared).
#[derive(Clone)]
pub struct Core {
    pub config: Config,
    pub db: Db,
    pub store: Store,
    /// Shared by the requests that make or show a blob and the GC that deletes blobs.
    pub blob_locks: Arc<blob_locks::BlobLocks>,
    /// Held by a GC pass or an `fsck --repair`, so they take turns.
    pub maintenance: Arc<Mutex<()>>,
    /// Set when the server starts shutting down: a GC pass (timer or admin) stops between
    /// two batches.
    pub stopping: Arc<AtomicBool>,
}

impl Core {
    /// Opens the root named by `config`, creating it on first use. Fails if another process
    /// holds the database.
    pub fn open(config: Config) -> Result<Core, Error> {
        let store = Store::open(&config.root)?;
        let db = Db::open(&store.path_for(Location::Database))?;
        let blob_locks = Arc::new(blob_locks::BlobLocks::new(config.gc.lease()));
        Ok(Core {
            config,
            db,
            store,
            blob_locks,
            maintenance: Arc::new(Mutex::new(())),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// An opened registry, ready to serve.
pub struct Registry {
    core: Core,
}

impl Registry {
    /// Opens the root named by `config`; see [`Core::open`].
    pub fn open(config: Config) -> Result<Registry, Error> {
        Ok(Registry {
            core: Core::open(config)?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.core.config
    }

    /// The opened root, shared with the server once it serves: for embedding programs and
    /// tests that run `gc::run_once` or `fsck::check` beside it.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Serves the API on `listener`, the control channel on `<root>/admin.sock`, and a GC pass
    /// every `[gc] interval`, until `shutdown` completes; then lets requests in flight finish
    /// and stops the GC between two batches.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let admin = tokio::spawn(admin::serve(self.core.clone(), stopped(stop_rx.clone())));
        let gc_stop = self.core.stopping.clone();
        let gc_timer = tokio::spawn(gc_timer(self.core.clone(), stopped(stop_rx.clone())));
        // The API serves even if the control channel cannot (say, a root path too long for a
        // Unix socket); the CLI then reports that it cannot reach the server.
        let state = Arc::new(http::State::new(self.core));
        let http = warp::serve(http::routes(state))
            .incoming(listener)
            .graceful(stopped(stop_rx))
            .run();
        tokio::pin!(http);
        tokio::select! {
            _ = &mut http => {}
            _ = shutdown => {
                let _ = stop_tx.send(true);
                gc_stop.store(true, std::sync::atomic::Ordering::Relaxed);
                http.await;
            }
        }
        let _ = stop_tx.send(true);
        gc_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = gc_timer.await {
            tracing::error!(error = %e, "gc timer task failed");
        }
        match admin.await {
            Ok(Err(e)) => tracing::error!(error = %e, "admin socket failed"),
            Err(e) => tracing::error!(error = %e, "admin socket task failed"),
            Ok(Ok(())) => {}
        }
    }
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
