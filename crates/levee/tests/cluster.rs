//! A 3-node cluster of real `levee serve` processes on loopback, run by `scripts/cluster.sh`
//! (the same script people use): a replicated queue keeps every confirmed message across a
//! SIGKILL of its leader under load, a SIGKILL of a follower, restarts and a whole-cluster
//! restart.
//!
//! The clients here fail over the way docs/cluster.md describes: ask any node which node serves
//! the queue (`levee_cluster::admin::serving_node`), connect there, and on a lost connection ask
//! again; unconfirmed publishes are sent again with the same message id (the queue's dedup window,
//! replicated with it, drops the copies that were stored).

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use levee_client::{Client, ClientOptions, ConsumerOptions, Message, ProducerOptions};
use levee_proto::PublishOutcome;
use parking_lot::Mutex;

mod common;

const QUEUE: &str = "jobs";

/// The script's cluster in a temporary directory on free ports.
struct Cluster {
    dir: tempfile::TempDir,
    base: u16,
    /// Extra environment for scripts/cluster.sh (a secured cluster's settings).
    env: Vec<(String, String)>,
}

fn free_base() -> u16 {
    // A base whose 34 ports above it are free now (the script needs B+1..B+34 with a fourth
    // node); each test of
    // this process starts from its own slot, so tests running at once never pick the same one.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(7);
    loop {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Below Linux's ephemeral range (32768-60999): a port the check found free is not
        // taken meanwhile by some connection's local port (a node joining later, B+4..B+34,
        // found its AMQP port taken that way).
        assert!(i < 120, "no free port range");
        let base = 20000 + (seed.wrapping_add(i) % 120) * 100;
        if (1..=34).all(|p| TcpListener::bind(("127.0.0.1", base + p)).is_ok()) {
            return base;
        }
    }
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(tempfile::tempdir().expect("tempdir"), Vec::new())
    }

    /// A cluster in `dir` with `env` for the script (see scripts/cluster.sh).
    fn start_with(dir: tempfile::TempDir, env: Vec<(String, String)>) -> Cluster {
        let c = Cluster {
            dir,
            base: free_base(),
            env,
        };
        c.script(&["start"]);
        c
    }

    fn script(&self, args: &[&str]) -> String {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = Command::new("bash")
            .arg(root.join("scripts/cluster.sh"))
            .args(args)
            .env("LEVEE_BIN", env!("CARGO_BIN_EXE_levee"))
            .env("LEVEE_CLUSTER_DIR", self.dir.path())
            .env("LEVEE_CLUSTER_BASE", self.base.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running scripts/cluster.sh");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed: {stdout}{}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        stdout
    }

    fn logs(&self) -> String {
        (1..=4)
            .filter(|n| *n <= 3 || self.dir.path().join(format!("node{n}.log")).exists())
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- node{n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The nodes' wire (client) addresses, B+N.
    fn wire_addrs(&self) -> Vec<String> {
        (1..=3)
            .map(|n| format!("127.0.0.1:{}", self.base + n))
            .collect()
    }

    fn nodes(&self) -> Vec<String> {
        (1..=3)
            .map(|n| format!("127.0.0.1:{}", self.base + 20 + n))
            .collect()
    }

    fn levee(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("cluster")
            .arg("--nodes")
            .arg(self.nodes().join(","))
            .args(args)
            .output()
            .expect("running levee cluster");
        assert!(
            out.status.success(),
            "levee cluster {args:?}: {}{}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `levee` CLI against node `n`'s wire port (B+N): its output.
    fn cli(&self, n: u16, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("--addr")
            .arg(format!("127.0.0.1:{}", self.base + n))
            .args(args)
            .output()
            .expect("running levee")
    }

    /// `PUT /api/queues/{queue}` with `body` on node `n`'s HTTP port: the status line.
    fn http_put_queue(&self, n: u16, queue: &str, body: &str) -> String {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.base + 10 + n);
        let mut s = std::net::TcpStream::connect(&addr).expect("http connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "PUT /api/queues/{queue} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Node `n`'s `/metrics` (its HTTP port is B+10+N), or "" if it does not answer.
    fn metrics(&self, n: u16) -> String {
        use std::io::{Read, Write};
        let addr = format!("127.0.0.1:{}", self.base + 10 + n);
        let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// An AMQP connection (guest) to node `n`'s AMQP port (B+30+N).
    async fn amqp(&self, n: u64) -> lapin::Connection {
        let uri = format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.base + 30 + n as u16
        );
        lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("AMQP connect to node {n}: {e}"))
    }

    /// Waits until some node serves the queue; returns its id and wire address.
    async fn serving(&self) -> (u64, String) {
        self.serving_queue(QUEUE).await
    }

    /// Waits until some node serves `queue`; returns its id and wire address.
    async fn serving_queue(&self, queue: &str) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = levee_cluster::admin::serving_node(&self.nodes(), queue).await {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no node serves {queue}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster.sh"))
            .arg("stop")
            .env("LEVEE_BIN", env!("CARGO_BIN_EXE_levee"))
            .env("LEVEE_CLUSTER_DIR", self.dir.path())
            .env("LEVEE_CLUSTER_BASE", self.base.to_string())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output();
    }
}

/// Runs `levee ARGS`: whether it succeeded, and its stdout and stderr.
fn run_levee(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .output()
        .expect("running levee");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[derive(Default)]
struct Ledger {
    /// Message ids confirmed stored (or duplicate of a stored one).
    confirmed: BTreeSet<u64>,
    /// Deliveries per message id, and how many of them were marked redelivered.
    delivered: BTreeMap<u64, (u32, u32)>,
}

/// Publishes ids `start..n` with confirms, failing over to whichever node serves the queue.
async fn produce(cluster: Arc<Cluster>, ledger: Arc<Mutex<Ledger>>, start: u64, n: u64) {
    let mut next = start;
    let mut unconfirmed: Vec<u64> = Vec::new();
    while next < n || !unconfirmed.is_empty() {
        let (_, addr) = cluster.serving().await;
        let Ok(client) = Client::connect(addr.as_str(), ClientOptions::default()).await else {
            continue;
        };
        let Ok(producer) = client.producer(QUEUE, ProducerOptions::default()).await else {
            continue;
        };
        'conn: loop {
            while unconfirmed.len() < 50 && next < n {
                unconfirmed.push(next);
                next += 1;
            }
            if unconfirmed.is_empty() {
                break;
            }
            let mut confirms = Vec::new();
            for id in &unconfirmed {
                let m = Message::new(format!("m{id}")).with_message_id(format!("id-{id}"));
                match producer.publish(m).await {
                    Ok(c) => confirms.push((*id, c)),
                    Err(_) => break 'conn,
                }
            }
            let mut lost = false;
            for (id, c) in confirms {
                match tokio::time::timeout(Duration::from_secs(15), c).await {
                    Ok(Ok(PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. })) => {
                        ledger.lock().confirmed.insert(id);
                        unconfirmed.retain(|u| *u != id);
                    }
                    Ok(Ok(other)) => panic!("publish {id}: {other:?}"),
                    Ok(Err(_)) | Err(_) => lost = true,
                }
            }
            if lost {
                break;
            }
        }
        let _ = client.close().await;
    }
}

/// Consumes and acks until every id in `0..n` was delivered at least once.
async fn consume(cluster: Arc<Cluster>, ledger: Arc<Mutex<Ledger>>, n: u64) {
    loop {
        if ledger.lock().delivered.len() as u64 >= n {
            return;
        }
        let (_, addr) = cluster.serving().await;
        let Ok(client) = Client::connect(addr.as_str(), ClientOptions::default()).await else {
            continue;
        };
        let Ok(mut consumer) = client.consumer(QUEUE, ConsumerOptions::default()).await else {
            continue;
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(3), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let text = String::from_utf8_lossy(d.payload()).into_owned();
                    let id: u64 = text
                        .strip_prefix('m')
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("delivered a message never published: {text:?}"));
                    let redelivered = d.delivery_count() > 1;
                    {
                        let mut l = ledger.lock();
                        let e = l.delivered.entry(id).or_default();
                        e.0 += 1;
                        e.1 += u32::from(redelivered);
                    }
                    if d.ack().is_err() {
                        break;
                    }
                    if ledger.lock().delivered.len() as u64 >= n {
                        return;
                    }
                }
                // Nothing for a while: the node may have stopped serving (ask again).
                Err(_) => break,
                Ok(Some(Err(_)) | None) => break,
            }
        }
        let _ = client.close().await;
    }
}

fn check(ledger: &Ledger, n: u64) -> (u64, u64) {
    let missing: Vec<u64> = ledger
        .confirmed
        .iter()
        .filter(|id| !ledger.delivered.contains_key(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} confirmed but never delivered (first {:?}); {} delivered (first {:?})",
        missing.len(),
        missing.first(),
        ledger.delivered.len(),
        ledger.delivered.keys().next()
    );
    assert!(
        ledger.delivered.keys().all(|id| *id < n),
        "delivered ids never published"
    );
    let dups: u64 = ledger
        .delivered
        .values()
        .map(|(k, _)| u64::from(k.saturating_sub(1)))
        .sum();
    let marked: u64 = ledger.delivered.values().map(|(_, r)| u64::from(*r)).sum();
    // Duplicates only as redeliveries: every delivery after a message's first carries the mark.
    let unmarked: Vec<u64> = ledger
        .delivered
        .iter()
        .filter(|(_, (k, r))| k.saturating_sub(1) > *r)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        unmarked.is_empty(),
        "delivered again without the redelivered mark: {unmarked:?}"
    );
    (dups, marked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_load_loses_no_confirmed_message() {
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", QUEUE]);
    let (first, _) = cluster.serving().await;
    let n = 3000;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = tokio::spawn(produce(cluster.clone(), ledger.clone(), 0, n));
    let consumer = tokio::spawn(consume(cluster.clone(), ledger.clone(), n));
    // Under load: kill -9 the leader once a third is confirmed.
    while (ledger.lock().confirmed.len() as u64) < n / 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    cluster.script(&["kill", &first.to_string()]);
    let (second, _) = cluster.serving().await;
    let failover = killed_at.elapsed();
    assert_ne!(first, second, "the killed node cannot serve");
    eprintln!("failover: node {first} killed, node {second} serving after {failover:?}");
    // The killed node comes back as a follower and catches up.
    cluster.script(&["restart", &first.to_string()]);
    tokio::time::timeout(Duration::from_secs(120), producer)
        .await
        .expect("producer finished in time")
        .expect("producer task");
    tokio::time::timeout(Duration::from_secs(120), consumer)
        .await
        .expect("consumer finished in time")
        .expect("consumer task");
    let (dups, marked) = check(&ledger.lock(), n);
    assert_eq!(ledger.lock().confirmed.len() as u64, n);
    eprintln!(
        "{n} confirmed, all delivered; {dups} duplicate deliveries, {marked} marked redelivered"
    );
    // The restarted node is reported up once it answers again (its start takes a moment).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = cluster.levee(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3));
        let all_up = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["up"] == true);
        if all_up {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a member still down after 60 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node's /metrics tells who serves the queue; only the serving node says "here".
    let (serving, _) = cluster.serving().await;
    let sample = |node: u16, family: &str| -> Option<u64> {
        let body = cluster.metrics(node);
        let prefix = format!("{family}{{queue=\"{QUEUE}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<(Option<u64>, Option<u64>)> = (1..=3u16)
            .map(|n| {
                (
                    sample(n, "levee_cluster_queue_leader"),
                    sample(n, "levee_cluster_queue_served_here"),
                )
            })
            .collect();
        let agreed = views.iter().enumerate().all(|(i, (leader, here))| {
            *leader == Some(serving) && *here == Some(u64::from(i as u64 + 1 == serving))
        });
        if agreed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics disagree with node {serving} serving: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = cluster.metrics(serving as u16);
    assert!(
        body.lines()
            .any(|l| l.starts_with("levee_cluster_replica_lag_entries{")),
        "the leader reports no replica lag:\n{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_kill_and_whole_cluster_restart_keep_the_queue() {
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", QUEUE]);
    let (leader, _) = cluster.serving().await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let n = 600;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = tokio::spawn(produce(cluster.clone(), ledger.clone(), 0, n / 2));
    while (ledger.lock().confirmed.len() as u64) < n / 6 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A follower lost: the other two are still a majority, confirms go on.
    cluster.script(&["kill", &follower.to_string()]);
    producer.await.expect("producer");
    cluster.script(&["restart", &follower.to_string()]);
    // Everything down (SIGKILL, no clean shutdown), then up again on the same data.
    for node in 1..=3 {
        cluster.script(&["kill", &node.to_string()]);
    }
    cluster.script(&["start"]);
    produce(cluster.clone(), ledger.clone(), n / 2, n).await;
    assert_eq!(ledger.lock().confirmed.len() as u64, n);
    tokio::time::timeout(
        Duration::from_secs(120),
        consume(cluster.clone(), ledger.clone(), n),
    )
    .await
    .expect("consumer finished in time");
    let (dups, _) = check(&ledger.lock(), n);
    eprintln!(
        "after the whole-cluster restart every confirmed message was delivered ({dups} duplicates)"
    );
    // A node that does not serve the queue redirects: `not-leader`, naming the serving node.
    let (serving, wire) = cluster.serving().await;
    let other = (1..=3).find(|n| *n != serving).unwrap();
    let follower = format!("127.0.0.1:{}", cluster.base + other as u16);
    // (A follower may learn who leads a moment after the leader serves: asked again then.)
    let mut last = None;
    for _ in 0..50 {
        let client = Client::connect(follower.as_str(), ClientOptions::default())
            .await
            .expect("connect to a follower");
        let err = client
            .inspect(QUEUE)
            .await
            .expect_err("a follower served the queue");
        let _ = client.close().await;
        if err.serving_node() == Some(wire.as_str()) {
            last = None;
            break;
        }
        last = Some(err);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "inspect on a follower: {last:?}");
    // The CLI follows the redirect on its own: a publish through the follower lands.
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["--addr", &follower, "publish", QUEUE, "via-follower"])
        .output()
        .expect("levee publish");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "publish through a follower: {stderr}");
    assert!(stderr.contains(&format!("served by {wire}")), "{stderr}");
    // A comma-separated --addr whose first node is down: the CLI moves on to the next one (and
    // from there to the serving node).
    let down = (1..=3).find(|n| *n != serving).unwrap();
    cluster.script(&["kill", &down.to_string()]);
    let mut list: Vec<String> = (1..=3)
        .map(|n| format!("127.0.0.1:{}", cluster.base + n))
        .collect();
    list.rotate_left(down as usize - 1);
    let list = list.join(",");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .arg("--addr")
            .arg(&list)
            .args(args)
            .output()
            .expect("levee")
    };
    let out = run(&["publish", QUEUE, "via-list"]);
    assert!(
        out.status.success(),
        "publish with --addr {list}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["consume", QUEUE, "--count", "2"]);
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "consume with --addr {list}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        got.contains("via-follower") && got.contains("via-list"),
        "consumed: {got}"
    );
}

/// AMQP arguments, every value a long string.
fn string_args(pairs: &[(&str, &str)]) -> lapin::types::FieldTable {
    let mut args = lapin::types::FieldTable::default();
    for (k, v) in pairs {
        args.insert(
            (*k).into(),
            lapin::types::AMQPValue::LongString((*v).into()),
        );
    }
    args
}

/// `replicas = 3` makes a replicated queue through every front end, on any node: the CLI's
/// `queue declare --replicas 3`, HTTP `PUT /api/queues/Q {"replicas": 3}` and AMQP's
/// `x-queue-type = quorum`. Each lands in the cluster's catalog and is served by its group's
/// leader; one survives a kill -9 of that leader with its confirmed messages. Refused: a count
/// other than 1 or the cluster's size, and a local queue taking a replicated queue's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_queues_are_declared_from_the_cli_http_and_amqp() {
    let cluster = Arc::new(Cluster::start());
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(cluster.cli(2, &["queue", "declare", "orders", "--replicas", "3"]));
    let put = cluster.http_put_queue(3, "audit", r#"{"replicas": 3}"#);
    assert!(put.starts_with("HTTP/1.1 20"), "{put}");
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", cluster.base + 31);
    let amqp = lapin::Connection::connect(&uri, lapin::ConnectionProperties::default())
        .await
        .expect("AMQP connect");
    let ch = amqp.create_channel().await.unwrap();
    ch.queue_declare(
        "tasks".into(),
        lapin::options::QueueDeclareOptions::durable(),
        string_args(&[("x-queue-type", "quorum")]),
    )
    .await
    .expect("a quorum queue declared over AMQP");
    for q in ["orders", "audit", "tasks"] {
        cluster.serving_queue(q).await;
    }
    let status: serde_json::Value =
        serde_json::from_str(&cluster.levee(&["status", "--json"])).unwrap();
    let names: Vec<&str> = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    for q in ["orders", "audit", "tasks"] {
        assert!(names.contains(&q), "{q} in the catalog: {status}");
    }
    let inspect = ok(cluster.cli(1, &["queue", "inspect", "orders"]));
    assert!(inspect.contains("replicas=3"), "{inspect}");

    // An AMQP client on a node that does not serve the queue gets a channel error saying so
    // (405, the serving node's address) for what needs the queue's node (a consume, a passive
    // declare): not "no queue" (404), not a connection error. Its publishes (and the node's
    // dead letters) are forwarded to the serving node and confirmed with its outcome.
    let (serving, _) = cluster.serving_queue("tasks").await;
    let other = (1..=3).find(|n| *n != serving).unwrap();
    let amqp = cluster.amqp(other).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ch = amqp.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let err = ch
            .queue_declare("tasks".into(), passive, Default::default())
            .await
            .expect_err("a passive declare on a node not serving the queue");
        let text = err.to_string();
        if text.contains("served by another node") {
            break;
        }
        // Until this node has heard who serves it (its catalog and status lookups).
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ch = amqp.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            "tasks".into(),
            "c".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect_err("a consume on a node not serving the queue");
    assert!(err.to_string().contains("RESOURCE_LOCKED"), "{err}");
    let ch = amqp.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            "tasks".into(),
            Default::default(),
            b"forwarded",
            Default::default(),
        )
        .await
        .expect("a publish through a node not serving the queue")
        .await
        .expect("its confirm");
    assert!(
        confirm.is_ack(),
        "a publish forwarded to the serving node: {confirm:?}"
    );
    // The connection itself is still good: a local queue whose dead letters go to the
    // replicated queue (through the default exchange), served by another node.
    let ch = amqp.create_channel().await.unwrap();
    let dlx = string_args(&[
        ("x-dead-letter-exchange", ""),
        ("x-dead-letter-routing-key", "tasks"),
    ]);
    ch.queue_declare("here".into(), Default::default(), dlx)
        .await
        .expect("a local queue on the same connection");
    ch.basic_publish(
        "".into(),
        "here".into(),
        Default::default(),
        b"dead-lettered",
        Default::default(),
    )
    .await
    .unwrap();
    let got = loop {
        if let Some(m) = ch
            .basic_get("here".into(), Default::default())
            .await
            .unwrap()
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    got.delivery
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    // Both are on the serving node.
    let at_leader = cluster.amqp(serving).await;
    let lch = at_leader.create_channel().await.unwrap();
    let mut bodies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while bodies.len() < 2 {
        match lch
            .basic_get("tasks".into(), Default::default())
            .await
            .unwrap()
        {
            Some(m) => {
                bodies.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
                m.delivery.ack(Default::default()).await.unwrap();
            }
            None => {
                assert!(Instant::now() < deadline, "on the serving node: {bodies:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    bodies.sort();
    assert_eq!(bodies, ["dead-lettered", "forwarded"]);
    // Declaring again with the same config is idempotent, from any node.
    ok(cluster.cli(3, &["queue", "declare", "orders", "--replicas", "3"]));

    // Refused, with the reason: more copies than members.
    let four = cluster.cli(1, &["queue", "declare", "pairs", "--replicas", "4"]);
    assert!(!four.status.success());
    let why = String::from_utf8_lossy(&four.stderr);
    assert!(
        why.contains("replicas must be 1") && why.contains("2 to 3"),
        "{why}"
    );
    let local = cluster.cli(1, &["queue", "declare", "orders", "--replicas", "1"]);
    assert!(
        !local.status.success(),
        "a local queue cannot take a replicated queue's name"
    );
    let why = String::from_utf8_lossy(&local.stderr);
    assert!(why.contains("replicas"), "{why}");

    // Replicated for real: confirmed messages survive a kill -9 of the leader.
    let (leader, addr) = cluster.serving_queue("orders").await;
    let c = Client::connect(addr.as_str(), ClientOptions::default())
        .await
        .unwrap();
    let p = c
        .producer("orders", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        let o = p
            .send(Message::new(format!("o{i}")).with_message_id(format!("o{i}")))
            .await
            .unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    }
    drop(p);
    drop(c);
    cluster.script(&["kill", &leader.to_string()]);
    let (now, addr) = cluster.serving_queue("orders").await;
    assert_ne!(now, leader);
    let c = Client::connect(addr.as_str(), ClientOptions::default())
        .await
        .unwrap();
    let mut consumer = c
        .consumer("orders", ConsumerOptions::default())
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < 10 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("delivery");
        seen.insert(String::from_utf8_lossy(d.payload()).into_owned());
        d.ack().unwrap();
    }
}

/// A replicated queue's purge, config change and deletion hold on every node: made through a
/// follower, they survive a kill -9 of the leader; a deletion removes the queue (and its files)
/// everywhere, also on a node that was down meanwhile, and the name can be declared again as a
/// new, empty queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicated_queues_are_purged_updated_and_deleted_on_every_node() {
    let cluster = Arc::new(Cluster::start());
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}{}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let publish = |addr: String, n: usize| async move {
        let c = Client::connect(addr.as_str(), ClientOptions::default())
            .await
            .unwrap();
        let p = c
            .producer("work", ProducerOptions::default())
            .await
            .unwrap();
        for i in 0..n {
            let o = p.send(Message::new(format!("w{i}"))).await.unwrap();
            assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
        }
    };
    let others =
        |leader: u64| -> Vec<u16> { (1..=3u16).filter(|n| u64::from(*n) != leader).collect() };
    let files = |node: u16| -> Vec<String> {
        let dir = cluster
            .dir
            .path()
            .join(format!("node{node}/cluster/queues"));
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };

    ok(cluster.cli(1, &["queue", "declare", "work", "--replicas", "3"]));
    let (leader, addr) = cluster.serving_queue("work").await;
    publish(addr, 20).await;
    let f = others(leader);
    // Purged and limited through the followers (the CLI follows each to the leader).
    let purged = ok(cluster.cli(f[0], &["queue", "purge", "work"]));
    assert!(purged.contains("purged 20"), "{purged}");
    ok(cluster.cli(f[1], &["queue", "update", "work", "--max-messages", "7"]));
    let inspect = ok(cluster.cli(f[0], &["queue", "inspect", "work"]));
    assert!(
        inspect.contains("max_messages=7"),
        "applied at once: {inspect}"
    );

    // Both hold on the next leader.
    cluster.script(&["kill", &leader.to_string()]);
    let (now, addr) = cluster.serving_queue("work").await;
    assert_ne!(now, leader);
    let inspect = ok(cluster.cli(now as u16, &["queue", "inspect", "work"]));
    assert!(
        inspect.contains("max_messages=7") && inspect.contains("ready=0 unacked=0"),
        "the purge and the update were replicated: {inspect}"
    );
    publish(addr, 3).await;
    cluster.script(&["restart", &leader.to_string()]);

    // Deleted through the follower that stayed up: gone on every node, files included.
    let third = (6 - now - leader) as u16;
    let deleted = ok(cluster.cli(third, &["queue", "delete", "work"]));
    assert!(deleted.contains("deleted work"), "{deleted}");
    for n in 1..=3u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = cluster.cli(n, &["queue", "inspect", "work"]);
            let why = String::from_utf8_lossy(&out.stderr).into_owned();
            let gone = !out.status.success() && why.contains("unknown queue");
            if gone && files(n).is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} still has work: {why} files {:?}\n{}",
                files(n),
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let status = cluster.levee(&["status", "--json"]);
    assert!(!status.contains("\"work\""), "not in the catalog: {status}");

    // Declared again: a new, empty queue (a new incarnation, its own group and files).
    ok(cluster.cli(2, &["queue", "declare", "work", "--replicas", "3"]));
    let (leader, addr) = cluster.serving_queue("work").await;
    let inspect = ok(cluster.cli(leader as u16, &["queue", "inspect", "work"]));
    assert!(
        inspect.contains("ready=0 unacked=0") && inspect.contains("max_messages=100000"),
        "a new queue, not the old one: {inspect}"
    );
    publish(addr, 2).await;
    // A node down during a deletion removes the queue when it comes back.
    let away = others(leader)[0];
    cluster.script(&["kill", &away.to_string()]);
    assert_eq!(
        files(away),
        vec!["work+2".to_string()],
        "the second incarnation's files"
    );
    ok(cluster.cli(leader as u16, &["queue", "delete", "work"]));
    cluster.script(&["restart", &away.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files(away).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node {away} kept {:?}\n{}",
            files(away),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cluster.cli(away, &["queue", "inspect", "work"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown queue"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A cluster with users and TLS: the nodes reach each other over TLS and log in as the
/// configured node user, so declaring, confirming and failing over work as without; a peer
/// without TLS, without a login, with a wrong password or as a user that may not manage the
/// broker is refused by every node's cluster listener (the CLI too).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_with_users_and_tls_admits_only_its_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::pki::Pki::new(dir.path(), "cluster");
    let password_file = dir.path().join("node.password");
    std::fs::write(&password_file, "node-secret\n").unwrap();
    let extra = format!(
        r#"
[tls]
cert = "{}"
key = "{}"
client_ca = "{}"
require_client_cert = false

[[users]]
name = "node"
password_hash = "{}"
permissions = [ {{ actions = ["admin"] }} ]

[[users]]
name = "app"
password_hash = "{}"
permissions = [ {{ queues = "secure*", actions = ["publish", "consume", "manage"] }} ]
"#,
        pki.cert.display(),
        pki.key.display(),
        pki.ca.display(),
        common::pki::hash("node-secret"),
        common::pki::hash("app-secret"),
    );
    let ca = pki.ca.display().to_string();
    let cluster = Cluster::start_with(
        dir,
        vec![
            ("LEVEE_CLUSTER_EXTRA".into(), extra),
            (
                "LEVEE_CLUSTER_SECTION".into(),
                format!(
                    "user = \"node\"\npassword_file = \"{}\"",
                    password_file.display()
                ),
            ),
            ("LEVEE_CLUSTER_CLI_ARGS".into(), format!("--tls-ca {ca}")),
            ("LEVEE_USER".into(), "node".into()),
            ("LEVEE_PASSWORD".into(), "node-secret".into()),
        ],
    );
    // The application's CLI: TLS and its own user, through node `n`.
    let app = |n: u16, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["--addr", &format!("127.0.0.1:{}", cluster.base + n)])
            .args(["--tls-ca", &ca, "--user", "app", "--password", "app-secret"])
            .args(args)
            .output()
            .expect("running levee");
        assert!(
            out.status.success(),
            "levee {args:?}: {}{}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    app(2, &["queue", "declare", "secure", "--replicas", "3"]);
    let published = app(3, &["publish", "secure", "over-tls"]);
    assert!(published.contains("stored=1"), "{published}");
    // Through the default exchange on every node: the two that do not serve the queue forward
    // the publish to the one that does, over the cluster's TLS with the node user.
    for n in 1..=3 {
        let args = [
            "publish",
            "--exchange",
            "",
            "--routing-key",
            "secure",
            "routed",
        ];
        let published = app(n, &args);
        assert!(published.contains("stored=1"), "node {n}: {published}");
    }
    let inspect = app(1, &["queue", "inspect", "secure"]);
    assert!(inspect.contains("ready=4 "), "{inspect}");

    // Who may talk to a cluster listener.
    let nodes = cluster.nodes();
    let tls = || {
        levee_client::TlsOptions::new(Some(&pki.ca), None)
            .unwrap()
            .client_config()
    };
    let ask = |link: levee_cluster::Link| {
        let addr = nodes[0].clone();
        async move {
            levee_cluster::admin::request_via(&link, &addr, AdminRequest::Status)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    use levee_cluster::Link;
    use levee_cluster::admin::AdminRequest;
    assert!(
        ask(Link::plain()).await.is_err(),
        "plain TCP to a TLS listener"
    );
    let e = ask(Link::plain().with_tls(tls())).await.unwrap_err();
    assert!(e.contains("log in first"), "no login: {e}");
    let e = ask(Link::plain()
        .with_tls(tls())
        .with_credentials("node", "guess"))
    .await
    .unwrap_err();
    assert!(e.contains("authentication failed"), "wrong password: {e}");
    let e = ask(Link::plain()
        .with_tls(tls())
        .with_credentials("app", "app-secret"))
    .await
    .unwrap_err();
    assert!(
        e.contains("may not join the cluster"),
        "not a node user: {e}"
    );
    ask(Link::plain()
        .with_tls(tls())
        .with_credentials("node", "node-secret"))
    .await
    .expect("the node user is admitted");
    let denied = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["--tls-ca", &ca, "--user", "app", "--password", "app-secret"])
        .args(["cluster", "--nodes", &nodes.join(","), "status", "--json"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&denied.stdout);
    assert!(
        !status.contains("\"secure\""),
        "the app user sees nothing of the cluster: {status}"
    );

    // Elections and replication run over those links: a failover keeps the message.
    let status: serde_json::Value = serde_json::from_str(&cluster.script(&["status"])).unwrap();
    let leader = status["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "secure")
        .and_then(|q| q["leader"].as_u64())
        .unwrap_or_else(|| panic!("secure has a leader: {status}"));
    cluster.script(&["kill", &leader.to_string()]);
    let link = Link::plain()
        .with_tls(tls())
        .with_credentials("node", "node-secret");
    let deadline = Instant::now() + Duration::from_secs(60);
    let now = loop {
        match levee_cluster::admin::serving_node_via(&link, &nodes, "secure").await {
            Some((id, _)) if id != leader => break id,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no new leader:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let consumed = app(now as u16, &["consume", "secure", "--count", "1"]);
    assert!(consumed.contains("over-tls"), "{consumed}");

    // A fourth node joins over the same links (TLS, the node user), with one node still down:
    // it becomes a replica of the queue, and a client through it reaches the leader.
    let joined = cluster.script(&["join", "4"]);
    assert!(
        joined.contains("members: 1,2,3,4") && !joined.contains("still changing"),
        "{joined}\n{}",
        cluster.logs()
    );
    let four = format!("127.0.0.1:{}", cluster.base + 24);
    match levee_cluster::admin::request_via(&link, &four, AdminRequest::Status).await {
        Ok(levee_cluster::admin::AdminReply::Status(st)) => assert!(
            st.queues
                .iter()
                .any(|q| q.name == "secure" && q.leader.is_some()),
            "node 4 runs the queue's group: {st:?}"
        ),
        other => panic!("node 4's status: {other:?}"),
    }
    let published = app(4, &["publish", "secure", "via-four"]);
    assert!(published.contains("stored=1"), "{published}");
}

/// `levee publish` and `levee consume` given every node (`--addr N1,N2,N3`) go on across a
/// SIGKILL of the queue's leader mid-stream: the publish sends again, with the same message ids,
/// what the kill left unconfirmed (stored once: every message is in the queue exactly once);
/// the consume reconnects and every message is delivered (an ack lost with the connection means
/// a redelivery).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_publish_and_consume_follow_a_leader_kill_mid_stream() {
    let cluster = Arc::new(Cluster::start());
    let all = cluster.wire_addrs().join(",");
    let levee = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["--addr", &all])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running levee")
    };
    let finish = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "{stdout}{stderr}\nlogs:\n{}",
            cluster.logs()
        );
        (stdout, stderr)
    };
    finish(levee(&["queue", "declare", "stream", "--replicas", "3"]));
    cluster.serving_queue("stream").await;
    let n = 1500;
    let publish = levee(&[
        "publish",
        "stream",
        "--count",
        &n.to_string(),
        "--rate",
        "500",
    ]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (leader, _) = cluster.serving_queue("stream").await;
    cluster.script(&["kill", &leader.to_string()]);
    let (stdout, stderr) = finish(publish);
    assert!(
        stdout.contains(&format!("stored={n} ")) && stdout.contains("unconfirmed=0"),
        "every message confirmed: {stdout}{stderr}"
    );
    cluster.serving_queue("stream").await;
    let inspect = finish(levee(&["queue", "inspect", "stream"])).0;
    assert!(
        inspect.contains(&format!("ready={n} ")),
        "each message stored once: {inspect}"
    );

    cluster.script(&["restart", &leader.to_string()]);
    cluster.levee(&["wait", "--queue", "stream"]);
    // (The idle stop is well above the failover time, 2-4 s.)
    let consume = levee(&["consume", "stream", "--idle", "10s", "--work", "1ms"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (serving, _) = cluster.serving_queue("stream").await;
    cluster.script(&["kill", &serving.to_string()]);
    let (stdout, stderr) = finish(consume);
    let distinct: BTreeSet<&str> = stdout.lines().collect();
    assert_eq!(
        distinct.len(),
        n,
        "every message delivered across the kill: {stderr}"
    );
    let inspect = finish(levee(&["queue", "inspect", "stream"])).0;
    assert!(
        inspect.contains("ready=0 unacked=0"),
        "all acked: {inspect}"
    );
}

/// Membership changes: `scripts/cluster.sh join 4` starts a fourth node with `join = true` and
/// adds it (`levee cluster add-node`): it becomes a replica of the queue declared before it
/// came. Then the queue's leader is removed (`remove-node`, then SIGKILL) and one more original
/// node is killed: the two left of {the last original, 4} are a majority of the new three
/// members only if node 4 really holds the queue, and every confirmed message is still there.
/// A queue declared after the changes lives on the new members.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_are_added_and_removed_and_the_queues_follow() {
    let cluster = Arc::new(Cluster::start());
    let base = cluster.base;
    let four: Vec<String> = (1..=4)
        .map(|n| format!("127.0.0.1:{}", base + 20 + n))
        .collect();
    let wire: String = (1..=4)
        .map(|n| format!("127.0.0.1:{}", base + n))
        .collect::<Vec<_>>()
        .join(",");
    let levee = |args: &[&str]| run_levee(&[&["--addr", &wire], args].concat());
    let nodes = four.join(",");
    let members = |args: &[&str]| run_levee(&[&["cluster", "--nodes", &nodes], args].concat());
    let status = || -> serde_json::Value {
        let (ok, text) = members(&["status", "--json"]);
        assert!(ok, "{text}");
        serde_json::from_str(&text).expect("status json")
    };
    cluster.levee(&["declare", "jobs"]);
    cluster.serving().await;
    let (ok, out) = levee(&["publish", "jobs", "--count", "200", "m"]);
    assert!(ok && out.contains("stored=200 "), "{out}");

    let joined = cluster.script(&["join", "4"]);
    assert!(joined.contains("members: 1,2,3,4"), "{joined}");
    assert!(
        !joined.contains("still changing"),
        "the queue took node 4 before the answer: {joined}"
    );
    let view = status();
    let ids: Vec<u64> = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "{view}");
    let q = &view["queues"][0];
    assert_eq!(q["name"], "jobs", "{view}");
    assert_eq!(
        q["replicas"]["4"]["lag"],
        0,
        "node 4 caught up: {view}\n{}",
        cluster.logs()
    );
    // `replicas` follows the size: a redeclare with the old count is refused, the new one
    // is the same queue.
    let (ok, out) = levee(&["queue", "declare", "jobs", "--replicas", "3"]);
    assert!(
        !ok && out.contains("replicas: existing 4, requested 3"),
        "{out}"
    );
    let (ok, out) = levee(&["queue", "declare", "jobs", "--replicas", "4"]);
    assert!(ok, "{out}");

    let (ok, out) = members(&["remove-node", "--id", "9"]);
    assert!(!ok && out.contains("not a member"), "{out}");
    let (leader, _) = cluster.serving().await;
    let (ok, out) = members(&["remove-node", "--id", &leader.to_string()]);
    assert!(ok && !out.contains("still changing"), "{out}");
    cluster.script(&["kill", &leader.to_string()]);
    let other = (1..=3).find(|n| *n != leader).unwrap();
    cluster.script(&["kill", &other.to_string()]);
    // Left: one original node and node 4, of three members.
    let left: Vec<String> = (1..=4u64)
        .filter(|n| *n != leader && *n != other)
        .map(|n| format!("127.0.0.1:{}", base + 20 + n as u16))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while levee_cluster::admin::serving_node(&left, "jobs")
        .await
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "jobs is served by the two members left:
{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = levee(&["queue", "inspect", "jobs"]);
    assert!(ok && out.contains("ready=200 "), "{out}");
    let (ok, out) = levee(&["publish", "jobs", "--count", "50", "n"]);
    assert!(ok && out.contains("stored=50 "), "{out}");
    let (ok, out) = levee(&["consume", "jobs", "--count", "250"]);
    assert!(ok && out.contains("acked=250"), "{out}");

    // A new queue: three copies, on the members left (the dead two are not needed).
    let (ok, out) = levee(&["queue", "declare", "later", "--replicas", "3"]);
    assert!(ok, "{out}");
    let (ok, out) = levee(&["publish", "later", "--count", "10", "x"]);
    assert!(ok && out.contains("stored=10 "), "{out}");
}

/// Acks with no publish after them (a consume-only stretch) are replicated within a moment:
/// a replicated queue's writes reach the other nodes only at its fsyncs, and the queue fsyncs
/// written settlements by itself within `SETTLE_SYNC_MS` (100 ms), so a kill -9 of the leader a
/// second later brings back only the unacked messages, not every one acked since the last
/// publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_without_a_later_publish_survive_a_leader_kill() {
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", "acks"]);
    let (leader, addr) = cluster.serving_queue("acks").await;
    let c = Client::connect(addr.as_str(), ClientOptions::default())
        .await
        .unwrap();
    let p = c
        .producer("acks", ProducerOptions::default())
        .await
        .unwrap();
    for i in 0..100 {
        let o = p.send(Message::new(format!("a{i}"))).await.unwrap();
        assert!(matches!(o, PublishOutcome::Stored { .. }), "{o:?}");
    }
    let mut consumer = c
        .consumer("acks", ConsumerOptions::default())
        .await
        .unwrap();
    for _ in 0..60 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("delivery");
        d.ack().unwrap();
    }
    // Nothing else happens: no publish's commit carries the settlements.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(consumer);
    drop(p);
    drop(c);
    cluster.script(&["kill", &leader.to_string()]);
    let (now, _) = cluster.serving_queue("acks").await;
    assert_ne!(now, leader);
    let out = cluster.cli(now as u16, &["queue", "inspect", "acks"]);
    let inspect = String::from_utf8_lossy(&out.stdout);
    assert!(
        inspect.contains("ready=40 unacked=0"),
        "the 60 acks were replicated: {inspect}"
    );
}

/// An AMQP publisher on a node that does not serve the queue: its publishes are forwarded to
/// the serving node and acked once stored there. The serving node is killed with -9 mid-stream:
/// a publish in flight then is nacked (its outcome unknown) and sent again, the forwards follow
/// the queue to its new leader, and every acked message is delivered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn amqp_publishes_on_any_node_follow_the_queue_across_a_leader_kill() {
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", "fwd"]);
    let (leader, _) = cluster.serving_queue("fwd").await;
    let publisher = (1..=3).find(|n| *n != leader).unwrap();
    let conn = cluster.amqp(publisher).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    // Until this node has heard who serves the queue, a publish is nacked (not stored).
    let mut acked = BTreeSet::new();
    let mut nacked = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..200u64 {
        if i == 100 {
            cluster.script(&["kill", &leader.to_string()]);
        }
        loop {
            let body = format!("f{i}");
            let props = lapin::BasicProperties::default().with_message_id(format!("id-{i}").into());
            let confirm = ch
                .basic_publish(
                    "".into(),
                    "fwd".into(),
                    Default::default(),
                    body.as_bytes(),
                    props,
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
            if confirm.is_ack() {
                acked.insert(i);
                break;
            }
            nacked += 1;
            assert!(Instant::now() < deadline, "message {i} never acked");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("nacked and sent again: {nacked}");
    let (now, _) = cluster.serving_queue("fwd").await;
    assert_ne!(now, leader);
    let at = cluster.amqp(now).await;
    let cch = at.create_channel().await.unwrap();
    let mut delivered = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !acked.is_subset(&delivered) {
        match cch
            .basic_get("fwd".into(), Default::default())
            .await
            .unwrap()
        {
            Some(m) => {
                let text = String::from_utf8_lossy(&m.delivery.data).into_owned();
                let id: u64 = text.strip_prefix('f').and_then(|s| s.parse().ok()).unwrap();
                delivered.insert(id);
                m.delivery.ack(Default::default()).await.unwrap();
            }
            None => {
                assert!(
                    Instant::now() < deadline,
                    "{} of {} acked messages delivered",
                    delivered.len(),
                    acked.len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(delivered.iter().all(|id| *id < 200));
}

/// `levee bench --replicas 3` runs against a cluster: it declares its queue replicated through
/// the first node it reaches and its clients follow the queue to its leader (the R3 rows of
/// docs/BENCHMARKS.md are made this way).
#[test]
fn bench_runs_against_a_replicated_queue() {
    let cluster = Cluster::start();
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["bench", "--server", &cluster.wire_addrs().join(",")])
        .args([
            "--replicas",
            "3",
            "--duration",
            "3",
            "--warmup",
            "2s",
            "--json",
        ])
        .args(["--queue", "r3bench"])
        .output()
        .expect("running levee bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["variant"], "R3 fsync=always", "{v}");
    let u = |k: &str| v[k].as_u64().unwrap_or(0);
    assert!(u("confirmed") > 0 && u("consumed") > 0, "{v}");
    // The queue is in the cluster's catalog (and stays: deleting is not replicated yet).
    let status = cluster.levee(&["status", "--json"]);
    assert!(status.contains("\"r3bench\""), "{status}");
}

/// The client library follows its queue on its own (`Client::connect_any` with reconnection):
/// made through a node that does not serve the queue, the producer and the consumer move to the
/// one that does; when that node is killed, the *same* producer and consumer go on with the new
/// leader. The application only publishes again, with the same message ids, what failed while
/// the connection moved; the queue's deduplication window drops copies that were stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_follows_its_queue_across_a_leader_kill() {
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", QUEUE]);
    let (leader, _) = cluster.serving().await;
    // Followers first: the first connection lands on a node that does not serve the queue.
    let mut nodes = cluster.wire_addrs();
    let at = (leader - 1) as usize;
    let leader_addr = nodes.remove(at);
    nodes.push(leader_addr.clone());
    let opts = ClientOptions {
        reconnect: Some(levee_client::Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        }),
        ..ClientOptions::default()
    };
    let pc = Client::connect_any(&nodes, opts.clone())
        .await
        .expect("connect");
    let producer = pc
        .producer(QUEUE, ProducerOptions::default())
        .await
        .expect("producer follows");
    let cc = Client::connect_any(&nodes, opts).await.expect("connect");
    let mut consumer = cc
        .consumer(QUEUE, ConsumerOptions::default())
        .await
        .expect("consumer follows");
    // (Both were made through a follower: without following, `producer` and `consumer` fail
    // with not-leader. Which node they end on is not asserted: under load the deposed leader
    // may still serve for a moment, and its QueueClosed moves them on later.)
    let n = 400u64;
    let publish = |ids: std::ops::Range<u64>| {
        let producer = producer.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            for id in ids {
                // Publish until confirmed: a publish that failed while the connection moved
                // goes again with the same message id.
                loop {
                    assert!(Instant::now() < deadline, "message {id} never confirmed");
                    let m = Message::new(format!("m{id}")).with_message_id(format!("id-{id}"));
                    match producer.send(m).await {
                        Ok(PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. }) => {
                            break;
                        }
                        Ok(other) => panic!("publish {id}: {other:?}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }
    };
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let s = seen.clone();
    let consuming = tokio::spawn(async move {
        while (s.lock().len() as u64) < n {
            match tokio::time::timeout(Duration::from_secs(90), consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let text = String::from_utf8_lossy(d.payload()).into_owned();
                    let id: u64 = text[1..].parse().expect("a published id");
                    s.lock().insert(id);
                    // An ack that fails (the connection moved) is redelivered, marked.
                    let _ = d.ack();
                }
                Ok(Some(Err(e))) => panic!("the consumer ended: {e}"),
                Ok(None) => panic!("the consumer stream ended"),
                Err(_) => panic!("no delivery for 90 s"),
            }
        }
    });
    publish(0..n / 2).await;
    // The node serving the queue now (under load it may have changed since the start).
    let (leader, _) = cluster.serving().await;
    let before_kill = pc.stats().reconnects;
    cluster.script(&["kill", &leader.to_string()]);
    publish(n / 2..n).await;
    tokio::time::timeout(Duration::from_secs(90), consuming)
        .await
        .expect("every message delivered to the same consumer")
        .expect("consumer task");
    assert_eq!(seen.lock().len() as u64, n);
    assert!(
        pc.stats().reconnects > before_kill,
        "the producer reconnected after the kill"
    );
    let (now, _) = cluster.serving().await;
    assert_ne!(now, leader, "the killed node cannot serve");
}

/// A Jepsen-style run: producers with confirms and a consumer acking, while random faults hit the
/// cluster (SIGKILL of a random node or of the leader, restarts; at most one node down at a time,
/// so a majority is always there to make progress). Checked at the end: every confirmed message
/// was delivered, nothing was delivered that was not published; duplicates are counted.
///
/// CI runs a short one; `LEVEE_CHECKER_FAULTS=100 LEVEE_CHECKER_MESSAGES=20000` a long one
/// (docs/guarantees.md), `LEVEE_CHECKER_SEED` replays a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checker_random_kills_and_restarts() {
    use rand::{Rng, SeedableRng};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let faults = env("LEVEE_CHECKER_FAULTS", 6);
    let n = env("LEVEE_CHECKER_MESSAGES", 2000);
    let seed = env("LEVEE_CHECKER_SEED", u64::from(std::process::id()));
    eprintln!("checker: {faults} faults, {n} messages, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cluster = Arc::new(Cluster::start());
    cluster.levee(&["declare", QUEUE]);
    cluster.serving().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = tokio::spawn(produce(cluster.clone(), ledger.clone(), 0, n));
    let consumer = tokio::spawn(consume(cluster.clone(), ledger.clone(), n));
    let mut down: Option<u64> = None;
    let mut events = Vec::new();
    for _ in 0..faults {
        // Let some traffic through between faults.
        let target = ledger.lock().confirmed.len() as u64 + n / (faults * 2 + 2);
        let wait_until = Instant::now() + Duration::from_secs(5);
        while (ledger.lock().confirmed.len() as u64) < target.min(n) && Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match down {
            Some(node) => {
                cluster.script(&["restart", &node.to_string()]);
                events.push(format!("restart {node}"));
                down = None;
            }
            None => {
                let node = if rng.random_bool(0.5) {
                    cluster.serving().await.0
                } else {
                    rng.random_range(1..=3)
                };
                cluster.script(&["kill", &node.to_string()]);
                events.push(format!("kill -9 {node}"));
                down = Some(node);
            }
        }
    }
    if let Some(node) = down {
        cluster.script(&["restart", &node.to_string()]);
        events.push(format!("restart {node}"));
    }
    tokio::time::timeout(Duration::from_secs(300), producer)
        .await
        .expect("producer finished in time")
        .expect("producer task");
    tokio::time::timeout(Duration::from_secs(300), consumer)
        .await
        .expect("consumer finished in time")
        .expect("consumer task");
    let (dups, marked) = check(&ledger.lock(), n);
    eprintln!(
        "checker: seed {seed}, events {events:?}: {} confirmed, all delivered, none unpublished; \
         {dups} duplicate deliveries ({marked} marked redelivered)",
        ledger.lock().confirmed.len()
    );
}

/// The cluster listener's bound: at most 4096 connections at once (peers keep one per group
/// and peer). A single-node cluster gets 4096 idle connections; one more is closed at once
/// (an admin request over it fails), and after ten of the held ones close a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_listener_holds_at_most_4096_connections() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    // Ports of a free slot (below the ephemeral range: not taken meanwhile by a connection).
    let base = free_base();
    let (wire, cluster) = (base + 1, base + 2);
    let config = format!(
        "listen = \"127.0.0.1:{wire}\"\nhttp = \"127.0.0.1:0\"\namqp = \"off\"\n\
         data_dir = \"{}\"\n\n[cluster]\nnode_id = 1\nlisten = \"127.0.0.1:{cluster}\"\n\n\
         [[cluster.nodes]]\nid = 1\ncluster = \"127.0.0.1:{cluster}\"\nwire = \"127.0.0.1:{wire}\"\n",
        dir.path().join("data").display()
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("levee: cluster node") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let addr = format!("127.0.0.1:{cluster}");
    let status =
        || levee_cluster::admin::request(&addr, levee_cluster::admin::AdminRequest::Status);
    assert!(status().await.is_ok(), "the listener answers");
    let mut held = Vec::new();
    for _ in 0..4096 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Every slot is taken once the node has accepted them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status().await.is_ok() {
        assert!(Instant::now() < deadline, "a 4097th connection is served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.truncate(4086);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "a slot freed by a closed connection is reused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

/// `replicas` below the member count: in a 5-node cluster (`join 4`, `join 5`) a queue with
/// `--replicas 3` lives on exactly three nodes; the others send clients to it. When its leader
/// is removed (`remove-node`, then SIGKILL) the queue moves to another member (three copies
/// again, the removed node's copy gone), and with one more of its first nodes killed the two
/// left (the third first node and the new copy) serve every confirmed message; a node that
/// keeps no copy finds the new leader for its clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_with_fewer_copies_than_members_lives_on_that_many_nodes() {
    let cluster = Arc::new(Cluster::start());
    let base = cluster.base;
    assert!(cluster.script(&["join", "4"]).contains("members: 1,2,3,4"));
    assert!(
        cluster
            .script(&["join", "5"])
            .contains("members: 1,2,3,4,5")
    );
    let all_nodes: Vec<String> = (1..=5)
        .map(|n| format!("127.0.0.1:{}", base + 20 + n))
        .collect();
    let wire = |n: u64| format!("127.0.0.1:{}", base + n as u16);
    let levee = |addr: &str, args: &[&str]| run_levee(&[&["--addr", addr], args].concat());
    // The nodes that run the queue's group, and its leader with the voters it knows.
    let placed = || async {
        let mut on = BTreeSet::new();
        let mut leader = None;
        for addr in &all_nodes {
            if let Ok(levee_cluster::admin::AdminReply::Status(st)) =
                levee_cluster::admin::request(addr, levee_cluster::admin::AdminRequest::Status)
                    .await
                && let Some(q) = st.queues.iter().find(|q| q.name == "three")
            {
                on.insert(st.node);
                if q.served_here {
                    leader = Some((st.node, q.voters.iter().copied().collect::<BTreeSet<u64>>()));
                }
            }
        }
        (on, leader)
    };
    let all_wire: Vec<String> = (1..=5).map(wire).collect();
    let (ok, out) = levee(
        &all_wire.join(","),
        &["queue", "declare", "three", "--replicas", "3"],
    );
    assert!(ok, "{out}");
    let (on, leader) = placed().await;
    assert_eq!(on.len(), 3, "three copies: {on:?}");
    let (leader, voters) = leader.expect("served");
    assert_eq!(voters, on, "its group's voters are its nodes");
    let away = (1..=5u64).find(|n| !on.contains(n)).unwrap();
    let (ok, out) = levee(&wire(away), &["publish", "three", "--count", "100", "m"]);
    assert!(
        ok && out.contains("stored=100 "),
        "through a node without a copy: {out}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["cluster", "--nodes", &all_nodes.join(",")])
        .args(["remove-node", "--id", &leader.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !said.contains("still changing"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.script(&["kill", &leader.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let moved = loop {
        let (now, serving) = placed().await;
        if now.len() == 3 && !now.contains(&leader) && serving.is_some_and(|(_, v)| v == now) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "three moved off node {leader}: {now:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let added = *moved.difference(&on).next().expect("a new copy");
    let killed = *on.iter().find(|n| **n != leader).unwrap();
    cluster.script(&["kill", &killed.to_string()]);
    // Left: one first node and the new copy, two of the queue's three.
    let outside = (1..=5u64)
        .find(|n| !moved.contains(n) && *n != leader)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = levee(&wire(outside), &["queue", "inspect", "three"]);
        if ok && out.contains("ready=100 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {outside} (no copy) sends clients to the queue, served by the copies left \
             (new: {added}): {out}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ok, out) = levee(&wire(outside), &["consume", "three", "--count", "100"]);
    assert!(ok && out.contains("acked=100"), "{out}");
    let alive: Vec<String> = (1..=5u64)
        .filter(|n| *n != leader && *n != killed)
        .map(wire)
        .collect();
    let (ok, out) = levee(
        &alive.join(","),
        &["queue", "declare", "three", "--replicas", "4"],
    );
    assert!(!ok && out.contains("replicas"), "{out}");
    let (ok, out) = levee(
        &alive.join(","),
        &["queue", "declare", "three", "--replicas", "3"],
    );
    assert!(ok, "the same queue: {out}");
}
