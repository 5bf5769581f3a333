//! Repository names, tags and references, validated against the distribution spec's grammar.
//!
//! "`<name>` MUST match `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`"
//! and "`<reference>` as a tag MUST be at most 128 characters and MUST match
//! `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`". Because neither grammar admits `..`, `%` or a leading
//! `/`, a validated name or tag can never escape a directory or a key range.

use std::fmt;

use super::digest::Digest;

/// Distribution caps the whole name (with the registry host) at 255 characters; so do we.
const MAX_NAME_LEN: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run; what follows it must be alphanumeric (the last byte is, see above).
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl RepoName {
    pub fn parse(s: &str) -> Option<RepoName> {
        if s.is_empty() || s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return None;
        }
        Some(RepoName(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    pub fn parse(s: &str) -> Option<Tag> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_');
        let rest_ok = b[1.min(b.len())..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-');
        (first_ok && rest_ok && b.len() <= 128).then(|| Tag(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Reference {
    /// A reference with a colon is a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Option<Reference> {
        if s.contains(':') {
            s.parse().ok().map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_grammar() {
        for ok in [
            "a",
            "library/alpine",
            "a/b/c/d/e",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "0x/1.2-3_4",
        ] {
            assert!(RepoName::parse(ok).is_some(), "{ok} should be valid");
        }
        for bad in [
            "",
            "A",
            "Library/alpine",
            "/a",
            "a/",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "-a",
            "a-",
            "a___b",
            "a..b",
            "a._b",
            "a%2fb",
            "a b",
            "a/b:c",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad} should be invalid");
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "v1.0.0", "_x", "1", "A-b_c.d", &"a".repeat(128)] {
            assert!(Tag::parse(ok).is_some(), "{ok} should be valid");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "..", &"a".repeat(129), "a%20"] {
            assert!(Tag::parse(bad).is_none(), "{bad} should be invalid");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(
            Reference::parse("latest"),
            Some(Reference::Tag(_))
        ));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(matches!(Reference::parse(d), Some(Reference::Digest(_))));
        assert!(Reference::parse("sha256:nothex").is_none());
    }
}
