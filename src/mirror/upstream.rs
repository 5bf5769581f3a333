//! The client of one upstream registry: anonymous, HTTP Basic, or Docker token auth found by
//! following the upstream's `WWW-Authenticate` challenge (as Docker Hub requires). Tokens are
//! cached per scope until shortly before they expire. Credentials and tokens never reach a
//! log line: errors name the URL and status only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use super::config::Mirror;
use crate::auth::users::Secret;
use crate::metrics::Metrics;

/// Every manifest type a mirror stores, for `Accept`.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Why the upstream gave no usable answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// No HTTP answer at all (refused, timed out, TLS failed): the link is down.
    Unreachable(String),
    /// An HTTP answer that is not a success.
    Status(StatusCode, String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unreachable(m) => write!(f, "unreachable: {m}"),
            UpstreamError::Status(s, m) => write!(f, "answered {s}: {m}"),
        }
    }
}

pub struct Upstream {
    pub base: String,
    client: reqwest::Client,
    basic: Option<(String, Secret)>,
    /// Whether the upstream asked for Basic: then credentials go on every request.
    wants_basic: std::sync::atomic::AtomicBool,
    /// Bearer tokens by scope, with the instant they stop being used.
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

/// A token is dropped this long before the upstream said it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

impl Upstream {
    pub fn new(m: &Mirror) -> Result<Upstream, String> {
        let builder = match &m.ca_file {
            Some(ca) => crate::http_client::builder_with_ca(ca)?,
            None => crate::http_client::builder(),
        };
        let client = builder
            .connect_timeout(Duration::from_secs(10))
            // A blob body that stalls this long is abandoned (the fetch fails, nothing stored).
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("mirror {:?}: cannot build its HTTP client: {e}", m.prefix))?;
        let basic = match (&m.username, &m.password_file) {
            (Some(u), Some(f)) => {
                let p = std::fs::read_to_string(f).map_err(|e| {
                    format!("mirror {:?}: password_file {}: {e}", m.prefix, f.display())
                })?;
                Some((u.clone(), Secret::new(p.trim_end_matches(['\r', '\n']))))
            }
            _ => None,
        };
        Ok(Upstream {
            base: m.upstream.clone(),
            client,
            basic,
            wants_basic: Default::default(),
            tokens: Mutex::default(),
        })
    }

    /// Sends `method path` (path starts with `/v2/`) for repository `repo`, authenticating as
    /// the upstream asks: a cached token for the repository's pull scope, or Basic once the
    /// upstream asked for it; after a 401, follows its challenge once and retries.
    pub async fn send(
        &self,
        metrics: &Metrics,
        kind: &'static str,
        method: Method,
        path: &str,
        repo: &str,
        accept: Option<&str>,
    ) -> Result<Response, UpstreamError> {
        let scope = format!("repository:{repo}:pull");
        let url = format!("{}{path}", self.base);
        let mut retried = false;
        loop {
            let mut req = self.client.request(method.clone(), &url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = self.authorization(&scope) {
                req = req.header(AUTHORIZATION, auth);
            }
            metrics.mirror_upstream(kind);
            let resp = req
                .send()
                .await
                .map_err(|e| UpstreamError::Unreachable(describe(&url, &e)))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !retried {
                retried = true;
                self.answer_challenge(metrics, resp.headers(), &scope, &url)
                    .await?;
                continue;
            }
            if !resp.status().is_success() {
                let status = resp.status();
                return Err(UpstreamError::Status(status, format!("{method} {url}")));
            }
            return Ok(resp);
        }
    }

    fn authorization(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token cache lock");
        if let Some((t, until)) = tokens.get(scope) {
            if Instant::now() < *until {
                return Some(format!("Bearer {}", t.expose()));
            }
        }
        drop(tokens);
        if self.wants_basic.load(std::sync::atomic::Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    fn basic_header(&self) -> Option<String> {
        use base64::Engine as _;
        let (u, p) = self.basic.as_ref()?;
        let raw = format!("{u}:{}", p.expose());
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }

    /// Reads a 401's challenge: Basic means "send the credentials"; Bearer means "get a
    /// token from the realm" (with the credentials, if any, as Basic there).
    async fn answer_challenge(
        &self,
        metrics: &Metrics,
        headers: &HeaderMap,
        scope: &str,
        url: &str,
    ) -> Result<(), UpstreamError> {
        let denied = |why: &str| {
            UpstreamError::Status(StatusCode::UNAUTHORIZED, format!("GET {url}: {why}"))
        };
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| denied("401 without a WWW-Authenticate challenge"))?;
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            if self.basic.is_none() {
                return Err(denied(
                    "the upstream wants credentials and none are configured",
                ));
            }
            if self
                .wants_basic
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                return Err(denied("the upstream refused the configured credentials"));
            }
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(&format!("unknown auth scheme {scheme:?}")));
        }
        let realm = params
            .get("realm")
            .ok_or_else(|| denied("Bearer challenge without a realm"))?;
        let mut token_url = reqwest::Url::parse(realm)
            .map_err(|_| denied("Bearer challenge with an unusable realm"))?;
        {
            let mut q = token_url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            // Our own scope, not the challenge's: the token is cached under it.
            q.append_pair("scope", scope);
        }
        let mut req = self.client.get(token_url.clone());
        if let Some(b) = self.basic_header() {
            req = req.header(AUTHORIZATION, b);
        }
        metrics.mirror_upstream("token");
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Unreachable(describe(token_url.as_str(), &e)))?;
        if !resp.status().is_success() {
            return Err(UpstreamError::Status(
                resp.status(),
                format!("token request to {realm}"),
            ));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenAnswer = resp
            .json()
            .await
            .map_err(|_| denied("the token service's answer is not a token"))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| denied("the token service's answer holds no token"))?;
        // The spec's default lifetime when `expires_in` is absent is 60 seconds.
        let life = Duration::from_secs(t.expires_in.unwrap_or(60));
        let until = Instant::now() + life.saturating_sub(TOKEN_MARGIN);
        self.tokens
            .lock()
            .expect("token cache lock")
            .insert(scope.to_string(), (Secret::new(&token), until));
        Ok(())
    }
}

/// The error of a request, without anything from its headers.
fn describe(url: &str, e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's own text names the URL (ours, no credentials) and the cause.
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    format!("{url}: {kind} ({cause})")
}

/// `Bearer realm="https://auth",service="reg",scope="repository:a:pull"` → ("Bearer", params).
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::parse_challenge;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/alpine:pull\"",
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/alpine:pull");
        let (s, p) = parse_challenge("Basic realm=\"a \\\"b\\\", c\"");
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "a \"b\", c");
        let (_, p) = parse_challenge("Bearer realm=x, error=invalid_token");
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "invalid_token");
    }
}
