//! Counters and histograms for `GET /metrics`, kept and rendered by `prometheus-client`, the
//! Prometheus project's Rust client: it owns the exposition details (names and suffixes,
//! label escaping, cumulative buckets, float formatting), and we only say what is counted.
//! The body is the Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), which every
//! scraper reads.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

/// A webhook endpoint, by its id (a name, or a URL without credentials or query).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type U64Gauge = Gauge<u64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    bytes_received: Counter,
    bytes_sent: Counter,
    auth_failures: Counter,
    gc_runs: Counter,
    gc_bytes_freed: Counter,
    uploads: U64Gauge,
    blobs: U64Gauge,
    blob_bytes: U64Gauge,
    mirror_upstream: Family<KindLabels, Counter>,
    mirror_upstream_bytes: Counter,
    mirror_lookups: Family<KindLabels, Counter>,
    mirror_stale: Counter,
    webhook_delivered: Family<EndpointLabels, Counter>,
    webhook_failed: Family<EndpointLabels, Counter>,
    webhook_dropped: Family<EndpointLabels, Counter>,
    webhook_queued: Family<EndpointLabels, U64Gauge>,
}

/// Values read from the database at scrape time.
pub struct Stored {
    pub blobs: u64,
    pub bytes: u64,
    pub uploads: u64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("dockyard");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time to the response head, by route",
            Unit::Seconds,
            latency.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let c = Counter::default();
            match unit {
                Some(u) => registry.register_with_unit(name, help, u, c.clone()),
                None => registry.register(name, help, c.clone()),
            }
            c
        };
        let bytes_received = counter(
            &mut registry,
            "http_received",
            "Request body bytes received",
            Some(Unit::Bytes),
        );
        let bytes_sent = counter(
            &mut registry,
            "http_sent",
            "Response body bytes sent",
            Some(Unit::Bytes),
        );
        let auth_failures = counter(
            &mut registry,
            "auth_failures",
            "Requests refused for missing or wrong credentials",
            None,
        );
        let gc_runs = counter(
            &mut registry,
            "gc_runs",
            "Garbage collection passes completed",
            None,
        );
        let gc_bytes_freed = counter(
            &mut registry,
            "gc_freed",
            "Blob bytes freed by garbage collection",
            Some(Unit::Bytes),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = U64Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let uploads = gauge(&mut registry, "uploads_in_progress", "Open upload sessions");
        let blobs = gauge(&mut registry, "blobs_stored", "Blobs in the store");
        let blob_bytes = gauge(
            &mut registry,
            "blob_bytes_stored",
            "Bytes of blobs in the store",
        );
        let mirror_upstream = Family::<KindLabels, Counter>::default();
        registry.register(
            "mirror_upstream_requests",
            "Requests a mirror sent upstream, by kind (manifest, head, blob, token)",
            mirror_upstream.clone(),
        );
        let mirror_upstream_bytes = counter(
            &mut registry,
            "mirror_upstream_received",
            "Blob bytes a mirror fetched from upstream",
            Some(Unit::Bytes),
        );
        let mirror_lookups = Family::<KindLabels, Counter>::default();
        registry.register(
            "mirror_lookups",
            "Mirrored manifest and blob requests, by kind (hit: answered from the cache; miss: fetched upstream)",
            mirror_lookups.clone(),
        );
        let mirror_stale = counter(
            &mut registry,
            "mirror_stale_serves",
            "Cached tags served because the upstream could not be reached to re-check them",
            None,
        );
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<EndpointLabels, Counter>::default();
            registry.register(name, help, f.clone());
            f
        };
        let webhook_delivered = family(
            &mut registry,
            "webhook_delivered",
            "Webhook events delivered (answered 2xx), by endpoint",
        );
        let webhook_failed = family(
            &mut registry,
            "webhook_failed",
            "Failed webhook delivery attempts (error, timeout or non-2xx), by endpoint",
        );
        let webhook_dropped = family(
            &mut registry,
            "webhook_dropped",
            "Webhook events dropped undelivered because the endpoint's outbox was full",
        );
        let webhook_queued = Family::<EndpointLabels, U64Gauge>::default();
        registry.register(
            "webhook_queued",
            "Webhook events waiting in the outbox, by endpoint",
            webhook_queued.clone(),
        );
        Metrics {
            mirror_upstream,
            mirror_upstream_bytes,
            mirror_lookups,
            mirror_stale,
            webhook_delivered,
            webhook_failed,
            webhook_dropped,
            webhook_queued,
            registry,
            requests,
            latency,
            bytes_received,
            bytes_sent,
            auth_failures,
            gc_runs,
            gc_bytes_freed,
            uploads,
            blobs,
            blob_bytes,
        }
    }
}

impl Metrics {
    pub fn observe(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    pub fn add_received(&self, n: u64) {
        self.bytes_received.inc_by(n);
    }

    pub fn add_sent(&self, n: u64) {
        self.bytes_sent.inc_by(n);
    }

    pub fn auth_failure(&self) {
        self.auth_failures.inc();
    }

    pub fn gc_run(&self, bytes_freed: u64) {
        self.gc_runs.inc();
        self.gc_bytes_freed.inc_by(bytes_freed);
    }

    /// A request a mirror sent upstream (`kind`: manifest, head, blob, token).
    pub fn mirror_upstream(&self, kind: &'static str) {
        self.mirror_upstream
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn mirror_upstream_bytes(&self, n: u64) {
        self.mirror_upstream_bytes.inc_by(n);
    }

    /// A mirrored request answered from the cache (`hit`) or fetched upstream (`miss`).
    pub fn mirror_lookup(&self, hit: bool) {
        let kind = if hit { "hit" } else { "miss" };
        self.mirror_lookups
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn mirror_stale(&self) {
        self.mirror_stale.inc();
    }

    fn endpoint(id: &str) -> EndpointLabels {
        EndpointLabels {
            endpoint: id.to_string(),
        }
    }

    /// Creates an endpoint's series at zero, so a scraper sees them before the first event.
    pub fn webhook_touch(&self, id: &str) {
        let l = Self::endpoint(id);
        let _ = self.webhook_delivered.get_or_create(&l);
        let _ = self.webhook_failed.get_or_create(&l);
        let _ = self.webhook_dropped.get_or_create(&l);
        let _ = self.webhook_queued.get_or_create(&l);
    }

    /// (delivered, failed attempts) of an endpoint since this process started.
    pub fn webhook_counts(&self, id: &str) -> (u64, u64) {
        let l = Self::endpoint(id);
        (
            self.webhook_delivered.get_or_create(&l).get(),
            self.webhook_failed.get_or_create(&l).get(),
        )
    }

    pub fn webhook_delivered(&self, id: &str, n: u64) {
        self.webhook_delivered
            .get_or_create(&Self::endpoint(id))
            .inc_by(n);
    }

    pub fn webhook_failed(&self, id: &str) {
        self.webhook_failed.get_or_create(&Self::endpoint(id)).inc();
    }

    pub fn webhook_dropped(&self, id: &str, n: u64) {
        self.webhook_dropped
            .get_or_create(&Self::endpoint(id))
            .inc_by(n);
    }

    pub fn webhook_queued(&self, id: &str, n: u64) {
        self.webhook_queued
            .get_or_create(&Self::endpoint(id))
            .set(n);
    }

    /// The exposition text, with `stored` as gauges.
    pub fn render(&self, stored: &Stored) -> String {
        self.uploads.set(stored.uploads);
        self.blobs.set(stored.blobs);
        self.blob_bytes.set(stored.bytes);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe("manifest", "GET", 200, Duration::from_millis(3));
        m.observe("manifest", "GET", 200, Duration::from_secs(2));
        m.observe("manifest", "we\"ird\n", 400, Duration::from_millis(1));
        m.add_sent(10);
        m.gc_run(5);
        let text = m.render(&Stored {
            blobs: 2,
            bytes: 30,
            uploads: 1,
        });
        for want in [
            "# TYPE dockyard_http_requests_total counter\n",
            "dockyard_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 2\n",
            // A label value is escaped, never able to break the line.
            "dockyard_http_requests_total{route=\"manifest\",method=\"we\\\"ird\\n\",status=\"400\"} 1\n",
            "# TYPE dockyard_http_request_duration_seconds histogram\n",
            "dockyard_http_request_duration_seconds_bucket{route=\"manifest\",le=\"0.005\"} 2\n",
            "dockyard_http_request_duration_seconds_bucket{route=\"manifest\",le=\"+Inf\"} 3\n",
            "dockyard_http_request_duration_seconds_count{route=\"manifest\"} 3\n",
            "dockyard_http_sent_bytes_total 10\n",
            "dockyard_gc_runs_total 1\n",
            "dockyard_gc_freed_bytes_total 5\n",
            "# TYPE dockyard_blob_bytes_stored gauge\n",
            "dockyard_blob_bytes_stored 30\n",
            "dockyard_uploads_in_progress 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
