//! The data directory: one broker at a time (a second `levee serve` on it is refused, naming the
//! holder), and every valid queue name can be a disk queue that survives `kill -9`.

mod common;

use std::time::Duration;

use common::{Server, client, id_of, numbered, serve_expecting_exit};
use futures::StreamExt;
use levee_client::{ConsumerOptions, Credit, ProducerOptions};
use levee_proto::{PublishOutcome, QueueConfig};

async fn publish_one(c: &levee_client::Client, queue: &str, id: u32) {
    let outcome = c
        .producer(queue, ProducerOptions::default())
        .await
        .unwrap()
        .send(numbered(id, 16))
        .await
        .unwrap();
    assert!(
        matches!(outcome, PublishOutcome::Stored { .. }),
        "{outcome:?}"
    );
}

async fn take_one(c: &levee_client::Client, queue: &str) -> u32 {
    let mut consumer = c
        .consumer(
            queue,
            ConsumerOptions {
                credit: Credit::Fixed(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("stream open")
        .expect("delivery");
    let id = id_of(d.payload());
    d.ack().unwrap();
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_a_data_directory_in_use_is_refused_naming_the_holder() {
    let mut server = Server::start();
    let c = client(&server).await;
    c.declare("jobs", QueueConfig::default()).await.unwrap();
    publish_one(&c, "jobs", 1).await;

    let (ok, stderr) = serve_expecting_exit(&server.data_dir, &[]);
    assert!(!ok, "the second broker must fail: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line of error: {stderr}");
    let line = lines[0];
    assert!(line.contains("locked"), "{line}");
    assert!(
        line.contains(&server.data_dir.display().to_string()),
        "names the directory: {line}"
    );
    assert!(
        line.contains(&format!("pid {}", server.pid())),
        "names the holder's pid {}: {line}",
        server.pid()
    );

    // The first broker is untouched; once it dies (kill -9 included) the lock is free again.
    publish_one(&c, "jobs", 2).await;
    drop(c);
    server.restart_after_kill9();
    let c = client(&server).await;
    assert_eq!(take_one(&c, "jobs").await, 1);
    assert_eq!(take_one(&c, "jobs").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_queues_with_names_of_every_length_up_to_255_bytes_survive_kill_9() {
    let mut server = Server::start();
    let c = client(&server).await;
    // 253 bytes is the longest name of the `q-<name>` form; past it, two names that differ only
    // in their last byte must not share a directory.
    let names: Vec<String> = vec![
        "a".repeat(253),
        "b".repeat(254),
        format!("{}x", "c-._".repeat(63) + "Z9"),
        format!("{}y", "c-._".repeat(63) + "Z9"),
    ];
    for n in &names {
        assert!(n.len() >= 253 && n.len() <= 255, "{}", n.len());
    }
    for (i, name) in names.iter().enumerate() {
        let created = c.declare(name, QueueConfig::default()).await.unwrap();
        assert!(created.created, "{name}");
        publish_one(&c, name, i as u32).await;
    }
    drop(c);
    server.restart_after_kill9();
    let c = client(&server).await;
    let mut listed = c.list_queues().await.unwrap();
    listed.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(listed, want);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(take_one(&c, name).await, i as u32, "{name}");
    }
    // Deleting a long-named queue removes it for good.
    c.delete(&names[3]).await.unwrap();
    drop(c);
    server.restart_after_kill9();
    let c = client(&server).await;
    assert_eq!(c.list_queues().await.unwrap().len(), 3);
}
