//! Per-repository policies (`[[policy]]` in registry.toml), pure and unit-tested: which
//! policy governs a repository (the first whose pattern matches, with the grants' `*`/`**`
//! patterns), which tags are immutable, and (`retention`) which tags a GC pass expires.
//!
//! The rules are enforced where the counts are kept: immutability and quotas inside the
//! manifest PUT / DELETE write transaction (`db::manifests`, given the repository's
//! `Policy`), retention in the GC pass (`gc`), which deletes tags the normal way.

pub mod retention;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::users::Pattern;

/// One `[[policy]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub pattern: Pattern,
    /// Retention keeps the N most recently pushed tags of each repository…
    pub keep_last: Option<usize>,
    /// …and every tag pushed within this long.
    pub keep_within: Option<Duration>,
    /// Never expired by retention.
    pub keep_tags: Vec<TagGlob>,
    /// Once pushed, never moved to another manifest and never deleted.
    pub immutable_tags: Vec<TagGlob>,
    /// Unique blob bytes referenced by the manifests of every repository under `pattern`.
    pub quota: Option<u64>,
}

impl Policy {
    pub fn is_immutable(&self, tag: &str) -> bool {
        self.immutable_tags.iter().any(|g| g.matches(tag))
    }

    /// Whether retention applies at all (a policy may set only a quota, say).
    pub fn has_retention(&self) -> bool {
        self.keep_last.is_some() || self.keep_within.is_some()
    }
}

/// Every policy, in the file's order. Shared: every manifest PUT takes a copy into its
/// transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policies(pub Arc<Vec<Policy>>);

impl Policies {
    /// The policy governing `repo`: the first whose pattern matches.
    pub fn for_repo(&self, repo: &str) -> Option<&Policy> {
        self.governing(repo).map(|(_, p)| p)
    }

    /// The governing policy and its position. A quota counts the repositories a policy
    /// governs: those under its pattern that no earlier policy matched.
    pub fn governing(&self, repo: &str) -> Option<(usize, &Policy)> {
        self.0
            .iter()
            .enumerate()
            .find(|(_, p)| p.pattern.matches(repo))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A tag pattern: `*` matches any run of characters (tags hold no `/`), everything else
/// itself: `release-*`, `v*`, `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagGlob(String);

impl TagGlob {
    pub fn parse(s: &str) -> Result<TagGlob, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*'));
        if ok {
            Ok(TagGlob(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not a tag pattern (letters, digits, _ . - and * only)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, tag: &str) -> bool {
        glob(self.0.as_bytes(), tag.as_bytes())
    }
}

/// Wildcard match with `*` only, iterative with one backtrack point (linear enough for tags).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_globs() {
        let g = |p: &str| TagGlob::parse(p).unwrap();
        assert!(g("v*").matches("v1.0"));
        assert!(g("v*").matches("v"));
        assert!(!g("v*").matches("latest"));
        assert!(g("release-*").matches("release-2024.1"));
        assert!(!g("release-*").matches("release"));
        assert!(g("latest").matches("latest"));
        assert!(!g("latest").matches("latest2"));
        assert!(g("*-rc*").matches("v2-rc1"));
        assert!(g("*").matches("anything"));
        assert!(TagGlob::parse("a/b").is_err());
        assert!(TagGlob::parse("").is_err());
    }

    #[test]
    fn first_matching_policy_wins() {
        let p = |pattern: &str, quota: u64| Policy {
            pattern: Pattern::parse(pattern).unwrap(),
            keep_last: None,
            keep_within: None,
            keep_tags: vec![],
            immutable_tags: vec![TagGlob::parse("v*").unwrap()],
            quota: Some(quota),
        };
        let ps = Policies(Arc::new(vec![
            p("ci/special", 1),
            p("ci/**", 2),
            p("**", 3),
        ]));
        assert_eq!(ps.for_repo("ci/special").unwrap().quota, Some(1));
        assert_eq!(ps.for_repo("ci/other/x").unwrap().quota, Some(2));
        assert_eq!(ps.for_repo("library/alpine").unwrap().quota, Some(3));
        assert!(ps.for_repo("x").unwrap().is_immutable("v1"));
        assert!(Policies::default().for_repo("x").is_none());
    }
}
