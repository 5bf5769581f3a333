//! The one place outbound HTTP clients are built (webhook delivery, the mirror's upstream
//! registries, the S3 store). Every client gets the same TLS stack (rustls with ring, the
//! system's roots, plus an optional private CA) and says who it is.

use std::path::Path;
use std::sync::Once;

/// A builder with Dockyard's defaults; callers add their timeouts.
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().user_agent(concat!("dockyard/", env!("CARGO_PKG_VERSION")))
}

/// Like [`builder`], also trusting the PEM certificates in `ca_file` (a private CA).
pub fn builder_with_ca(ca_file: &Path) -> Result<reqwest::ClientBuilder, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", ca_file.display()))?;
    Ok(certs
        .into_iter()
        .fold(builder(), |b, cert| b.add_root_certificate(cert)))
}

/// reqwest is built without a default provider (no aws-lc-rs, which needs cmake); rustls
/// then uses the process-wide one, which must be installed once before the first client.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means an embedding program installed its own first: keep theirs.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
