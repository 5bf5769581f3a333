//! The `dockyard` command line. Errors from the library surface here as one line on stderr
//! and a non-zero exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::{self, Outcome};
use crate::config::Config;
use crate::users::Secret;
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
    /// Manage users (through the running server when there is one).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage who may pull, push and delete which repositories.
    #[command(subcommand)]
    Acl(AclCommand),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; prompts for the password without echo.
    Add {
        name: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        instance: Instance,
    },
    /// Change a user's password; prompts for it without echo.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        instance: Instance,
    },
    /// Delete a user and the user's grants.
    Del {
        name: String,
        #[command(flatten)]
        instance: Instance,
    },
    /// List the users.
    List {
        #[command(flatten)]
        instance: Instance,
    },
    /// Add the bcrypt users of a Distribution htpasswd file, keeping their passwords.
    ImportHtpasswd {
        file: PathBuf,
        #[command(flatten)]
        instance: Instance,
    },
}

#[derive(Subcommand)]
pub enum AclCommand {
    /// Let SUBJECT (a user, or `anonymous`) do ACTIONS to the repositories PATTERN matches.
    Grant {
        subject: String,
        /// `*` matches one path component, `**` any number: `team-a/*`, `alice/**`, `**`.
        pattern: String,
        /// A comma list of pull, push, delete, admin (admin implies the others).
        actions: String,
        #[command(flatten)]
        instance: Instance,
    },
    /// Remove SUBJECT's grant on PATTERN.
    Revoke {
        subject: String,
        pattern: String,
        #[command(flatten)]
        instance: Instance,
    },
    /// List the grants, of every subject or of one.
    List {
        subject: Option<String>,
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
        Command::User(c) => user(c),
        Command::Acl(c) => acl(c),
    }
}

fn user(c: UserCommand) -> Result<(), crate::Error> {
    use admin::Command as A;
    let (instance, command) = match c {
        UserCommand::Add {
            name,
            password_stdin,
            instance,
        } => {
            let password = read_password(&name, password_stdin)?;
            (instance, A::UserAdd { name, password })
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            instance,
        } => {
            let password = read_password(&name, password_stdin)?;
            (instance, A::UserPasswd { name, password })
        }
        UserCommand::Del { name, instance } => (instance, A::UserDel { name }),
        UserCommand::List { instance } => (instance, A::UserList),
        UserCommand::ImportHtpasswd { file, instance } => {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                crate::Error::Command(format!("cannot read {}: {e}", file.display()))
            })?;
            let htpasswd = Secret::new(text);
            (instance, A::UserImportHtpasswd { htpasswd })
        }
    };
    execute(instance, command)
}

fn acl(c: AclCommand) -> Result<(), crate::Error> {
    use admin::Command as A;
    let (instance, command) = match c {
        AclCommand::Grant {
            subject,
            pattern,
            actions,
            instance,
        } => (
            instance,
            A::AclGrant {
                subject,
                pattern,
                actions,
            },
        ),
        AclCommand::Revoke {
            subject,
            pattern,
            instance,
        } => (instance, A::AclRevoke { subject, pattern }),
        AclCommand::List { subject, instance } => (instance, A::AclList { subject }),
    };
    execute(instance, command)
}

/// Runs a control command on the instance (through its server if one runs) and prints the
/// answer; a refusal becomes the one-line error `main` prints.
fn execute(instance: Instance, command: admin::Command) -> Result<(), crate::Error> {
    let config = instance.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(admin::run(config, command))? {
        Outcome::Ok(text) if text.is_empty() => Ok(()),
        Outcome::Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Outcome::Err(message) => Err(crate::Error::Command(message)),
    }
}

/// The new password: the first line of stdin with `--password-stdin`, else typed twice at
/// the terminal without echo. It never appears in argv or in any log.
fn read_password(user: &str, from_stdin: bool) -> Result<Secret, crate::Error> {
    use std::io::{BufRead, IsTerminal};
    let fail = |m: String| crate::Error::Command(m);
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let password = line.strip_suffix('\n').unwrap_or(&line);
        let password = password.strip_suffix('\r').unwrap_or(password);
        return Ok(Secret::new(password));
    }
    if !std::io::stdin().is_terminal() {
        return Err(fail(
            "standard input is not a terminal: pass --password-stdin to read the password from it"
                .to_string(),
        ));
    }
    let first = rpassword::prompt_password(format!("Password for {user}: "))?;
    crate::users::check_password(&first).map_err(|e| fail(e.to_string()))?;
    let again = rpassword::prompt_password("Retype the password: ")?;
    if first != again {
        return Err(fail("the passwords do not match".to_string()));
    }
    Ok(Secret::new(first))
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
