//! One delivery task per `[[webhook]]`: the endpoint's outbox, oldest first, POSTed until it
//! answers 2xx.
//!
//! In order: the task sends the oldest events (up to `BATCH` in one envelope) and sends
//! nothing newer until they are delivered, retrying the same events after a failure with
//! exponential backoff (`Webhook::backoff_after`). At least once: events leave the outbox only
//! after a 2xx; the removal is written without fsync (`write_unsynced`), so a crash right after
//! a delivery may deliver those events again, never lose them. Each attempt is bounded by the
//! endpoint's `timeout`, so a hanging endpoint costs its own task a timeout per attempt and
//! nothing else: requests only append to the outbox.

use std::time::Duration;

use crate::events::envelope;
use crate::Core;

/// Events per envelope at most.
pub const BATCH: usize = 16;

/// Delivers endpoint `i`'s events until `shutdown` completes. Undelivered events stay in the
/// outbox for the next start.
pub async fn run(core: Core, i: usize, shutdown: impl std::future::Future<Output = ()>) {
    let hooks = core.config.webhooks.clone();
    let Some(hook) = hooks.0.get(i) else { return };
    let id = hook.id.clone();
    let metrics = core.metrics.clone();
    // Every series exists from the start, at zero.
    metrics.webhook_touch(&id);
    let client = match crate::http_client::builder()
        .timeout(hook.timeout)
        .connect_timeout(hook.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(endpoint = %id, error = %e, "cannot build the webhook client; events stay queued");
            return;
        }
    };
    tokio::pin!(shutdown);
    let mut failures: u32 = 0;
    loop {
        let key = id.clone();
        let read = core
            .db
            .read(move |tx| Ok(crate::db::events::pending(tx, &key, BATCH)?))
            .await;
        let (batch, queued) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(endpoint = %id, error = %e.message, "cannot read the webhook outbox");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        metrics.webhook_queued(&id, queued);
        if batch.is_empty() {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = core.events.wait(i) => continue,
            }
        }
        let events: Vec<_> = batch.iter().map(|(_, e)| e.clone()).collect();
        let body = envelope::body(&events);
        let mut req = client
            .post(&hook.url)
            .header(reqwest::header::CONTENT_TYPE, envelope::MEDIA_TYPE)
            .header(reqwest::header::ACCEPT, "*/*");
        if let Some(secret) = &hook.secret {
            req = req.header(
                envelope::SIGNATURE_HEADER,
                envelope::signature(&secret.0, &body),
            );
        }
        let sent = tokio::select! {
            _ = &mut shutdown => return,
            r = req.body(body).send() => r,
        };
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!("answered {}", resp.status())),
            // reqwest's error names the URL, which may carry a token: say only what failed.
            Err(e) if e.is_timeout() => Some(format!("no answer within {:?}", hook.timeout)),
            Err(e) if e.is_connect() => Some("cannot connect".to_string()),
            Err(_) => Some("request failed".to_string()),
        };
        if let Some(why) = failure {
            failures = failures.saturating_add(1);
            metrics.webhook_failed(&id);
            let wait = hook.backoff_after(failures);
            tracing::warn!(
                endpoint = %id,
                attempt = failures,
                events = batch.len(),
                queued,
                "webhook delivery failed: {why}; retrying in {wait:?}"
            );
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        if failures > 0 {
            tracing::info!(endpoint = %id, after = failures, "webhook endpoint answers again");
        }
        failures = 0;
        let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
        let key = id.clone();
        let removed = core
            .db
            .write_unsynced(move |tx| Ok(crate::db::events::remove(tx, &key, &seqs)?))
            .await;
        match removed {
            Ok(left) => {
                metrics.webhook_delivered(&id, batch.len() as u64);
                metrics.webhook_queued(&id, left);
            }
            Err(e) => {
                // Delivered but still queued: sent again (at least once).
                tracing::error!(endpoint = %id, error = %e.message, "cannot remove delivered webhook events");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
