//! The `dockyard` command line. Errors from the library surface here as one line on stderr
//! and a non-zero exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin;
use crate::config::Config;
use crate::Registry;

#[derive(Parser)]
#[command(
    name = "dockyard",
    version,
    about = "A private OCI container registry in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the registry API.
    Serve(Instance),
    /// Collect garbage now: unreferenced blobs past their grace, expired uploads, leftovers.
    /// Goes through the running server if there is one.
    Gc {
        #[command(flatten)]
        instance: Instance,
        /// Report what would be freed; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check reference counts, rows against files, and (optionally) every blob's hash.
    /// Exits non-zero with a summary when something is wrong.
    Fsck {
        #[command(flatten)]
        instance: Instance,
        /// Re-hash every blob and manifest to catch bit rot.
        #[arg(long)]
        verify_hashes: bool,
        /// Fix counts and indexes and remove orphans; never deletes a blob a manifest names.
        #[arg(long)]
        repair: bool,
    },
    /// Bytes per repository, bytes shared between repositories, and what GC would reclaim.
    Du {
        #[command(flatten)]
        instance: Instance,
    },
}

/// Which registry instance a command works on.
#[derive(Args, Clone)]
pub struct Instance {
    /// The config file [default: ./registry.toml when present, else built-in defaults].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Listen address, overriding `[server] listen` (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory, overriding `[storage] root`.
    #[arg(long)]
    pub root: Option<PathBuf>,
}

impl Instance {
    pub fn config(&self) -> Result<Config, crate::Error> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if Path::new("registry.toml").exists() => {
                Config::load(Path::new("registry.toml"))?
            }
            None => Config::default(),
        };
        if let Some(l) = self.listen {
            config.listen = l;
        }
        if let Some(r) = &self.root {
            config.root = r.clone();
        }
        Ok(config)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dockyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

pub fn run(cli: Cli) -> Result<(), crate::Error> {
    match cli.command {
        Command::Serve(instance) => {
            let config = instance.config()?;
            init_tracing(&config.log_level);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(config))
        }
        Command::Gc { instance, dry_run } => admin(&instance, admin::Command::Gc { dry_run }),
        Command::Fsck {
            instance,
            verify_hashes,
            repair,
        } => admin(
            &instance,
            admin::Command::Fsck {
                verify_hashes,
                repair,
            },
        ),
        Command::Du { instance } => admin(&instance, admin::Command::Du),
    }
}

/// Runs a control-channel command on the instance (through its server when one runs) and
/// prints the answer: on stdout when it succeeded, as the error otherwise.
fn admin(instance: &Instance, command: admin::Command) -> Result<(), crate::Error> {
    let config = instance.config()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(admin::run(config, command))? {
        admin::Outcome::Ok(text) => {
            println!("{text}");
            Ok(())
        }
        admin::Outcome::Err(text) => Err(crate::Error::Failed(text)),
    }
}

async fn serve(config: Config) -> Result<(), crate::Error> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
    let addr = listener.local_addr()?;
    let registry = Registry::open(config)?;
    tracing::info!(
        root = %registry.config().root.display(),
        "dockyard listening on http://{addr}"
    );
    registry.serve(listener, shutdown_signal()).await;
    tracing::info!("dockyard stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
