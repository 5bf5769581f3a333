//! `[[mirror]]` and `[mirror_cache]`: which upstream registries this instance mirrors, under
//! which name prefix, and how much cached content it keeps.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// One mirrored upstream registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// The first component of every stored name: `docker.io` serves
    /// `/v2/docker.io/library/alpine/…` and stores it as `docker.io/library/alpine`.
    pub prefix: String,
    /// `http(s)://host[:port]`, without a trailing slash.
    pub upstream: String,
    /// containerd's `?ns=` values that select this mirror (default: the prefix).
    pub namespaces: Vec<String>,
    /// Names without a known prefix that are not stored here come from this upstream
    /// (dockerd's `registry-mirrors`).
    pub default: bool,
    /// A cached tag is re-checked upstream (HEAD) once it is older than this.
    pub ttl: Duration,
    pub username: Option<String>,
    /// A file holding the password (so it is in neither the config nor the process list).
    pub password_file: Option<PathBuf>,
    /// PEM certificates of a private CA the upstream's certificate chains to.
    pub ca_file: Option<PathBuf>,
}

/// The `[mirror_cache]` section.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CacheConfig {
    /// Above this many bytes of cached (mirror-prefix) blobs, the GC evicts the least
    /// recently pulled cached repositories. `None`: no bound.
    pub max_size: Option<u64>,
}

pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);

/// A `[[mirror]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MirrorSection {
    prefix: String,
    upstream: String,
    namespaces: Option<Vec<String>>,
    #[serde(default)]
    default: bool,
    ttl: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheSection {
    pub(crate) max_size: Option<crate::config::ByteSize>,
}

impl CacheSection {
    pub(crate) fn parse(self) -> Result<CacheConfig, String> {
        Ok(CacheConfig {
            max_size: self
                .max_size
                .map(|s| s.bytes().map_err(|e| format!("mirror_cache.max_size: {e}")))
                .transpose()?,
        })
    }
}

/// Checks every `[[mirror]]` table and the set of them (distinct prefixes and namespaces, at
/// most one default).
pub(crate) fn parse(sections: Vec<MirrorSection>) -> Result<Vec<Mirror>, String> {
    let mut out: Vec<Mirror> = Vec::new();
    for (i, s) in sections.into_iter().enumerate() {
        let at = format!("mirror[{i}] (prefix {:?})", s.prefix);
        if !is_component(&s.prefix) {
            return Err(format!(
                "{at}.prefix: must be one repository-name component (lowercase letters, digits, \
                 and . _ - between them), such as \"docker.io\""
            ));
        }
        let upstream = s.upstream.trim_end_matches('/').to_string();
        let rest = upstream
            .strip_prefix("https://")
            .or_else(|| upstream.strip_prefix("http://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('/') => {}
            _ => {
                return Err(format!(
                    "{at}.upstream {:?}: must be http(s)://host[:port]",
                    s.upstream
                ))
            }
        }
        if s.password_file.is_some() != s.username.is_some() {
            return Err(format!("{at}: username and password_file go together"));
        }
        let ttl = match s.ttl {
            Some(t) => humantime::parse_duration(&t).map_err(|e| format!("{at}.ttl {t:?}: {e}"))?,
            None => DEFAULT_TTL,
        };
        let m = Mirror {
            namespaces: s.namespaces.unwrap_or_else(|| vec![s.prefix.clone()]),
            prefix: s.prefix,
            upstream,
            default: s.default,
            ttl,
            username: s.username,
            password_file: s.password_file,
            ca_file: s.ca_file,
        };
        for other in &out {
            if other.prefix == m.prefix {
                return Err(format!("{at}: another mirror has the same prefix"));
            }
            if let Some(ns) = m.namespaces.iter().find(|n| other.namespaces.contains(n)) {
                return Err(format!(
                    "{at}.namespaces: {ns:?} already selects mirror {:?}",
                    other.prefix
                ));
            }
            if other.default && m.default {
                return Err(format!(
                    "{at}.default: only one mirror can be the default (mirror {:?} is)",
                    other.prefix
                ));
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// One component of the spec's name grammar: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn is_component(s: &str) -> bool {
    crate::oci::RepoName::parse(s).is_some() && !s.contains('/')
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn mirrors_parse_with_defaults_and_refuse_nonsense() {
        let c = Config::from_toml(
            "[[mirror]]\nprefix = \"docker.io\"\nupstream = \"https://registry-1.docker.io/\"\n\
             default = true\n[[mirror]]\nprefix = \"ghcr.io\"\nupstream = \"http://10.0.0.2:5000\"\n\
             namespaces = [\"ghcr.io\", \"ghcr\"]\nttl = \"30s\"\n[mirror_cache]\nmax_size = \"20GiB\"\n",
        )
        .unwrap();
        assert_eq!(c.mirrors.len(), 2);
        assert_eq!(c.mirrors[0].upstream, "https://registry-1.docker.io");
        assert_eq!(c.mirrors[0].namespaces, vec!["docker.io".to_string()]);
        assert!(c.mirrors[0].default);
        assert_eq!(c.mirrors[0].ttl, super::DEFAULT_TTL);
        assert_eq!(c.mirrors[1].ttl, std::time::Duration::from_secs(30));
        assert_eq!(c.mirror_cache.max_size, Some(20 << 30));
        for (bad, what) in [
            ("prefix = \"Docker.io\"\nupstream = \"http://a\"", "prefix"),
            ("prefix = \"a/b\"\nupstream = \"http://a\"", "prefix"),
            ("prefix = \"a\"\nupstream = \"ftp://a\"", "upstream"),
            ("prefix = \"a\"\nupstream = \"http://a/v2\"", "upstream"),
            (
                "prefix = \"a\"\nupstream = \"http://a\"\nttl = \"soon\"",
                "ttl",
            ),
            (
                "prefix = \"a\"\nupstream = \"http://a\"\nusername = \"u\"",
                "password_file",
            ),
            (
                "prefix = \"a\"\nupstream = \"http://a\"\npassword = \"p\"",
                "password",
            ),
        ] {
            let e = Config::from_toml(&format!("[[mirror]]\n{bad}\n")).unwrap_err();
            assert!(e.contains(what), "{bad}: {e}");
        }
        let two = "[[mirror]]\nprefix = \"a\"\nupstream = \"http://a\"\ndefault = true\n\
                   [[mirror]]\nprefix = \"b\"\nupstream = \"http://b\"\ndefault = true\n";
        assert!(Config::from_toml(two).unwrap_err().contains("default"));
        let same = "[[mirror]]\nprefix = \"a\"\nupstream = \"http://a\"\n\
                    [[mirror]]\nprefix = \"a\"\nupstream = \"http://b\"\n";
        assert!(Config::from_toml(same).unwrap_err().contains("same prefix"));
    }
}
