//! Bringing images from files into the root: what `import` (OCI layouts) and
//! `import-distribution` share. A source is first turned into a [`Plan`] (every blob staged in
//! `uploads/` and verified against its digest, every manifest read, verified and parsed), so
//! that bad input is found before anything changes; then [`commit`] puts it in place the way
//! a push does: under the blobs' stripes, files promoted first, then one write transaction
//! records the blobs, links them into their repositories and stores the manifests with their
//! tags (children before the indexes that list them).

use std::collections::{BTreeMap, BTreeSet};

use crate::db;
use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, RepoName, Tag};
use crate::{Core, Error};

/// One manifest to store in a repository, with the tags that point at it.
pub struct PlannedManifest {
    pub digest: Digest,
    pub parsed: ParsedManifest,
    pub body: Vec<u8>,
    pub tags: Vec<Tag>,
}

#[derive(Default)]
pub struct Plan {
    /// Staged upload files: digest → (upload id, size). Blobs the root already has are not
    /// staged and do not appear here.
    pub staged: BTreeMap<String, (String, u64)>,
    /// Blobs already in the root: digest → size.
    pub present: BTreeMap<String, u64>,
    /// Per repository: the blobs to link into it, and its manifests in an order where every
    /// child comes before the index that lists it.
    pub repos: BTreeMap<String, (BTreeSet<String>, Vec<PlannedManifest>)>,
}

impl Plan {
    /// Removes the staged files of a plan that will not be committed.
    pub fn abandon(self, core: &Core) {
        for (_, (id, _)) in self.staged {
            let _ = core.store.remove_upload(&id);
        }
    }

    pub fn manifests(&self) -> usize {
        self.repos.values().map(|(_, m)| m.len()).sum()
    }

    pub fn tags(&self) -> usize {
        self.repos
            .values()
            .flat_map(|(_, m)| m.iter())
            .map(|m| m.tags.len())
            .sum()
    }
}

/// Whether the root already holds `digest` (row and file): then it is linked, not staged.
pub fn present(core: &Core, digest: &Digest) -> Result<Option<u64>, Error> {
    let d = digest.to_string();
    let size = core
        .db
        .read_blocking(move |tx| Ok(db::snapshot::blob_size(tx, &d)?))?;
    Ok(size.filter(|_| core.store.has_blob(digest).unwrap_or(false)))
}

/// Puts a verified plan in place (see the module documentation). On error the staged files
/// are removed and nothing is committed.
pub fn commit(core: &Core, plan: Plan) -> Result<(), Error> {
    let mut digests: Vec<Digest> = Vec::new();
    for d in plan.staged.keys().chain(plan.present.keys()) {
        digests.push(
            d.parse()
                .map_err(|_| Error::Command(format!("bad digest {d}")))?,
        );
    }
    let names: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    let mut guards = core.blob_locks.lock_all(names.iter().map(String::as_str));
    let staged: Vec<(&str, Digest)> = plan
        .staged
        .iter()
        .map(|(d, (id, _))| (id.as_str(), d.parse().expect("parsed above")))
        .collect();
    if let Err(e) = core
        .store
        .promote_all(staged.iter().map(|(id, d)| (*id, d)))
    {
        for (id, _) in &staged {
            let _ = core.store.remove_upload(id);
        }
        return Err(Error::Command(format!("cannot store the blobs: {e}")));
    }
    let sizes: BTreeMap<String, u64> = plan
        .staged
        .iter()
        .map(|(d, (_, size))| (d.clone(), *size))
        .chain(plan.present.iter().map(|(d, s)| (d.clone(), *s)))
        .collect();
    // An index may arrive without some of its children (skopeo's --multi-arch index-only
    // layouts), as in a push.
    let sparse = core.config.sparse_indexes;
    core.db.write_blocking(|tx| {
        for (repo, (blobs, manifests)) in &plan.repos {
            let r = RepoName::parse(repo).expect("planned names are valid");
            for b in blobs {
                let digest: Digest = b.parse().expect("planned digests are valid");
                db::blobs::record(tx, &r, &digest, sizes[b], None)?;
            }
            for m in manifests {
                db::manifests::put(tx, &r, &m.digest, &m.parsed, &m.body, &m.tags, sparse)?;
            }
        }
        Ok(())
    })?;
    for d in &digests {
        guards.touch(d);
    }
    Ok(())
}
