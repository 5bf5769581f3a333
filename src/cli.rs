//! The `dockyard` command line. Errors from the library surface here as one line on stderr
//! and a non-zero exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::admin::{self, Outcome};
use crate::auth::users::Secret;
use crate::config::{Config, LogFormat};
use crate::Registry;

#[derive(Parser)]
#[command(
    name = "dockyard",
    version,
    about = "A private OCI container registry in one binary",
    long_about = "A private OCI container registry in one binary. All state lives under one \
                  root directory: a redb database file and a directory of content-addressed \
                  blobs. Start with `dockyard serve`; see registry.toml for every setting."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the registry API (and /healthz, /readyz, /metrics).
    Serve(Serve),
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
    /// Move the blobs of a root from <root>/blobs/ into the S3 bucket of [storage.s3],
    /// verifying each object; set `[storage] backend = "s3"` first, and stop the server.
    MigrateStorage {
        #[command(flatten)]
        instance: Instance,
        /// The backend to move to (only `s3`).
        #[arg(long)]
        to: String,
        /// Remove the local blob files once every blob is in the bucket and verified.
        #[arg(long)]
        delete_local: bool,
    },
    /// The webhook outbox of each endpoint: events waiting, dropped, delivered and failed, and
    /// the oldest waiting ones (through the running server if there is one).
    Events {
        #[command(flatten)]
        instance: Instance,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Bytes per repository, bytes shared between repositories, and what GC would reclaim.
    Du {
        #[command(flatten)]
        instance: Instance,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List repositories with their tags and sizes (through the running server if there is
    /// one).
    Ls {
        /// Only names containing this text; with a `*`, a grant pattern (`team/*`, `a/**`).
        pattern: Option<String>,
        #[command(flatten)]
        instance: Instance,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a repository's tags (NAME), or a manifest (NAME:TAG, NAME@DIGEST): config,
    /// platforms, layers, referrers.
    Show {
        target: String,
        #[command(flatten)]
        instance: Instance,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a tag (NAME:TAG) or a manifest and its tags (NAME@DIGEST), by the API's rules.
    /// Asks first unless --yes.
    Rm {
        target: String,
        #[command(flatten)]
        instance: Instance,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Copy the whole registry, as it is at one instant, into DEST (through the running server
    /// when there is one). Into the same DEST again, copies only what changed.
    Backup {
        /// A new or empty directory, or an earlier backup, outside the root.
        dest: PathBuf,
        #[command(flatten)]
        instance: Instance,
    },
    /// Restore a backup (or any stopped root) into this root, which must be empty, or
    /// stopped and replaced with --force. Every blob is re-hashed on the way. With
    /// --from-bucket: recreate the root from the latest database snapshot in the S3 bucket
    /// of --config (a takeover on a new machine; loses what was committed after it).
    Restore {
        /// The backup directory (or stopped root) to copy from.
        #[arg(
            required_unless_present = "from_bucket",
            conflicts_with = "from_bucket"
        )]
        src: Option<PathBuf>,
        /// Take the database from the latest snapshot the server wrote into the bucket of
        /// `[storage.s3]` (blobs stay in the bucket).
        #[arg(long)]
        from_bucket: bool,
        /// Replace the contents of a non-empty root (no server may be running on it).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        instance: Instance,
    },
    /// Write images into an OCI image layout (what skopeo, umoci, podman and oras read):
    /// NAME for every tag of a repository, NAME:TAG, NAME@DIGEST.
    Export {
        #[arg(required = true)]
        images: Vec<String>,
        /// The layout directory: new, empty, or a layout to add to.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        instance: Instance,
    },
    /// Read an OCI image layout into repositories, verifying every digest.
    Import {
        dir: PathBuf,
        /// Put every image into this repository (else the one `export` recorded, or the
        /// REPO of a REPO:TAG name).
        #[arg(long)]
        repo: Option<String>,
        #[command(flatten)]
        instance: Instance,
    },
    /// Move a CNCF Distribution (registry:2) filesystem store into this root: every
    /// repository, tag, manifest and blob, digests unchanged. Reads PATH only; resumable.
    ImportDistribution {
        /// Distribution's root directory (the one holding docker/registry/v2).
        path: PathBuf,
        #[command(flatten)]
        instance: Instance,
    },
    /// Validate a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print shell completions for bash, zsh or fish.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage users (through the running server when there is one).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage who may pull, push and delete which repositories.
    #[command(subcommand)]
    Acl(AclCommand),
    /// The pull-through mirror's cache (`[[mirror]]`).
    #[command(subcommand)]
    Mirror(MirrorCommand),
}

#[derive(Subcommand)]
pub enum MirrorCommand {
    /// Fetch images into the cache through the running server (PREFIX/NAME[:TAG|@DIGEST],
    /// e.g. docker.io/library/alpine:3), so they are there before the link drops.
    Pull {
        #[arg(required = true)]
        images: Vec<String>,
        /// Only this platform of a multi-platform image (os/arch[/variant]); default: all.
        #[arg(long)]
        platform: Option<String>,
        #[command(flatten)]
        instance: Instance,
    },
    /// The cached repositories: size, manifests, last pull, and the cache's total.
    List {
        #[command(flatten)]
        instance: Instance,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
pub enum ConfigCommand {
    /// Check a registry.toml: unknown keys and bad values are named; exits non-zero on error.
    Check {
        /// The file to check [default: ./registry.toml].
        #[arg(long, short = 'c', default_value = "registry.toml")]
        config: PathBuf,
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

/// Which registry instance a command works on. Only flags every command uses belong here:
/// a flag a command would ignore (`gc --listen`) is refused by clap instead.
#[derive(Args, Clone)]
pub struct Instance {
    /// The config file [default: ./registry.toml when present, else built-in defaults].
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
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
        if let Some(r) = &self.root {
            config.root = r.clone();
        }
        Ok(config)
    }
}

/// `dockyard serve`: the instance, and where to listen.
#[derive(Args, Clone)]
pub struct Serve {
    #[command(flatten)]
    pub instance: Instance,
    /// Listen address, overriding `[server] listen` (port 0 picks a free port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

impl Serve {
    pub fn config(&self) -> Result<Config, crate::Error> {
        let mut config = self.instance.config()?;
        if let Some(l) = self.listen {
            config.listen = l;
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

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

pub fn run(cli: Cli) -> Result<(), crate::Error> {
    // Whatever the caller's umask, what Dockyard creates (the root, the database, blobs,
    // uploads, the admin socket) is its owner's alone: the database holds the token signing
    // key and password hashes, and blobs may belong to private repositories.
    // SAFETY: a plain syscall that cannot fail.
    unsafe { libc::umask(0o077) };
    match cli.command {
        Command::Serve(serve_args) => {
            let config = serve_args.config()?;
            init_tracing(&config);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(config))
        }
        Command::Config(ConfigCommand::Check { config }) => {
            let c = Config::load(&config)?;
            let blobs = match &c.backend {
                crate::config::Backend::Filesystem => "filesystem".to_string(),
                crate::config::Backend::S3(s3) => {
                    // The secret file must be readable: a server would fail at start.
                    crate::store::s3::Bucket::connect(s3).map_err(crate::Error::Command)?;
                    format!(
                        "s3 bucket {} at {}{}",
                        s3.bucket,
                        s3.endpoint.as_deref().unwrap_or("AWS"),
                        if s3.redirect { ", redirect" } else { "" }
                    )
                }
            };
            println!(
                "{}: ok (listen {}, root {}, blobs {blobs}, tls {}, {} webhooks)",
                config.display(),
                c.listen,
                c.root.display(),
                if c.tls.is_some() { "on" } else { "off" },
                c.webhooks.0.len()
            );
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dockyard",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::User(c) => user(c),
        Command::Acl(c) => acl(c),
        Command::Mirror(MirrorCommand::Pull {
            images,
            platform,
            instance,
        }) => execute(instance, admin::Command::MirrorPull { images, platform }),
        Command::Mirror(MirrorCommand::List { instance, json }) => {
            execute(instance, admin::Command::MirrorList { json })
        }
        Command::Gc { instance, dry_run } => execute(instance, admin::Command::Gc { dry_run }),
        Command::Fsck {
            instance,
            verify_hashes,
            repair,
        } => execute(
            instance,
            admin::Command::Fsck {
                verify_hashes,
                repair,
            },
        ),
        Command::Du { instance, json } => execute(instance, admin::Command::Du { json }),
        Command::Events { instance, json } => execute(instance, admin::Command::Events { json }),
        Command::Ls {
            pattern,
            instance,
            json,
        } => execute(instance, admin::Command::Ls { pattern, json }),
        Command::Show {
            target,
            instance,
            json,
        } => execute(instance, admin::Command::Show { target, json }),
        Command::Rm {
            target,
            instance,
            yes,
        } => {
            if !yes {
                confirm(&format!("Delete {target}?"))?;
            }
            execute(instance, admin::Command::Rm { target })
        }
        Command::MigrateStorage {
            instance,
            to,
            delete_local,
        } => migrate_storage(instance, &to, delete_local),
        Command::Backup { dest, instance } => {
            let dest = std::path::absolute(&dest)?;
            execute(instance, admin::Command::Backup { dest })
        }
        Command::Restore {
            src,
            from_bucket,
            force,
            instance,
        } => match src {
            Some(src) if !from_bucket => restore(&src, force, instance),
            _ => restore_from_bucket(force, instance),
        },
        Command::Export {
            images,
            to,
            instance,
        } => {
            let to = std::path::absolute(&to)?;
            execute(instance, admin::Command::Export { refs: images, to })
        }
        Command::ImportDistribution { path, instance } => {
            let path = std::path::absolute(&path)?;
            execute(instance, admin::Command::ImportDistribution { path })
        }
        Command::Import {
            dir,
            repo,
            instance,
        } => {
            let dir = std::path::absolute(&dir)?;
            execute(instance, admin::Command::Import { dir, repo })
        }
    }
}

/// `restore --from-bucket`: the root must be stopped; the config names the bucket.
fn restore_from_bucket(force: bool, instance: Instance) -> Result<(), crate::Error> {
    use crate::portability::snapshots;
    let config = instance.config()?;
    let report = snapshots::restore_from_bucket(&config, force)?;
    println!("{report}");
    if !report.missing.is_empty() {
        return Err(crate::Error::Command(format!(
            "{} blobs the snapshot records are not in the bucket (first: {}): their images \
             will not pull; `dockyard fsck` lists them",
            report.missing.len(),
            report.missing[0]
        )));
    }
    Ok(())
}

/// `migrate-storage`: on the files, so the server must be stopped.
fn migrate_storage(instance: Instance, to: &str, delete_local: bool) -> Result<(), crate::Error> {
    use crate::portability::{migrate_storage, served};
    let fail = |m: String| crate::Error::Command(m);
    if to != "s3" {
        return Err(fail(format!(
            "migrate-storage --to {to:?}: only \"s3\" is supported"
        )));
    }
    let config = instance.config()?;
    if served(&config.root) {
        return Err(fail(format!(
            "a server is running on {}: stop it before migrate-storage",
            config.root.display()
        )));
    }
    let core = crate::Core::open(config)?;
    let progress = admin::terminal_progress();
    let report = migrate_storage::run(&core, delete_local, progress.as_ref());
    admin::clear_progress(progress.is_some());
    let report = report?;
    println!("{report}");
    for f in &report.failed {
        eprintln!("failed: {f}");
    }
    if !report.failed.is_empty() {
        return Err(fail(format!(
            "{} blobs are not in the bucket; fix them (see above) and run migrate-storage \
             again before starting the server",
            report.failed.len()
        )));
    }
    println!("every blob is in the bucket: start the server with this config");
    Ok(())
}

/// Restores on the files: the root must be stopped (a running server holds its database),
/// and the source is opened as a root of its own.
fn restore(src: &Path, force: bool, instance: Instance) -> Result<(), crate::Error> {
    use crate::portability::{backup, served};
    let fail = |m: String| crate::Error::Command(m);
    let config = instance.config()?;
    let root = config.root.clone();
    if served(&root) {
        return Err(fail(format!(
            "a server is running on {}: stop it before restoring into it",
            root.display()
        )));
    }
    if !src.join("dockyard.redb").is_file() {
        return Err(fail(format!(
            "{} is not a Dockyard backup or root (no dockyard.redb)",
            src.display()
        )));
    }
    let source = crate::Core::open(Config {
        root: src.to_path_buf(),
        ..Config::default()
    })
    .map_err(|e| fail(format!("cannot open {}: {e}", src.display())))?;
    let opts = backup::BackupOptions {
        dest: root.clone(),
        mode: backup::Mode::Restore { force },
        progress: admin::terminal_progress(),
    };
    let report = backup::run(&source, &opts);
    admin::clear_progress(opts.progress.is_some());
    let report = report?;
    drop(source);
    // The copy re-hashed every blob; this checks the counts and rows of what it wrote.
    let core = crate::Core::open(config)?;
    let check = crate::gc::fsck::check(&core, &crate::gc::fsck::FsckOptions::default())?;
    println!("{report}");
    if !check.clean() {
        return Err(fail(format!(
            "the restored root is not consistent: fsck: {check}"
        )));
    }
    println!("fsck: {check}");
    Ok(())
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
        UserCommand::List { instance } => {
            // Nothing on stdout when empty, so that `for u in $(dockyard user list)` stays
            // right; the person at the terminal is told on stderr.
            return execute_or(
                instance,
                A::UserList,
                "no users yet: add one with `dockyard user add NAME`",
            );
        }
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
        AclCommand::List { subject, instance } => {
            let empty = match &subject {
                Some(s) => format!(
                    "no grants for {s}: add one with `dockyard acl grant {s} PATTERN ACTIONS`"
                ),
                None => "no grants yet: add one with `dockyard acl grant SUBJECT PATTERN ACTIONS`"
                    .to_string(),
            };
            return execute_or(instance, A::AclList { subject }, &empty);
        }
    };
    execute(instance, command)
}

/// Runs a control command on the instance (through its server if one runs) and prints the
/// answer; a refusal becomes the one-line error `main` prints.
fn execute(instance: Instance, command: admin::Command) -> Result<(), crate::Error> {
    execute_or(instance, command, "")
}

/// `execute`, saying `when_empty` on stderr if the answer is empty (a listing of nothing).
fn execute_or(
    instance: Instance,
    command: admin::Command,
    when_empty: &str,
) -> Result<(), crate::Error> {
    let config = instance.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(admin::run(config, command))? {
        Outcome::Ok(text) if text.is_empty() => {
            if !when_empty.is_empty() {
                eprintln!("{when_empty}");
            }
            Ok(())
        }
        Outcome::Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Outcome::Err(message) => Err(crate::Error::Command(message)),
    }
}

/// Asks "QUESTION [y/N]" on the terminal; anything but yes is a refusal. Without a terminal
/// there is no one to ask: the command must say `--yes`.
fn confirm(question: &str) -> Result<(), crate::Error> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(crate::Error::Command(
            "standard input is not a terminal: pass --yes to delete without asking".to_string(),
        ));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    match line.trim() {
        "y" | "Y" | "yes" | "YES" | "Yes" => Ok(()),
        _ => Err(crate::Error::Command("not deleted".to_string())),
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
    crate::auth::users::check_password(&first).map_err(|e| fail(e.to_string()))?;
    let again = rpassword::prompt_password("Retype the password: ")?;
    if first != again {
        return Err(fail("the passwords do not match".to_string()));
    }
    Ok(Secret::new(first))
}

async fn serve(config: Config) -> Result<(), crate::Error> {
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
    let addr = listener.local_addr()?;
    let mut registry = Registry::open(config)?;
    // Bound before the banner says "listening", so a CLI command run right then reaches it.
    // On failure `serve` tries once more and logs why; the API serves regardless.
    let _ = registry.bind_admin();
    banner(registry.config(), addr);
    if let Some(tls) = registry.tls() {
        tokio::spawn(reload_on_sighup(tls));
    }
    registry.serve(listener, shutdown).await?;
    tracing::info!("dockyard stopped");
    Ok(())
}

/// The first-run banner: where it listens, where the data is, and how to push to it.
fn banner(config: &Config, addr: SocketAddr) {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        root = %config.root.display(),
        "dockyard listening on {scheme}://{addr}"
    );
    if !addr.ip().is_loopback() && config.tls.is_none() {
        tracing::warn!(
            "serving plain HTTP on a non-loopback address: clients must be told it is insecure"
        );
    }
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let insecure = if config.tls.is_some() {
        ""
    } else {
        " --tls-verify=false"
    };
    let (auth, login) =
        match config.auth.mode {
            crate::config::AuthMode::None => (
                "none (anyone who can reach it may pull and push)".to_string(),
                String::new(),
            ),
            mode => (
                format!(
                "{} (add users with `dockyard user add NAME`, grants with `dockyard acl grant`)",
                if mode == crate::config::AuthMode::Basic { "basic" } else { "token" }
            ),
                format!(
                "  log in:            docker login {host}   |   podman login{insecure} {host}\n"
            ),
            ),
        };
    eprintln!(
        "\n  Dockyard is serving {scheme}://{addr}\n  data:   {}\n  auth:   {auth}\n\n{login}  \
         push with docker:  docker tag IMAGE {host}/NAME:TAG && docker push {host}/NAME:TAG\n  \
         push with podman:  podman push{insecure} IMAGE {host}/NAME:TAG\n",
        config.root.display()
    );
}

/// Re-reads the TLS certificate and key on every SIGHUP; a bad pair keeps the old one.
async fn reload_on_sighup(tls: std::sync::Arc<crate::server::Tls>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; certificates will not be reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the old certificate"),
        }
    }
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives during start-up is not fatal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down: no new connections; finishing requests in flight");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
