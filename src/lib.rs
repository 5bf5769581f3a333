//! Dockyard: a private OCI container registry whose whole state is one redb file plus one
//! directory of content-addressed blobs.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - `oci`: the protocol's vocabulary (digests, names, manifests, error codes), pure.
//! - `config`: `registry.toml` → `Config`.
//! - `db`: the redb tables and the transactions that keep reference counts exact.
//! - `store`: blob and upload files on disk.
//! - `http`: the warp routes of the distribution API.
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

/// An opened registry: the database and the blob store of one root directory.
pub struct Registry {
    state: Arc<http::State>,
}

impl Registry {
    /// Opens the root named by `config`, creating it on first use. Fails if another process
    /// holds the database.
    pub fn open(config: Config) -> Result<Registry, Error> {
        let store = Store::open(&config.root)?;
        let db = Db::open(&store.path_for(Location::Database))?;
        Ok(Registry {
            state: Arc::new(http::State::new(config, db, store)),
        })
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }

    /// Serves the API on `listener` until `shutdown` completes, then lets requests in flight
    /// finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        warp::serve(http::routes(self.state))
            .incoming(listener)
            .graceful(shutdown)
            .run()
            .await;
    }
}
