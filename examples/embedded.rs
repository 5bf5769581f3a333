//! Runs Dockyard inside another tokio program through the library API.
//!
//! ```text
//! cargo run --example embedded            # serves until Ctrl-C
//! cargo run --example embedded -- --once  # checks /v2/ once and exits
//! ```

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let root = std::env::temp_dir().join(format!("dockyard-embedded-{}", std::process::id()));
    let config = dockyard::Config {
        root: root.clone(),
        ..Default::default()
    };

    // Bind first, then hand the listener over: the port is ours before anyone can race us.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let registry = dockyard::Registry::open(config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(registry.serve(listener, async {
        let _ = stopped.await;
    }));
    println!(
        "embedded registry on http://{addr}, data in {}",
        root.display()
    );

    if once {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("http://{addr}/v2/"))
            .send()
            .await?;
        println!("GET /v2/ -> {}", resp.status());
    } else {
        tokio::signal::ctrl_c().await?;
    }
    let _ = stop.send(());
    server.await??;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}
