//! Network partitions between real `levee serve` nodes: every node reaches each peer through
//! a link-cutting TCP proxy of its own (one per direction), so a test can isolate a node
//! completely. A leader cut off in a minority stops confirming and serving; the majority elects
//! another leader which serves the queue with every confirmed message; after the heal the old
//! leader rejoins as a follower.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use levee_client::{Client, ClientOptions, ConsumerOptions, Message, ProducerOptions};
use levee_cluster::admin::{AdminReply, AdminRequest, encode_config, request, serving_node};
use levee_proto::PublishOutcome;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const QUEUE: &str = "orders";

/// A TCP proxy whose link can be cut (existing connections dropped, new ones refused) and healed.
struct Link {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Link {
    async fn start(upstream: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Link { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        let _ = self.cut.send(cut);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Nodes {
    children: Vec<Child>,
    /// Direct cluster listeners (the test's admin requests are never cut).
    cluster: Vec<String>,

    /// links[from][to], 0-based.
    links: Vec<Vec<Option<Link>>>,
    _dir: tempfile::TempDir,
}

impl Nodes {
    async fn start() -> Nodes {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster: Vec<SocketAddr> = (0..3)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let wire: Vec<SocketAddr> = (0..3)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        let mut links = Vec::new();
        for from in 0..3 {
            let mut row = Vec::new();
            for (to, c) in cluster.iter().enumerate() {
                row.push(if from == to {
                    None
                } else {
                    Some(Link::start(*c).await)
                });
            }
            links.push(row);
        }
        let mut children = Vec::new();
        for n in 0..3 {
            let mut config = format!(
                "listen = \"{}\"\nhttp = \"127.0.0.1:0\"\namqp = \"off\"\ndata_dir = \"{}\"\n\n\
                 [cluster]\nnode_id = {}\nlisten = \"{}\"\n",
                wire[n],
                dir.path().join(format!("node{}", n + 1)).display(),
                n + 1,
                cluster[n]
            );
            for m in 0..3 {
                let reach = match &links[n][m] {
                    Some(l) => l.addr,
                    None => cluster[m],
                };
                config.push_str(&format!(
                    "\n[[cluster.nodes]]\nid = {}\ncluster = \"{reach}\"\nwire = \"{}\"\n",
                    m + 1,
                    wire[m]
                ));
            }
            let path = dir.path().join(format!("node{}.toml", n + 1));
            std::fs::write(&path, config).expect("config");
            let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
                .arg("serve")
                .arg("--config")
                .arg(&path)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn levee");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            for line in lines.by_ref() {
                if line.expect("stdout").starts_with("levee: cluster node") {
                    break;
                }
            }
            std::thread::spawn(move || for _ in lines {});
            children.push(child);
        }
        Nodes {
            children,
            cluster: cluster.iter().map(ToString::to_string).collect(),

            links,
            _dir: dir,
        }
    }

    /// Cuts (or heals) every link to and from node `n` (1-based).
    fn isolate(&self, n: u64, cut: bool) {
        let i = (n - 1) as usize;
        for (from, row) in self.links.iter().enumerate() {
            for (to, link) in row.iter().enumerate() {
                if let Some(l) = link
                    && (from == i || to == i)
                {
                    l.set_cut(cut);
                }
            }
        }
    }

    /// Waits until a node other than `not` serves the queue.
    async fn serving_other_than(&self, not: Option<u64>) -> (u64, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((id, wire)) = serving_node(&self.cluster, QUEUE).await
                && Some(id) != not
            {
                return (id, wire);
            }
            assert!(Instant::now() < deadline, "no other node serves {QUEUE}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn publish(addr: &str, ids: std::ops::Range<u64>) -> BTreeSet<u64> {
    let client = Client::connect(addr, ClientOptions::default())
        .await
        .expect("connect");
    let producer = client
        .producer(QUEUE, ProducerOptions::default())
        .await
        .expect("producer");
    let mut confirmed = BTreeSet::new();
    for id in ids {
        let m = Message::new(format!("m{id}")).with_message_id(format!("id-{id}"));
        match producer.send(m).await {
            Ok(PublishOutcome::Stored { .. }) => {
                confirmed.insert(id);
            }
            other => panic!("publish {id} on {addr}: {other:?}"),
        }
    }
    let _ = client.close().await;
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_stops_confirming_and_the_majority_keeps_every_confirmed_message() {
    let nodes = Arc::new(Nodes::start().await);
    let declared = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match request(
                &nodes.cluster[0],
                AdminRequest::Declare {
                    name: QUEUE.into(),
                    config: encode_config(QUEUE, &levee_proto::QueueConfig::default())
                        .expect("config"),
                },
            )
            .await
            {
                Ok(AdminReply::Declared(_)) => break true,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => break false,
            }
        }
    };
    assert!(declared, "declaring the replicated queue");
    let (old, old_wire) = nodes.serving_other_than(None).await;
    let mut confirmed = publish(&old_wire, 0..100).await;

    // Cut the leader off. A publish to it is never confirmed stored.
    nodes.isolate(old, true);
    let client = Client::connect(old_wire.as_str(), ClientOptions::default())
        .await
        .expect("connect to the isolated leader");
    let outcome = match client.producer(QUEUE, ProducerOptions::default()).await {
        Ok(p) => {
            let m = Message::new("m1000000").with_message_id("id-isolated");
            match p.publish(m).await {
                Ok(c) => tokio::time::timeout(Duration::from_secs(15), c).await.ok(),
                Err(e) => Some(Err(e)),
            }
        }
        Err(e) => Some(Err(e)),
    };
    assert!(
        !matches!(outcome, Some(Ok(PublishOutcome::Stored { .. }))),
        "an isolated leader confirmed a publish: {outcome:?}"
    );
    drop(client);

    // The majority elects a new leader, which serves every confirmed message and confirms more.
    let (new, new_wire) = nodes.serving_other_than(Some(old)).await;
    assert_ne!(new, old);
    confirmed.extend(publish(&new_wire, 100..200).await);

    // Heal: the old leader rejoins as a follower and does not serve the queue.
    nodes.isolate(old, false);
    let (serving, wire) = nodes.serving_other_than(Some(old)).await;
    let client = Client::connect(wire.as_str(), ClientOptions::default())
        .await
        .expect("connect");
    let mut consumer = client
        .consumer(QUEUE, ConsumerOptions::default())
        .await
        .expect("consumer");
    let mut delivered = BTreeSet::new();
    while !confirmed.is_subset(&delivered) {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "node {serving}: {} of {} confirmed delivered",
                    delivered.len(),
                    confirmed.len()
                )
            })
            .expect("stream open")
            .expect("delivery");
        let text = String::from_utf8_lossy(d.payload()).into_owned();
        let id: u64 = text
            .strip_prefix('m')
            .and_then(|s| s.parse().ok())
            .expect("a published message");
        delivered.insert(id);
        d.ack().expect("ack");
    }
    assert!(delivered.iter().all(|id| *id < 200 || *id == 1_000_000));
}
