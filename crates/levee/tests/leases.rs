//! Renewable leases: a consumer working on a long job extends its delivery's ack deadline
//! (`Extend` frame, `Delivery::extend`) and keeps the message past the queue's ack timeout;
//! no other consumer gets it meanwhile.

mod common;

use std::time::{Duration, Instant};

use common::{Server, client, id_of, numbered};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::QueueConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_extending_its_lease_keeps_the_message_past_the_ack_timeout() {
    let server = Server::start();
    let c = client(&server).await;
    let config = QueueConfig {
        ack_timeout_ms: 1_500,
        ..QueueConfig::default()
    };
    c.declare("long-jobs", config).await.unwrap();
    let p = c
        .producer("long-jobs", ProducerOptions::default())
        .await
        .unwrap();
    p.send(numbered(1, 8)).await.unwrap();
    let opts = || ConsumerOptions {
        credit: Credit::Fixed(1),
        ..Default::default()
    };
    let mut worker = c.consumer("long-jobs", opts()).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), worker.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(id_of(d.payload()), 1);
    let mut other = c.consumer("long-jobs", opts()).await.unwrap();
    // Work for three ack timeouts, renewing the lease every 250 ms.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4_500) {
        d.extend(Duration::from_millis(1_500)).unwrap();
        let got = tokio::time::timeout(Duration::from_millis(250), other.next()).await;
        assert!(got.is_err(), "the message stayed leased: {got:?}");
    }
    let s = c.inspect("long-jobs").await.unwrap().stats;
    assert_eq!((s.unacked, s.ready), (1, 0), "{s:?}");
    d.ack().unwrap();
    common::wait_for_stats(&c, "long-jobs", |s| s.acked == 1 && s.unacked == 0).await;
}
