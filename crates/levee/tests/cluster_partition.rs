//! Network partitions between real `levee serve` nodes: every node reaches each peer through
//! a link-cutting TCP proxy of its own (one per direction), so a test can isolate a node
//! completely. A leader cut off in a minority stops confirming and serving; the majority elects
//! another leader which serves the queue with every confirmed message; after the heal the old
//! leader rejoins as a follower. The proxies also delay what they carry (slow links): a cluster
//! whose links are slow, one of them much slower, still confirms on a majority and fails over.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use levee_client::{Client, ClientError, ClientOptions, ConsumerOptions, Message, ProducerOptions};
use levee_cluster::admin::{AdminReply, AdminRequest, encode_config, request, serving_node};
use levee_proto::{ErrorCode, PublishOutcome};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const QUEUE: &str = "orders";

/// These tests run one at a time: their links' delays sit close to Raft's deadlines (a 120 ms
/// round trip against a 150 ms heartbeat), and three 3-node clusters at once on a 2-core
/// machine add enough scheduling delay to push them past (seen in CI).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A TCP proxy whose link can be cut (existing connections dropped, new ones refused) and healed,
/// and slowed: every byte is delivered `delay` after it was read (a delay line: latency, not a
/// bandwidth cap; bytes stay in order).
struct Link {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    delay: watch::Sender<Duration>,
}

/// Copies `from` to `to`, each chunk held until `delay` (read when the chunk arrives) after it
/// was read.
async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: watch::Receiver<Duration>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + *delay.borrow();
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Link {
    async fn start(upstream: SocketAddr) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let (delay, delay_rx) = watch::channel(Duration::ZERO);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut rx = cut_rx.clone();
                let delay = delay_rx.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    tokio::select! {
                        _ = async {
                            tokio::join!(
                                delay_line(in_r, out_w, delay.clone()),
                                delay_line(out_r, in_w, delay),
                            )
                        } => {}
                        _ = rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Link { addr, cut, delay }
    }

    fn set_cut(&self, cut: bool) {
        let _ = self.cut.send(cut);
    }

    fn set_delay(&self, delay: Duration) {
        let _ = self.delay.send(delay);
    }
}

/// A port free now, below Linux's ephemeral range (32768-60999), and never handed out twice in
/// this process: a port taken from the ephemeral range and released could be given meanwhile
/// to a proxy's listener, a node's HTTP listener or some connection's local port, and the node
/// it was meant for would fail to bind it (seen in CI: "Address already in use").
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(13);
    loop {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(i < 10_000, "no free port");
        let port = 10_000 + seed.wrapping_add(i) % 10_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
        Nodes::start_with("").await
    }

    /// Three nodes, `cluster_keys` added to each one's `[cluster]` section.
    async fn start_with(cluster_keys: &str) -> Nodes {
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
                 [cluster]\nnode_id = {}\nlisten = \"{}\"\n{cluster_keys}\n",
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
            let ready = lines
                .by_ref()
                .any(|line| line.expect("stdout").starts_with("levee: cluster node"));
            assert!(ready, "node {} exited before it was ready", n + 1);
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
        self.links_of(Some(n)).for_each(|l| l.set_cut(cut));
    }

    /// Delays every link to and from node `n` (1-based) by `delay` each way; `None`: every link.
    fn slow(&self, n: Option<u64>, delay: Duration) {
        self.links_of(n).for_each(|l| l.set_delay(delay));
    }

    /// The links to and from node `n` (1-based); `None`: every link.
    fn links_of(&self, n: Option<u64>) -> impl Iterator<Item = &Link> {
        self.links.iter().enumerate().flat_map(move |(from, row)| {
            row.iter().enumerate().filter_map(move |(to, link)| {
                link.as_ref().filter(|_| {
                    n.is_none_or(|n| from == (n - 1) as usize || to == (n - 1) as usize)
                })
            })
        })
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

/// Publishes `ids` to the node serving the queue (one other than `not`) and returns the ids
/// confirmed stored; panics on any outcome but a confirm or a sign that the node no longer serves
/// the queue. One at a time, or `pipelined`: every publish in flight at once, then the confirms
/// (over a slow link, one round trip for all rather than one each).
///
/// Leadership can move while a publish is in flight (on slow links an election can start during
/// the first publishes, seen in CI): a publish answered `NotLeader`, or whose connection dropped,
/// may or may not be stored, so it is sent again, with the same message id, to the node that
/// serves the queue now. Such a message can be delivered twice; never lost.
async fn publish(
    nodes: &Nodes,
    not: Option<u64>,
    ids: std::ops::Range<u64>,
    pipelined: bool,
) -> BTreeSet<u64> {
    let mut confirmed = BTreeSet::new();
    let mut left: Vec<u64> = ids.collect();
    for attempt in 0.. {
        assert!(
            attempt < 10,
            "publishes {left:?} kept reaching nodes that no longer serve {QUEUE}"
        );
        let (_, wire) = nodes.serving_other_than(not).await;
        left = publish_on(&wire, &left, pipelined, &mut confirmed).await;
        if left.is_empty() {
            break;
        }
    }
    confirmed
}

/// Whether a publish's failure says the node no longer serves the queue (so: resend elsewhere).
fn moved(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: ErrorCode::NotLeader,
            ..
        } | ClientError::ConnectionLost
    )
}

/// One pass of [`publish`] on `wire`: adds what is confirmed to `confirmed`, returns the ids to
/// send again elsewhere.
async fn publish_on(
    wire: &str,
    ids: &[u64],
    pipelined: bool,
    confirmed: &mut BTreeSet<u64>,
) -> Vec<u64> {
    let client = Client::connect(wire, ClientOptions::default())
        .await
        .expect("connect");
    let producer = match client.producer(QUEUE, ProducerOptions::default()).await {
        Ok(p) => p,
        Err(e) if moved(&e) => return ids.to_vec(),
        Err(e) => panic!("producer on {wire}: {e:?}"),
    };
    let mut pending = Vec::new();
    let mut again = Vec::new();
    let mut check = |id: u64, outcome| match outcome {
        Ok(Ok(PublishOutcome::Stored { .. })) => {
            confirmed.insert(id);
        }
        Ok(Err(e)) if moved(&e) => again.push(id),
        other => panic!("publish {id} on {wire}: {other:?}"),
    };
    for &id in ids {
        let m = Message::new(format!("m{id}")).with_message_id(format!("id-{id}"));
        let c = match producer.publish(m).await {
            Ok(c) => c,
            Err(e) => {
                check(id, Ok(Err(e)));
                continue;
            }
        };
        if pipelined {
            pending.push((id, c));
        } else {
            check(id, tokio::time::timeout(Duration::from_secs(60), c).await);
        }
    }
    for (id, c) in pending {
        check(id, tokio::time::timeout(Duration::from_secs(60), c).await);
    }
    let _ = client.close().await;
    again
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_stops_confirming_and_the_majority_keeps_every_confirmed_message() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let nodes = Arc::new(Nodes::start().await);
    declare(&nodes).await;
    let mut confirmed = publish(&nodes, None, 0..100, false).await;
    let (old, old_wire) = nodes.serving_other_than(None).await;

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
    confirmed.extend(publish(&nodes, Some(old), 100..200, false).await);

    // Heal: the old leader rejoins as a follower and does not serve the queue.
    nodes.isolate(old, false);
    let (_, wire) = nodes.serving_other_than(Some(old)).await;
    let delivered = consume_all(&wire, &confirmed).await;
    assert!(delivered.iter().all(|id| *id < 200 || *id == 1_000_000));
}

async fn declare(nodes: &Nodes) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match request(
            &nodes.cluster[0],
            AdminRequest::Declare {
                name: QUEUE.into(),
                config: encode_config(QUEUE, &levee_proto::QueueConfig::default()).expect("config"),
            },
        )
        .await
        {
            Ok(AdminReply::Declared(_)) => return,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "declaring the replicated queue: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Consumes from `wire` until every id of `confirmed` was delivered; returns what was delivered.
async fn consume_all(wire: &str, confirmed: &BTreeSet<u64>) -> BTreeSet<u64> {
    let client = Client::connect(wire, ClientOptions::default())
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
                    "{wire}: {} of {} confirmed delivered",
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
    delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_links_delay_confirms_but_a_majority_still_confirms_and_fails_over() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // Default timing (heartbeats every 150 ms). The heartbeat is also openraft's deadline for
    // a follower's answer, so every round trip a majority needs stays below it here (120 ms at
    // most): past it, a follower's answers never arrive in time (docs/cluster.md, "Timing").
    let nodes = Arc::new(Nodes::start().await);
    // Every link 30 ms each way (a 60 ms round trip, a cross-region link), from the start:
    // elections and the declaration happen over it.
    nodes.slow(None, Duration::from_millis(30));
    declare(&nodes).await;
    let mut confirmed = publish(&nodes, None, 0..200, true).await;
    assert_eq!(confirmed.len(), 200);
    let (leader, _) = nodes.serving_other_than(None).await;

    // One follower slower (60 ms each way, a 120 ms round trip): the leader and the other
    // follower are a majority, so confirms go on.
    let slow = (1..=3).find(|n| *n != leader).expect("a follower");
    nodes.slow(Some(slow), Duration::from_millis(60));
    let started = Instant::now();
    confirmed.extend(publish(&nodes, None, 200..400, true).await);
    println!(
        "200 pipelined confirms with one follower at a 120 ms round trip: {:?}",
        started.elapsed()
    );
    assert_eq!(confirmed.len(), 400);

    // Cut the leader off: the two slow-linked nodes elect one of them, which serves every
    // confirmed message.
    let (leader, _) = nodes.serving_other_than(None).await;
    nodes.isolate(leader, true);
    confirmed.extend(publish(&nodes, Some(leader), 400..450, true).await);
    let (_, new_wire) = nodes.serving_other_than(Some(leader)).await;
    let delivered = consume_all(&new_wire, &confirmed).await;
    assert!(delivered.iter().all(|id| *id < 450), "{delivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_slower_than_the_default_heartbeat_work_with_raised_timing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // Every link 200 ms each way: a 400 ms round trip, past the default heartbeat (150 ms, also
    // openraft's deadline for an answer), with which no majority could ever answer in time.
    // `raft_heartbeat_ms = 600` (the election timeout follows: 4 heartbeats, 2.4-4.8 s) makes
    // such a cluster work: it elects, confirms, and fails over.
    let nodes = Arc::new(Nodes::start_with("raft_heartbeat_ms = 600").await);
    nodes.slow(None, Duration::from_millis(200));
    declare(&nodes).await;
    let started = Instant::now();
    let mut confirmed = publish(&nodes, None, 0..100, true).await;
    println!(
        "100 pipelined confirms over 400 ms round trips: {:?}",
        started.elapsed()
    );
    assert_eq!(confirmed.len(), 100);
    let (leader, _) = nodes.serving_other_than(None).await;
    nodes.isolate(leader, true);
    confirmed.extend(publish(&nodes, Some(leader), 100..150, true).await);
    let (_, new_wire) = nodes.serving_other_than(Some(leader)).await;
    let delivered = consume_all(&new_wire, &confirmed).await;
    assert!(delivered.iter().all(|id| *id < 150), "{delivered:?}");
}
