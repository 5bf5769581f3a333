//! Dockyard: a private OCI container registry whose whole state is one redb file plus one
//! directory of content-addressed blobs.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - `oci`: the protocol's vocabulary (digests, names, manifests, error codes), pure.
//! - `config`: `registry.toml` → `Config`.
//! - `db`: the redb tables and the transactions that keep reference counts exact.
//! - `store`: blob and upload files on disk.
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
pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod oci;
pub mod store;

use std::future::Future;
use std::sync::Arc;

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
}

/// What every entry point works on: the configuration, the database and the blob store of
/// one root directory. Cheap to clone (the database handle is shared).
#[derive(Clone)]
pub struct Core {
    pub config: Config,
    pub db: Db,
    pub store: Store,
}

impl Core {
    /// Opens the root named by `config`, creating it on first use. Fails if another process
    /// holds the database.
    pub fn open(config: Config) -> Result<Core, Error> {
        let store = Store::open(&config.root)?;
        let db = Db::open(&store.path_for(Location::Database))?;
        Ok(Core { config, db, store })
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

    /// Serves the API on `listener`, and the control channel on `<root>/admin.sock`, until
    /// `shutdown` completes; then lets requests in flight finish.
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
        // The API serves even if the control channel cannot (say, a root path too long for a
        // Unix socket); the CLI then reports that it cannot reach the server.
        let state = Arc::new(http::State::new(self.core));
        let http = http::serve::run(listener, http::routes(state), stopped(stop_rx));
        tokio::pin!(http);
        tokio::select! {
            _ = &mut http => {}
            _ = shutdown => {
                let _ = stop_tx.send(true);
                http.await;
            }
        }
        let _ = stop_tx.send(true);
        match admin.await {
            Ok(Err(e)) => tracing::error!(error = %e, "admin socket failed"),
            Err(e) => tracing::error!(error = %e, "admin socket task failed"),
            Ok(Ok(())) => {}
        }
    }
}
