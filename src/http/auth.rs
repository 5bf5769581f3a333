//! Who is calling, and may they: Basic credentials, bearer tokens and the token endpoint
//! (`GET`/`POST /token`), the credential cache, failed-login throttling, and the 401/403
//! answers with their `WWW-Authenticate` challenges.
//!
//! - bcrypt runs only on the blocking pool, a few at a time, and only for credentials not yet
//!   verified: a verified pair is cached under the sha256 of user and password together with
//!   the stored hash it matched, and the entry counts only while that is still the user's hash,
//!   so a `passwd` or `del` applies to the next request without anyone clearing the cache.
//! - Failed logins are counted per user name and per client address; past
//!   `auth.max_failures` within `auth.failure_window`, attempts are refused with 429 before
//!   any bcrypt runs. An attempt is reserved before it is verified, so concurrent guesses
//!   count too. The address counts only unknown users and attempts at several users, so
//!   one person's typos do not lock out an office behind one proxy. An unknown user costs a
//!   bcrypt verify too, so timing tells nothing.
//! - Passwords, tokens and hashes are never logged; secrets are compared in constant time
//!   (bcrypt's own comparison, `jsonwebtoken`'s signature check).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use warp::http::{header, Method, StatusCode};
use warp::reply::Response;

use super::{reply, Request, State};
use crate::auth::token::{self, Claims};
use crate::auth::users::{self, Action, Policy};
use crate::config::{AuthConfig, AuthMode};
use crate::oci::{ErrorCode, RegistryError, RepoName};

/// Verified credentials kept at most; past this the cache starts over.
const CACHE_LIMIT: usize = 10_000;
/// Throttle entries kept at most; past this expired ones are dropped.
const THROTTLE_LIMIT: usize = 10_000;
/// A token request body (a form) larger than this is refused.
pub const MAX_FORM: usize = 64 * 1024;

/// What a request needs, derived from its route and method in `http::dispatch`.
pub enum Need<'a> {
    /// `/v2/`: clients probe it to learn whether (and how) to log in.
    Login,
    /// `_catalog`: anyone, filtered to what the caller may pull.
    Listing,
    Repo(&'a RepoName, Action),
}

/// The authenticated (or anonymous) caller of one request, and what it may do.
#[derive(Clone)]
pub struct Caller {
    /// `None` when auth is off: everything is allowed.
    policy: Option<Arc<Policy>>,
    user: Option<String>,
    token: Option<Arc<Claims>>,
}

impl Caller {
    fn open() -> Caller {
        Caller {
            policy: None,
            user: None,
            token: None,
        }
    }

    /// May the caller do `action` with `repo`? With a token, the token must grant it *and*
    /// the grants must still allow it, so a revoke applies before the token expires.
    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn may(&self, repo: &str, action: Action) -> bool {
        let Some(policy) = &self.policy else {
            return true;
        };
        let token_ok = self.token.as_ref().is_none_or(|c| {
            c.grants("repository", repo, action.as_str()) || c.grants("repository", repo, "*")
        });
        token_ok && policy.allows(self.user.as_deref(), repo, action)
    }

    /// Do the live grants let the caller do `action` to `repo`, whatever its token's scopes
    /// (for a name the request did not spell: the default mirror's stored name, checked
    /// after the token was checked against the name the client used).
    pub fn granted(&self, repo: &str, action: Action) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.allows(self.user.as_deref(), repo, action))
    }

    /// May the caller see `repo` in the catalog: may it pull it, by its grants.
    pub fn may_list(&self, repo: &str) -> bool {
        match &self.policy {
            None => true,
            Some(p) => p.allows(self.user.as_deref(), repo, Action::Pull),
        }
    }
}

struct Verified {
    user: String,
    hash: String,
}

#[derive(Default)]
struct Failures {
    /// Failures within the window that began at `since`.
    count: u32,
    /// Attempts being verified now: they count until they succeed.
    in_flight: u32,
    since: Option<Instant>,
    /// For an address: the known users it has tried within the window.
    users: std::collections::HashSet<String>,
}

/// What a verification in progress tells identical attempts waiting for it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shared {
    Right,
    Wrong,
    /// Throttled or failed: each waiter tries on its own.
    Undecided,
}

/// Publishes a verification's outcome to identical attempts waiting on it, and forgets it,
/// on every path out of `login` (`Undecided` unless told otherwise).
struct Leader<'a> {
    auth: &'a Auth,
    key: [u8; 32],
    tx: tokio::sync::watch::Sender<Option<Shared>>,
    outcome: Shared,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.auth
            .pending
            .lock()
            .expect("pending lock")
            .remove(&self.key);
        let _ = self.tx.send(Some(self.outcome));
    }
}

/// A login attempt reserved by `Auth::reserve`, to be settled when bcrypt has answered.
struct Attempt {
    user_key: String,
    /// Set when the attempt counts against the address too.
    addr_key: Option<String>,
}

/// The authentication state of a running server.
pub struct Auth {
    config: AuthConfig,
    /// "https" when Dockyard serves TLS itself, for the token realm it derives from `Host`.
    scheme: &'static str,
    metrics: Arc<crate::metrics::Metrics>,
    /// sha256(user NUL password) → what it was verified against.
    cache: Mutex<HashMap<[u8; 32], Verified>>,
    /// Verifications in progress, by the same key: an identical attempt waits for the one
    /// running (a CI fleet starting at once with one robot's credentials costs one bcrypt
    /// and one throttle reservation, not one each).
    pending: Mutex<HashMap<[u8; 32], tokio::sync::watch::Receiver<Option<Shared>>>>,
    /// "user:NAME" or "addr:IP" → recent failures.
    failures: Mutex<HashMap<String, Failures>>,
    /// bcrypt verifications at once: no more than there are cores.
    bcrypt: Semaphore,
    /// A hash to verify unknown users against, so that they cost as much as known ones.
    dummy: Arc<OnceLock<String>>,
}

enum Presented {
    Nothing,
    Basic { user: String, password: String },
    Bearer(String),
}

fn unauthorized(message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Unauthorized, message)
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The scope a client should ask a token for to do `action` (a push needs pull as well).
fn scope_for(name: &RepoName, action: Action) -> String {
    let actions = match action {
        Action::Push => "pull,push",
        a => a.as_str(),
    };
    format!("repository:{name}:{actions}")
}

impl Auth {
    pub fn new(config: AuthConfig, tls: bool, metrics: Arc<crate::metrics::Metrics>) -> Auth {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Auth {
            config,
            scheme: if tls { "https" } else { "http" },
            metrics,
            cache: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            bcrypt: Semaphore::new(cores),
            dummy: Arc::new(OnceLock::new()),
        }
    }

    /// Authenticates the request and checks it may do what `need` says. The error is the
    /// answer: 401 with a challenge, 403, or 429.
    pub async fn authorize(
        &self,
        state: &State,
        req: &Request,
        need: Need<'_>,
    ) -> Result<Caller, RegistryError> {
        if self.config.mode == AuthMode::None {
            return Ok(Caller::open());
        }
        let policy = state.access.policy(&state.db).await?;
        let presented = presented(req).map_err(|m| self.challenge(req, unauthorized(m), None))?;
        let nothing = matches!(presented, Presented::Nothing);
        let caller = match presented {
            Presented::Nothing => Caller {
                policy: Some(policy),
                user: None,
                token: None,
            },
            Presented::Basic { user, password } => {
                self.login(&policy, &user, &password, req)
                    .await
                    .map_err(|e| self.challenge(req, e, None))?;
                Caller {
                    policy: Some(policy),
                    user: Some(user),
                    token: None,
                }
            }
            Presented::Bearer(t) if self.config.mode == AuthMode::Token => {
                let claims = self
                    .bearer(state, &policy, &t)
                    .await
                    .map_err(|e| self.bearer_challenge(req, e, None, "invalid_token"))?;
                Caller {
                    policy: Some(policy),
                    user: claims.subject().map(str::to_string),
                    token: Some(Arc::new(claims)),
                }
            }
            Presented::Bearer(_) => {
                return Err(self.challenge(req, unauthorized("use Basic credentials"), None))
            }
        };
        match need {
            Need::Login if nothing => {
                Err(self.challenge(req, unauthorized("authentication required"), None))
            }
            Need::Login | Need::Listing => Ok(caller),
            Need::Repo(name, action) if caller.may(name.as_str(), action) => Ok(caller),
            Need::Repo(name, action) => Err(self.refuse(req, &caller, name, action)),
        }
    }

    /// A caller that may not: anonymous callers (and tokens that lack a scope the grants
    /// would give) are asked to authenticate; a known user is denied.
    fn refuse(
        &self,
        req: &Request,
        caller: &Caller,
        name: &RepoName,
        action: Action,
    ) -> RegistryError {
        let detail = serde_json::json!([{
            "Type": "repository", "Class": "", "Name": name.as_str(), "Action": action.as_str(),
        }]);
        let grants_would = caller
            .policy
            .as_ref()
            .is_some_and(|p| p.allows(caller.user.as_deref(), name.as_str(), action));
        let scope = scope_for(name, action);
        // An anonymous caller (with an anonymous token or none) needs a login, not a wider
        // token: the plain challenge, whose "authentication required" is what clients then
        // show (an `insufficient_scope` makes podman print "denied").
        if caller.token.is_some() && caller.user.is_some() && grants_would {
            // RFC 6750 says 403 here, but Docker's token protocol (Distribution's `token`
            // auth) answers 401 with the scope, which is what makes clients fetch a new
            // token instead of failing.
            let e = unauthorized("the token does not grant this scope").with_detail(detail);
            return self.bearer_challenge(req, e, Some(&scope), "insufficient_scope");
        }
        if caller.user.is_none() {
            let e = unauthorized("authentication required").with_detail(detail);
            return self.challenge(req, e, Some(&scope));
        }
        tracing::info!(user = caller.user.as_deref(), repo = %name, action = action.as_str(), "denied");
        RegistryError::code(ErrorCode::Denied).with_detail(detail)
    }

    /// Adds the mode's `WWW-Authenticate` challenge to a 401 (other errors pass unchanged).
    fn challenge(&self, req: &Request, e: RegistryError, scope: Option<&str>) -> RegistryError {
        self.challenge_with(req, e, scope, None)
    }

    /// A challenge to a bearer token that was presented: RFC 6750's `error` parameter says
    /// why (`invalid_token`, `insufficient_scope`), as Distribution's token auth sends it.
    fn bearer_challenge(
        &self,
        req: &Request,
        e: RegistryError,
        scope: Option<&str>,
        error: &str,
    ) -> RegistryError {
        self.challenge_with(req, e, scope, Some(error))
    }

    fn challenge_with(
        &self,
        req: &Request,
        e: RegistryError,
        scope: Option<&str>,
        error: Option<&str>,
    ) -> RegistryError {
        if e.code != ErrorCode::Unauthorized {
            return e;
        }
        let value = match self.config.mode {
            AuthMode::Token => {
                let mut v = format!(
                    "Bearer realm=\"{}\",service=\"{}\"",
                    quote(&self.token_realm(req)),
                    quote(&self.config.service)
                );
                if let Some(s) = scope {
                    v.push_str(&format!(",scope=\"{}\"", quote(s)));
                }
                if let Some(err) = error {
                    v.push_str(&format!(",error=\"{err}\""));
                }
                v
            }
            _ => format!("Basic realm=\"{}\"", quote(&self.config.realm)),
        };
        e.with_header("WWW-Authenticate", value)
    }

    fn token_realm(&self, req: &Request) -> String {
        match (&self.config.token_realm, req.header("host")) {
            (Some(r), _) => r.clone(),
            (None, Some(host)) => format!("{}://{host}/token", self.scheme),
            (None, None) => "/token".to_string(),
        }
    }

    /// Checks a user name and password: from the cache when this very pair was verified
    /// against the user's current hash, else with bcrypt on the blocking pool (throttled).
    async fn login(
        &self,
        policy: &Policy,
        user: &str,
        password: &str,
        req: &Request,
    ) -> Result<(), RegistryError> {
        let key: [u8; 32] = Sha256::new()
            .chain_update(user.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let stored = policy.hash_of(user).map(str::to_string);
        {
            let mut cache = self.cache.lock().expect("cache lock");
            if let Some(v) = cache.get(&key) {
                if v.user == user && stored.as_deref() == Some(v.hash.as_str()) {
                    return Ok(());
                }
                // The password changed or the user is gone: verify afresh.
                cache.remove(&key);
            }
        }
        let waiting = {
            let mut pending = self.pending.lock().expect("pending lock");
            match pending.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    pending.insert(key, rx);
                    Ok(tx)
                }
            }
        };
        let mut leader = match waiting {
            Ok(tx) => Leader {
                auth: self,
                key,
                tx,
                outcome: Shared::Undecided,
            },
            Err(mut rx) => {
                let outcome = rx
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|v| *v)
                    .unwrap_or(Shared::Undecided);
                match outcome {
                    Shared::Right => return Ok(()),
                    Shared::Wrong => return Err(unauthorized("incorrect username or password")),
                    // Box the retry: an async fn cannot recurse directly.
                    Shared::Undecided => {
                        return Box::pin(self.login(policy, user, password, req)).await
                    }
                }
            }
        };
        // An attempt is reserved before bcrypt runs and counts as a failure until it is
        // proven right, so a burst of concurrent guesses gets no more verifications than a
        // patient guesser.
        let addr = remote_ip(req).map_or("-".to_string(), |ip| ip.to_string());
        let attempt = match self.reserve(user, stored.is_some(), &addr) {
            Ok(a) => a,
            Err(wait) => {
                tracing::warn!(user, addr = ?req.remote, "login throttled");
                return Err(RegistryError::new(
                    ErrorCode::TooManyRequests,
                    "too many failed logins; try again later",
                )
                .with_header("Retry-After", wait.as_secs().max(1).to_string()));
            }
        };
        let ok = match self.verify(password, stored.clone()).await {
            Ok(ok) => ok,
            Err(e) => {
                self.settle(attempt, true);
                return Err(e);
            }
        };
        if ok {
            if let Some(hash) = stored {
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(
                    key,
                    Verified {
                        user: user.to_string(),
                        hash,
                    },
                );
            }
            self.settle(attempt, true);
            leader.outcome = Shared::Right;
            Ok(())
        } else {
            tracing::warn!(user, addr = ?req.remote, "failed login");
            self.metrics.auth_failure();
            self.settle(attempt, false);
            leader.outcome = Shared::Wrong;
            Err(unauthorized("incorrect username or password"))
        }
    }

    /// bcrypt on the blocking pool, at most one per core at a time. An unknown user is
    /// verified against a dummy hash and fails.
    async fn verify(&self, password: &str, stored: Option<String>) -> Result<bool, RegistryError> {
        let _permit = self
            .bcrypt
            .acquire()
            .await
            .map_err(|e| RegistryError::internal(format!("bcrypt slots: {e}")))?;
        let password = users::Secret::new(password);
        let dummy = self.dummy.clone();
        let cost = self.config.bcrypt_cost;
        tokio::task::spawn_blocking(move || match stored {
            Some(hash) => users::verify_password(password.expose(), &hash),
            None => {
                let d = dummy.get_or_init(|| {
                    users::hash_password("not a password", cost).unwrap_or_default()
                });
                let _ = users::verify_password(password.expose(), d);
                false
            }
        })
        .await
        .map_err(|e| RegistryError::internal(format!("bcrypt task: {e}")))
    }

    /// Reserves one login attempt for `user` from `addr`, or says how long until one may be
    /// made. Per user name, every attempt counts. Per address, only attempts that could be a
    /// guessing sweep count: unknown users, and the first attempt at each other user, so one
    /// person mistyping a password does not lock out everyone behind the same proxy.
    fn reserve(&self, user: &str, known: bool, addr: &str) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let window = self.config.failure_window;
        let max = self.config.max_failures;
        let mut failures = self.failures.lock().expect("failures lock");
        if failures.len() >= THROTTLE_LIMIT {
            failures.retain(|_, f| f.in_flight > 0 || f.since.is_some_and(|s| now - s < window));
        }
        let user_key = format!("user:{user}");
        let addr_key = format!("addr:{addr}");
        let fresh = |f: &mut Failures| {
            if f.since.is_none_or(|s| now - s >= window) {
                f.count = 0;
                f.users.clear();
                f.since = Some(now);
            }
        };
        let wait = |f: &Failures| window.saturating_sub(now - f.since.unwrap_or(now));
        let u = failures.entry(user_key.clone()).or_default();
        fresh(u);
        if u.count + u.in_flight >= max {
            return Err(wait(u));
        }
        let a = failures.entry(addr_key.clone()).or_default();
        fresh(a);
        let counts_for_addr = !known || !a.users.contains(user);
        if counts_for_addr && a.count + a.in_flight >= max {
            return Err(wait(a));
        }
        if counts_for_addr {
            a.in_flight += 1;
            if known && a.users.len() < THROTTLE_LIMIT {
                a.users.insert(user.to_string());
            }
        }
        failures
            .get_mut(&user_key)
            .expect("entry made above")
            .in_flight += 1;
        Ok(Attempt {
            user_key,
            addr_key: counts_for_addr.then_some(addr_key),
        })
    }

    /// Ends a reserved attempt: a failure stays counted for the window; a success clears
    /// the user's failures (not the address's: a valid account must not reset a sweep).
    fn settle(&self, attempt: Attempt, succeeded: bool) {
        let mut failures = self.failures.lock().expect("failures lock");
        for key in std::iter::once(&attempt.user_key).chain(attempt.addr_key.as_ref()) {
            if let Some(f) = failures.get_mut(key) {
                f.in_flight = f.in_flight.saturating_sub(1);
                if !succeeded {
                    f.count += 1;
                }
            }
        }
        if succeeded {
            if let Some(f) = failures.get_mut(&attempt.user_key) {
                f.count = 0;
            }
        }
    }

    async fn bearer(
        &self,
        state: &State,
        policy: &Policy,
        t: &str,
    ) -> Result<Claims, RegistryError> {
        let key = state.access.token_key(&state.db).await?;
        let claims = token::verify(&key, t, &self.config.service, crate::db::now())
            .map_err(|e| unauthorized(&e.to_string()))?;
        if let Some(user) = claims.subject() {
            if policy.hash_of(user).is_none() {
                return Err(unauthorized("the token's user no longer exists"));
            }
        }
        Ok(claims)
    }

    /// `GET /token` (Basic credentials or none; `scope` and `service` in the query) and
    /// `POST /token` (the OAuth2 password grant as a form): a signed token granting the
    /// requested actions the caller's grants allow, and nothing more.
    pub async fn token_endpoint(&self, state: &State, req: Request, body: Vec<u8>) -> Response {
        match self.issue(state, &req, &body).await {
            Ok(resp) => resp,
            Err(e) => reply::error(e),
        }
    }

    async fn issue(
        &self,
        state: &State,
        req: &Request,
        body: &[u8],
    ) -> Result<Response, RegistryError> {
        if self.config.mode != AuthMode::Token {
            return Err(RegistryError::new(
                ErrorCode::Unsupported,
                "no token service: auth.mode is not \"token\"",
            )
            .with_status(404));
        }
        let basic_challenge = |e: RegistryError| {
            if e.code == ErrorCode::Unauthorized {
                e.with_header(
                    "WWW-Authenticate",
                    format!("Basic realm=\"{}\"", quote(&self.config.realm)),
                )
            } else {
                e
            }
        };
        let policy = state.access.policy(&state.db).await?;
        let (user, params, oauth) = if req.method == Method::POST {
            let form = form_urlencoded(body);
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            match get("grant_type").as_deref() {
                Some("password") => {
                    let (Some(u), Some(p)) = (get("username"), get("password")) else {
                        return Err(oauth_error(
                            "invalid_request",
                            "username and password are required",
                        ));
                    };
                    self.login(&policy, &u, &p, req)
                        .await
                        .map_err(basic_challenge)?;
                    (Some(u), form, true)
                }
                Some(_) => {
                    return Err(oauth_error(
                        "unsupported_grant_type",
                        "only the password grant is supported",
                    ))
                }
                None => return Err(oauth_error("invalid_request", "grant_type is required")),
            }
        } else {
            match presented(req).map_err(|m| basic_challenge(unauthorized(m)))? {
                Presented::Nothing => (None, req.query.clone(), false),
                Presented::Basic { user, password } => {
                    self.login(&policy, &user, &password, req)
                        .await
                        .map_err(basic_challenge)?;
                    (Some(user), req.query.clone(), false)
                }
                Presented::Bearer(_) => {
                    return Err(basic_challenge(unauthorized(
                        "the token endpoint takes Basic credentials",
                    )))
                }
            }
        };
        let requested: Vec<token::Access> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| token::parse_scope(v))
            .collect();
        let access = narrow(&policy, user.as_deref(), requested);
        let now = crate::db::now();
        let lifetime = self.config.token_lifetime.as_secs().max(1);
        let claims = Claims {
            iss: self.config.service.clone(),
            sub: user.clone().unwrap_or_default(),
            aud: self.config.service.clone(),
            exp: now + lifetime,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            access,
        };
        let key = state.access.token_key(&state.db).await?;
        let signed = token::sign(&key, &claims);
        let scope = claims
            .access
            .iter()
            .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut body = serde_json::json!({
            "token": signed,
            "access_token": signed,
            "expires_in": lifetime,
            "issued_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        if oauth {
            body["scope"] = scope.into();
            body["token_type"] = "Bearer".into();
        }
        Ok(reply::finish(
            reply::builder(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CACHE_CONTROL, "no-store"),
            serde_json::to_vec(&body).expect("JSON values always serialize"),
        ))
    }
}

/// The requested access, cut down to what the grants allow: each repository keeps only the
/// actions the caller may do there (`*` only for admins); entries left empty are dropped.
fn narrow(
    policy: &Policy,
    user: Option<&str>,
    requested: Vec<token::Access>,
) -> Vec<token::Access> {
    let mut out: Vec<token::Access> = Vec::new();
    for mut a in requested {
        match a.kind.as_str() {
            "repository" if RepoName::parse(&a.name).is_some() => {
                let perms = policy.permissions(user, &a.name);
                a.actions.retain(|act| match act.as_str() {
                    "*" => perms.allows(Action::Admin),
                    other => {
                        Action::parse(other).is_some_and(|x| x != Action::Admin && perms.allows(x))
                    }
                });
            }
            // The catalog filters by the caller's grants itself.
            "registry" if a.name == "catalog" => {}
            _ => continue,
        }
        a.actions.sort();
        a.actions.dedup();
        if a.actions.is_empty() {
            continue;
        }
        match out
            .iter_mut()
            .find(|o| o.kind == a.kind && o.name == a.name)
        {
            Some(o) => {
                o.actions.extend(a.actions);
                o.actions.sort();
                o.actions.dedup();
            }
            None => out.push(a),
        }
    }
    out
}

fn oauth_error(code: &str, message: &str) -> RegistryError {
    RegistryError::new(ErrorCode::Unsupported, format!("{code}: {message}")).with_status(400)
}

/// `application/x-www-form-urlencoded` → pairs, decoded as `warp::query` decodes a query.
fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn remote_ip(req: &Request) -> Option<IpAddr> {
    req.remote.map(|a| a.ip())
}

/// The credentials in `Authorization`, if any; `Err` for a header that cannot be read.
fn presented(req: &Request) -> Result<Presented, &'static str> {
    let Some(value) = req.headers.get(header::AUTHORIZATION) else {
        return Ok(Presented::Nothing);
    };
    let value = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD
            .decode(rest)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or("malformed Basic credentials")?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("malformed Basic credentials")?;
        // containers/image (skopeo, podman, buildah) answers a Basic challenge with an empty
        // user and password when it has no login for the host (docker sends no header).
        // Both mean "no credentials": the caller is anonymous, gets anonymous's grants, and
        // counts nothing toward the throttle. An empty user with a password is still a
        // wrong login.
        if user.is_empty() && password.is_empty() {
            return Ok(Presented::Nothing);
        }
        Ok(Presented::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Ok(Presented::Bearer(rest.to_string()))
    } else {
        Err("unsupported Authorization scheme")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::{Actions, Grant, Pattern};

    #[test]
    fn forms_decode_like_browsers_encode_them() {
        assert_eq!(
            form_urlencoded(b"grant_type=password&username=al%40ice&password=a+b%26c&scope=repository%3Ax%3Apull"),
            vec![
                ("grant_type".to_string(), "password".to_string()),
                ("username".to_string(), "al@ice".to_string()),
                ("password".to_string(), "a b&c".to_string()),
                ("scope".to_string(), "repository:x:pull".to_string()),
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(
            percent_decode("%+4x"),
            "% 4x",
            "not a hex escape; + is a space"
        );
    }

    #[test]
    fn a_token_grants_only_what_was_asked_and_is_allowed() {
        let mut p = Policy::default();
        p.grants.insert(
            "alice".into(),
            vec![Grant {
                pattern: Pattern::parse("shared/*").unwrap(),
                actions: Actions::parse("pull").unwrap(),
            }],
        );
        let got = narrow(
            &p,
            Some("alice"),
            token::parse_scope(
                "repository:shared/app:pull,push repository:other:pull repository:shared/app:delete,* registry:catalog:* repository:BAD:pull",
            ),
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].name, "shared/app");
        assert_eq!(got[0].actions, vec!["pull".to_string()]);
        assert_eq!(got[1].name, "catalog");
    }
}
