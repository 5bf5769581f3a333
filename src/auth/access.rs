//! Users and grants of one instance: the operations behind `dockyard user …` and
//! `dockyard acl …` (run by `admin::execute`, in the server when one runs), and the in-memory
//! snapshot of the [`Policy`] that `http::auth` consults on every request.
//!
//! The server holds the database, so every change goes through the server's own [`Access`];
//! each one bumps a generation counter after its transaction commits, and the next request
//! reloads the snapshot. That is why a revoke or a password change applies to the very next
//! request, and why a request costs no database read for its permissions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::token::KEY_LEN;
use crate::auth::users::{self, Actions, HtpasswdLine, Pattern, Policy, Secret};
use crate::db::{self, Db};
use crate::oci::RegistryError;
use crate::Core;

/// Why a user or ACL command did nothing: a refusal to show the person as it is, or a failure
/// of the database underneath.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Refused(#[from] users::Error),
    #[error("{}", .0.message)]
    Failed(#[from] RegistryError),
}

type Answer = Result<String, AccessError>;

/// The snapshot and the token key of a running instance; shared by the API and the control
/// channel.
#[derive(Default)]
pub struct Access {
    generation: AtomicU64,
    snapshot: Mutex<Option<(u64, Arc<Policy>)>>,
    token_key: tokio::sync::OnceCell<[u8; KEY_LEN]>,
}

impl Access {
    /// The current users and grants; reloaded from the database after any change.
    pub async fn policy(&self, db: &Db) -> Result<Arc<Policy>, RegistryError> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((g, p)) = &*self.snapshot.lock().expect("snapshot lock") {
            if *g == generation {
                return Ok(p.clone());
            }
        }
        // Tagged with the generation read *before* loading: a change committed meanwhile has
        // bumped the counter, so this snapshot is used at most once and then reloaded.
        let policy = Arc::new(db.read(db::users::load_policy).await?);
        *self.snapshot.lock().expect("snapshot lock") = Some((generation, policy.clone()));
        Ok(policy)
    }

    /// Called after every committed change to users or grants.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The key that signs bearer tokens, created in the database on first use.
    pub async fn token_key(&self, db: &Db) -> Result<[u8; KEY_LEN], RegistryError> {
        self.token_key
            .get_or_try_init(|| db.write(db::users::token_key))
            .await
            .copied()
    }
}

/// Hashes on the blocking pool: bcrypt is slow on purpose and must not stall async workers.
async fn hash(core: &Core, password: Secret) -> Result<String, AccessError> {
    let cost = core.config.auth.bcrypt_cost;
    tokio::task::spawn_blocking(move || users::hash_password(password.expose(), cost))
        .await
        .map_err(|e| RegistryError::internal(format!("hashing task: {e}")))?
        .map_err(AccessError::from)
}

pub async fn user_add(core: &Core, name: &str, password: Secret) -> Answer {
    users::check_name(name)?;
    users::check_password(password.expose())?;
    let n = name.to_string();
    if core
        .db
        .read(move |tx| db::users::user_exists(tx, &n))
        .await?
    {
        return Err(users::Error::UserExists(name.to_string()).into());
    }
    let hash = hash(core, password).await?;
    let n = name.to_string();
    core.db
        .write_checked(move |tx| db::users::add_user(tx, &n, &hash))
        .await??;
    core.access.changed();
    Ok(format!("added user {name}"))
}

pub async fn user_passwd(core: &Core, name: &str, password: Secret) -> Answer {
    users::check_password(password.expose())?;
    let n = name.to_string();
    if !core
        .db
        .read(move |tx| db::users::user_exists(tx, &n))
        .await?
    {
        return Err(users::Error::UnknownUser(name.to_string()).into());
    }
    let hash = hash(core, password).await?;
    let n = name.to_string();
    core.db
        .write_checked(move |tx| db::users::set_password(tx, &n, &hash))
        .await??;
    core.access.changed();
    Ok(format!("changed the password of {name}"))
}

pub async fn user_del(core: &Core, name: &str) -> Answer {
    let n = name.to_string();
    let grants = core
        .db
        .write_checked(move |tx| db::users::delete_user(tx, &n))
        .await??;
    core.access.changed();
    Ok(match grants {
        0 => format!("deleted user {name}"),
        1 => format!("deleted user {name} and its grant"),
        n => format!("deleted user {name} and its {n} grants"),
    })
}

pub async fn user_list(core: &Core) -> Answer {
    Ok(core.db.read(db::users::user_names).await?.join("\n"))
}

/// Adds the bcrypt users of a Distribution htpasswd file, keeping their hashes as they are.
/// Users that exist already and entries that are not bcrypt are reported and left alone.
pub async fn import_htpasswd(core: &Core, text: Secret) -> Answer {
    let lines = users::parse_htpasswd(text.expose())?;
    let mut report = Vec::new();
    let mut entries = Vec::new();
    for line in lines {
        match line {
            HtpasswdLine::User { name, hash } => entries.push((name, hash)),
            HtpasswdLine::Skipped { name, reason } => {
                report.push(format!("skipped {name}: {reason}"))
            }
        }
    }
    let batch = entries.clone();
    let added = core
        .db
        .write_checked(move |tx| db::users::import(tx, &batch))
        .await??;
    core.access.changed();
    let mut names = Vec::new();
    for ((name, _), ok) in entries.iter().zip(added) {
        if ok {
            names.push(name.as_str());
        } else {
            report.push(format!("skipped {name}: user exists"));
        }
    }
    let mut out = vec![format!(
        "imported {} user{}{}",
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        if names.is_empty() {
            String::new()
        } else {
            format!(": {}", names.join(", "))
        }
    )];
    out.extend(report);
    Ok(out.join("\n"))
}

pub async fn acl_grant(core: &Core, subject: &str, pattern: &str, actions: &str) -> Answer {
    users::check_subject(subject)?;
    let pattern = Pattern::parse(pattern)?;
    let actions = Actions::parse(actions)?;
    let s = subject.to_string();
    let p = pattern.clone();
    let all = core
        .db
        .write_checked(move |tx| db::users::grant(tx, &s, &p, actions))
        .await??;
    core.access.changed();
    Ok(format!("{subject} {pattern} {all}"))
}

pub async fn acl_revoke(core: &Core, subject: &str, pattern: &str) -> Answer {
    users::check_subject(subject)?;
    let (s, p) = (subject.to_string(), pattern.to_string());
    core.db
        .write_checked(move |tx| db::users::revoke(tx, &s, &p))
        .await??;
    core.access.changed();
    Ok(format!("revoked {subject} {pattern}"))
}

/// Every grant (or one subject's) as aligned `SUBJECT PATTERN ACTIONS` lines.
pub async fn acl_list(core: &Core, subject: Option<&str>) -> Answer {
    let s = subject.map(str::to_string);
    let rows = core
        .db
        .read(move |tx| db::users::grants(tx, s.as_deref()))
        .await??;
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    Ok(rows
        .iter()
        .map(|(s, p, a)| format!("{s:<w0$}  {p:<w1$}  {a}"))
        .collect::<Vec<_>>()
        .join("\n"))
}
