//! Who is looking at the UI, and the CSRF tokens of its forms.
//!
//! - A login (checked by `http::auth`, with its throttling and cache) opens a session: a
//!   random 256-bit id in an HttpOnly, SameSite=Strict cookie (Secure under TLS) that expires
//!   with `[ui] session_lifetime`. The server keeps only the id's sha256, with the user and
//!   the password hash the user had at login: a `passwd` or `user del` ends the session at the
//!   next request, as it ends cached API credentials. Sessions live in memory; a restart
//!   logs everyone out.
//! - Every state-changing form carries a CSRF token: an HMAC, under a key made at start-up, of
//!   what binds the form to this browser: the session id when logged in, else a random nonce
//!   cookie (the signed double-submit cookie pattern), so anonymous visitors allowed to delete
//!   are protected too and the server keeps nothing for them.
//! - What a visitor may see is decided by the same `Policy` the API consults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::auth::users::{Action, Policy};
use crate::config::{AuthMode, Config};

pub const SESSION_COOKIE: &str = "dockyard_session";
pub const NONCE_COOKIE: &str = "dockyard_csrf";
/// Sessions kept at most; past this, expired ones are dropped, then the oldest.
const LIMIT: usize = 10_000;

struct Session {
    user: String,
    /// The user's password hash at login: the session ends when it changes.
    hash: String,
    expires: Instant,
}

pub struct UiState {
    pub enabled: bool,
    auth: bool,
    secure: bool,
    lifetime: Duration,
    key: [u8; 32],
    sessions: Mutex<HashMap<[u8; 32], Session>>,
}

/// The visitor of one request: who, and what they may do.
pub struct Viewer {
    /// `None` when auth is off: everything is allowed.
    policy: Option<Arc<Policy>>,
    pub user: Option<String>,
    /// What binds this browser's forms (see the module doc), if it has anything yet.
    binding: Option<String>,
    /// A nonce cookie to set with this response (the visitor had none).
    pub new_nonce: Option<String>,
}

impl Viewer {
    pub fn may(&self, repo: &str, action: Action) -> bool {
        match &self.policy {
            None => true,
            Some(p) => p.allows(self.user.as_deref(), repo, action),
        }
    }

    /// An admin of everything may see users and grants; with auth off everyone is.
    pub fn is_admin(&self) -> bool {
        self.may("**", Action::Admin)
    }

    pub fn auth_on(&self) -> bool {
        self.policy.is_some()
    }

    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_deref()
    }

    pub fn policy_arc(&self) -> Option<Arc<Policy>> {
        self.policy.clone()
    }
}

fn random() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

impl UiState {
    pub fn new(config: &Config) -> UiState {
        UiState {
            enabled: config.ui.enabled,
            auth: config.auth.mode != AuthMode::None,
            secure: config.tls.is_some(),
            lifetime: config.ui.session_lifetime,
            key: random(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The visitor behind a request's cookies, judged by `policy` (`None`: auth is off).
    pub fn viewer(&self, cookies: Option<&str>, policy: Option<Arc<Policy>>) -> Viewer {
        let mut viewer = Viewer {
            user: None,
            binding: None,
            new_nonce: None,
            policy: None,
        };
        if let (Some(id), Some(p)) = (cookie(cookies, SESSION_COOKIE), &policy) {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            let key = hash(id);
            match sessions.get(&key) {
                Some(s) if s.expires > Instant::now() && p.hash_of(&s.user) == Some(&s.hash) => {
                    viewer.user = Some(s.user.clone());
                    viewer.binding = Some(format!("session:{id}"));
                }
                Some(_) => {
                    sessions.remove(&key);
                }
                None => {}
            }
        }
        if viewer.binding.is_none() {
            viewer.binding = match cookie(cookies, NONCE_COOKIE) {
                Some(n) => Some(format!("nonce:{n}")),
                None => {
                    let n = hex::encode(random());
                    let b = format!("nonce:{n}");
                    viewer.new_nonce = Some(n);
                    Some(b)
                }
            };
        }
        viewer.policy = if self.auth { policy } else { None };
        viewer
    }

    /// The CSRF token the viewer's forms carry.
    pub fn csrf_token(&self, viewer: &Viewer) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(viewer.binding.as_deref().unwrap_or_default().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `token` is the viewer's CSRF token, compared in constant time. A visitor
    /// whose nonce cookie was made by this very request has no valid token yet.
    pub fn csrf_ok(&self, viewer: &Viewer, token: &str) -> bool {
        if viewer.new_nonce.is_some() {
            return false;
        }
        let Ok(token) = hex::decode(token) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(viewer.binding.as_deref().unwrap_or_default().as_bytes());
        mac.verify_slice(&token).is_ok()
    }

    /// Opens a session for `user` (whose password `http::auth` just checked against
    /// `hash`); returns the `Set-Cookie` value.
    pub fn open(&self, user: &str, hash: &str) -> String {
        let id = hex::encode(random());
        let now = Instant::now();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.len() >= LIMIT {
            sessions.retain(|_, s| s.expires > now);
            if sessions.len() >= LIMIT {
                if let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires) {
                    let k = *oldest.0;
                    sessions.remove(&k);
                }
            }
        }
        sessions.insert(
            hash_id(&id),
            Session {
                user: user.to_string(),
                hash: hash.to_string(),
                expires: now + self.lifetime,
            },
        );
        self.set_cookie(SESSION_COOKIE, &id, self.lifetime.as_secs())
    }

    /// Ends the session named by the request's cookie; returns the `Set-Cookie` that clears it.
    pub fn close(&self, cookies: Option<&str>) -> String {
        if let Some(id) = cookie(cookies, SESSION_COOKIE) {
            self.sessions
                .lock()
                .expect("sessions lock")
                .remove(&hash_id(id));
        }
        self.set_cookie(SESSION_COOKIE, "", 0)
    }

    pub fn nonce_cookie(&self, nonce: &str) -> String {
        // A browser session cookie: it only binds forms, it grants nothing.
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{NONCE_COOKIE}={nonce}; Path=/; HttpOnly; SameSite=Strict{secure}")
    }

    fn set_cookie(&self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }
}

fn hash_id(id: &str) -> [u8; 32] {
    hash(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let h = Some("a=1; dockyard_session=abc; dockyard_csrf=n");
        assert_eq!(cookie(h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(h, NONCE_COOKIE), Some("n"));
        assert_eq!(cookie(Some("xdockyard_session=abc"), SESSION_COOKIE), None);
        assert_eq!(cookie(None, SESSION_COOKIE), None);
    }

    #[test]
    fn csrf_tokens_bind_to_the_browser() {
        let ui = UiState::new(&Config::default());
        let a = ui.viewer(Some("dockyard_csrf=aaaa"), None);
        let b = ui.viewer(Some("dockyard_csrf=bbbb"), None);
        let token = ui.csrf_token(&a);
        assert!(ui.csrf_ok(&a, &token));
        assert!(!ui.csrf_ok(&b, &token));
        assert!(!ui.csrf_ok(&a, ""));
        assert!(!ui.csrf_ok(&a, "zz"));
        // A visitor without a nonce gets one, and no token is valid for it yet.
        let fresh = ui.viewer(None, None);
        assert!(fresh.new_nonce.is_some());
        assert!(!ui.csrf_ok(&fresh, &ui.csrf_token(&fresh)));
    }
}
