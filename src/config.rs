//! `registry.toml` → a validated `Config`. Every default lives here, and the checked-in
//! `registry.toml` repeats them as documentation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// How long requests in flight may run on after SIGTERM before they are cut off.
    pub shutdown_timeout: Duration,
    /// Timeouts and caps that keep slow or hostile clients from holding resources.
    pub limits: Limits,
    /// Serve HTTPS with this certificate chain and key (PEM) instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Serve `/metrics` at all.
    pub metrics_enabled: bool,
    /// Serve `/metrics` on its own address instead of the API's.
    pub metrics_listen: Option<SocketAddr>,
    pub root: PathBuf,
    /// Below this much free space on the data directory's filesystem, uploads are refused.
    pub min_free: u64,
    /// An upload session untouched for this long is abandoned (and later collected).
    pub upload_expiry: Duration,
    pub max_manifest_size: u64,
    pub max_blob_size: u64,
    /// Accept an index whose child manifests are not (yet) in the repository, as the spec
    /// allows; `false` refuses it with MANIFEST_BLOB_UNKNOWN.
    pub sparse_indexes: bool,
    pub log_level: String,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    /// The `[gc]` section.
    pub gc: GcConfig,
    /// The `[[policy]]` tables, in order (the first matching pattern wins).
    pub policies: crate::policy::Policies,
    /// The `[[webhook]]` tables (see `events`).
    pub webhooks: crate::events::Webhooks,
    /// The `[ui]` section.
    pub ui: UiConfig,
    /// Where blob bytes live: `[storage] backend` and `[storage.s3]`.
    pub backend: Backend,
    /// The `[[mirror]]` tables: upstream registries served under a name prefix.
    pub mirrors: Vec<crate::mirror::config::Mirror>,
    /// The `[mirror_cache]` section.
    pub mirror_cache: crate::mirror::config::CacheConfig,
}

/// Where blob bytes live. The database, the upload journals and the admin socket
/// stay under `root` either way.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Backend {
    /// `<root>/blobs/…`, as always.
    #[default]
    Filesystem,
    /// An S3-compatible bucket (`store::s3`).
    S3(S3Config),
}

/// `[storage.s3]`: the bucket blobs live in when `[storage] backend = "s3"`.
#[derive(Clone, Debug, PartialEq)]
pub struct S3Config {
    /// `http(s)://host:port` of the S3 API; `None` means AWS itself (from the region).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Every object key starts with this (no leading or trailing slash; may be empty), so
    /// several registries, or other data, can share one bucket.
    pub prefix: String,
    pub access_key_id: String,
    /// A file holding the secret access key (never the key itself in the config file, which
    /// is often world-readable and checked in).
    pub secret_access_key_file: PathBuf,
    /// Path-style URLs (`endpoint/bucket/key`), which Garage and MinIO need; virtual-hosted
    /// style (`bucket.endpoint/key`) otherwise.
    pub path_style: bool,
    /// Blob GETs answer 307 to a presigned URL of the bucket, so the bytes flow from the
    /// object store and not through Dockyard; `false` streams them through.
    pub redirect: bool,
    /// How long a presigned URL of a redirect is valid.
    pub redirect_lifetime: Duration,
    /// How often the server writes a snapshot of the database into the bucket
    /// (`portability::snapshots`); `None` ("off"): never, and no takeover is possible.
    pub snapshot_interval: Option<Duration>,
}

impl S3Config {
    fn new() -> S3Config {
        S3Config {
            endpoint: None,
            region: "us-east-1".to_string(),
            bucket: String::new(),
            prefix: String::new(),
            access_key_id: String::new(),
            secret_access_key_file: PathBuf::new(),
            path_style: true,
            redirect: true,
            redirect_lifetime: Duration::from_secs(5 * 60),
            snapshot_interval: Some(Duration::from_secs(15 * 60)),
        }
    }
}

/// The web UI at `/ui/` (see `http::ui`).
#[derive(Clone, Debug, PartialEq)]
pub struct UiConfig {
    pub enabled: bool,
    /// How long a login to the UI lasts.
    pub session_lifetime: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            session_lifetime: Duration::from_secs(12 * 3600),
        }
    }
}

/// `[server]` timeouts and caps: defaults no real client reaches, so only stalled, idle or
/// hostile connections ever meet them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// A kept-alive connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// A request body that yields no byte for this long fails (an upload stays resumable
    /// at the offset it had before the request).
    pub body_timeout: Duration,
    /// From accepting a connection to the end of its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once; at the cap, accepting pauses until one closes.
    pub max_connections: usize,
    /// Body-carrying writes (upload requests and manifest PUTs) in progress at once per
    /// user, or per address for anonymous callers; past it they are answered 429.
    pub max_uploads_per_client: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1000,
            max_uploads_per_client: 64,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Who may do what: see the `[auth]` section of `registry.toml`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The realm a Basic challenge names.
    pub realm: String,
    /// The token service's name: a Bearer challenge's `service`, and tokens' issuer and audience.
    pub service: String,
    /// The token endpoint a Bearer challenge points at; `None` means `http://<Host>/token`,
    /// built from the request's `Host` header.
    pub token_realm: Option<String>,
    pub token_lifetime: Duration,
    /// The bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
    /// Failed logins per user, and per client address, tolerated within `failure_window`
    /// before further attempts are refused until the window has passed.
    pub max_failures: u32,
    pub failure_window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everything is open.
    None,
    /// HTTP Basic credentials on every request.
    Basic,
    /// Docker token authentication, with Dockyard as its own token service.
    Token,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            realm: "dockyard".to_string(),
            service: "dockyard".to_string(),
            token_realm: None,
            token_lifetime: Duration::from_secs(5 * 60),
            bcrypt_cost: 12,
            max_failures: 10,
            failure_window: Duration::from_secs(60),
        }
    }
}

/// When garbage is collected; see `gc` for what the times mean.
#[derive(Clone, Debug, PartialEq)]
pub struct GcConfig {
    /// How often `serve` runs a pass by itself; `None` ("off") leaves it to `dockyard gc`.
    pub interval: Option<Duration>,
    /// How long a blob no manifest references is kept after its count fell to zero (and,
    /// renewed, after a client last uploaded, checked or mounted it).
    pub grace: Duration,
    /// However short `grace` is, a blob a client uploaded, checked or mounted is kept this long
    /// afterwards, so the manifest PUT that follows finds it. A file in `uploads/` without a
    /// session is a leftover once untouched for [`GcConfig::lease`].
    pub push_window: Duration,
    /// What happens to a manifest that no tag and no index references.
    pub untagged: Untagged,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Untagged {
    Keep,
    /// Deleted once it has been unreferenced this long.
    After(Duration),
}

impl GcConfig {
    /// How long a client's sighting of a blob protects it: the grace, renewed.
    pub fn lease(&self) -> Duration {
        self.grace.max(self.push_window)
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Some(Duration::from_secs(10 * 60)),
            grace: Duration::from_secs(3600),
            push_window: Duration::from_secs(15 * 60),
            untagged: Untagged::Keep,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:5000".parse().expect("literal address"),
            shutdown_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            tls: None,
            metrics_enabled: true,
            metrics_listen: None,
            root: PathBuf::from("./data"),
            min_free: 100 * 1024 * 1024,
            upload_expiry: Duration::from_secs(24 * 3600),
            max_manifest_size: 4 * 1024 * 1024,
            max_blob_size: 64 * 1024 * 1024 * 1024,
            sparse_indexes: true,
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            auth: AuthConfig::default(),
            gc: GcConfig::default(),
            ui: UiConfig::default(),
            policies: crate::policy::Policies::default(),
            backend: Backend::Filesystem,
            mirrors: Vec::new(),
            mirror_cache: Default::default(),
            webhooks: crate::events::Webhooks::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The file's shape. Every field is optional; `deny_unknown_fields` makes a typo an error
/// that names the key instead of a silently ignored setting.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    gc: GcSection,
    #[serde(default)]
    policy: Vec<PolicySection>,
    #[serde(default)]
    webhook: Vec<WebhookSection>,
    #[serde(default)]
    ui: UiSection,
    #[serde(default)]
    mirror: Vec<crate::mirror::config::MirrorSection>,
    #[serde(default)]
    mirror_cache: crate::mirror::config::CacheSection,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookSection {
    url: String,
    events: Vec<String>,
    name: Option<String>,
    pattern: Option<String>,
    secret_file: Option<PathBuf>,
    timeout: Option<String>,
    max_queued: Option<u64>,
    backoff: Option<String>,
    backoff_max: Option<String>,
}

impl WebhookSection {
    fn parse(self, i: usize) -> Result<crate::events::Webhook, String> {
        use crate::events::{endpoint_id, Action, HookSecret, Webhook};
        let at = format!("webhook[{i}]");
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("{at}.url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "{at}.url: must be an http:// or https:// URL with a host"
            ));
        }
        let id = match self.name {
            Some(n) if n.trim().is_empty() => return Err(format!("{at}.name: empty")),
            Some(n) => n,
            None => endpoint_id(&url),
        };
        let at = format!("webhook[{i}] ({id})");
        if self.events.is_empty() {
            return Err(format!(
                "{at}.events: empty; say which of push, delete, pull, gc"
            ));
        }
        let mut actions = Vec::new();
        for e in &self.events {
            let a = Action::parse(e).ok_or_else(|| {
                format!("{at}.events: unknown event {e:?} (push, delete, pull or gc)")
            })?;
            if !actions.contains(&a) {
                actions.push(a);
            }
        }
        let pattern = crate::auth::users::Pattern::parse(self.pattern.as_deref().unwrap_or("**"))
            .map_err(|e| format!("{at}.pattern: {e}"))?;
        let secret = match self.secret_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| format!("{at}.secret_file {}: {e}", path.display()))?;
                // A trailing newline (as `echo` writes) is not part of the key.
                let key = bytes.trim_ascii_end().to_vec();
                if key.is_empty() {
                    return Err(format!("{at}.secret_file {}: empty", path.display()));
                }
                Some(HookSecret(std::sync::Arc::new(key)))
            }
        };
        let positive = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => {
                let d = duration(&format!("{at}.{key}"), &t)?;
                if d.is_zero() {
                    return Err(format!("{at}.{key}: must be more than zero"));
                }
                Ok(d)
            }
        };
        let timeout = positive("timeout", self.timeout, Duration::from_secs(5))?;
        let backoff = positive("backoff", self.backoff, Duration::from_secs(1))?;
        let backoff_max = positive("backoff_max", self.backoff_max, Duration::from_secs(300))?;
        if backoff_max < backoff {
            return Err(format!("{at}.backoff_max: less than backoff"));
        }
        let max_queued = self.max_queued.unwrap_or(10_000);
        if max_queued == 0 {
            return Err(format!("{at}.max_queued: must be at least 1"));
        }
        Ok(Webhook {
            id,
            url: self.url,
            actions,
            pattern,
            secret,
            timeout,
            max_queued,
            backoff,
            backoff_max,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UiSection {
    enabled: Option<bool>,
    session_lifetime: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    pattern: String,
    keep_last: Option<usize>,
    keep_within: Option<String>,
    #[serde(default)]
    keep_tags: Vec<String>,
    #[serde(default)]
    immutable_tags: Vec<String>,
    quota: Option<ByteSize>,
}

impl PolicySection {
    fn parse(self, i: usize) -> Result<crate::policy::Policy, String> {
        use crate::policy::{Policy, TagGlob};
        let at = format!("policy[{i}] (pattern {:?})", self.pattern);
        let globs = |key: &str, v: Vec<String>| {
            v.iter()
                .map(|g| TagGlob::parse(g).map_err(|e| format!("{at}.{key}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            pattern: crate::auth::users::Pattern::parse(&self.pattern)
                .map_err(|e| format!("{at}.pattern: {e}"))?,
            keep_last: self.keep_last,
            keep_within: self
                .keep_within
                .map(|w| duration(&format!("{at}.keep_within"), &w))
                .transpose()?,
            keep_tags: globs("keep_tags", self.keep_tags)?,
            immutable_tags: globs("immutable_tags", self.immutable_tags)?,
            quota: self
                .quota
                .map(|q| q.bytes().map_err(|e| format!("{at}.quota: {e}")))
                .transpose()?,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<SocketAddr>,
    shutdown_timeout: Option<String>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    body_timeout: Option<String>,
    tls_handshake_timeout: Option<String>,
    max_connections: Option<usize>,
    max_uploads_per_client: Option<usize>,
    tls: Option<TlsSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    enabled: Option<bool>,
    /// Empty means "on the API's listener".
    listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StorageSection {
    root: Option<PathBuf>,
    upload_expiry: Option<String>,
    max_manifest_size: Option<ByteSize>,
    max_blob_size: Option<ByteSize>,
    min_free: Option<ByteSize>,
    sparse_indexes: Option<bool>,
    backend: Option<String>,
    s3: Option<S3Section>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct S3Section {
    endpoint: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    path_style: Option<bool>,
    redirect: Option<bool>,
    redirect_lifetime: Option<String>,
    snapshot_interval: Option<String>,
}

impl S3Section {
    fn parse(self) -> Result<S3Config, String> {
        let mut c = S3Config::new();
        let required = |key: &str, v: Option<String>| match v {
            Some(v) if !v.trim().is_empty() => Ok(v),
            _ => Err(format!(
                "storage.s3.{key}: required when storage.backend is \"s3\""
            )),
        };
        if let Some(e) = self.endpoint.filter(|e| !e.is_empty()) {
            let url = e.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "storage.s3.endpoint {e:?}: expected an http:// or https:// URL"
                ));
            }
            c.endpoint = Some(url.to_string());
        }
        if let Some(r) = self.region.filter(|r| !r.is_empty()) {
            c.region = r;
        }
        c.bucket = required("bucket", self.bucket)?;
        if let Some(p) = self.prefix {
            let p = p.trim_matches('/');
            if p.split('/').any(|seg| seg == "." || seg == "..")
                || p.contains("//")
                || p.chars().any(|ch| ch.is_control())
            {
                return Err(format!(
                    "storage.s3.prefix {p:?}: path segments must not be empty, \".\" or \"..\""
                ));
            }
            c.prefix = p.to_string();
        }
        c.access_key_id = required("access_key_id", self.access_key_id)?;
        c.secret_access_key_file = self
            .secret_access_key_file
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or("storage.s3.secret_access_key_file: required when storage.backend is \"s3\"")?;
        if let Some(p) = self.path_style {
            c.path_style = p;
        }
        if let Some(r) = self.redirect {
            c.redirect = r;
        }
        if let Some(l) = self.redirect_lifetime {
            c.redirect_lifetime = duration("storage.s3.redirect_lifetime", &l)?;
            // SigV4 presigned URLs live at most 7 days; under a second is a typo.
            if c.redirect_lifetime < Duration::from_secs(1)
                || c.redirect_lifetime > Duration::from_secs(7 * 86_400)
            {
                return Err(format!(
                    "storage.s3.redirect_lifetime {l:?}: must be 1s to 7 days"
                ));
            }
        }
        if let Some(i) = self.snapshot_interval {
            c.snapshot_interval = match i.as_str() {
                "off" => None,
                _ => Some(duration("storage.s3.snapshot_interval", &i)?),
            };
            if c.snapshot_interval.is_some_and(|i| i.is_zero()) {
                return Err(
                    "storage.s3.snapshot_interval: must be more than zero (or \"off\")".into(),
                );
            }
        }
        Ok(c)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogSection {
    level: Option<String>,
    format: Option<LogFormat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    mode: Option<AuthMode>,
    realm: Option<String>,
    service: Option<String>,
    token_realm: Option<String>,
    token_lifetime: Option<String>,
    bcrypt_cost: Option<u32>,
    max_failures: Option<u32>,
    failure_window: Option<String>,
}

fn duration(key: &str, s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|err| format!("{key} {s:?}: {err}"))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GcSection {
    interval: Option<String>,
    grace: Option<String>,
    push_window: Option<String>,
    untagged: Option<String>,
}

impl GcSection {
    fn apply(self, gc: &mut GcConfig) -> Result<(), String> {
        let duration = |key: &str, v: &str| {
            humantime::parse_duration(v).map_err(|err| format!("gc.{key} {v:?}: {err}"))
        };
        if let Some(v) = self.interval {
            gc.interval = match v.as_str() {
                "off" => None,
                _ => Some(duration("interval", &v)?).filter(|d| !d.is_zero()),
            };
        }
        if let Some(v) = self.grace {
            gc.grace = duration("grace", &v)?;
        }
        if let Some(v) = self.push_window {
            gc.push_window = duration("push_window", &v)?;
        }
        if let Some(v) = self.untagged {
            gc.untagged = match v.as_str() {
                "keep" => Untagged::Keep,
                _ => Untagged::After(
                    duration("untagged", &v)
                        .map_err(|e| format!("{e} (expected \"keep\" or a duration)"))?,
                ),
            };
        }
        Ok(())
    }
}

/// A size written as a number of bytes or as a string such as `"4MiB"` or `"1GB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ByteSize {
    Bytes(u64),
    Text(String),
}

impl ByteSize {
    pub(crate) fn bytes(&self) -> Result<u64, String> {
        match self {
            ByteSize::Bytes(n) => Ok(*n),
            ByteSize::Text(s) => parse_size(s),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"4MiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        "TB" => 1000u64.pow(4),
        "TiB" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Config {
    /// Reads a config file. Relative paths in it (the storage root) are taken relative to the
    /// current directory, as a user running `dockyard serve` next to the file would expect.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut c = Config::default();
        if let Some(l) = file.server.listen {
            c.listen = l;
        }
        if let Some(t) = file.server.shutdown_timeout {
            c.shutdown_timeout = duration("server.shutdown_timeout", &t)?;
        }
        let l = &mut c.limits;
        for (key, value, slot) in [
            (
                "server.header_read_timeout",
                &file.server.header_read_timeout,
                &mut l.header_read_timeout,
            ),
            (
                "server.idle_timeout",
                &file.server.idle_timeout,
                &mut l.idle_timeout,
            ),
            (
                "server.body_timeout",
                &file.server.body_timeout,
                &mut l.body_timeout,
            ),
            (
                "server.tls_handshake_timeout",
                &file.server.tls_handshake_timeout,
                &mut l.tls_handshake_timeout,
            ),
        ] {
            if let Some(t) = value {
                *slot = duration(key, t)?;
                if slot.is_zero() {
                    return Err(format!("{key}: must be more than zero"));
                }
            }
        }
        for (key, value, slot) in [
            (
                "server.max_connections",
                file.server.max_connections,
                &mut l.max_connections,
            ),
            (
                "server.max_uploads_per_client",
                file.server.max_uploads_per_client,
                &mut l.max_uploads_per_client,
            ),
        ] {
            if let Some(n) = value {
                if n == 0 {
                    return Err(format!("{key}: must be at least 1"));
                }
                *slot = n;
            }
        }
        if let Some(t) = file.server.tls {
            c.tls = Some(TlsFiles {
                cert: t.cert,
                key: t.key,
            });
        }
        if let Some(e) = file.metrics.enabled {
            c.metrics_enabled = e;
        }
        match file.metrics.listen.as_deref() {
            None | Some("") => {}
            Some(a) => {
                c.metrics_listen = Some(
                    a.parse()
                        .map_err(|e| format!("metrics.listen {a:?}: {e}"))?,
                )
            }
        }
        if let Some(s) = file.storage.min_free {
            c.min_free = s.bytes().map_err(|e| format!("storage.min_free: {e}"))?;
        }
        if let Some(f) = file.log.format {
            c.log_format = f;
        }
        if let Some(r) = file.storage.root {
            c.root = r;
        }
        if let Some(e) = file.storage.upload_expiry {
            c.upload_expiry = duration("storage.upload_expiry", &e)?;
        }
        if let Some(s) = file.storage.max_manifest_size {
            c.max_manifest_size = s
                .bytes()
                .map_err(|e| format!("storage.max_manifest_size: {e}"))?;
        }
        if let Some(s) = file.storage.sparse_indexes {
            c.sparse_indexes = s;
        }
        if let Some(s) = file.storage.max_blob_size {
            c.max_blob_size = s
                .bytes()
                .map_err(|e| format!("storage.max_blob_size: {e}"))?;
        }
        if let Some(l) = file.log.level {
            c.log_level = l;
        }
        c.backend = match (file.storage.backend.as_deref(), file.storage.s3) {
            (None | Some("filesystem"), None) => Backend::Filesystem,
            (None | Some("filesystem"), Some(_)) => {
                return Err("storage.s3 is set but storage.backend is not \"s3\"".into())
            }
            (Some("s3"), s3) => Backend::S3(s3.unwrap_or_default().parse()?),
            (Some(other), _) => {
                return Err(format!(
                    "storage.backend {other:?}: expected \"filesystem\" or \"s3\""
                ))
            }
        };
        let (a, f) = (&mut c.auth, file.auth);
        if let Some(m) = f.mode {
            a.mode = m;
        }
        if let Some(r) = f.realm {
            a.realm = r;
        }
        if let Some(s) = f.service {
            a.service = s;
        }
        if let Some(r) = f.token_realm {
            a.token_realm = (!r.is_empty()).then_some(r);
        }
        if let Some(l) = f.token_lifetime {
            a.token_lifetime = duration("auth.token_lifetime", &l)?;
        }
        if let Some(cost) = f.bcrypt_cost {
            if !(4..=31).contains(&cost) {
                return Err(format!("auth.bcrypt_cost {cost}: must be 4 to 31"));
            }
            a.bcrypt_cost = cost;
        }
        if let Some(n) = f.max_failures {
            a.max_failures = n;
        }
        if let Some(w) = f.failure_window {
            a.failure_window = duration("auth.failure_window", &w)?;
        }
        file.gc.apply(&mut c.gc)?;
        c.policies = crate::policy::Policies(std::sync::Arc::new(
            file.policy
                .into_iter()
                .enumerate()
                .map(|(i, p)| p.parse(i))
                .collect::<Result<_, _>>()?,
        ));
        let hooks: Vec<crate::events::Webhook> = file
            .webhook
            .into_iter()
            .enumerate()
            .map(|(i, w)| w.parse(i))
            .collect::<Result<_, _>>()?;
        for (i, h) in hooks.iter().enumerate() {
            if hooks[..i].iter().any(|o| o.id == h.id) {
                return Err(format!(
                    "webhook[{i}]: a second endpoint called {:?}; give one a distinct `name` \
                     (the outbox and metrics are kept per name)",
                    h.id
                ));
            }
        }
        c.webhooks = crate::events::Webhooks(std::sync::Arc::new(hooks));
        if let Some(e) = file.ui.enabled {
            c.ui.enabled = e;
        }
        if let Some(l) = file.ui.session_lifetime {
            c.ui.session_lifetime = duration("ui.session_lifetime", &l)?;
        }
        c.check_snapshot_grace()?;
        c.mirrors = crate::mirror::config::parse(file.mirror)?;
        c.mirror_cache = file.mirror_cache.parse()?;
        if matches!(c.backend, Backend::S3(_)) && !c.mirrors.is_empty() {
            // The mirror serves a blob to waiting clients from its upload file while the
            // fetch writes it, then from `blobs/`; the S3 backend keeps neither on disk.
            return Err(
                "[[mirror]] needs [storage] backend = \"filesystem\": a pull-through \
                        mirror on the S3 backend is not supported yet"
                    .into(),
            );
        }
        Ok(c)
    }

    /// With the S3 backend, `[gc] grace` must exceed `[storage.s3] snapshot_interval`: a
    /// takeover restores a snapshot up to one interval old, and no blob one of its manifests
    /// names may have been deleted meanwhile (see `portability::snapshots`). Checked when a
    /// config file is read (`config check`, `serve`) and again by `Registry::open`.
    pub fn check_snapshot_grace(&self) -> Result<(), String> {
        match &self.backend {
            Backend::S3(S3Config {
                snapshot_interval: Some(interval),
                ..
            }) if self.gc.grace <= *interval => Err(format!(
                "gc.grace ({}) must be longer than storage.s3.snapshot_interval ({}): after a \
                 takeover, `restore --from-bucket` brings back a snapshot up to one interval \
                 old, and the GC must not have deleted a blob it names; raise gc.grace or \
                 shorten the interval (or set it to \"off\": no snapshots, no takeover)",
                humantime::format_duration(self.gc.grace),
                humantime::format_duration(*interval)
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_registry_toml_matches_the_defaults() {
        let text = include_str!("../registry.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.root, d.root);
        assert_eq!(c.upload_expiry, d.upload_expiry);
        assert_eq!(c.max_manifest_size, d.max_manifest_size);
        assert_eq!(c.max_blob_size, d.max_blob_size);
        assert_eq!(c.sparse_indexes, d.sparse_indexes);
        assert_eq!(c.min_free, d.min_free);
        assert_eq!(c.shutdown_timeout, d.shutdown_timeout);
        assert_eq!(c.limits, d.limits);
        assert_eq!(c.tls, d.tls);
        assert_eq!(c.metrics_enabled, d.metrics_enabled);
        assert_eq!(c.metrics_listen, d.metrics_listen);
        assert_eq!(c.log_level, d.log_level);
        assert_eq!(c.log_format, d.log_format);
        assert_eq!(c.auth, d.auth);
        assert_eq!(c.gc, d.gc);
        assert_eq!(c.ui, d.ui);
        assert_eq!(c.backend, d.backend);
        // Every key of the file is one the parser knows (deny_unknown_fields) and every
        // `[auth]` field is spelled out in it.
        for key in [
            "mode",
            "realm",
            "service",
            "token_realm",
            "token_lifetime",
            "bcrypt_cost",
            "max_failures",
            "failure_window",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "registry.toml documents auth.{key}"
            );
        }
    }

    #[test]
    fn auth_section_parses_and_rejects_nonsense() {
        let c = Config::from_toml(
            "[auth]\nmode = \"token\"\ntoken_lifetime = \"90s\"\nbcrypt_cost = 4\ntoken_realm = \"https://r.example/token\"\n",
        )
        .unwrap();
        assert_eq!(c.auth.mode, AuthMode::Token);
        assert_eq!(c.auth.token_lifetime, Duration::from_secs(90));
        assert_eq!(c.auth.bcrypt_cost, 4);
        assert_eq!(
            c.auth.token_realm.as_deref(),
            Some("https://r.example/token")
        );
        let e = Config::from_toml("[auth]\nmode = \"ldap\"\n").unwrap_err();
        assert!(e.contains("ldap") || e.contains("mode"), "{e}");
        let e = Config::from_toml("[auth]\nbcrypt_cost = 3\n").unwrap_err();
        assert!(e.contains("bcrypt_cost"), "{e}");
        let e = Config::from_toml("[auth]\nfailure_window = \"often\"\n").unwrap_err();
        assert!(e.contains("failure_window"), "{e}");
        let e = Config::from_toml("[auth]\npassword = \"x\"\n").unwrap_err();
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn gc_section() {
        let c = Config::from_toml(
            "[gc]\ninterval = \"off\"\ngrace = \"0s\"\npush_window = \"30s\"\nuntagged = \"2h\"\n",
        )
        .unwrap();
        assert_eq!(c.gc.interval, None);
        assert_eq!(c.gc.grace, Duration::ZERO);
        assert_eq!(c.gc.lease(), Duration::from_secs(30));
        assert_eq!(c.gc.untagged, Untagged::After(Duration::from_secs(7200)));
        let e = Config::from_toml("[gc]\nuntagged = \"never\"\n").unwrap_err();
        assert!(e.contains("gc.untagged") && e.contains("keep"), "{e}");
        let e = Config::from_toml("[gc]\ngrase = \"1h\"\n").unwrap_err();
        assert!(e.contains("grase"), "{e}");
    }

    #[test]
    fn webhook_tables() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook.secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[[webhook]]\nurl = \"https://u:p@deploy.example/hooks?t=1\"\n\
             events = [\"push\", \"delete\", \"gc\"]\npattern = \"ci/**\"\n\
             secret_file = {:?}\ntimeout = \"2s\"\n\
             [[webhook]]\nname = \"chat\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"pull\"]\n",
            secret.display().to_string()
        );
        let c = Config::from_toml(&text).unwrap();
        let h = &c.webhooks.0[0];
        assert_eq!(h.id, "https://deploy.example/hooks");
        assert_eq!(h.secret.as_ref().unwrap().0.as_slice(), b"s3cret");
        assert_eq!(h.timeout, Duration::from_secs(2));
        assert_eq!(
            (h.max_queued, h.backoff_max),
            (10_000, Duration::from_secs(300))
        );
        assert!(!format!("{h:?}").contains("s3cret"));
        assert_eq!(c.webhooks.0[1].id, "chat");
        for (bad, says) in [
            ("url = \"ftp://x/\"\nevents = [\"push\"]", "url"),
            ("url = \"http://x/\"\nevents = []", "events"),
            ("url = \"http://x/\"\nevents = [\"tag\"]", "unknown event"),
            (
                "url = \"http://x/\"\nevents = [\"push\"]\ntimeout = \"0s\"",
                "timeout",
            ),
            (
                "url = \"http://x/\"\nevents = [\"push\"]\nsecret_file = \"/nonexistent\"",
                "secret_file",
            ),
            (
                "url = \"http://x/\"\nevents = [\"push\"]\nretries = 3",
                "retries",
            ),
        ] {
            let e = Config::from_toml(&format!("[[webhook]]\n{bad}\n")).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let twice = "[[webhook]]\nurl = \"http://x/\"\nevents = [\"push\"]\n\
                     [[webhook]]\nurl = \"http://x/\"\nevents = [\"pull\"]\n";
        assert!(Config::from_toml(twice)
            .unwrap_err()
            .contains("distinct `name`"));
    }

    #[test]
    fn the_commented_webhook_example_in_registry_toml_parses() {
        let text = include_str!("../registry.toml");
        let start = text.find("# [[webhook]]").unwrap();
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s");
        std::fs::write(&secret, "k").unwrap();
        let block = block.replace("/etc/dockyard/hook.secret", secret.to_str().unwrap());
        let c = Config::from_toml(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let h = &c.webhooks.0[0];
        assert_eq!(
            (h.id.as_str(), h.actions.len(), h.max_queued),
            ("deploy", 3, 10_000)
        );
    }

    #[test]
    fn policy_tables() {
        let c = Config::from_toml(
            "[[policy]]\npattern = \"ci/**\"\nkeep_last = 20\nkeep_within = \"30d\"\n\
             keep_tags = [\"latest\", \"release-*\"]\nimmutable_tags = [\"v*\"]\n\
             quota = \"50GiB\"\n[[policy]]\npattern = \"**\"\nquota = 1000\n",
        )
        .unwrap();
        let p = c.policies.for_repo("ci/app").unwrap();
        assert_eq!(p.keep_last, Some(20));
        assert_eq!(p.keep_within, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(p.quota, Some(50 << 30));
        assert!(p.is_immutable("v1.0") && !p.is_immutable("latest"));
        assert_eq!(c.policies.for_repo("other").unwrap().quota, Some(1000));
        let e = Config::from_toml("[[policy]]\npattern = \"a/*b\"\n").unwrap_err();
        assert!(e.contains("policy[0]") && e.contains("pattern"), "{e}");
        let e = Config::from_toml("[[policy]]\npattern = \"**\"\nkeep_within = \"long\"\n")
            .unwrap_err();
        assert!(e.contains("keep_within"), "{e}");
        let e =
            Config::from_toml("[[policy]]\npattern = \"**\"\nimmutable = [\"v*\"]\n").unwrap_err();
        assert!(e.contains("immutable"), "{e}");
    }

    #[test]
    fn gc_grace_must_exceed_the_snapshot_interval() {
        let s3 = "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n\
                  access_key_id = \"k\"\nsecret_access_key_file = \"/s\"\n";
        let ok = Config::from_toml(&format!(
            "{s3}snapshot_interval = \"10m\"\n[gc]\ngrace = \"11m\"\n"
        ));
        assert!(ok.is_ok(), "{ok:?}");
        for (interval, grace) in [("10m", "10m"), ("2h", "1h"), ("1s", "0s")] {
            let e = Config::from_toml(&format!(
                "{s3}snapshot_interval = \"{interval}\"\n[gc]\ngrace = \"{grace}\"\n"
            ))
            .unwrap_err();
            assert!(
                e.contains("gc.grace") && e.contains("snapshot_interval"),
                "{interval} {grace}: {e}"
            );
        }
        // The defaults (grace 1h, interval 15m) pass; the filesystem backend takes no snapshots,
        // nor does "off".
        assert!(Config::from_toml(s3).is_ok());
        let off = Config::from_toml(&format!(
            "{s3}snapshot_interval = \"off\"\n[gc]\ngrace = \"0s\"\n"
        ));
        assert!(off.is_ok(), "{off:?}");
        assert!(Config::from_toml("[gc]\ngrace = \"0s\"\n").is_ok());
    }

    #[test]
    fn storage_s3_section() {
        let c = Config::from_toml(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:3900/\"\n\
             region = \"garage\"\nbucket = \"blobs\"\nprefix = \"/reg/one/\"\n\
             access_key_id = \"GK1\"\nsecret_access_key_file = \"/run/secret\"\n\
             redirect = false\nsnapshot_interval = \"5m\"\n",
        )
        .unwrap();
        let Backend::S3(s3) = c.backend else {
            panic!("not s3")
        };
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(s3.prefix, "reg/one");
        assert!(s3.path_style && !s3.redirect);
        assert_eq!(s3.snapshot_interval, Some(Duration::from_secs(300)));
        for (toml, named) in [
            ("[storage]\nbackend = \"s3\"\n", "bucket"),
            ("[storage]\nbackend = \"nfs\"\n", "backend"),
            ("[storage.s3]\nbucket = \"b\"\n", "storage.s3"),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n",
                "secret_access_key_file",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nsecret_access_key = \"x\"\n",
                "secret_access_key",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nprefix = \"a/../b\"\n",
                "prefix",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"127.0.0.1:3900\"\n",
                "endpoint",
            ),
            (
                "[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\n\
                 access_key_id = \"k\"\nsecret_access_key_file = \"/s\"\n\
                 [[mirror]]\nprefix = \"docker.io\"\nupstream = \"https://registry-1.docker.io\"\n",
                "mirror on the S3 backend is not supported",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.contains(named), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 1\n").unwrap_err();
        assert!(e.contains("listne"), "{e}");
        let e = Config::from_toml("[storage]\nupload_expiry = \"soon\"\n").unwrap_err();
        assert!(e.contains("upload_expiry"), "{e}");
        assert_eq!(parse_size("4MiB").unwrap(), 4 << 20);
        assert!(parse_size("4 parsecs").is_err());
    }
}
