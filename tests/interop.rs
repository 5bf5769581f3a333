//! Clients that no one here wrote push images into the running registry and pull them back
//! with identical digests: the Rust `oci-client` crate here; skopeo, podman, docker and ctr
//! in `interop_cli`.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    OciImageIndex, OciImageManifest, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::util::*;

fn oci_client(monolithic: bool) -> Client {
    install_crypto_provider();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        use_monolithic_push: monolithic,
        ..Default::default()
    })
}

fn reference(r: &TestRegistry, repo_and_tag: &str) -> Reference {
    format!("{}/{repo_and_tag}", r.addr)
        .parse()
        .expect("reference")
}

fn config_blob(arch: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {},
        "nonce": hex::encode(random_bytes(8)),
    }))
    .expect("json")
}

/// Pushes a three-layer image (one layer larger than a chunk) and pulls it back.
async fn round_trip_image(monolithic: bool) {
    let r = TestRegistry::start().await;
    oci_client_round_trip(&r, monolithic).await;
    r.stop().await;
}

/// [`round_trip_image`] against any registry (the S3 backend's tests reuse it).
pub async fn oci_client_round_trip(r: &TestRegistry, monolithic: bool) {
    let client = oci_client(monolithic);
    let layers: Vec<ImageLayer> = [3 << 20, 100_000, 1]
        .iter()
        .map(|&n| ImageLayer::oci_v1_gzip(random_bytes(n), None))
        .collect();
    let config = Config::oci_v1(config_blob("amd64"), None);
    let image = reference(r, "oci-client/multi-layer:v1");
    // The manifest the client pushes, built as its `push` would, so the pull can be compared
    // with what went in rather than with what the server says about itself.
    let manifest = OciImageManifest::build(&layers, &config, None);
    client
        .push(
            &image,
            &layers,
            config.clone(),
            &RegistryAuth::Anonymous,
            Some(manifest.clone()),
        )
        .await
        .expect("oci-client push");

    let pulled = client
        .pull(
            &image,
            &RegistryAuth::Anonymous,
            vec![oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE],
        )
        .await
        .expect("oci-client pull");
    assert_eq!(pulled.layers.len(), layers.len());
    // oci-client downloads layers concurrently and returns them in completion order.
    let mut got: Vec<String> = pulled.layers.iter().map(|l| sha256(&l.data)).collect();
    let mut want: Vec<String> = layers.iter().map(|l| sha256(&l.data)).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "layer bytes differ after the round trip");
    assert_eq!(pulled.config.data, config.data);
    let (raw, digest) = client
        .pull_manifest_raw(
            &image,
            &RegistryAuth::Anonymous,
            &[IMAGE_MANIFEST_MEDIA_TYPE],
        )
        .await
        .expect("raw manifest");
    assert_eq!(
        sha256(&raw),
        digest,
        "served manifest bytes hash to the digest"
    );
    assert_eq!(pulled.digest.as_deref(), Some(digest.as_str()));
    let raw: serde_json::Value = serde_json::from_slice(&raw).expect("manifest JSON");
    assert_eq!(
        raw,
        serde_json::to_value(&manifest).unwrap(),
        "the pulled manifest is the pushed one"
    );
}

#[tokio::test]
async fn oci_client_pushes_and_pulls_a_multi_layer_image_chunked() {
    round_trip_image(false).await;
}

#[tokio::test]
async fn oci_client_pushes_and_pulls_a_multi_layer_image_monolithic() {
    round_trip_image(true).await;
}

#[tokio::test]
async fn oci_client_pushes_and_pulls_a_multi_arch_index() {
    let r = TestRegistry::start().await;
    let client = oci_client(false);
    let auth = RegistryAuth::Anonymous;
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layers = vec![ImageLayer::oci_v1_gzip(random_bytes(50_000), None)];
        let image = reference(&r, &format!("oci-client/multi-arch:{arch}"));
        client
            .push(
                &image,
                &layers,
                Config::oci_v1(config_blob(arch), None),
                &auth,
                None,
            )
            .await
            .expect("push per-arch image");
        let (raw, digest) = client
            .pull_manifest_raw(&image, &auth, &[IMAGE_MANIFEST_MEDIA_TYPE])
            .await
            .expect("per-arch manifest");
        entries.push(serde_json::json!({
            "mediaType": IMAGE_MANIFEST_MEDIA_TYPE,
            "digest": digest,
            "size": raw.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
        "manifests": entries,
    }))
    .expect("index");
    let list = reference(&r, "oci-client/multi-arch:latest");
    client
        .push_manifest_list(&list, &auth, index.clone())
        .await
        .expect("push index");

    let (raw, digest) = client
        .pull_manifest_raw(&list, &auth, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
        .await
        .expect("pull index");
    assert_eq!(sha256(&raw), digest);
    let pulled: serde_json::Value = serde_json::from_slice(&raw).expect("index JSON");
    assert_eq!(
        pulled,
        serde_json::to_value(&index).unwrap(),
        "the pulled index is the pushed one"
    );
    // Pulling the index as an image resolves the platform this test runs on.
    let (_, resolved) = client
        .pull_image_manifest(&list, &auth)
        .await
        .expect("platform resolution through the index");
    let want = if cfg!(target_arch = "aarch64") { 1 } else { 0 };
    assert_eq!(resolved, index.manifests[want].digest);
    r.stop().await;
}
