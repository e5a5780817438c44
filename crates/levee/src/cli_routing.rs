//! The exchange commands: `levee exchange declare|list|delete|bindings`, `levee bind`,
//! `levee unbind`, and `levee publish --exchange X --routing-key K`.
//!
//! A routed publish sends batches (what the input has ready, at most [`BATCH`] messages) one at
//! a time and waits for each batch's confirm: one outcome per message, combined over its target
//! queues. The summary line counts stored / dropped / rejected / unroutable; like `publish` to a
//! queue, the exit status is 3 when not every message was stored (`--allow-drops`: 0).

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use levee_client::{
    Binding, ExchangeConfig, ExchangeInfo, ExchangeKind, Message, PublishOutcome, RoutedOutcome,
};

use crate::cli::{Conn, Outcome, PublishArgs, QueueConn, Source};

/// Most messages in one routed publish request.
const BATCH: usize = 256;

/// Parses repeated `NAME=VALUE` options.
pub(crate) fn parse_headers(items: &[String]) -> anyhow::Result<Vec<(String, Bytes)>> {
    items
        .iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), Bytes::from(v.to_string()))),
            _ => anyhow::bail!("{s:?}: expected NAME=VALUE"),
        })
        .collect()
}

/// `levee exchange …`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    levee exchange declare logs --type fanout\n  \
    levee exchange declare orders --type topic --transient\n  \
    levee exchange list\n  \
    levee exchange bindings logs\n  \
    levee exchange delete logs --if-unused")]
pub(crate) struct ExchangeArgs {
    #[command(subcommand)]
    pub cmd: ExchangeCmd,
    #[command(flatten)]
    pub conn: QueueConn,
}

/// `levee exchange …` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum ExchangeCmd {
    /// Create an exchange, or check that the existing one has these settings.
    Declare {
        /// Exchange name (1-255 bytes of A-Z a-z 0-9 . _ : -).
        name: String,
        /// How it routes: direct, fanout, topic or headers.
        #[arg(long = "type", value_name = "TYPE", default_value = "direct")]
        kind: String,
        /// Not kept across restarts (nor its bindings).
        #[arg(long)]
        transient: bool,
        /// Deleted when its last binding is removed.
        #[arg(long)]
        auto_delete: bool,
        /// Cannot be published to directly (only as a dead-letter exchange).
        #[arg(long)]
        internal: bool,
        /// An argument, NAME=VALUE (repeatable).
        #[arg(long = "arg", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
        /// Only check that it exists.
        #[arg(long)]
        passive: bool,
    },
    /// List exchanges with their counters.
    List {
        /// One JSON array on one line.
        #[arg(long)]
        json: bool,
    },
    /// List an exchange's bindings (every exchange's without a name).
    Bindings {
        /// Exchange name.
        name: Option<String>,
    },
    /// Delete an exchange and its bindings.
    Delete {
        /// Exchange name.
        name: String,
        /// Refuse while it has bindings.
        #[arg(long)]
        if_unused: bool,
    },
}

/// `levee bind` / `levee unbind`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    levee bind logs audit\n  \
    levee bind orders eu-orders --key 'orders.eu.#'\n  \
    levee bind reports pdf --arg x-match=any --arg format=pdf\n  \
    levee unbind orders eu-orders --key 'orders.eu.#'")]
pub(crate) struct BindArgs {
    /// Exchange name.
    pub exchange: String,
    /// Queue name.
    pub queue: String,
    /// Binding key (a pattern for topic exchanges; ignored by fanout and headers ones).
    #[arg(long, default_value = "")]
    pub key: String,
    /// A binding argument, NAME=VALUE (repeatable; headers exchanges match on them).
    #[arg(long = "arg", value_name = "NAME=VALUE")]
    pub arguments: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

impl BindArgs {
    fn binding(&self) -> anyhow::Result<Binding> {
        Ok(Binding {
            exchange: self.exchange.clone(),
            queue: self.queue.clone(),
            key: self.key.clone(),
            arguments: parse_headers(&self.arguments)?,
        })
    }
}

fn render(i: &ExchangeInfo) -> String {
    let name = if i.name.is_empty() {
        "(default)"
    } else {
        i.name.as_str()
    };
    let mut flags = vec![if i.config.durable {
        "durable"
    } else {
        "transient"
    }];
    if i.config.auto_delete {
        flags.push("auto-delete");
    }
    if i.config.internal {
        flags.push("internal");
    }
    format!(
        "{name}\t{}\t{}\tbindings={} routed={} unroutable={}",
        i.config.kind,
        flags.join(","),
        i.bindings,
        i.routed,
        i.unroutable
    )
}

/// `levee exchange …`
pub(crate) async fn exchange(conn: &Conn, cmd: ExchangeCmd) -> anyhow::Result<Outcome> {
    let client = conn.client().await?;
    match cmd {
        ExchangeCmd::Declare {
            name,
            kind,
            transient,
            auto_delete,
            internal,
            arguments,
            passive,
        } => {
            if passive {
                client.check_exchange(&name).await?;
                println!("exists {name}");
            } else {
                let kind: ExchangeKind = kind.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut config = ExchangeConfig::new(kind)
                    .durable(!transient)
                    .auto_delete(auto_delete)
                    .internal(internal);
                config.arguments = parse_headers(&arguments)?;
                let created = client.declare_exchange(&name, config).await?;
                println!("{} {name}", if created { "created" } else { "exists" });
            }
        }
        ExchangeCmd::List { json } => {
            let all = client.list_exchanges().await?;
            if json {
                let v: Vec<serde_json::Value> = all
                    .iter()
                    .map(levee_broker::http::exchange_to_json)
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for i in &all {
                    println!("{}", render(i));
                }
            }
        }
        ExchangeCmd::Bindings { name } => {
            for b in client.list_bindings(name.as_deref()).await? {
                let args: Vec<String> = b
                    .arguments
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect();
                println!("{}\t{}\t{}\t{}", b.exchange, b.queue, b.key, args.join(","));
            }
        }
        ExchangeCmd::Delete { name, if_unused } => {
            client.delete_exchange(&name, if_unused).await?;
            println!("deleted {name}");
        }
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}

/// `levee bind` (`unbind`: remove the binding).
pub(crate) async fn bind(conn: &Conn, args: BindArgs, unbind: bool) -> anyhow::Result<Outcome> {
    let b = args.binding()?;
    let client = conn.client().await?;
    let what = format!("{} -> {} (key {:?})", b.exchange, b.queue, b.key);
    if unbind {
        let existed = client.unbind(b).await?;
        println!("{} {what}", if existed { "unbound" } else { "not bound" });
    } else {
        let created = client.bind(b).await?;
        println!("{} {what}", if created { "bound" } else { "already bound" });
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}

/// Counts of a routed publish.
#[derive(Default)]
struct Tally {
    published: u64,
    stored: u64,
    dropped: u64,
    rejected: u64,
    unroutable: u64,
    last: Option<String>,
}

impl Tally {
    fn add(&mut self, o: &RoutedOutcome) {
        self.published += 1;
        match o {
            RoutedOutcome::Unroutable => self.unroutable += 1,
            RoutedOutcome::Routed {
                outcome: PublishOutcome::Stored { .. },
                ..
            } => self.stored += 1,
            RoutedOutcome::Routed {
                outcome: PublishOutcome::Dropped { reason },
                ..
            } => {
                self.dropped += 1;
                self.last = Some(format!("dropped ({reason})"));
            }
            other => {
                self.rejected += 1;
                self.last = Some(format!("{other:?}"));
            }
        }
    }
}

/// `levee publish --exchange X --routing-key K [MESSAGE…]`
pub(crate) async fn publish(conn: &Conn, args: PublishArgs) -> anyhow::Result<Outcome> {
    let exchange = args.exchange.clone().unwrap_or_default();
    let headers = parse_headers(&args.headers)?;
    let mut given: Vec<Bytes> = Vec::new();
    if let Some(first) = &args.queue {
        given.push(Bytes::from(first.clone()));
    }
    given.extend(args.messages.iter().map(|m| Bytes::from(m.clone())));
    let mut source = if !given.is_empty() {
        let total = args.count.unwrap_or(given.len() as u64) as usize;
        Source::Iter(Box::new(given.into_iter().cycle().take(total)))
    } else if let Some(count) = args.count {
        Source::Iter(Box::new(
            (0..count).map(|i| Bytes::from(format!("message-{i}"))),
        ))
    } else {
        Source::stdin()
    };
    let client = conn.client().await?;
    let mut t = Tally::default();
    loop {
        let mut batch: Vec<Message> = Vec::new();
        while batch.len() < BATCH {
            let next = if batch.is_empty() {
                source.next().await
            } else {
                match &mut source {
                    Source::Iter(it) => it.next().map(Ok),
                    Source::Stdin(rx) => rx.try_recv().ok(),
                }
            };
            let Some(p) = next else { break };
            let p = p.context("reading standard input")?;
            let mut m = Message::new(p).with_priority(args.priority);
            if let Some(k) = &args.key {
                m = m.with_key(k.clone());
            }
            if let Some(ttl) = args.ttl_ms {
                m = m.with_ttl_ms(ttl);
            }
            m.headers.clone_from(&headers);
            batch.push(m);
        }
        if batch.is_empty() {
            break;
        }
        let outcomes = client
            .publish_to_exchange(&exchange, &args.routing_key, batch)
            .await
            .with_context(|| format!("publishing to exchange {exchange:?}"))?;
        for o in &outcomes {
            t.add(o);
        }
    }
    println!(
        "published {} to exchange {exchange:?} (key {:?}): stored={} dropped={} rejected={} unroutable={}",
        t.published, args.routing_key, t.stored, t.dropped, t.rejected, t.unroutable
    );
    if let Some(e) = &t.last {
        eprintln!("last rejection: {e}");
    }
    client.close().await.ok();
    Ok(
        if t.dropped + t.rejected + t.unroutable > 0 && !args.allow_drops {
            Outcome::NotStored
        } else {
            Outcome::Done
        },
    )
}
