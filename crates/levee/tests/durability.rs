//! Scenario 14: a message the broker confirmed survives `kill -9` of the broker (fsync `always`,
//! the default), and after a restart every unsettled message is delivered again.

mod common;

use std::collections::BTreeSet;

use common::{Raw, Server};
use levee_proto::{ClientFrame, Message, PublishOutcome, QueueConfig, ServerFrame};

/// Publishes `ids` to a block queue within publish credit; returns the ids confirmed `Stored`.
fn publish_confirmed(
    raw: &mut Raw,
    queue: &str,
    ids: std::ops::Range<u32>,
    credit: &mut u64,
) -> Vec<u32> {
    let mut confirmed = Vec::new();
    let ids: Vec<u32> = ids.collect();
    let mut req = 1_000_000;
    for chunk in ids.chunks(50) {
        while *credit < chunk.len() as u64 {
            match raw.recv() {
                Some(ServerFrame::PublishCredit { n, .. }) => *credit += u64::from(n),
                other => panic!("waiting for credit, got {other:?}"),
            }
        }
        *credit -= chunk.len() as u64;
        req += 1;
        raw.send(&ClientFrame::Publish {
            req,
            queue: queue.into(),
            messages: chunk
                .iter()
                .map(|i| Message::new(i.to_le_bytes().to_vec()))
                .collect(),
        });
        loop {
            match raw.recv() {
                Some(ServerFrame::PublishCredit { n, .. }) => *credit += u64::from(n),
                Some(ServerFrame::PublishConfirm { req: r, outcomes }) if r == req => {
                    for (i, o) in chunk.iter().zip(outcomes) {
                        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
                        confirmed.push(*i);
                    }
                    break;
                }
                other => panic!("waiting for confirm, got {other:?}"),
            }
        }
    }
    confirmed
}

fn id(m: &Message) -> u32 {
    u32::from_le_bytes(m.payload[..4].try_into().unwrap())
}

/// Subscribes with `credit` and collects `n` deliveries: (tag, id, delivery_count).
fn take(raw: &mut Raw, queue: &str, n: usize) -> (u64, Vec<(u64, u32, u32)>) {
    raw.send(&ClientFrame::Subscribe {
        req: 7,
        queue: queue.into(),
        credit: n as u32,
        auto_ack: false,
    });
    let sub = match raw.recv() {
        Some(ServerFrame::Subscribed { subscription, .. }) => subscription,
        other => panic!("{other:?}"),
    };
    let mut got = Vec::new();
    while got.len() < n {
        match raw.recv() {
            Some(ServerFrame::Deliver { deliveries }) => got.extend(
                deliveries
                    .iter()
                    .map(|d| (d.tag, id(&d.message), d.delivery_count)),
            ),
            Some(ServerFrame::PublishCredit { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    (sub, got)
}

#[test]
fn confirmed_messages_survive_kill_9_and_acked_ones_stay_acked() {
    let mut server = Server::start();
    let (mut raw, mut credit) = jobs_producer(&server);
    let mut confirmed = publish_confirmed(&mut raw, "jobs", 0..600, &mut credit);
    assert_eq!(confirmed.len(), 600);

    // A consumer takes 100 and acks them; a last publish makes those acks durable too (the
    // settlements ride along with the next group commit).
    let mut consumer = Raw::handshake(server.wire);
    let (sub, got) = take(&mut consumer, "jobs", 100);
    let acked: BTreeSet<u32> = got.iter().map(|g| g.1).collect();
    consumer.send(&ClientFrame::Ack {
        subscription: sub,
        tags: got.iter().map(|g| g.0).collect(),
    });
    // Ten more deliveries stay unacked at the crash: they must come back.
    consumer.send(&ClientFrame::Credit {
        subscription: sub,
        n: 10,
    });
    let mut unacked = 0;
    while unacked < 10 {
        if let Some(ServerFrame::Deliver { deliveries }) = consumer.recv() {
            unacked += deliveries.len();
        }
    }
    confirmed.extend(publish_confirmed(&mut raw, "jobs", 600..650, &mut credit));

    server.restart_after_kill9();

    let mut after = Raw::handshake(server.wire);
    let expected: BTreeSet<u32> = confirmed
        .iter()
        .copied()
        .filter(|i| !acked.contains(i))
        .collect();
    assert_eq!(expected.len(), 550);
    let (_, got) = take(&mut after, "jobs", expected.len());
    let ids: Vec<u32> = got.iter().map(|g| g.1).collect();
    let set: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(
        set, expected,
        "every confirmed, unacked message and nothing else"
    );
    assert_eq!(ids.len(), set.len(), "no duplicates");
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "recovered in publish order");

    // Accounting after recovery: exactly the recovered messages are ready or unacked.
    after.send(&ClientFrame::Inspect {
        req: 9,
        queue: "jobs".into(),
    });
    loop {
        match after.recv() {
            Some(ServerFrame::QueueStats { info, .. }) => {
                assert_eq!(info.stats.ready + info.stats.unacked, 550);
                assert!(info.stats.is_balanced());
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

/// A new connection that declared `jobs` (disk, fsync always) and registered as its producer:
/// the connection and its publish credit so far.
fn jobs_producer(server: &Server) -> (Raw, u64) {
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::Declare {
        req: 1,
        queue: "jobs".into(),
        config: QueueConfig::default(),
    });
    assert!(matches!(raw.recv(), Some(ServerFrame::QueueOk { .. })));
    raw.send(&ClientFrame::Produce {
        req: 2,
        queue: "jobs".into(),
    });
    assert!(matches!(
        raw.recv(),
        Some(ServerFrame::QueueOk { req: 2, .. })
    ));
    (raw, 0)
}

/// Publishes `ids` to `jobs` with confirms on a new connection: the ids confirmed.
fn declare_and_publish(server: &Server, ids: std::ops::Range<u32>) -> Vec<u32> {
    let (mut raw, mut credit) = jobs_producer(server);
    publish_confirmed(&mut raw, "jobs", ids, &mut credit)
}

/// `[wal] enabled = false`: disk queues keep standalone logs (nothing goes through the shared
/// WAL, whose commit counter stays at 0) and a confirmed message still survives kill -9, with
/// the WAL off and after switching it back on. The same publishes with the WAL on do commit
/// through it, so the counter is what tells the two apart.
#[test]
fn with_the_shared_wal_off_confirmed_messages_survive_kill_9() {
    let with_wal = Server::start();
    assert_eq!(declare_and_publish(&with_wal, 0..100).len(), 100);
    assert!(common::metric(with_wal.http, "levee_wal_commits_total") > 0);
    drop(with_wal);

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("levee.toml");
    std::fs::write(&config, "[wal]\nenabled = false\n").expect("config");
    let flags = ["--config", config.to_str().unwrap()];
    let mut server = Server::start_with(&flags);
    let mut confirmed = declare_and_publish(&server, 0..300);
    assert_eq!(confirmed.len(), 300);
    assert_eq!(common::metric(server.http, "levee_wal_commits_total"), 0);
    server.restart_after_kill9_with(&flags);
    confirmed.extend(declare_and_publish(&server, 300..400));
    assert_eq!(common::metric(server.http, "levee_wal_commits_total"), 0);
    // Back on: the standalone log is opened attached, as any log is after a restart.
    server.restart_after_kill9();
    let mut after = Raw::handshake(server.wire);
    let (_, got) = take(&mut after, "jobs", confirmed.len());
    let ids: Vec<u32> = got.iter().map(|g| g.1).collect();
    assert_eq!(ids, confirmed, "every confirmed message, once, in order");
}

#[test]
fn memory_queue_definitions_survive_a_restart_empty_and_transient_queues_do_not() {
    let mut server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    for (req, name, durability) in [
        (1, "durable", levee_proto::Durability::default()),
        (2, "memory", levee_proto::Durability::Memory),
        (3, "transient", levee_proto::Durability::Transient),
    ] {
        raw.send(&ClientFrame::Declare {
            req,
            queue: name.into(),
            config: QueueConfig {
                durability,
                overflow: levee_proto::Overflow::DropNewest,
                ..QueueConfig::default()
            },
        });
        assert!(matches!(raw.recv(), Some(ServerFrame::QueueOk { .. })));
    }
    // A message in the memory queue: it is lost with the restart, the queue is not.
    let confirmed = publish_confirmed_once(&mut raw, "memory");
    assert!(confirmed);
    server.restart_after_kill9();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::ListQueues { req: 3 });
    match raw.recv() {
        Some(ServerFrame::QueueList { queues, .. }) => {
            assert_eq!(queues, vec!["durable", "memory"]);
        }
        other => panic!("{other:?}"),
    }
    raw.send(&ClientFrame::Inspect {
        req: 4,
        queue: "memory".into(),
    });
    loop {
        match raw.recv() {
            Some(ServerFrame::QueueStats { info, .. }) => {
                assert_eq!(info.config.durability, levee_proto::Durability::Memory);
                assert_eq!((info.stats.ready, info.stats.stored), (0, 0));
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    // Deleting it removes its catalog entry: it does not come back.
    raw.send(&ClientFrame::Delete {
        req: 5,
        queue: "memory".into(),
    });
    loop {
        if let Some(ServerFrame::QueueOk { req: 5, .. }) = raw.recv() {
            break;
        }
    }
    server.restart_after_kill9();
    let mut raw = Raw::handshake(server.wire);
    raw.send(&ClientFrame::ListQueues { req: 6 });
    match raw.recv() {
        Some(ServerFrame::QueueList { queues, .. }) => assert_eq!(queues, vec!["durable"]),
        other => panic!("{other:?}"),
    }
}

/// Publishes one message to a non-block queue and waits for its confirm: whether it was stored.
fn publish_confirmed_once(raw: &mut Raw, queue: &str) -> bool {
    raw.send(&ClientFrame::Publish {
        req: 77,
        queue: queue.into(),
        messages: vec![Message::new(b"m".to_vec())],
    });
    loop {
        match raw.recv() {
            Some(ServerFrame::PublishConfirm { req: 77, outcomes }) => {
                return matches!(outcomes[0], PublishOutcome::Stored { .. });
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
}

/// A message recovered after `kill -9` is delivered with the time it was published, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_messages_keep_their_publish_time() {
    let mut server = Server::start();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    {
        let c = common::client(&server).await;
        c.declare(
            "stamped",
            QueueConfig {
                overflow: levee_proto::Overflow::DropNewest,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
        let p = c
            .producer("stamped", levee_client::ProducerOptions::default())
            .await
            .unwrap();
        let confirm = p.publish(Message::new(b"job".to_vec())).await.unwrap();
        assert!(matches!(
            confirm.await.unwrap(),
            levee_proto::PublishOutcome::Stored { .. }
        ));
    }
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    server.restart_after_kill9();
    let c = common::client(&server).await;
    let mut consumer = c
        .consumer("stamped", levee_client::ConsumerOptions::default())
        .await
        .unwrap();
    let d = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures::StreamExt::next(&mut consumer),
    )
    .await
    .expect("recovered message delivered")
    .unwrap()
    .unwrap();
    assert!(
        (before..=after).contains(&d.timestamp_ms()),
        "publish time {} not within [{before}, {after}]",
        d.timestamp_ms()
    );
}

/// A thousand durable queues, one confirmed message each, survive `kill -9`: after the restart
/// every queue is back with its message (the shared WAL's redo and every log's recovery at once).
#[test]
fn a_thousand_queues_and_their_messages_survive_kill_9() {
    const QUEUES: u32 = 1000;
    let mut server = Server::start();
    let mut raw = Raw::handshake(server.wire);
    for q in 0..QUEUES {
        let name = format!("q{q}");
        raw.send(&ClientFrame::Declare {
            req: 1,
            queue: name.clone(),
            config: QueueConfig::default(),
        });
        assert!(matches!(raw.recv(), Some(ServerFrame::QueueOk { .. })));
        raw.send(&ClientFrame::Produce {
            req: 2,
            queue: name.clone(),
        });
        assert!(matches!(
            raw.recv(),
            Some(ServerFrame::QueueOk { req: 2, .. })
        ));
        let mut credit = 0;
        assert_eq!(
            publish_confirmed(&mut raw, &name, q..q + 1, &mut credit),
            vec![q]
        );
    }
    drop(raw);
    server.restart_after_kill9();

    let mut after = Raw::handshake(server.wire);
    after.send(&ClientFrame::ListQueues { req: 3 });
    loop {
        match after.recv() {
            Some(ServerFrame::QueueList { queues, .. }) => {
                assert_eq!(queues.len(), QUEUES as usize);
                break;
            }
            Some(_) => {}
            None => panic!("closed"),
        }
    }
    for q in 0..QUEUES {
        let (_, got) = take(&mut after, &format!("q{q}"), 1);
        assert_eq!(got[0].1, q, "queue q{q} holds its own message");
    }
}
