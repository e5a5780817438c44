//! What the broker does when its disk misbehaves: a failed fsync, a full disk, a stalled disk.
//! The broker runs in-process on levee-store's fault-injecting backend (the only way to make an
//! fsync fail on demand) and is driven over TCP by the real client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use levee_broker::{Broker, BrokerConfig};
use levee_client::{Client, ClientOptions, ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{Durability, Fsync, Message, Overflow, PublishOutcome, QueueConfig};
use levee_store::backend::fault::{CrashMode, FaultyBackend};

const DATA: &str = "/levee-fault-data";

async fn start(disk: &FaultyBackend) -> (Broker, SocketAddr) {
    start_with(disk, levee_store::WalConfig::default().write_behind_bytes).await
}

/// Write-behind on, as by default (kept explicit so these tests keep it if the default changes;
/// the write-at-once path, `0`, is covered by the store tests and the simulation's even seeds).
const WRITE_BEHIND: usize = 4 << 20;

/// `write_behind_bytes`: the WAL's write-behind bound (0: segments written at once).
async fn start_with(disk: &FaultyBackend, write_behind_bytes: usize) -> (Broker, SocketAddr) {
    let mut config = BrokerConfig {
        data_dir: PathBuf::from(DATA),
        ..BrokerConfig::default()
    };
    config.wal.write_behind_bytes = write_behind_bytes;
    let broker = Broker::open_with_backend(disk.shared(), config)
        .await
        .expect("open broker");
    let (addr, _task) = broker.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (broker, addr)
}

async fn client(addr: SocketAddr) -> Client {
    let opts = ClientOptions {
        reconnect: None,
        ..ClientOptions::default()
    };
    Client::connect(addr, opts).await.expect("connect")
}

fn disk_queue() -> QueueConfig {
    QueueConfig {
        overflow: Overflow::DropNewest,
        durability: Durability::Disk(Fsync::Always),
        ..QueueConfig::default()
    }
}

fn fixed(credit: u32) -> ConsumerOptions {
    ConsumerOptions {
        credit: Credit::Fixed(credit),
        ..ConsumerOptions::default()
    }
}

/// A broker on `disk` with a disk queue `jobs`, a client and a producer of it.
async fn jobs_queue(disk: &FaultyBackend) -> (Broker, Client, levee_client::Producer) {
    jobs_queue_with(disk, levee_store::WalConfig::default().write_behind_bytes).await
}

async fn jobs_queue_with(
    disk: &FaultyBackend,
    write_behind_bytes: usize,
) -> (Broker, Client, levee_client::Producer) {
    let (broker, addr) = start_with(disk, write_behind_bytes).await;
    let c = client(addr).await;
    c.declare("jobs", disk_queue()).await.unwrap();
    let producer = c
        .producer("jobs", ProducerOptions::default())
        .await
        .unwrap();
    (broker, c, producer)
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_messages_are_delivered_only_once_rewritten_durably() {
    let disk = FaultyBackend::new();
    let (_broker, c, producer) = jobs_queue(&disk).await;
    // One confirmed, consumed message first: the log's first sync cycle (which also runs start-up
    // maintenance) is behind us, so the fault below hits the publishes, not an idle log.
    let warm = producer
        .publish(Message::new(b"warm".to_vec()))
        .await
        .unwrap();
    assert!(matches!(warm.await.unwrap(), PublishOutcome::Stored { .. }));
    {
        let mut first = c.consumer("jobs", fixed(1)).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), first.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack().unwrap();
        first.close().await.unwrap();
    }
    eventually("the warm-up ack", async || {
        c.inspect("jobs").await.unwrap().stats.acked == 1
    })
    .await;
    let mut consumer = c.consumer("jobs", fixed(100)).await.unwrap();

    // The disk starts failing every fsync: the confirms fail...
    disk.fail_syncs(Some(std::io::ErrorKind::Other));
    let mut confirms = Vec::new();
    for i in 0..10u32 {
        let m = Message::new(i.to_le_bytes().to_vec());
        // (The client may already refuse later publishes with the first failure.)
        if let Ok(f) = producer.publish(m).await {
            confirms.push(f);
        }
    }
    for f in confirms {
        let outcome = f.await;
        assert!(
            !matches!(outcome, Ok(PublishOutcome::Stored { .. })),
            "an unsynced publish is not confirmed: {outcome:?}"
        );
    }
    // What reached the queue stays in it (stored, written, durability unknown)...
    let stored = c.inspect("jobs").await.unwrap().stats.ready;
    assert!(stored >= 1, "the first publish reached the queue");
    // ...and while their durability is unknown, nobody sees them.
    let early = tokio::time::timeout(Duration::from_millis(500), consumer.next()).await;
    assert!(
        early.is_err(),
        "a message was delivered before it was durable: {:?}",
        early.map(|d| d.map(|d| d.map(|d| d.seq())))
    );

    // The disk recovers: the broker rewrites them into a reopened log (never trusting a retried
    // fsync) and delivers them once that rewrite is durable.
    disk.fail_syncs(None);
    let mut got = Vec::new();
    while got.len() < stored as usize {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivered after the rewrite")
            .unwrap()
            .unwrap();
        got.push(u32::from_le_bytes(d.payload()[..4].try_into().unwrap()));
        // Not acked: they must survive power loss as they are.
    }
    got.sort_unstable();
    assert_eq!(got, (0..stored as u32).collect::<Vec<_>>());

    // Power loss now: what was delivered was durable, so it is all there after recovery.
    disk.crash(CrashMode::LoseUnsynced);
    let (_broker2, addr2) = start(&disk).await;
    let c2 = client(addr2).await;
    let info = c2.inspect("jobs").await.unwrap();
    assert_eq!(
        info.stats.ready, stored,
        "every delivered message survives: {:?}",
        info.stats
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_made_while_the_disk_is_full_are_written_once_space_returns() {
    // Segments written at once (no write-behind): a settlement's segment write meets the full
    // disk, and the broker keeps it until it can be written.
    let disk = FaultyBackend::new();
    let (broker, c, producer) = jobs_queue_with(&disk, 0).await;
    let mut confirms = Vec::new();
    for i in 0..20u32 {
        confirms.push(
            producer
                .publish(Message::new(i.to_le_bytes().to_vec()))
                .await
                .unwrap(),
        );
    }
    for f in confirms {
        assert!(matches!(f.await.unwrap(), PublishOutcome::Stored { .. }));
    }
    let mut consumer = c.consumer("jobs", fixed(100)).await.unwrap();
    // The disk fills up; every message is acked meanwhile.
    disk.set_write_budget(Some(0));
    for _ in 0..20 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack().unwrap();
    }
    eventually("the acks reach the queue", async || {
        c.inspect("jobs").await.unwrap().stats.acked == 20
    })
    .await;
    assert_eq!(
        broker.log_stats("jobs").unwrap().unsettled,
        20,
        "nothing could be written while the disk is full"
    );
    // Space comes back: the kept settlements are written.
    disk.set_write_budget(None);
    eventually("the kept settlements are written", async || {
        broker.log_stats("jobs").unwrap().unsettled == 0
    })
    .await;
    // A clean restart: the acked messages stay gone.
    drop(consumer);
    c.close().await.unwrap();
    broker.shutdown().await;
    disk.crash(CrashMode::LoseUnsynced);
    let (_broker2, addr2) = start(&disk).await;
    let c2 = client(addr2).await;
    let stats = c2.inspect("jobs").await.unwrap().stats;
    assert_eq!(stats.ready, 0, "acked messages came back: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_write_behind_acks_on_a_full_disk_go_through_the_preallocated_wal() {
    let disk = FaultyBackend::new();
    let (broker, c, producer) = jobs_queue_with(&disk, WRITE_BEHIND).await;
    let mut confirms = Vec::new();
    for i in 0..20u32 {
        confirms.push(
            producer
                .publish(Message::new(i.to_le_bytes().to_vec()))
                .await
                .unwrap(),
        );
    }
    for f in confirms {
        assert!(matches!(f.await.unwrap(), PublishOutcome::Stored { .. }));
    }
    let mut consumer = c.consumer("jobs", fixed(100)).await.unwrap();
    disk.set_write_budget(Some(0));
    for _ in 0..20 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        d.ack().unwrap();
    }
    // The settlements need no new space: they are in the WAL's preallocated file, and the
    // segments behind it are left alone until there is room.
    eventually("the acks are settled in the log", async || {
        broker.log_stats("jobs").unwrap().unsettled == 0
    })
    .await;
    disk.set_write_budget(None);
    drop(consumer);
    c.close().await.unwrap();
    broker.shutdown().await;
    disk.crash(CrashMode::LoseUnsynced);
    let (_broker2, addr2) = start_with(&disk, WRITE_BEHIND).await;
    let c2 = client(addr2).await;
    let stats = c2.inspect("jobs").await.unwrap().stats;
    assert_eq!(stats.ready, 0, "acked messages came back: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_on_a_stalled_disk_does_not_block_the_connection() {
    let disk = FaultyBackend::new();
    let (_broker, addr) = start(&disk).await;
    let c = Arc::new(client(addr).await);
    c.declare("stuck", disk_queue()).await.unwrap();
    c.declare("other", disk_queue()).await.unwrap();
    // Every fsync now hangs: closing the deleted queue's log waits for one.
    disk.hold_syncs(true);
    let deleting = {
        let c = c.clone();
        tokio::spawn(async move { c.delete("stuck").await })
    };
    // The same connection keeps being served meanwhile, and already sees the queue gone.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let listed = tokio::time::timeout(Duration::from_secs(5), c.list_queues())
        .await
        .expect("the connection is not blocked by a pending delete")
        .unwrap();
    assert_eq!(listed, vec!["other".to_string()]);
    disk.hold_syncs(false);
    let dropped = tokio::time::timeout(Duration::from_secs(10), deleting)
        .await
        .expect("the delete completes once the disk moves")
        .unwrap()
        .unwrap();
    assert_eq!(dropped, 0);
}
