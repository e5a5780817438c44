//! A broker with its HTTP dashboard and synthetic traffic, to look at the dashboard by hand.
//!
//! ```text
//! cargo run -p levee-broker --example dashboard_demo -- [HTTP_PORT] [SECONDS]
//! ```
//!
//! Opens a broker on a temporary directory, serves the protocol on an ephemeral port and the
//! HTTP API / dashboard on `HTTP_PORT` (default 8080; 0 picks one), declares five queues with
//! different overflow policies and drives each with a paced producer and a paced, credit-based
//! consumer speaking the raw wire protocol (the client crate is not used, to keep this example
//! independent of it). Producers publish faster than consumers take, so each queue shows its
//! policy at work: eviction, conflation, priority shedding, rejection, and producer blocking.
//! Runs until Ctrl-C, or for `SECONDS` if given.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use levee_broker::{Broker, BrokerConfig, serve_http};
use levee_proto::{
    ClientFrame, DEFAULT_MAX_FRAME, Durability, Fsync, Hello, Message, Overflow, QueueConfig,
    ServerFrame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// One protocol connection: frames to send go into `tx`, received frames come out of `rx`.
struct RawConn {
    tx: mpsc::UnboundedSender<ClientFrame>,
    rx: mpsc::UnboundedReceiver<ServerFrame>,
}

async fn connect(addr: SocketAddr, name: &str) -> Result<RawConn, Box<dyn Error>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut out) = mpsc::unbounded_channel::<ClientFrame>();
    let (inbound, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(f) = out.recv().await {
            buf.clear();
            if f.encode(&mut buf).is_err() || wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            match ServerFrame::decode(&mut buf, DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => {
                    if inbound.send(f).is_err() {
                        break;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("undecodable frame from the broker: {e}");
                    break;
                }
            }
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    });
    // Keep the connection alive even when it has nothing else to say.
    let hb = tx.clone();
    tokio::spawn(async move {
        while hb.send(ClientFrame::Heartbeat).is_ok() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    tx.send(ClientFrame::Hello(Hello::new(name)))?;
    let mut conn = RawConn { tx, rx };
    match conn.rx.recv().await {
        Some(ServerFrame::Welcome(_)) => Ok(conn),
        other => Err(format!("handshake failed: {other:?}").into()),
    }
}

struct Traffic {
    queue: &'static str,
    /// Messages per second the producer tries to publish.
    publish_rate: u64,
    /// Messages per second each consumer acks.
    consume_rate: u64,
    consumers: usize,
    /// Credit window of each consumer.
    window: u32,
    keys: Option<u64>,
    priorities: bool,
    payload: usize,
}

const TICK: Duration = Duration::from_millis(50);
const TICKS_PER_SEC: u64 = 20;

/// Publishes `publish_rate` messages per second, in one batch per tick; on a `block` queue only
/// within the publish credit the broker grants.
async fn producer(addr: SocketAddr, t: Arc<Traffic>, block: bool) -> Result<(), Box<dyn Error>> {
    let mut conn = connect(addr, &format!("producer-{}", t.queue)).await?;
    let credit = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(Notify::new());
    if block {
        conn.tx.send(ClientFrame::Produce {
            req: 1,
            queue: t.queue.into(),
        })?;
    }
    {
        let (credit, granted, queue) = (credit.clone(), granted.clone(), t.queue);
        let mut rx = std::mem::replace(&mut conn.rx, mpsc::unbounded_channel().1);
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                match f {
                    ServerFrame::PublishCredit { n, .. } => {
                        credit.fetch_add(u64::from(n), Ordering::AcqRel);
                        granted.notify_one();
                    }
                    ServerFrame::Error { message, .. } => eprintln!("producer {queue}: {message}"),
                    _ => {}
                }
            }
        });
    }
    let payload = Bytes::from(vec![b'x'; t.payload]);
    let per_tick = t.publish_rate.div_ceil(TICKS_PER_SEC);
    let mut tick = tokio::time::interval(TICK);
    let mut i: u64 = 0;
    let mut req = 2;
    loop {
        tick.tick().await;
        let mut n = per_tick;
        if block {
            n = n.min(credit.load(Ordering::Acquire));
            if n == 0 {
                granted.notified().await;
                continue;
            }
            credit.fetch_sub(n, Ordering::AcqRel);
        }
        let messages = (0..n)
            .map(|_| {
                i += 1;
                // Vary the size a little so the byte bar moves independently of the count.
                let len = t.payload / 2 + (i as usize * 37) % t.payload;
                let mut m = Message::new(payload.slice(..len.min(payload.len())));
                if let Some(keys) = t.keys {
                    m = m.with_key(format!("sensor-{}", i % keys));
                }
                if t.priorities {
                    m = m.with_priority((i % 10) as u8);
                }
                m
            })
            .collect();
        req += 1;
        conn.tx.send(ClientFrame::Publish {
            req,
            queue: t.queue.into(),
            messages,
        })?;
    }
}

/// Subscribes with a credit window and acks `consume_rate` messages per second, granting as much
/// credit as it acks.
async fn consumer(addr: SocketAddr, t: Arc<Traffic>, n: usize) -> Result<(), Box<dyn Error>> {
    let mut conn = connect(addr, &format!("consumer-{}-{n}", t.queue)).await?;
    conn.tx.send(ClientFrame::Subscribe {
        req: 1,
        queue: t.queue.into(),
        credit: t.window,
        auto_ack: false,
    })?;
    let subscription = loop {
        match conn.rx.recv().await {
            Some(ServerFrame::Subscribed { subscription, .. }) => break subscription,
            Some(ServerFrame::Error { message, .. }) => return Err(message.into()),
            Some(_) => continue,
            None => return Err("connection closed".into()),
        }
    };
    let per_tick = t.consume_rate.div_ceil(TICKS_PER_SEC) as usize;
    let mut pending: std::collections::VecDeque<u64> = Default::default();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            f = conn.rx.recv() => match f {
                Some(ServerFrame::Deliver { deliveries }) => {
                    pending.extend(deliveries.iter().map(|d| d.tag));
                }
                Some(_) => {}
                None => return Err("connection closed".into()),
            },
            _ = tick.tick() => {
                let k = per_tick.min(pending.len());
                if k > 0 {
                    let tags: Vec<u64> = pending.drain(..k).collect();
                    conn.tx.send(ClientFrame::Ack { subscription, tags })?;
                    conn.tx.send(ClientFrame::Credit { subscription, n: k as u32 })?;
                }
            }
        }
    }
}

fn config(
    max_messages: u64,
    max_bytes: u64,
    overflow: Overflow,
    durability: Durability,
) -> QueueConfig {
    QueueConfig {
        max_messages,
        max_bytes,
        overflow,
        durability,
        ..QueueConfig::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(8080);
    let seconds: Option<u64> = args.next().map(|a| a.parse()).transpose()?;

    let dir = tempfile::tempdir()?;
    let broker = Broker::open(BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..BrokerConfig::default()
    })
    .await?;
    let (addr, _accept) = broker.bind("127.0.0.1:0".parse()?).await?;

    let disk_interval = Durability::Disk(Fsync::Interval(100));
    let queues = [
        (
            config(5_000, 4 << 20, Overflow::DropOldest, Durability::Memory),
            Traffic {
                queue: "orders",
                publish_rate: 3_000,
                consume_rate: 1_000,
                consumers: 2,
                window: 200,
                keys: None,
                priorities: false,
                payload: 400,
            },
        ),
        (
            config(2_000, 8 << 20, Overflow::ConflateByKey, disk_interval),
            Traffic {
                queue: "telemetry",
                publish_rate: 2_000,
                consume_rate: 600,
                consumers: 1,
                window: 100,
                keys: Some(1_500),
                priorities: false,
                payload: 256,
            },
        ),
        (
            config(
                20_000,
                16 << 20,
                Overflow::Block,
                Durability::Disk(Fsync::Always),
            ),
            Traffic {
                queue: "payments",
                publish_rate: 1_200,
                consume_rate: 800,
                consumers: 1,
                window: 500,
                keys: None,
                priorities: false,
                payload: 600,
            },
        ),
        (
            config(3_000, 1 << 20, Overflow::ShedPriority, Durability::Memory),
            Traffic {
                queue: "alerts",
                publish_rate: 1_000,
                consume_rate: 300,
                consumers: 3,
                window: 50,
                keys: None,
                priorities: true,
                payload: 300,
            },
        ),
        (
            config(1_000, 256 << 10, Overflow::Reject, Durability::Memory),
            Traffic {
                queue: "emails",
                publish_rate: 500,
                consume_rate: 400,
                consumers: 1,
                window: 20,
                keys: None,
                priorities: false,
                payload: 900,
            },
        ),
    ];
    for (cfg, t) in queues {
        let block = cfg.overflow == Overflow::Block;
        broker.declare(t.queue, cfg).await?;
        let t = Arc::new(t);
        for n in 0..t.consumers {
            let t = t.clone();
            tokio::spawn(async move {
                if let Err(e) = consumer(addr, t.clone(), n).await {
                    eprintln!("consumer {} ended: {e}", t.queue);
                }
            });
        }
        tokio::spawn(async move {
            if let Err(e) = producer(addr, t.clone(), block).await {
                eprintln!("producer {} ended: {e}", t.queue);
            }
        });
    }

    let http = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("dashboard: http://{}/", http.local_addr()?);
    println!("protocol:  {addr}");
    tokio::spawn(serve_http(broker.clone(), http));
    match seconds {
        Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    Ok(())
}
