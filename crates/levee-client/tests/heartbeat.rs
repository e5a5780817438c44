//! Heartbeats: an idle client keeps its connection alive past the broker's 3-interval limit, and a
//! broker that goes silent is detected.

mod common;

use std::time::Duration;

use levee_client::{Client, ClientOptions, Overflow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_stays_connected() {
    let b = common::broker_with(|c| c.heartbeat_ms = 100).await;
    let client = common::client(b.addr).await;
    client
        .declare("q", common::memory(Overflow::Block, 10))
        .await
        .unwrap();
    // The broker closes a connection silent for 300 ms; stay idle much longer.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(client.is_connected());
    client.inspect("q").await.unwrap();
    let s = client.stats();
    assert_eq!(s.reconnects, 0, "{s:?}");
    assert!(s.heartbeats >= 5, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_broker_is_detected() {
    // A listener that completes the handshake's TCP part but never answers: connect times out.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let r = Client::connect(
        addr,
        ClientOptions {
            connect_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .await;
    assert!(
        matches!(r, Err(levee_client::ClientError::Timeout(_))),
        "{r:?}"
    );
}
