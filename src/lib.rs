//! Dockyard: a private OCI container registry whose whole state is one redb file plus one
//! directory of content-addressed blobs.
//!
//! Module map (see ARCHITECTURE.md for the invariants):
//! - `oci`: the protocol's vocabulary (digests, names, manifests, error codes), pure.
//! - `config`: `registry.toml` → `Config`.
//! - `db`: the redb tables and the transactions that keep reference counts exact.
//! - `store`: blob and upload files on disk.
//! - `http`: the warp routes of the distribution API.
//! - `users`: user names, bcrypt passwords, repository patterns and permission rules, pure.
//! - `token`: bearer tokens of the built-in token service (scopes, signing), pure.
//! - `access`: users and grants of a running instance, and the snapshot requests consult.
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

pub mod access;
pub mod admin;
pub mod cli;
pub mod config;
pub mod db;
pub mod http;
pub mod oci;
pub mod store;
pub mod token;
pub mod users;

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
    /// A command refused or failed; the message is for the person at the terminal.
    #[error("{0}")]
    Command(String),
}

/// What every entry point works on: the configuration, the database and the blob store of
/// one root directory. Cheap to clone (the database handle is shared).
#[derive(Clone)]
pub struct Core {
    pub config: Config,
    pub db: Db,
    pub store: Store,
    /// Users and grants as requests see them (shared with the control channel).
    pub access: Arc<access::Access>,
}

impl Core {
    /// Opens the root named by `config`, creating it on first use. Fails if another process
    /// holds the database.
    pub fn open(config: Config) -> Result<Core, Error> {
        let store = Store::open(&config.root)?;
        let db = Db::open(&store.path_for(Location::Database))?;
        Ok(Core {
            config,
            db,
            store,
            access: Arc::default(),
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
        self.check_auth(&listener).await;
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
