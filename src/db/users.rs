//! Users, grants and the token signing key: the transaction bodies behind `access`.
//!
//! A refusal (unknown user, user exists, no such grant) is the inner `Err` of a
//! `Result<Result<_, users::Error>, RegistryError>`; each body checks before it writes, and
//! `Db::write_checked` commits only what succeeded, so a refused command changes nothing.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::schema::*;
use super::{now, DbError};
use crate::auth::token::KEY_LEN;
use crate::auth::users::{Actions, Error, Grant, Pattern, Policy, ANONYMOUS};
use crate::oci::RegistryError;

type Checked<T> = Result<Result<T, Error>, RegistryError>;

fn corrupt(what: impl std::fmt::Display) -> RegistryError {
    DbError::Corrupt(what.to_string()).into()
}

fn decode_actions(rec: &GrantRecord) -> Result<Actions, RegistryError> {
    let joined = rec.actions.join(",");
    Actions::parse(&joined).map_err(|e| corrupt(format!("grant record: {e}")))
}

/// Every user and every grant, for the in-memory snapshot `access` keeps.
pub fn load_policy(tx: &ReadTransaction) -> Result<Policy, RegistryError> {
    let mut policy = Policy::default();
    for e in tx.open_table(USERS)?.iter()? {
        let (k, v) = e?;
        let rec: UserRecord = decode(v.value())?;
        policy.users.insert(k.value().to_string(), rec.hash);
    }
    for e in tx.open_table(ACLS)?.iter()? {
        let (k, v) = e?;
        let (subject, pattern) = k.value();
        let grant = Grant {
            pattern: Pattern::parse(pattern).map_err(corrupt)?,
            actions: decode_actions(&decode(v.value())?)?,
        };
        policy
            .grants
            .entry(subject.to_string())
            .or_default()
            .push(grant);
    }
    Ok(policy)
}

pub fn user_exists(tx: &ReadTransaction, name: &str) -> Result<bool, RegistryError> {
    Ok(tx.open_table(USERS)?.get(name)?.is_some())
}

pub fn add_user(tx: &WriteTransaction, name: &str, hash: &str) -> Checked<()> {
    let mut users = tx.open_table(USERS)?;
    if users.get(name)?.is_some() {
        return Ok(Err(Error::UserExists(name.to_string())));
    }
    let rec = UserRecord {
        hash: hash.to_string(),
        created: now(),
    };
    users.insert(name, encode(&rec).as_slice())?;
    Ok(Ok(()))
}

pub fn set_password(tx: &WriteTransaction, name: &str, hash: &str) -> Checked<()> {
    let mut users = tx.open_table(USERS)?;
    let mut rec: UserRecord = match users.get(name)? {
        Some(v) => decode(v.value())?,
        None => return Ok(Err(Error::UnknownUser(name.to_string()))),
    };
    rec.hash = hash.to_string();
    users.insert(name, encode(&rec).as_slice())?;
    Ok(Ok(()))
}

/// Removes the user and every grant to them; answers how many grants went with them.
pub fn delete_user(tx: &WriteTransaction, name: &str) -> Checked<usize> {
    if tx.open_table(USERS)?.remove(name)?.is_none() {
        return Ok(Err(Error::UnknownUser(name.to_string())));
    }
    let mut acls = tx.open_table(ACLS)?;
    let patterns = subject_patterns(&acls, name)?;
    for p in &patterns {
        acls.remove((name, p.as_str()))?;
    }
    Ok(Ok(patterns.len()))
}

fn subject_patterns(
    acls: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    subject: &str,
) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    for e in acls.range((subject, "")..)? {
        let (k, _) = e?;
        let (s, p) = k.value();
        if s != subject {
            break;
        }
        out.push(p.to_string());
    }
    Ok(out)
}

pub fn user_names(tx: &ReadTransaction) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    for e in tx.open_table(USERS)?.iter()? {
        out.push(e?.0.value().to_string());
    }
    Ok(out)
}

/// Adds the users whose names are free; answers, in order, whether each was added.
pub fn import(tx: &WriteTransaction, entries: &[(String, String)]) -> Checked<Vec<bool>> {
    let mut out = Vec::new();
    for (name, hash) in entries {
        out.push(add_user(tx, name, hash)?.is_ok());
    }
    Ok(Ok(out))
}

fn check_subject_exists(
    tx: &WriteTransaction,
    subject: &str,
) -> Result<Result<(), Error>, RegistryError> {
    if subject != ANONYMOUS && tx.open_table(USERS)?.get(subject)?.is_none() {
        return Ok(Err(Error::UnknownUser(subject.to_string())));
    }
    Ok(Ok(()))
}

/// Adds `actions` to what `subject` holds on `pattern`; answers the resulting set.
pub fn grant(
    tx: &WriteTransaction,
    subject: &str,
    pattern: &Pattern,
    actions: Actions,
) -> Checked<Actions> {
    if let Err(e) = check_subject_exists(tx, subject)? {
        return Ok(Err(e));
    }
    let mut acls = tx.open_table(ACLS)?;
    let key = (subject, pattern.as_str());
    let held = match acls.get(key)? {
        Some(v) => decode_actions(&decode(v.value())?)?,
        None => Actions::NONE,
    };
    let all = held.union(actions);
    let rec = GrantRecord {
        actions: all.names(),
    };
    acls.insert(key, encode(&rec).as_slice())?;
    Ok(Ok(all))
}

pub fn revoke(tx: &WriteTransaction, subject: &str, pattern: &str) -> Checked<()> {
    if let Err(e) = check_subject_exists(tx, subject)? {
        return Ok(Err(e));
    }
    if tx.open_table(ACLS)?.remove((subject, pattern))?.is_none() {
        return Ok(Err(Error::NoSuchGrant {
            subject: subject.to_string(),
            pattern: pattern.to_string(),
        }));
    }
    Ok(Ok(()))
}

/// Every grant as (subject, pattern, actions), of one subject or of all.
pub fn grants(
    tx: &ReadTransaction,
    subject: Option<&str>,
) -> Checked<Vec<(String, String, Actions)>> {
    if let Some(s) = subject {
        if s != ANONYMOUS && tx.open_table(USERS)?.get(s)?.is_none() {
            return Ok(Err(Error::UnknownUser(s.to_string())));
        }
    }
    let mut out = Vec::new();
    for e in tx.open_table(ACLS)?.iter()? {
        let (k, v) = e?;
        let (s, p) = k.value();
        if subject.is_some_and(|want| want != s) {
            continue;
        }
        out.push((
            s.to_string(),
            p.to_string(),
            decode_actions(&decode(v.value())?)?,
        ));
    }
    Ok(Ok(out))
}

/// The key that signs bearer tokens, created (from the OS's random source) the first time
/// anything asks for it.
pub fn token_key(tx: &WriteTransaction) -> Result<[u8; KEY_LEN], RegistryError> {
    let mut secrets = tx.open_table(SECRETS)?;
    if let Some(v) = secrets.get("token_key")? {
        return v
            .value()
            .try_into()
            .map_err(|_| corrupt("token_key has the wrong length"));
    }
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| RegistryError::internal(format!("random key: {e}")))?;
    secrets.insert("token_key", key.as_slice())?;
    Ok(key)
}
