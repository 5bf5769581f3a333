//! Webhooks (`[[webhook]]` in registry.toml): what happened, told to other systems, at least
//! once and in order per endpoint.
//!
//! The path of an event, top to bottom:
//! 1. The change (a manifest PUT, a DELETE, a GC pass's own deletes and its summary) appends
//!    an `EventRecord` to each interested endpoint's outbox (`db::events::append`) **inside
//!    its own write transaction**: the event commits exactly when the change does, so a crash
//!    can lose neither without the other. A full outbox drops its oldest events, counted.
//! 2. After the commit, [`Hub::committed`] wakes the endpoints' delivery tasks and updates the
//!    metrics (never inside the transaction body, which the group commit may run twice).
//! 3. One delivery task per endpoint (`deliver`) reads the oldest events, POSTs them as
//!    Distribution's envelope (`envelope`) with an HMAC signature, and removes them once the
//!    endpoint answered 2xx; on failure it retries the same events with exponential backoff.
//!    A slow endpoint holds only its own task: pushes never wait for delivery.
//!
//! Pull events are the exception to step 1: a pull changes nothing, so its event is appended
//! in a write of its own, in the background, without fsync (`Db::write_unsynced`): the pull
//! answers without waiting for the disk, and a crash may lose the pull events of the last
//! moments (they become durable with the next durable commit). Losing a pull notification is
//! the price of not making every pull a synced write; pushes and deletes are never lost.

pub mod deliver;
pub mod envelope;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use redb::WriteTransaction;
use tokio::sync::Notify;

use crate::auth::users::Pattern;
use crate::db::schema::{EventActor, EventRecord, EventRequest, EventSource, EventTarget};
use crate::metrics::Metrics;
use crate::oci::RegistryError;

/// What an endpoint may subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Push,
    Delete,
    Pull,
    Gc,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Delete => "delete",
            Action::Pull => "pull",
            Action::Gc => "gc",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "push" => Action::Push,
            "delete" => Action::Delete,
            "pull" => Action::Pull,
            "gc" => Action::Gc,
            _ => return None,
        })
    }
}

/// The HMAC key of an endpoint, read from its `secret_file`; never shown by `Debug`.
#[derive(Clone, PartialEq)]
pub struct HookSecret(pub Arc<Vec<u8>>);

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSecret(***)")
    }
}

/// One `[[webhook]]` table.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    /// What the outbox, the metrics, the log and `dockyard events` call this endpoint: its
    /// `name`, or else its URL without credentials, query or fragment (which may hold tokens).
    pub id: String,
    /// Where events are POSTed. May carry a token; never logged.
    pub url: String,
    pub actions: Vec<Action>,
    /// Repositories whose events go to this endpoint (`gc` events have none and always go).
    pub pattern: Pattern,
    pub secret: Option<HookSecret>,
    /// Bounds each delivery attempt, connection included.
    pub timeout: Duration,
    /// Events kept waiting at most; past it the oldest are dropped (counted and logged).
    pub max_queued: u64,
    /// The first retry waits this long, each next one twice as long, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Webhook {
    /// Whether an event `action` about `repo` (`None` for a GC pass) goes to this endpoint.
    pub fn wants(&self, action: Action, repo: Option<&str>) -> bool {
        self.actions.contains(&action) && repo.is_none_or(|r| self.pattern.matches(r))
    }

    /// The wait before retry number `failures` (1 for the first).
    pub fn backoff_after(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.backoff.saturating_mul(factor).min(self.backoff_max)
    }
}

/// The id of an endpoint without a name: its URL less credentials, query and fragment.
pub fn endpoint_id(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// Every `[[webhook]]`, in the file's order; shared by every request that records events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Webhooks(pub Arc<Vec<Webhook>>);

impl Webhooks {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any endpoint takes `action` events (for any repository).
    pub fn any(&self, action: Action) -> bool {
        self.0.iter().any(|h| h.actions.contains(&action))
    }
}

/// The request behind an event, as Distribution's `request` and `actor` records say it.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub useragent: String,
    pub actor: String,
    /// `http` or `https`, for the target's URL.
    pub scheme: &'static str,
}

/// The actor of the deletes a GC pass makes (retention's tags, `[gc] untagged` manifests). No
/// user can be called this (a user name cannot hold a `:`, Basic auth's separator), so a
/// receiver can tell the registry's own deletes from a user's.
pub const GC_ACTOR: &str = "dockyard:gc";

impl RequestInfo {
    /// The deletes of one GC pass: one request id for the whole pass, which its `gc` summary
    /// event carries too, so a receiver can tie each delete to the pass that made it.
    pub fn gc_pass() -> RequestInfo {
        RequestInfo::local(GC_ACTOR, "DELETE")
    }

    /// A change made without an HTTP request of the API (`dockyard rm`).
    pub fn local(actor: &str, method: &str) -> RequestInfo {
        RequestInfo {
            id: uuid::Uuid::new_v4().to_string(),
            method: method.to_string(),
            useragent: concat!("dockyard/", env!("CARGO_PKG_VERSION")).to_string(),
            actor: actor.to_string(),
            scheme: "http",
            ..Default::default()
        }
    }
}

/// What happened to which manifest.
pub struct Subject<'a> {
    pub repo: &'a str,
    pub digest: Option<String>,
    pub media_type: &'a str,
    pub size: u64,
    pub tag: Option<&'a str>,
}

/// The events recorded by one transaction, per endpoint (by position in `Webhooks`): what
/// [`Hub::committed`] reports after the commit.
#[derive(Clone, Debug, Default)]
pub struct Appended(pub BTreeMap<usize, crate::db::events::Queued>);

impl Appended {
    pub fn merge(&mut self, other: Appended) {
        for (i, q) in other.0 {
            let e = self.0.entry(i).or_default();
            e.queued = q.queued;
            e.added += q.added;
            e.dropped += q.dropped;
        }
    }
}

/// The running side of webhooks, shared through `Core`: who generated the events, and the
/// bells that wake each endpoint's delivery task.
pub struct Hub {
    /// Distribution's `source.instanceID`: new at every start.
    pub instance_id: String,
    /// Distribution's `source.addr`: the address the API listens on, set when serving.
    source_addr: OnceLock<String>,
    wake: Vec<Notify>,
    /// Per endpoint: when drops were last logged, and drops since then not yet logged.
    drops: Vec<std::sync::Mutex<(Option<std::time::Instant>, u64)>>,
}

/// A full outbox is logged at most this often per endpoint (with the count since the last
/// line), so a dead endpoint does not write a line per push.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl Hub {
    pub fn new(hooks: &Webhooks) -> Hub {
        Hub {
            instance_id: uuid::Uuid::new_v4().to_string(),
            source_addr: OnceLock::new(),
            wake: hooks.0.iter().map(|_| Notify::new()).collect(),
            drops: hooks.0.iter().map(|_| Default::default()).collect(),
        }
    }

    pub fn set_source_addr(&self, addr: String) {
        let _ = self.source_addr.set(addr);
    }

    fn source(&self) -> EventSource {
        EventSource {
            addr: self.source_addr.get().cloned().unwrap_or_default(),
            instance_id: self.instance_id.clone(),
        }
    }

    /// Waits until endpoint `i` has something new (or had, since the last wait).
    pub async fn wait(&self, i: usize) {
        if let Some(n) = self.wake.get(i) {
            n.notified().await
        }
    }

    /// After the commit of a transaction that appended `appended`: wakes the endpoints and
    /// updates the metrics; a full outbox's drops are logged loudly.
    pub fn committed(&self, hooks: &Webhooks, metrics: &Metrics, appended: &Appended) {
        for (&i, q) in &appended.0 {
            let Some(h) = hooks.0.get(i) else { continue };
            metrics.webhook_queued(&h.id, q.queued);
            if q.dropped > 0 {
                metrics.webhook_dropped(&h.id, q.dropped);
                self.log_drops(i, h, q.dropped);
            }
            if let Some(n) = self.wake.get(i) {
                n.notify_one();
            }
        }
    }

    fn log_drops(&self, i: usize, h: &Webhook, dropped: u64) {
        let Some(slot) = self.drops.get(i) else {
            return;
        };
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        g.1 += dropped;
        let now = std::time::Instant::now();
        if g.0
            .is_some_and(|last| now.duration_since(last) < DROP_LOG_EVERY)
        {
            return;
        }
        tracing::error!(
            endpoint = %h.id,
            dropped = g.1,
            max_queued = h.max_queued,
            "webhook outbox full: dropped the oldest events, which this endpoint will never \
             receive (is it down? see `dockyard events`)"
        );
        *g = (Some(now), 0);
    }

    /// Appends an event about `subject` for every endpoint that wants it, in `tx`.
    pub fn record(
        &self,
        tx: &WriteTransaction,
        hooks: &Webhooks,
        action: Action,
        subject: &Subject<'_>,
        req: &RequestInfo,
    ) -> Result<Appended, RegistryError> {
        let wanted: Vec<(usize, &Webhook)> = hooks
            .0
            .iter()
            .enumerate()
            .filter(|(_, h)| h.wants(action, Some(subject.repo)))
            .collect();
        if wanted.is_empty() {
            return Ok(Appended::default());
        }
        let url = match &subject.digest {
            Some(d) if !req.host.is_empty() => format!(
                "{}://{}/v2/{}/manifests/{d}",
                req.scheme, req.host, subject.repo
            ),
            _ => String::new(),
        };
        let event = EventRecord {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: now_rfc3339(),
            action: action.as_str().to_string(),
            target: EventTarget {
                media_type: subject.media_type.to_string(),
                size: subject.size,
                digest: subject.digest.clone().unwrap_or_default(),
                length: subject.size,
                repository: subject.repo.to_string(),
                url,
                tag: subject.tag.unwrap_or_default().to_string(),
            },
            request: EventRequest {
                id: req.id.clone(),
                addr: req.addr.clone(),
                host: req.host.clone(),
                method: req.method.clone(),
                useragent: req.useragent.clone(),
            },
            actor: EventActor {
                name: req.actor.clone(),
            },
            source: self.source(),
            gc: None,
        };
        append_all(tx, &wanted, &event)
    }

    /// Appends the delete event of a tag or manifest just deleted in `tx`. As Distribution: a
    /// manifest's delete names its digest, a tag's its tag.
    pub fn record_delete(
        &self,
        tx: &WriteTransaction,
        hooks: &Webhooks,
        repo: &crate::oci::RepoName,
        reference: &crate::oci::Reference,
        req: &RequestInfo,
    ) -> Result<Appended, RegistryError> {
        use crate::oci::Reference;
        let (digest, tag) = match reference {
            Reference::Digest(d) => (Some(d.to_string()), None),
            Reference::Tag(t) => (None, Some(t.as_str())),
        };
        let subject = Subject {
            repo: repo.as_str(),
            digest,
            media_type: "",
            size: 0,
            tag,
        };
        self.record(tx, hooks, Action::Delete, &subject, req)
    }

    /// Appends a GC pass's summary for every endpoint that takes `gc` events, in `tx`, with
    /// the request id `pass` gave the pass's deletes.
    pub fn record_gc(
        &self,
        tx: &WriteTransaction,
        hooks: &Webhooks,
        summary: BTreeMap<String, u64>,
        pass: &RequestInfo,
    ) -> Result<Appended, RegistryError> {
        let wanted: Vec<(usize, &Webhook)> = hooks
            .0
            .iter()
            .enumerate()
            .filter(|(_, h)| h.wants(Action::Gc, None))
            .collect();
        let event = EventRecord {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: now_rfc3339(),
            action: Action::Gc.as_str().to_string(),
            request: EventRequest {
                id: pass.id.clone(),
                method: "GC".to_string(),
                useragent: pass.useragent.clone(),
                ..Default::default()
            },
            actor: EventActor {
                name: pass.actor.clone(),
            },
            source: self.source(),
            gc: Some(summary),
            ..Default::default()
        };
        append_all(tx, &wanted, &event)
    }
}

fn append_all(
    tx: &WriteTransaction,
    wanted: &[(usize, &Webhook)],
    event: &EventRecord,
) -> Result<Appended, RegistryError> {
    let mut out = Appended::default();
    for (i, h) in wanted {
        let q = crate::db::events::append(tx, &h.id, h.max_queued, event)?;
        out.0.insert(*i, q);
    }
    Ok(out)
}

/// Now as RFC 3339 in UTC with nanoseconds, as Go's `time.Time` marshals.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(actions: &[Action], pattern: &str) -> Webhook {
        Webhook {
            id: "h".into(),
            url: "http://127.0.0.1:1/".into(),
            actions: actions.to_vec(),
            pattern: Pattern::parse(pattern).unwrap(),
            secret: None,
            timeout: Duration::from_secs(1),
            max_queued: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn an_endpoint_wants_its_actions_under_its_pattern_and_every_gc() {
        let h = hook(&[Action::Push, Action::Gc], "team/**");
        assert!(h.wants(Action::Push, Some("team/a/b")));
        assert!(!h.wants(Action::Push, Some("other/a")));
        assert!(!h.wants(Action::Delete, Some("team/a")));
        assert!(h.wants(Action::Gc, None));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let h = hook(&[Action::Push], "**");
        let waits: Vec<u128> = (1..=6).map(|n| h.backoff_after(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(h.backoff_after(1000), Duration::from_secs(1));
    }

    #[test]
    fn an_unnamed_endpoint_is_its_url_without_secrets() {
        let u = reqwest::Url::parse("https://user:pw@hooks.example:8443/in?token=abc#x").unwrap();
        assert_eq!(endpoint_id(&u), "https://hooks.example:8443/in");
    }
}
