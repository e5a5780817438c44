//! The client-side commands: `queue …`, `publish`, `consume`, `stats`. Each opens one
//! connection with levee-client to `--addr`.

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use levee_client::{
    Client, ClientOptions, ConsumerOptions, Credit, Durability, Fsync, Message, Order, Overflow,
    ProducerOptions, PublishOutcome, QueueConfig, QueueInfo,
};
use levee_proto::RateLimit;

/// Where the broker is.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Broker address.
    #[arg(
        long,
        env = "LEVEE_ADDR",
        default_value = "127.0.0.1:5680",
        global = true
    )]
    pub addr: String,
}

impl Conn {
    async fn client(&self) -> anyhow::Result<Client> {
        let opts = ClientOptions {
            name: "levee-cli".into(),
            reconnect: None,
            ..ClientOptions::default()
        };
        Client::connect(self.addr.as_str(), opts)
            .await
            .with_context(|| format!("connecting to {}", self.addr))
    }
}

/// `levee queue …`
#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Create a queue (or check that it exists with this config).
    Declare(DeclareArgs),
    /// List queue names.
    List,
    /// Show a queue's config and counters.
    Inspect {
        /// Queue name.
        name: String,
    },
    /// Drop every ready message.
    Purge {
        /// Queue name.
        name: String,
    },
    /// Delete a queue and its messages.
    Delete {
        /// Queue name.
        name: String,
    },
}

/// A queue's config as flags; unset flags take `QueueConfig::default()`.
#[derive(Args, Debug)]
pub struct DeclareArgs {
    /// Queue name.
    pub name: String,
    /// Most messages held (ready + unacked).
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Most payload bytes held (ready + unacked).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// block | reject | drop-newest | drop-oldest | conflate-by-key | shed-priority
    #[arg(long)]
    pub overflow: Option<Overflow>,
    /// fifo | priority
    #[arg(long)]
    pub order: Option<Order>,
    /// memory | disk
    #[arg(long)]
    pub durability: Option<String>,
    /// always | never | interval:MS (disk queues)
    #[arg(long)]
    pub fsync: Option<String>,
    /// Requeue an unacked delivery after this many ms (0 = never).
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// Dead-letter a message after this many deliveries (0 = unlimited).
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// Dead-letter queue (must exist).
    #[arg(long)]
    pub dead_letter: Option<String>,
    /// Message time-to-live in ms.
    #[arg(long)]
    pub ttl_ms: Option<u64>,
    /// Publish rate limit, messages per second.
    #[arg(long)]
    pub rate_msgs: Option<u32>,
    /// Publish rate limit, bytes per second.
    #[arg(long)]
    pub rate_bytes: Option<u64>,
}

impl DeclareArgs {
    /// The config these flags describe.
    pub fn config(&self) -> anyhow::Result<QueueConfig> {
        let mut c = QueueConfig::default();
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = self.overflow {
            c.overflow = v;
        }
        if let Some(v) = self.order {
            c.order = v;
        }
        let fsync = match self.fsync.as_deref() {
            None | Some("always") => Fsync::Always,
            Some("never") => Fsync::Never,
            Some(s) => match s.strip_prefix("interval:").map(str::parse::<u32>) {
                Some(Ok(ms)) => Fsync::Interval(ms),
                _ => bail!("--fsync must be always, never or interval:MS, not {s:?}"),
            },
        };
        c.durability = match self.durability.as_deref() {
            None | Some("disk") => Durability::Disk(fsync),
            Some("memory") => Durability::Memory,
            Some(s) => bail!("--durability must be memory or disk, not {s:?}"),
        };
        if let Some(v) = self.ack_timeout_ms {
            c.ack_timeout_ms = v;
        }
        if let Some(v) = self.max_deliveries {
            c.max_deliveries = (v > 0).then_some(v);
        }
        if let Some(v) = &self.dead_letter {
            c.dead_letter = Some(v.clone());
        }
        if let Some(v) = self.ttl_ms {
            c.message_ttl_ms = Some(v);
        }
        if self.rate_msgs.is_some() || self.rate_bytes.is_some() {
            c.rate_limit = Some(RateLimit {
                msgs_per_sec: self.rate_msgs,
                bytes_per_sec: self.rate_bytes,
                burst_msgs: self.rate_msgs.unwrap_or(0),
                burst_bytes: self.rate_bytes.unwrap_or(0),
            });
        }
        Ok(c)
    }
}

/// `levee queue …`
pub async fn queue(conn: &Conn, cmd: QueueCmd) -> anyhow::Result<()> {
    let client = conn.client().await?;
    match cmd {
        QueueCmd::Declare(args) => {
            let ok = client.declare(&args.name, args.config()?).await?;
            println!(
                "{} {} ({} messages)",
                if ok.created { "created" } else { "exists" },
                args.name,
                ok.messages
            );
        }
        QueueCmd::List => {
            for name in client.list_queues().await? {
                println!("{name}");
            }
        }
        QueueCmd::Inspect { name } => print_info(&client.inspect(&name).await?),
        QueueCmd::Purge { name } => println!("purged {} messages", client.purge(&name).await?),
        QueueCmd::Delete { name } => {
            println!("deleted {name} ({} messages)", client.delete(&name).await?)
        }
    }
    client.close().await.ok();
    Ok(())
}

fn print_info(info: &QueueInfo) {
    let s = &info.stats;
    let c = &info.config;
    println!("queue {}", info.queue);
    println!(
        "  config     max_messages={} max_bytes={} overflow={} order={} durability={:?} ack_timeout_ms={} max_deliveries={:?} dead_letter={:?} ttl_ms={:?}",
        c.max_messages,
        c.max_bytes,
        c.overflow,
        c.order,
        c.durability,
        c.ack_timeout_ms,
        c.max_deliveries,
        c.dead_letter,
        c.message_ttl_ms
    );
    println!(
        "  messages   ready={} unacked={} bytes={} publish_credit_outstanding={}",
        s.ready, s.unacked, s.bytes, s.publish_credit_outstanding
    );
    println!(
        "  counters   published={} stored={} rejected={} acked={} dropped={} expired={} dead_lettered={}",
        s.published,
        s.stored,
        s.rejected,
        s.acked,
        s.dropped_total(),
        s.expired,
        s.dead_lettered
    );
    for (reason, n) in &s.dropped {
        println!("  dropped    {reason}={n}");
    }
    println!(
        "  rates/s    publish={} deliver={} ack={}",
        s.publish_rate, s.deliver_rate, s.ack_rate
    );
    for cs in &s.consumers {
        println!(
            "  consumer   {} credit={} unacked={}",
            cs.subscription, cs.credit, cs.unacked
        );
    }
    let loss = if s.stored == 0 {
        0.0
    } else {
        100.0 * s.dropped_total() as f64 / s.stored as f64
    };
    println!(
        "  loss       {loss:.2}%  balanced={}",
        if s.is_balanced() { "yes" } else { "NO" }
    );
}

/// `levee publish`
#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Queue name.
    pub queue: String,
    /// Messages to publish; with none, one message per line of standard input (or generated
    /// payloads with --count).
    pub messages: Vec<String>,
    /// Publish this many messages: the given ones repeated, or generated `message-N` payloads.
    #[arg(long)]
    pub count: Option<u64>,
    /// Generated payload size in bytes (with --count and no messages).
    #[arg(long)]
    pub size: Option<usize>,
    /// Messages per second (paced); default as fast as credit allows.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Conflation key.
    #[arg(long)]
    pub key: Option<String>,
    /// Priority (0-255).
    #[arg(long, default_value_t = 0)]
    pub priority: u8,
    /// Time-to-live in ms.
    #[arg(long)]
    pub ttl_ms: Option<u64>,
}

/// `levee publish`: prints one summary line of outcomes.
pub async fn publish(conn: &Conn, args: PublishArgs) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let producer = client
        .producer(&args.queue, ProducerOptions::default())
        .await?;
    let mut payloads: Box<dyn Iterator<Item = Bytes>> = if !args.messages.is_empty() {
        let given: Vec<Bytes> = args
            .messages
            .iter()
            .map(|m| Bytes::from(m.clone()))
            .collect();
        let total = args.count.unwrap_or(given.len() as u64) as usize;
        Box::new(given.into_iter().cycle().take(total))
    } else if let Some(count) = args.count {
        let size = args.size;
        Box::new((0..count).map(move |i| match size {
            Some(n) => Bytes::from(vec![(i % 251) as u8; n]),
            None => Bytes::from(format!("message-{i}")),
        }))
    } else {
        let lines: Vec<Bytes> = std::io::stdin()
            .lock()
            .lines()
            .map(|l| l.map(Bytes::from))
            .collect::<Result<_, _>>()?;
        Box::new(lines.into_iter())
    };
    let started = Instant::now();
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut confirms = Vec::new();
    let mut i = 0u64;
    for payload in payloads.by_ref() {
        if let Some(iv) = interval {
            let due = started + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut m = Message::new(payload).with_priority(args.priority);
        if let Some(k) = &args.key {
            m = m.with_key(k.clone());
        }
        if let Some(t) = args.ttl_ms {
            m = m.with_ttl_ms(t);
        }
        confirms.push(producer.publish(m).await?);
        i += 1;
    }
    producer.flush().await;
    let (mut stored, mut dropped, mut rejected) = (0u64, 0u64, 0u64);
    let mut last_error = None;
    for c in confirms {
        match c.await {
            Ok(PublishOutcome::Stored { .. }) => stored += 1,
            Ok(PublishOutcome::Dropped { .. }) => dropped += 1,
            Ok(other) => {
                rejected += 1;
                last_error = Some(format!("{other:?}"));
            }
            Err(e) => {
                rejected += 1;
                last_error = Some(e.to_string());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "published {i} to {}: stored={stored} dropped={dropped} rejected={rejected} in {secs:.2}s ({:.0} msg/s)",
        args.queue,
        i as f64 / secs.max(1e-9)
    );
    if let Some(e) = last_error {
        eprintln!("last rejection: {e}");
    }
    client.close().await.ok();
    Ok(())
}

/// `levee consume`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Queue name.
    pub queue: String,
    /// Fixed credit (messages outstanding); default adaptive.
    #[arg(long)]
    pub credit: Option<u32>,
    /// Auto-ack: the broker settles each message as it sends it (at-most-once).
    #[arg(long)]
    pub no_ack: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when no message arrived for this many ms.
    #[arg(long)]
    pub idle_ms: Option<u64>,
    /// Simulated processing time per message in ms.
    #[arg(long, default_value_t = 0)]
    pub work_ms: u64,
    /// Only count messages; do not print them.
    #[arg(long)]
    pub quiet: bool,
}

/// `levee consume`: prints each message (or counts them) and acks it after processing.
pub async fn consume(conn: &Conn, args: ConsumeArgs) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let opts = ConsumerOptions {
        credit: match args.credit {
            Some(n) => Credit::Fixed(n),
            None => ConsumerOptions::default().credit,
        },
        auto_ack: args.no_ack,
        ..ConsumerOptions::default()
    };
    let mut consumer = client.consumer(&args.queue, opts).await?;
    let started = Instant::now();
    let mut n = 0u64;
    let idle = args.idle_ms.map(Duration::from_millis);
    while args.count.is_none_or(|c| n < c) {
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, consumer.next()).await {
                Ok(x) => x,
                Err(_) => break,
            },
            None => consumer.next().await,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        if args.work_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.work_ms)).await;
        }
        if !args.quiet {
            println!("{}", String::from_utf8_lossy(delivery.payload()));
        }
        if !args.no_ack {
            delivery.ack()?;
        }
        n += 1;
    }
    consumer.close().await.ok();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "consumed {n} from {} in {secs:.2}s ({:.0} msg/s)",
        args.queue,
        n as f64 / secs.max(1e-9)
    );
    client.close().await.ok();
    Ok(())
}

/// `levee stats`
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Only this queue.
    pub queue: Option<String>,
    /// Print again every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

/// `levee stats`: one line per queue (or the full view of one queue).
pub async fn stats(conn: &Conn, args: StatsArgs) -> anyhow::Result<()> {
    let client = conn.client().await?;
    loop {
        match &args.queue {
            Some(q) => print_info(&client.inspect(q).await?),
            None => {
                println!(
                    "{:<24} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
                    "queue",
                    "ready",
                    "unacked",
                    "bytes",
                    "published",
                    "acked",
                    "dropped",
                    "pub/s",
                    "ack/s"
                );
                for name in client.list_queues().await? {
                    let Ok(info) = client.inspect(&name).await else {
                        continue;
                    };
                    let s = info.stats;
                    println!(
                        "{:<24} {:>10} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9} {:>9}",
                        name,
                        s.ready,
                        s.unacked,
                        s.bytes,
                        s.published,
                        s.acked,
                        s.dropped_total(),
                        s.publish_rate,
                        s.ack_rate
                    );
                }
            }
        }
        if !args.watch {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!();
    }
    client.close().await.ok();
    Ok(())
}
