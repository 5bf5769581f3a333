//! Counters and histograms for `GET /metrics`, rendered in the Prometheus text format by hand
//! (the format is a few lines of text; a metrics crate would cost more than it saves).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    auth_failures: AtomicU64,
    gc_runs: AtomicU64,
    gc_bytes_freed: AtomicU64,
}

/// Values read from the database at scrape time.
pub struct Stored {
    pub blobs: u64,
    pub bytes: u64,
    pub uploads: u64,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, method: &str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((route, method_label(method), status))
            .or_default() += 1;
        let secs = elapsed.as_secs_f64();
        let mut latency = self.latency.lock().expect("metrics lock");
        let h = latency.entry(route).or_default();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    pub fn add_received(&self, n: u64) {
        self.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn gc_run(&self, bytes_freed: u64) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_bytes_freed
            .fetch_add(bytes_freed, Ordering::Relaxed);
    }

    /// The exposition text, with `stored` as gauges.
    pub fn render(&self, stored: &Stored) -> String {
        let mut out = String::new();
        let w = &mut out;
        header(
            w,
            "dockyard_http_requests_total",
            "counter",
            "HTTP requests by route, method and status.",
        );
        for ((route, method, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                w,
                "dockyard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            w,
            "dockyard_http_request_duration_seconds",
            "histogram",
            "Time to the response head, by route.",
        );
        for (route, h) in self.latency.lock().expect("metrics lock").iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    w,
                    "dockyard_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                w,
                "dockyard_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                w,
                "dockyard_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                w,
                "dockyard_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let counters = [
            (
                "dockyard_http_received_bytes_total",
                "Request body bytes received.",
                &self.bytes_received,
            ),
            (
                "dockyard_http_sent_bytes_total",
                "Response body bytes sent.",
                &self.bytes_sent,
            ),
            (
                "dockyard_auth_failures_total",
                "Requests refused for missing or wrong credentials.",
                &self.auth_failures,
            ),
            (
                "dockyard_gc_runs_total",
                "Garbage collection passes completed.",
                &self.gc_runs,
            ),
            (
                "dockyard_gc_freed_bytes_total",
                "Blob bytes freed by garbage collection.",
                &self.gc_bytes_freed,
            ),
        ];
        for (name, help, v) in counters {
            header(w, name, "counter", help);
            let _ = writeln!(w, "{name} {}", v.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "dockyard_uploads_in_progress",
                "Open upload sessions.",
                stored.uploads,
            ),
            ("dockyard_blobs_stored", "Blobs in the store.", stored.blobs),
            (
                "dockyard_blob_bytes_stored",
                "Bytes of blobs in the store.",
                stored.bytes,
            ),
        ];
        for (name, help, v) in gauges {
            header(w, name, "gauge", help);
            let _ = writeln!(w, "{name} {v}");
        }
        out
    }
}

/// The method as a label without allocating per request; methods outside the API's are
/// counted together.
fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::default();
        m.observe("manifest", "GET", 200, Duration::from_millis(3));
        m.observe("manifest", "GET", 200, Duration::from_secs(2));
        m.add_sent(10);
        let text = m.render(&Stored {
            blobs: 2,
            bytes: 30,
            uploads: 1,
        });
        assert!(text.contains(
            "dockyard_http_requests_total{route=\"manifest\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "dockyard_http_request_duration_seconds_bucket{route=\"manifest\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "dockyard_http_request_duration_seconds_bucket{route=\"manifest\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("dockyard_http_sent_bytes_total 10"));
        assert!(text.contains("dockyard_blob_bytes_stored 30"));
    }
}
