//! The body a webhook receives and its signature.
//!
//! The body is CNCF Distribution's notification envelope, `{"events": [...]}` with the media
//! type below, so receivers written for Distribution read it unchanged. The signature is
//! `X-Dockyard-Signature: sha256=<hex>`: the HMAC-SHA256 of the exact body bytes under the
//! endpoint's `secret_file` contents (as GitHub's `X-Hub-Signature-256`), sent only when a
//! secret is configured. A receiver recomputes it over the raw body and compares in
//! constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::db::schema::EventRecord;

/// Distribution's `EventsMediaType` (v1, what Distribution 2.x sends).
pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Dockyard-Signature";

/// The envelope holding `events`, in order.
pub fn body(events: &[EventRecord]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        events: &'a [EventRecord],
    }
    serde_json::to_vec(&Envelope { events }).expect("events serialize to JSON")
}

/// The value of [`SIGNATURE_HEADER`] for `body` under `secret`: `sha256=<lowercase hex>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::schema::*;

    #[test]
    fn the_envelope_has_distributions_field_names_and_leaves_out_empty_ones() {
        let e = EventRecord {
            id: "e1".into(),
            timestamp: "2026-01-01T00:00:00.000000000Z".into(),
            action: "push".into(),
            target: EventTarget {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                size: 7,
                digest: "sha256:ab".into(),
                length: 7,
                repository: "a/b".into(),
                url: "http://h/v2/a/b/manifests/sha256:ab".into(),
                tag: "v1".into(),
            },
            request: EventRequest {
                id: "r1".into(),
                addr: "127.0.0.1:9".into(),
                host: "h".into(),
                method: "PUT".into(),
                useragent: "docker/27".into(),
            },
            actor: EventActor {
                name: "alice".into(),
            },
            source: EventSource {
                addr: "127.0.0.1:5000".into(),
                instance_id: "i1".into(),
            },
            gc: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&[e])).unwrap();
        let ev = &v["events"][0];
        assert_eq!(
            ev["target"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(ev["target"]["length"], 7);
        assert_eq!(ev["source"]["instanceID"], "i1");
        assert_eq!(ev["request"]["useragent"], "docker/27");
        assert_eq!(ev["actor"]["name"], "alice");
        assert!(ev.get("gc").is_none());
        let bare = EventRecord {
            action: "delete".into(),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&body(&[bare])).unwrap();
        assert_eq!(v["events"][0]["target"], serde_json::json!({}));
        assert_eq!(v["events"][0]["actor"], serde_json::json!({}));
    }

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
