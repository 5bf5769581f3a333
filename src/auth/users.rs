//! Users and permissions, pure: user names, passwords (bcrypt), repository patterns, actions,
//! and the evaluation of a [`Policy`] (every user and every grant) into what a caller may do
//! with a repository. Nothing here touches the database, the clock or the network; `access`
//! stores these values and `http::auth` asks the questions.
//!
//! The rules:
//! - A grant gives a subject (a user, or `anonymous`) a set of actions on every repository its
//!   pattern matches. In a pattern, `*` matches exactly one path component and `**` any number
//!   of them, none included (`alice/**` matches `alice` and `alice/x/y`).
//! - What a caller may do with a repository is the union of every matching grant of its own
//!   and of `anonymous` (logging in never takes away what anonymous callers may do).
//! - `admin` implies every action.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The subject that stands for callers without credentials; no user may take this name.
pub const ANONYMOUS: &str = "anonymous";

/// bcrypt only reads the first 72 bytes of a password; longer ones are refused rather than
/// silently truncated.
const MAX_PASSWORD_LEN: usize = 72;
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("user {0:?} exists")]
    UserExists(String),
    #[error("invalid user name {0:?}: use 1 to 64 of a-z A-Z 0-9 . _ - @, starting with a letter or digit")]
    BadName(String),
    #[error("{0:?} is reserved for callers without credentials")]
    ReservedName(String),
    #[error("empty password")]
    EmptyPassword,
    #[error("password longer than 72 bytes (bcrypt would ignore the rest)")]
    LongPassword,
    #[error("bad pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("bad action {0:?}: expected a comma list of pull, push, delete, admin")]
    BadAction(String),
    #[error("no grant of {pattern:?} to {subject:?}")]
    NoSuchGrant { subject: String, pattern: String },
    #[error("{0}")]
    Htpasswd(String),
}

/// A secret (a password, or a file of hashes) on its way through the control channel. Its
/// `Debug` never shows the value, so logging a command that carries one leaks nothing.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Checks a user name: what Basic auth can carry (no `:`) and a terminal can show.
pub fn check_name(name: &str) -> Result<(), Error> {
    if name == ANONYMOUS {
        return Err(Error::ReservedName(name.to_string()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || name.len() > MAX_NAME_LEN || !name.chars().all(ok_char) {
        return Err(Error::BadName(name.to_string()));
    }
    Ok(())
}

/// Checks a new password before it is hashed.
pub fn check_password(password: &str) -> Result<(), Error> {
    if password.is_empty() {
        return Err(Error::EmptyPassword);
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::LongPassword);
    }
    Ok(())
}

/// Hashes a password with bcrypt at `cost`. Slow on purpose: call it on a blocking thread.
pub fn hash_password(password: &str, cost: u32) -> Result<String, Error> {
    check_password(password)?;
    bcrypt::hash(password, cost).map_err(|e| Error::Htpasswd(format!("bcrypt: {e}")))
}

/// Whether `password` matches the bcrypt `hash` (compared in constant time by bcrypt). Slow on
/// purpose: call it on a blocking thread. A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Whether `hash` is a bcrypt hash (`$2a$`, `$2b$`, `$2x$` or `$2y$`, as htpasswd writes).
pub fn is_bcrypt(hash: &str) -> bool {
    hash.parse::<bcrypt::HashParts>().is_ok()
}

/// One user of an htpasswd file, or why a line was passed over.
#[derive(Debug, PartialEq, Eq)]
pub enum HtpasswdLine {
    User { name: String, hash: String },
    Skipped { name: String, reason: String },
}

/// Reads a Distribution htpasswd file: `name:hash` lines; blank lines and `#` comments are
/// ignored. Only bcrypt entries can move over; others are reported as skipped.
pub fn parse_htpasswd(text: &str) -> Result<Vec<HtpasswdLine>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, hash)) = line.split_once(':') else {
            return Err(Error::Htpasswd(format!(
                "htpasswd line {}: expected NAME:HASH",
                i + 1
            )));
        };
        let entry = match check_name(name) {
            Err(e) => HtpasswdLine::Skipped {
                name: name.to_string(),
                reason: e.to_string(),
            },
            Ok(()) if !is_bcrypt(hash) => HtpasswdLine::Skipped {
                name: name.to_string(),
                reason: "not a bcrypt hash".to_string(),
            },
            Ok(()) => HtpasswdLine::User {
                name: name.to_string(),
                hash: hash.to_string(),
            },
        };
        out.push(entry);
    }
    Ok(out)
}

/// What may be done with a repository. `Admin` implies the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
    Admin,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Pull, Action::Push, Action::Delete, Action::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);

    /// Parses `pull,push`: a non-empty comma list of action names.
    pub fn parse(s: &str) -> Result<Actions, Error> {
        let mut set = Actions::NONE;
        for part in s.split(',').map(str::trim) {
            let a = Action::parse(part).ok_or_else(|| Error::BadAction(part.to_string()))?;
            set = set.with(a);
        }
        Ok(set)
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// Whether `a` is allowed: held directly, or implied by `admin`.
    pub fn allows(self, a: Action) -> bool {
        self.0 & (a.bit() | Action::Admin.bit()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions held, as stored and shown (`admin` is not expanded).
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL
            .into_iter()
            .filter(move |a| self.0 & a.bit() != 0)
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_string()).collect()
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// `*`: exactly one component.
    One,
    /// `**`: any number of components, none included.
    Any,
    Literal(String),
}

/// A repository pattern such as `team-a/*`, `alice/**` or `**`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    parts: Vec<Part>,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, Error> {
        let bad = |reason: &str| Error::BadPattern {
            pattern: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let mut parts = Vec::new();
        for c in s.split('/') {
            parts.push(match c {
                "" => return Err(bad("empty path component")),
                "*" => Part::One,
                "**" => Part::Any,
                _ if c.contains('*') => {
                    return Err(bad("`*` and `**` must be whole path components"))
                }
                // A literal component must be one a repository name can have, or the pattern
                // could never match and the grant would be a silent no-op.
                _ => match crate::oci::RepoName::parse(c) {
                    Some(_) => Part::Literal(c.to_string()),
                    None => {
                        return Err(bad(&format!(
                            "{c:?} cannot be part of a repository name (lowercase a-z, 0-9, . _ -)"
                        )))
                    }
                },
            });
        }
        Ok(Pattern {
            text: s.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, repo: &str) -> bool {
        let components: Vec<&str> = repo.split('/').collect();
        match_parts(&self.parts, &components)
    }
}

/// Matches as a set of positions in the pattern (an NFA walked once over the components),
/// so time is linear in the name whatever the pattern: backtracking over several `**` was
/// exponential, and it runs on an async worker for every authorized request.
fn match_parts(parts: &[Part], components: &[&str]) -> bool {
    let n = parts.len();
    // at[i]: the first i parts match the components read so far.
    let mut at = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    at[0] = true;
    skip_empty_any(parts, &mut at);
    for c in components {
        next.iter_mut().for_each(|s| *s = false);
        for (i, part) in parts.iter().enumerate() {
            if !at[i] {
                continue;
            }
            match part {
                // `**` takes this component and may take more.
                Part::Any => next[i] = true,
                Part::One => next[i + 1] = true,
                Part::Literal(l) if l == c => next[i + 1] = true,
                Part::Literal(_) => {}
            }
        }
        skip_empty_any(parts, &mut next);
        std::mem::swap(&mut at, &mut next);
        if !at.contains(&true) {
            return false;
        }
    }
    at[n]
}

/// A `**` may also match no component: a position before one reaches the position after.
fn skip_empty_any(parts: &[Part], at: &mut [bool]) {
    for (i, part) in parts.iter().enumerate() {
        if at[i] && *part == Part::Any {
            at[i + 1] = true;
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks a grant's subject syntax: `anonymous` or a valid user name.
pub fn check_subject(subject: &str) -> Result<(), Error> {
    if subject == ANONYMOUS {
        Ok(())
    } else {
        check_name(subject)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub pattern: Pattern,
    pub actions: Actions,
}

/// Every user (with the bcrypt hash they log in with) and every grant, as one value that
/// answers "may this subject do that to this repository". `access` keeps one in memory.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// user name → bcrypt hash.
    pub users: BTreeMap<String, String>,
    /// subject → its grants.
    pub grants: BTreeMap<String, Vec<Grant>>,
}

impl Policy {
    /// The stored hash of `user`, if the user exists.
    pub fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// What `subject` (a user, or `None` for anonymous) may do with `repo`: the union of every
    /// matching grant of the subject and of `anonymous`.
    pub fn permissions(&self, subject: Option<&str>, repo: &str) -> Actions {
        let own = subject.and_then(|s| self.grants.get(s));
        let anon = self.grants.get(ANONYMOUS);
        own.into_iter()
            .chain(anon)
            .flatten()
            .filter(|g| g.pattern.matches(repo))
            .fold(Actions::NONE, |acc, g| acc.union(g.actions))
    }

    pub fn allows(&self, subject: Option<&str>, repo: &str, action: Action) -> bool {
        self.permissions(subject, repo).allows(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn one_star_matches_exactly_one_component() {
        assert!(p("team-a/*").matches("team-a/app"));
        assert!(!p("team-a/*").matches("team-a"));
        assert!(!p("team-a/*").matches("team-a/app/sub"));
        assert!(!p("team-a/*").matches("team-b/app"));
        assert!(p("*").matches("alpine"));
        assert!(!p("*").matches("library/alpine"));
        assert!(p("*/web").matches("x/web"));
        assert!(!p("*/web").matches("x/y/web"));
        assert!(p("a/*/c").matches("a/b/c"));
        assert!(!p("a/*/c").matches("a/c"));
    }

    #[test]
    fn two_stars_match_any_number_of_components() {
        assert!(p("**").matches("alpine"));
        assert!(p("**").matches("a/b/c/d"));
        assert!(p("alice/**").matches("alice"));
        assert!(p("alice/**").matches("alice/x"));
        assert!(p("alice/**").matches("alice/x/y/z"));
        assert!(!p("alice/**").matches("alicex/y"));
        assert!(!p("alice/**").matches("bob/alice"));
        assert!(p("**/web").matches("web"));
        assert!(p("**/web").matches("a/b/web"));
        assert!(!p("**/web").matches("a/web/x"));
        assert!(p("a/**/z").matches("a/z"));
        assert!(p("a/**/z").matches("a/b/c/z"));
        assert!(!p("a/**/z").matches("a/b/c"));
        assert!(p("**/*").matches("x"));
        assert!(!p("*/**/*").matches("x"));
        assert!(p("*/**/*").matches("x/y"));
    }

    #[test]
    fn adversarial_patterns_match_in_linear_time() {
        let name = vec!["a"; 127].join("/");
        let nasty = p("**/**/**/**/**/**/**/**/x");
        let start = std::time::Instant::now();
        for _ in 0..100 {
            assert!(!nasty.matches(&name));
            assert!(p("**/**/**/**/a").matches(&name));
        }
        // 200 matches of a 127-component name: backtracking took over 100 ms for one.
        assert!(
            start.elapsed() < std::time::Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn literals_match_whole_components_only() {
        assert!(p("library/alpine").matches("library/alpine"));
        assert!(!p("library/alpine").matches("library/alpine2"));
        assert!(!p("library").matches("library/alpine"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for bad in [
            "", "/", "a//b", "a/", "/a", "***", "a*", "team-*", "UPPER", "a/../b", "a b",
        ] {
            let e = Pattern::parse(bad).unwrap_err();
            assert!(matches!(e, Error::BadPattern { .. }), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("bad pattern"), "{e}");
        }
    }

    #[test]
    fn actions_parse_as_a_comma_list_and_admin_implies_all() {
        let a = Actions::parse("pull,push").unwrap();
        assert!(a.allows(Action::Pull) && a.allows(Action::Push));
        assert!(!a.allows(Action::Delete) && !a.allows(Action::Admin));
        assert_eq!(a.to_string(), "pull,push");
        assert_eq!(Actions::parse("push, pull").unwrap(), a);
        let admin = Actions::parse("admin").unwrap();
        for x in Action::ALL {
            assert!(admin.allows(x));
        }
        assert_eq!(Actions::parse("pul"), Err(Error::BadAction("pul".into())));
        assert_eq!(Actions::parse(""), Err(Error::BadAction("".into())));
        assert_eq!(
            Actions::parse("pull,,push"),
            Err(Error::BadAction("".into()))
        );
        assert_eq!(Actions::parse("*"), Err(Error::BadAction("*".into())));
    }

    fn policy(grants: &[(&str, &str, &str)]) -> Policy {
        let mut p = Policy::default();
        for (s, pat, acts) in grants {
            p.grants.entry(s.to_string()).or_default().push(Grant {
                pattern: Pattern::parse(pat).unwrap(),
                actions: Actions::parse(acts).unwrap(),
            });
        }
        p
    }

    #[test]
    fn permission_is_the_union_of_matching_grants_including_anonymous() {
        let pol = policy(&[
            ("anonymous", "public/**", "pull"),
            ("alice", "alice/**", "pull,push"),
            ("alice", "alice/tmp/*", "delete"),
            ("bob", "team/*", "pull"),
            ("bob", "team/web", "push"),
            ("root", "**", "admin"),
        ]);
        let can = |s: Option<&str>, r: &str, a: &str| pol.allows(s, r, Action::parse(a).unwrap());
        assert!(can(None, "public/x", "pull"));
        assert!(!can(None, "public/x", "push"));
        assert!(!can(None, "alice/x", "pull"));
        assert!(can(Some("alice"), "alice/x", "push"));
        assert!(
            can(Some("alice"), "public/x", "pull"),
            "anonymous grants apply to users"
        );
        assert!(!can(Some("alice"), "alice/x", "delete"));
        assert!(can(Some("alice"), "alice/tmp/x", "delete"));
        assert!(can(Some("alice"), "alice/tmp/x", "pull"), "union");
        assert!(!can(Some("alice"), "bob/x", "pull"));
        assert!(can(Some("bob"), "team/web", "pull") && can(Some("bob"), "team/web", "push"));
        assert!(!can(Some("bob"), "team/api", "push"));
        assert!(can(Some("root"), "any/thing/at/all", "delete"));
        assert!(!can(Some("nobody"), "alice/x", "pull"));
        assert_eq!(pol.permissions(Some("carol"), "x"), Actions::NONE);
    }

    #[test]
    fn names_and_passwords_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("ci-bot_1.x@corp").is_ok());
        assert!(check_name("Alice").is_ok());
        for bad in ["", "-x", "a:b", "a b", "a/b", &"x".repeat(65)] {
            assert_eq!(check_name(bad), Err(Error::BadName(bad.to_string())));
        }
        assert_eq!(
            check_name("anonymous"),
            Err(Error::ReservedName("anonymous".into()))
        );
        assert!(check_subject("anonymous").is_ok());
        assert_eq!(check_password(""), Err(Error::EmptyPassword));
        assert_eq!(check_password(&"x".repeat(73)), Err(Error::LongPassword));
        assert!(check_password(&"x".repeat(72)).is_ok());
    }

    #[test]
    fn bcrypt_round_trip_and_malformed_hashes_match_nothing() {
        let h = hash_password("s3cret", 4).unwrap();
        assert!(is_bcrypt(&h));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret!", &h));
        assert!(!verify_password("s3cret", "not a hash"));
        assert!(!verify_password("", &h));
        assert_eq!(hash_password("", 4), Err(Error::EmptyPassword));
    }

    #[test]
    fn htpasswd_keeps_bcrypt_entries_and_reports_the_rest() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let y = h.replacen("$2b$", "$2y$", 1);
        let text = format!(
            "# users\n\nalice:{y}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ncarol:$apr1$x$y\nanonymous:{h}\n"
        );
        let lines = parse_htpasswd(&text).unwrap();
        assert_eq!(
            lines[0],
            HtpasswdLine::User {
                name: "alice".into(),
                hash: y.clone()
            }
        );
        assert!(verify_password("pw", &y), "htpasswd's $2y$ verifies");
        assert!(matches!(&lines[1], HtpasswdLine::Skipped { name, .. } if name == "bob"));
        assert!(matches!(&lines[2], HtpasswdLine::Skipped { name, .. } if name == "carol"));
        assert!(matches!(&lines[3], HtpasswdLine::Skipped { name, .. } if name == "anonymous"));
        assert!(parse_htpasswd("no colon here\n").is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"hunter2\"");
    }
}
