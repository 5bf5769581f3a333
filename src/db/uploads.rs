//! Upload session rows. The bytes live in `store`; the row says the session exists, which
//! repository it is for, and when it started (for expiry).

use redb::{ReadTransaction, WriteTransaction};

use super::now;
use super::schema::*;
use crate::oci::{RegistryError, RepoName};

pub fn create(tx: &WriteTransaction, id: &str, repo: &RepoName) -> Result<(), RegistryError> {
    let rec = UploadRecord {
        repo: repo.to_string(),
        started: now(),
    };
    tx.open_table(UPLOADS)?
        .insert(id, encode(&rec).as_slice())?;
    Ok(())
}

pub fn get(tx: &ReadTransaction, id: &str) -> Result<Option<UploadRecord>, RegistryError> {
    match tx.open_table(UPLOADS)?.get(id)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

pub fn delete(tx: &WriteTransaction, id: &str) -> Result<bool, RegistryError> {
    Ok(tx.open_table(UPLOADS)?.remove(id)?.is_some())
}
