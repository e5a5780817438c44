//! Scenario 13, end to end: a web server stores an upload, enqueues an encoding job and answers
//! at once; several encoders each take one job at a time (credit 1, so a busy encoder takes no
//! new job); an encoder that crashes mid-job has its job redelivered to another; a broker crash
//! and restart loses no job.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{Server, id_of, numbered};
use futures::StreamExt;
use levee_client::{
    Backoff, Client, ClientOptions, ConsumerOptions, Credit, ProducerOptions, PublishOutcome,
};
use levee_proto::QueueConfig;
use parking_lot::Mutex;

const JOBS: u32 = 30;

async fn reconnecting_client(addr: std::net::SocketAddr) -> Client {
    let opts = ClientOptions {
        reconnect: Some(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
        }),
        ..ClientOptions::default()
    };
    Client::connect(addr, opts).await.expect("connect")
}

#[derive(Default)]
struct Ledger {
    /// job -> how many times an encoder finished it and its ack was accepted locally.
    encoded: BTreeMap<u32, u32>,
    /// Highest delivery count seen per job.
    deliveries: BTreeMap<u32, u32>,
}

/// An encoder: takes one job at a time, "encodes" it (sleeps in proportion to its size), acks.
async fn encoder(addr: std::net::SocketAddr, ledger: Arc<Mutex<Ledger>>) {
    let client = reconnecting_client(addr).await;
    let opts = ConsumerOptions {
        credit: Credit::Fixed(1),
        ..ConsumerOptions::default()
    };
    let mut jobs = client.consumer("encode", opts).await.expect("subscribe");
    while let Some(job) = jobs.next().await {
        let Ok(job) = job else { continue };
        let id = id_of(job.payload());
        let size = u64::from(id % 3 + 1);
        {
            let mut l = ledger.lock();
            let e = l.deliveries.entry(id).or_default();
            *e = (*e).max(job.delivery_count());
        }
        tokio::time::sleep(Duration::from_millis(20 * size)).await;
        if job.ack().is_ok() {
            *ledger.lock().encoded.entry(id).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_encoding_work_queue_loses_no_job_through_crashes() {
    let mut server = Server::start();
    let upload_dir = tempfile::tempdir().unwrap();

    // The web server: store the upload, enqueue the job, answer. No encoder exists yet, so the
    // answer cannot depend on encoding.
    let web = common::client(&server).await;
    web.declare("encode", QueueConfig::default()).await.unwrap();
    let producer = web
        .producer("encode", ProducerOptions::default())
        .await
        .unwrap();
    for job in 0..JOBS {
        std::fs::write(
            upload_dir.path().join(format!("{job}.raw")),
            vec![0u8; 1024],
        )
        .unwrap();
        let answer = producer.send(numbered(job, 16)).await.unwrap();
        assert!(
            matches!(answer, PublishOutcome::Stored { .. }),
            "job {job} durable before the answer"
        );
    }
    let stats = web.inspect("encode").await.unwrap().stats;
    assert_eq!(
        (stats.ready, stats.acked),
        (u64::from(JOBS), 0),
        "answered before any encoding"
    );

    // An encoder process takes a job and crashes mid-job.
    let mut doomed = common::stuck_worker(&server, "encode");
    while web.inspect("encode").await.unwrap().stats.unacked == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();

    // Three encoders share the work.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let encoders: Vec<_> = (0..3)
        .map(|_| tokio::spawn(encoder(server.wire, ledger.clone())))
        .collect();
    // While they work, no encoder ever holds more than its one job.
    let mut max_held = 0;
    while ledger.lock().encoded.len() < (JOBS / 2) as usize {
        let s = web.inspect("encode").await.unwrap().stats;
        for c in &s.consumers {
            max_held = max_held.max(c.unacked + c.credit);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        max_held <= 1,
        "a busy encoder takes no new job (held {max_held})"
    );

    // The broker crashes mid-run and comes back on the same port and data.
    server.restart_after_kill9();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: BTreeSet<u32> = ledger.lock().encoded.keys().copied().collect();
        if done.len() == JOBS as usize {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "jobs never encoded: {:?}",
            (0..JOBS).filter(|j| !done.contains(j)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = common::client(&server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = admin.inspect("encode").await.unwrap().stats;
        if s.ready + s.unacked == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "queue never drained: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for e in encoders {
        e.abort();
    }
    let l = ledger.lock();
    assert!(
        l.deliveries.values().any(|d| *d >= 2),
        "the crashed encoder's job was redelivered: {:?}",
        l.deliveries
    );
}
