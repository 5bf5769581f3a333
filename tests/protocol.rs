//! The distribution API endpoint by endpoint, through reqwest against the real server.

use crate::util::*;

#[tokio::test]
async fn base_endpoint_answers_with_the_api_version() {
    let r = TestRegistry::start().await;
    let resp = client().get(r.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    r.stop().await;
}
