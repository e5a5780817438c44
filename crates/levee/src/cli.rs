//! The client-side commands: `queue …`, `publish`, `consume`, `stats`. Each opens one
//! connection with levee-client to the broker's wire address.
//!
//! # Exit status
//! Every command ends with an [`Outcome`]; `main` turns it into the process status:
//! 0 done, 1 error (one `levee: error:` line on stderr), 2 bad usage (clap), 3 the broker did
//! not store every published message (dropped or rejected; `--allow-drops` makes that 0), 4 the
//! connection was lost with published messages unconfirmed (they may or may not be stored),
//! 130 interrupted (SIGINT), as shells report a command killed by Ctrl-C.
//!
//! # Invariants
//! - `publish` and `consume` always account for every message on stderr when they are cut
//!   short (Ctrl-C, lost connection): published / stored / dropped / rejected / unconfirmed,
//!   which message numbers were not confirmed; consumed / acked.
//! - `publish` holds at most one line of input beyond the producer's in-flight window (plus a
//!   bounded channel from the stdin reader thread), so `tail -f log | levee publish q` runs in
//!   bounded memory for ever and publishes each line as it arrives (batched by the producer's
//!   linger, not by end of input).
//! - In `queue declare`, a flag that is not given matches whatever the existing queue has
//!   (get-or-create); `--exact` compares every field against the defaults, as the wire `Declare`
//!   does.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use levee_broker::http::{QueueSnapshot, render_queues_json};
use levee_client::{
    Client, ClientError, ClientOptions, ConsumerOptions, Credit, Durability, ErrorCode, Fsync,
    Message, Order, Overflow, ProducerOptions, PublishOutcome, QueueConfig, QueueInfo,
};

use crate::units::{format_millis, format_size, parse_millis, parse_size, parse_size_usize};

/// Default wire address of the broker.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:5680";

/// How a command ended, as a process exit status (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Everything asked for was done: exit 0.
    Done,
    /// Some published messages were dropped or rejected by the broker: exit 3.
    NotStored,
    /// The connection was lost with messages unconfirmed: exit 4.
    Unconfirmed,
    /// Stopped by SIGINT: exit 130.
    Interrupted,
}

impl Outcome {
    /// The process exit status.
    pub(crate) fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::NotStored => 3,
            Outcome::Unconfirmed => 4,
            Outcome::Interrupted => 130,
        }
    }
}

/// The client options: where the broker is. Accepted before the subcommand (`levee --addr H:P
/// queue list`) and after it (`levee queue list --addr H:P`); not by `serve` or `bench`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct Conn {
    /// Broker wire address, or a cluster's nodes comma-separated (tried in order; a replicated
    /// queue's commands follow `not-leader` to the node serving it)
    /// [env: LEVEE_ADDR] [default: 127.0.0.1:5680].
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
    pub addr: Option<String>,
    /// User to log in as [env: LEVEE_USER].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Password of --user [env: LEVEE_PASSWORD, better than the flag: not in `ps`].
    #[arg(long, value_name = "PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Speak TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Speak TLS, trusting the system's root certificates (or --tls-ca).
    #[arg(long)]
    pub tls: bool,
    /// Client certificate (PEM) for mTLS; its CN or SAN URI `user:NAME` names the user.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// How a client logs in and whether it speaks TLS: from [`Conn`]'s options, passed to
/// `levee bench` too.
#[derive(Debug, Clone, Default)]
pub(crate) struct Access {
    pub credentials: Option<levee_client::Credentials>,
    pub tls: Option<levee_client::TlsOptions>,
}

impl Access {
    /// `opts` with these credentials and TLS settings.
    pub(crate) fn apply(&self, mut opts: ClientOptions) -> ClientOptions {
        opts.credentials = self.credentials.clone();
        opts.tls = self.tls.clone();
        opts
    }
}

/// [`Conn`] for `levee queue`: the same option, also accepted after `queue`'s own subcommand.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct QueueConn {
    /// Broker wire address, or a cluster's nodes comma-separated [env: LEVEE_ADDR]
    /// [default: 127.0.0.1:5680].
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]", global = true)]
    pub addr: Option<String>,
}

impl Conn {
    /// These options, with those given before the subcommand (`outer`) filling the gaps.
    pub(crate) fn or(&self, outer: &Conn) -> Conn {
        Conn {
            addr: self.addr.clone().or_else(|| outer.addr.clone()),
            user: self.user.clone().or_else(|| outer.user.clone()),
            password: self.password.clone().or_else(|| outer.password.clone()),
            tls_ca: self.tls_ca.clone().or_else(|| outer.tls_ca.clone()),
            tls: self.tls || outer.tls,
            tls_cert: self.tls_cert.clone().or_else(|| outer.tls_cert.clone()),
            tls_key: self.tls_key.clone().or_else(|| outer.tls_key.clone()),
        }
    }

    /// Credentials (`--user`, `--password` or `LEVEE_PASSWORD`) and TLS (`--tls-ca`, `--tls`,
    /// `--tls-cert/--tls-key`) for a connection to `addr` (whose host part names the server for
    /// TLS).
    pub(crate) fn access(&self, addr: &str) -> anyhow::Result<Access> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = self.user.clone().or_else(|| env("LEVEE_USER"));
        let password = self.password.clone().or_else(|| env("LEVEE_PASSWORD"));
        let credentials = match (user, password) {
            (Some(user), password) => Some(levee_client::Credentials {
                user,
                password: password.unwrap_or_default(),
            }),
            (None, Some(_)) => anyhow::bail!("--password (or LEVEE_PASSWORD) needs --user"),
            (None, None) => None,
        };
        let tls = if self.tls || self.tls_ca.is_some() || self.tls_cert.is_some() {
            let client = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
            let mut t = levee_client::TlsOptions::new(self.tls_ca.as_deref(), client)?;
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if !host.is_empty() {
                t = t.server_name(host);
            }
            Some(t)
        } else {
            None
        };
        Ok(Access { credentials, tls })
    }

    /// Whether any client option was given on the command line.
    pub(crate) fn is_given(&self) -> bool {
        self.addr.is_some()
    }

    /// Whether a login or TLS option was given on the command line (`levee bench` takes them).
    pub(crate) fn access_given(&self) -> bool {
        self.user.is_some()
            || self.password.is_some()
            || self.tls
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
    }

    /// The address: the flag, else `LEVEE_ADDR`, else the default.
    pub(crate) fn addr(&self) -> String {
        self.addr
            .clone()
            .or_else(|| std::env::var("LEVEE_ADDR").ok().filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_ADDR.to_string())
    }

    /// The addresses of [`Conn::addr`]: one, or the nodes of a cluster, comma-separated
    /// (spaces allowed, empty parts ignored).
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.addr()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// A client connected to the first of [`Conn::addrs`] that answers.
    pub(crate) async fn client(&self) -> anyhow::Result<Client> {
        self.client_at(&self.addrs()).await
    }

    async fn client_at(&self, addrs: &[String]) -> anyhow::Result<Client> {
        self.client_with(addrs, false).await
    }

    /// Whether `publish` and `consume` follow a failover mid-stream: when `--addr` lists
    /// several nodes (a cluster), their client reconnects (through the list, to the node that
    /// serves the queue) instead of ending the command.
    pub(crate) fn follows(&self) -> bool {
        self.addrs().len() > 1
    }

    async fn client_with(&self, addrs: &[String], follow: bool) -> anyhow::Result<Client> {
        let opts = ClientOptions {
            name: "levee-cli".into(),
            reconnect: follow.then_some(levee_client::Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            }),
            ..ClientOptions::default()
        };
        // TLS names the server after the first address's host (a cluster's nodes share a
        // certificate naming them all, or are reached by one name).
        let first = addrs.first().map_or(DEFAULT_ADDR, String::as_str);
        let opts = self.access(first)?.apply(opts);
        Client::connect_any(addrs, opts)
            .await
            .with_context(|| format!("connecting to {}", addrs.join(",")))
    }

    /// A client connected to the node that serves `queue`: the first of [`Conn::addrs`] that
    /// answers, and if that node says the queue is replicated and served by another node
    /// (`not-leader`), that node instead (followed up to three times: a failover may be under
    /// way). A node that says `not-leader` without naming a node (it knows of no leader: an
    /// election is under way) is asked again every 200 ms for up to 5 s. The redirect is
    /// decided before the command runs, so nothing is ever sent twice. A queue that does not
    /// exist, or any other answer, keeps the first connection (the command then reports or
    /// creates as it would on a single node).
    pub(crate) async fn client_for(&self, queue: &str) -> anyhow::Result<Client> {
        self.client_for_with(queue, false).await
    }

    /// [`Conn::client_for`] for `publish` / `consume`: reconnecting if [`Conn::follows`].
    pub(crate) async fn client_for_stream(&self, queue: &str) -> anyhow::Result<Client> {
        self.client_for_with(queue, self.follows()).await
    }

    async fn client_for_with(&self, queue: &str, follow: bool) -> anyhow::Result<Client> {
        let mut client = self.client_with(&self.addrs(), follow).await?;
        let (mut hops, mut waits) = (0, 0);
        while hops < 3 {
            let serving = match client.inspect(queue).await {
                Err(e) => e
                    .not_leader_text()
                    .is_some()
                    .then(|| e.serving_node().map(str::to_string)),
                Ok(_) => None,
            };
            match serving {
                None => break,
                Some(None) if waits < 25 => {
                    if waits == 0 {
                        eprintln!("levee: queue {queue} has no known leader yet; waiting");
                    }
                    waits += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Some(None) => break,
                Some(Some(at)) => {
                    eprintln!("levee: queue {queue} is served by {at}; connecting there");
                    let _ = client.close().await;
                    // Following, the client reconnects through the node named first, then
                    // the rest of the list.
                    let mut addrs = self.addrs();
                    addrs.retain(|a| *a != at);
                    addrs.insert(0, at);
                    if !follow {
                        addrs.truncate(1);
                    }
                    client = self.client_with(&addrs, follow).await?;
                    hops += 1;
                }
            }
        }
        Ok(client)
    }
}

impl From<&QueueConn> for Conn {
    fn from(c: &QueueConn) -> Conn {
        Conn {
            addr: c.addr.clone(),
            ..Conn::default()
        }
    }
}

/// SIGINT, received as an event instead of killing the process (so that a summary can be
/// printed). Installed before a command connects, so a signal sent once the command is seen
/// by the broker is always caught.
struct Interrupt {
    #[cfg(unix)]
    sig: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn install() -> anyhow::Result<Interrupt> {
        Ok(Interrupt {
            #[cfg(unix)]
            sig: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("installing a SIGINT handler")?,
        })
    }

    /// Waits for the next SIGINT. Cancel-safe.
    async fn recv(&mut self) {
        #[cfg(unix)]
        self.sig.recv().await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `levee queue …`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    levee queue declare jobs --max-messages 1000 --overflow reject\n  \
    levee queue list --json\n  \
    levee queue inspect jobs\n  \
    levee --addr 10.0.0.5:5680 queue delete jobs")]
pub(crate) struct QueueArgs {
    #[command(subcommand)]
    pub cmd: QueueCmd,
    #[command(flatten)]
    pub conn: QueueConn,
}

/// `levee queue …` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum QueueCmd {
    /// Create a queue, or check that the existing one has the settings given.
    Declare(Box<DeclareArgs>),
    /// Change a live queue's settings (the flags given; the others stay). Limits, overflow,
    /// TTL, rate limit, dead letter, ack timeout, max deliveries and dedup can change, without
    /// losing a message: lowering a limit below what the queue holds drops nothing (the queue
    /// takes no new messages until drained below it). Durability and order cannot change.
    #[command(
        after_help = "Examples:\n  levee queue update jobs --max-messages 500\n  \
        levee queue update jobs --overflow reject --ack-timeout 2m --dead-letter jobs.dead"
    )]
    Update(Box<DeclareArgs>),
    /// List queue names.
    #[command(after_help = "Example:\n  levee queue list --json | jq -r '.[]'")]
    List {
        /// One JSON array of names on one line.
        #[arg(long)]
        json: bool,
    },
    /// Show a queue's config and counters.
    #[command(after_help = "Example:\n  levee queue inspect jobs --json | jq .stats.ready")]
    Inspect {
        /// Queue name.
        name: String,
        /// One JSON document on one line (the same document as `GET /api/queues/NAME`, without
        /// the storage figures).
        #[arg(long)]
        json: bool,
    },
    /// Show the next ready messages without consuming them (headers incl. x-death-*, payload
    /// preview).
    #[command(after_help = "Example:\n  levee queue peek jobs.dead --count 10")]
    Peek {
        /// Queue name.
        name: String,
        /// Most messages shown (at most 1000).
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// One JSON document per message (the receive shape of the HTTP API, without receipts).
        #[arg(long)]
        json: bool,
    },
    /// Move ready messages to another queue (redrive), each settled here only once the target
    /// stored it.
    #[command(after_help = "Example:\n  levee queue move jobs.dead --to jobs --max 100")]
    Move {
        /// Source queue.
        name: String,
        /// Target queue.
        #[arg(long, value_name = "QUEUE")]
        to: String,
        /// Most messages moved [default: all].
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// Only messages with this header value (NAME=VALUE); the others stay in place.
        #[arg(long, value_name = "NAME=VALUE")]
        header: Option<String>,
    },
    /// Drop every ready message.
    #[command(after_help = "Example:\n  levee queue purge jobs")]
    Purge {
        /// Queue name.
        name: String,
    },
    /// Delete a queue and its messages.
    #[command(after_help = "Example:\n  levee queue delete jobs")]
    Delete {
        /// Queue name.
        name: String,
    },
}

impl QueueCmd {
    /// The queue this command is about (the source queue of a move), if it names one.
    fn queue_name(&self) -> Option<&str> {
        match self {
            QueueCmd::Declare(args) | QueueCmd::Update(args) => Some(&args.name),
            QueueCmd::List { .. } => None,
            QueueCmd::Inspect { name, .. }
            | QueueCmd::Peek { name, .. }
            | QueueCmd::Move { name, .. }
            | QueueCmd::Purge { name }
            | QueueCmd::Delete { name } => Some(name),
        }
    }
}

/// Parses `--max-deliveries`: a count, `0` or `unlimited` for no limit.
fn parse_deliveries(s: &str) -> Result<u32, String> {
    if s == "unlimited" {
        return Ok(0);
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected a number of deliveries, or 0 / unlimited"))
}

/// A queue's config as flags. A flag not given matches the existing queue's setting (and takes
/// the default shown when the queue is created); with `--exact`, as the wire protocol's
/// `Declare`, it means the default in both cases.
#[derive(Args, Debug, Default)]
#[command(
    after_help = "A flag not given matches whatever an existing queue has, and takes the \
    default shown when the queue is created; with --exact, as the wire protocol's Declare, every \
    setting is compared.\n\n\
    Without --dead-letter, a message is dropped (counted as max-deliveries) \
    once it has been delivered --max-deliveries times without an ack.\n\n\
    Sizes take units (64MiB, 1GB, 512KiB) and durations too (30s, 500ms, 2m; a bare number is \
    milliseconds).\n\n\
    Examples:\n  \
    levee queue declare jobs\n  \
    levee queue declare jobs --max-messages 1000 --max-bytes 16MiB --overflow reject\n  \
    levee queue declare events --durability memory --overflow drop-oldest --ttl 5m\n  \
    levee queue declare work --max-deliveries 5 --dead-letter work.dead --ack-timeout 2m"
)]
pub(crate) struct DeclareArgs {
    /// Queue name (1-255 bytes of A-Z a-z 0-9 . _ -).
    pub name: String,
    /// Most messages held, ready + unacked [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
    /// Most payload bytes held, ready + unacked [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: Option<u64>,
    /// What a full queue does with a publish [default: block]: block (no publish credit until
    /// there is room), reject, drop-newest, drop-oldest, conflate-by-key, shed-priority.
    #[arg(long, value_name = "POLICY")]
    pub overflow: Option<Overflow>,
    /// Delivery order [default: fifo]: fifo or priority.
    #[arg(long, value_name = "ORDER")]
    pub order: Option<Order>,
    /// Where messages are kept [default: disk]: disk; memory (messages lost on restart, the
    /// queue's definition kept); transient (the queue itself is gone after a restart).
    #[arg(long, value_name = "KIND", value_parser = ["memory", "disk", "transient"])]
    pub durability: Option<String>,
    /// Same as `--durability transient`.
    #[arg(long, conflicts_with = "durability")]
    pub transient: bool,
    /// When a disk queue fsyncs [default: always]: always, never or interval:MS.
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<Fsync>,
    /// Requeue a delivery not acked within this time; 0 = never [default: 30s; at most 24h].
    #[arg(long, alias = "ack-timeout", value_name = "DURATION", value_parser = parse_millis)]
    pub ack_timeout_ms: Option<u64>,
    /// Dead-letter (or, without --dead-letter, drop) a message after this many deliveries; 0 or
    /// unlimited for no limit [default: 20].
    #[arg(long, value_name = "N", value_parser = parse_deliveries)]
    pub max_deliveries: Option<u32>,
    /// Queue (which must exist) receiving rejected, expired and over-delivered messages
    /// [default: none].
    #[arg(long, value_name = "QUEUE")]
    pub dead_letter: Option<String>,
    /// Time-to-live of messages that have none of their own [default: none].
    #[arg(long, alias = "ttl", value_name = "DURATION", value_parser = parse_millis)]
    pub ttl_ms: Option<u64>,
    /// Exchange receiving dead letters instead of --dead-letter (it need not exist yet)
    /// [default: none].
    #[arg(long, value_name = "EXCHANGE")]
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead letters sent to --dead-letter-exchange [default: each message's own].
    #[arg(long, value_name = "KEY", requires = "dead_letter_exchange")]
    pub dead_letter_routing_key: Option<String>,
    /// Deliver to one consumer at a time (the longest-subscribed); the next takes over when it
    /// leaves.
    #[arg(long)]
    pub single_active_consumer: bool,
    /// Delete the queue once it has gone unused (no consumer, no get, no redeclare) this long
    /// [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub expires: Option<u64>,
    /// Copies a cluster keeps: 1 = a local queue on the node reached; the cluster's node count
    /// = a replicated queue (on disk, fsync always), served by its Raft leader [default: 1].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// Publish rate limit in messages per second, burst one second's worth [default: none].
    #[arg(long, value_name = "N")]
    pub rate_msgs: Option<u32>,
    /// Publish rate limit in payload bytes per second, burst one second's worth [default:
    /// none].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub rate_bytes: Option<u64>,
    /// How long a message id is remembered for deduplication (a publish whose id was stored
    /// within it is a duplicate, not stored again) [default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub dedup_window: Option<u64>,
    /// Most message ids remembered for deduplication [default: 100000].
    #[arg(long, value_name = "N")]
    pub dedup_max_ids: Option<u32>,
    /// Turn deduplication by message id off.
    #[arg(long, conflicts_with_all = ["dedup_window", "dedup_max_ids"])]
    pub no_dedup: bool,
    /// Compare every setting, given or not, with the existing queue (flags not given mean the
    /// defaults), as the wire protocol's Declare does.
    #[arg(long)]
    pub exact: bool,
}

impl DeclareArgs {
    /// The config these flags describe for a new queue: defaults where no flag is given.
    pub(crate) fn config(&self) -> anyhow::Result<QueueConfig> {
        self.config_over(&QueueConfig::default())
    }

    /// `base` with the settings given as flags applied: what a redeclare of a queue whose
    /// config is `base` must request so that only the given flags are compared.
    pub(crate) fn config_over(&self, base: &QueueConfig) -> anyhow::Result<QueueConfig> {
        let mut c = base.clone();
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
        // The shared rule on the combination (an fsync policy on a memory queue is refused).
        let kind = if self.transient {
            Some("transient")
        } else {
            self.durability.as_deref()
        };
        let named = Durability::from_parts(kind, self.fsync).map_err(|e| anyhow::anyhow!("{e}"))?;
        c.durability = match (kind, self.fsync, base.durability) {
            (None, None, existing) => existing,
            // `--durability disk` alone keeps an existing disk queue's fsync policy.
            (Some("disk"), None, Durability::Disk(f)) => Durability::Disk(f),
            _ => named,
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
        if let Some(v) = &self.dead_letter_exchange {
            c.dead_letter_exchange = Some(v.clone());
        }
        if let Some(v) = &self.dead_letter_routing_key {
            c.dead_letter_routing_key = Some(v.clone());
        }
        if self.single_active_consumer {
            c.single_active_consumer = true;
        }
        if let Some(v) = self.expires {
            c.expires_ms = Some(v);
        }
        if let Some(n) = self.replicas {
            c.replicas = n;
            if n > 1 && self.durability.is_none() && self.fsync.is_none() {
                // A replicated queue's storage (the only one accepted), unless the user chose
                // another (then the broker says why not).
                c.durability = Durability::Disk(Fsync::Always);
            }
        }
        if self.rate_msgs.is_some() || self.rate_bytes.is_some() {
            let mut rl = c.rate_limit.unwrap_or_default();
            if let Some(v) = self.rate_msgs {
                rl.msgs_per_sec = Some(v);
                rl.burst_msgs = v;
            }
            if let Some(v) = self.rate_bytes {
                rl.bytes_per_sec = Some(v);
                rl.burst_bytes = v;
            }
            c.rate_limit = Some(rl);
        }
        if self.no_dedup {
            c.dedup = None;
        } else if self.dedup_window.is_some() || self.dedup_max_ids.is_some() {
            let mut d = c.dedup.unwrap_or_default();
            if let Some(w) = self.dedup_window {
                d.window_ms = Some(w);
            }
            if let Some(n) = self.dedup_max_ids {
                d.max_ids = n;
            }
            c.dedup = Some(d);
        }
        Ok(c)
    }
}

/// The broker's answer for a queue that does not exist.
fn is_unknown_queue(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Server {
            code: ErrorCode::UnknownQueue,
            ..
        }
    )
}

/// `levee queue …`
pub(crate) async fn queue(conn: &Conn, cmd: QueueCmd) -> anyhow::Result<Outcome> {
    let client = match cmd.queue_name() {
        Some(name) => conn.client_for(name).await?,
        None => conn.client().await?,
    };
    match cmd {
        QueueCmd::Declare(args) => {
            let config = if args.exact {
                args.config()?
            } else {
                match client.inspect(&args.name).await {
                    Ok(existing) => args.config_over(&existing.config)?,
                    Err(e) if is_unknown_queue(&e) => args.config()?,
                    Err(e) => return Err(e.into()),
                }
            };
            // The broker applies the same validation; checking here names the flag's field
            // before anything is sent.
            config
                .validate(&args.name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let ok = client.declare(&args.name, config).await?;
            println!(
                "{} {} ({} messages)",
                if ok.created { "created" } else { "exists" },
                args.name,
                ok.messages
            );
        }
        QueueCmd::Update(args) => {
            let existing = client.inspect(&args.name).await?.config;
            let config = args.config_over(&existing)?;
            config
                .validate(&args.name)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let messages = client.update(&args.name, config.clone()).await?;
            let changed = existing.describe_differences(&config);
            if changed.is_empty() {
                println!("unchanged {} ({messages} messages)", args.name);
            } else {
                println!("updated {} ({messages} messages): {changed}", args.name);
            }
        }
        QueueCmd::List { json } => {
            let names = client.list_queues().await?;
            if json {
                println!("{}", serde_json::to_string(&names)?);
            } else {
                for name in names {
                    println!("{name}");
                }
            }
        }
        QueueCmd::Inspect { name, json } => {
            let info = client.inspect(&name).await?;
            if json {
                println!("{}", snapshot_json(info));
            } else {
                print!("{}", render_info(&info));
            }
        }
        QueueCmd::Peek { name, count, json } => {
            for d in client.peek(&name, count).await? {
                if json {
                    println!("{}", levee_broker::http::peek_json(&d));
                } else {
                    println!("{}", render_peeked(&d));
                }
            }
        }
        QueueCmd::Move {
            name,
            to,
            max,
            header,
        } => {
            let header = match &header {
                Some(h) => Some(
                    h.split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected NAME=VALUE"))?,
                ),
                None => None,
            };
            let header = header.map(|(n, v)| (n, v.as_bytes()));
            let n = client.move_messages(&name, &to, max, header).await?;
            println!("moved {n} messages from {name} to {to}");
        }
        QueueCmd::Purge { name } => println!("purged {} messages", client.purge(&name).await?),
        QueueCmd::Delete { name } => {
            println!("deleted {name} ({} messages)", client.delete(&name).await?);
        }
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}

/// One peeked message on one line: seq, delivery count, headers, payload preview (80 bytes).
fn render_peeked(d: &levee_proto::Delivery) -> String {
    let m = &d.message;
    let mut line = format!("seq={} deliveries={}", d.seq, d.delivery_count);
    if let Some(id) = &m.message_id {
        line.push_str(&format!(" id={}", String::from_utf8_lossy(id)));
    }
    for (n, v) in &m.headers {
        line.push_str(&format!(" {n}={}", String::from_utf8_lossy(v)));
    }
    let cut = m.payload.len().min(80);
    let preview = String::from_utf8_lossy(&m.payload[..cut]);
    let more = if m.payload.len() > cut { "…" } else { "" };
    line.push_str(&format!(
        " payload={preview:?}{more} ({} bytes)",
        m.payload.len()
    ));
    line
}

/// The JSON of one queue, the same document as the HTTP API's (no storage figures: those are
/// not on the wire protocol).
fn snapshot_json(info: QueueInfo) -> String {
    QueueSnapshot {
        info,
        storage: None,
    }
    .to_json()
    .to_string()
}

/// A queue's config in the words and units its flags take: `max_bytes=64MiB`,
/// `durability=disk fsync=interval:50`, `max_deliveries=unlimited`, `ttl=none`.
pub(crate) fn render_config(c: &QueueConfig) -> String {
    let none = || "none".to_string();
    let mut out = format!(
        "max_messages={} max_bytes={} overflow={} order={} durability={}",
        c.max_messages,
        format_size(c.max_bytes),
        c.overflow,
        c.order,
        c.durability.as_str()
    );
    if let Some(f) = c.durability.fsync() {
        out.push_str(&format!(" fsync={f}"));
    }
    let rl = c.rate_limit.unwrap_or_default();
    let rate = |rate: Option<u64>, burst: u64, fmt: fn(u64) -> String| match rate {
        None => none(),
        Some(r) if r == burst => fmt(r),
        Some(r) => format!("{}(burst:{})", fmt(r), fmt(burst)),
    };
    out.push_str(&format!(
        " ack_timeout={} max_deliveries={} dead_letter={} ttl={} rate_msgs={} rate_bytes={}",
        if c.ack_timeout_ms == 0 {
            "never".to_string()
        } else {
            format_millis(c.ack_timeout_ms)
        },
        c.max_deliveries
            .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
        c.dead_letter.clone().unwrap_or_else(none),
        c.message_ttl_ms.map_or_else(none, format_millis),
        rate(rl.msgs_per_sec.map(u64::from), rl.burst_msgs.into(), |n| n
            .to_string()),
        rate(rl.bytes_per_sec, rl.burst_bytes, format_size),
    ));
    // Shown only when set, so the line of a queue without them reads as before.
    if let Some(x) = &c.dead_letter_exchange {
        out.push_str(&format!(" dead_letter_exchange={x}"));
        if let Some(k) = &c.dead_letter_routing_key {
            out.push_str(&format!(" dead_letter_routing_key={k}"));
        }
    }
    if c.single_active_consumer {
        out.push_str(" single_active_consumer");
    }
    if let Some(ms) = c.expires_ms {
        out.push_str(&format!(" expires={}", format_millis(ms)));
    }
    if c.replicas != 1 {
        out.push_str(&format!(" replicas={}", c.replicas));
    }
    match c.dedup {
        None => out.push_str(" dedup=off"),
        Some(d) => out.push_str(&format!(
            " dedup={}/{}",
            d.window_ms.map_or_else(none, format_millis),
            d.max_ids
        )),
    }
    out
}

/// `levee queue inspect` / `levee stats QUEUE`: the full view of one queue, several lines.
fn render_info(info: &QueueInfo) -> String {
    let s = &info.stats;
    let mut out = format!("queue {}\n", info.queue);
    out.push_str(&format!("  config     {}\n", render_config(&info.config)));
    out.push_str(&format!(
        "  messages   ready={} unacked={} bytes={} publish_credit_outstanding={}\n",
        s.ready, s.unacked, s.bytes, s.publish_credit_outstanding
    ));
    out.push_str(&format!(
        "  counters   published={} stored={} rejected={} acked={} dropped={} expired={} dead_lettered={}\n",
        s.published,
        s.stored,
        s.rejected,
        s.acked,
        s.dropped_total(),
        s.expired,
        s.dead_lettered
    ));
    for (reason, n) in &s.dropped {
        out.push_str(&format!("  dropped    {reason}={n}\n"));
    }
    out.push_str(&format!(
        "  rates/s    publish={} deliver={} ack={}\n",
        s.publish_rate, s.deliver_rate, s.ack_rate
    ));
    for cs in &s.consumers {
        out.push_str(&format!(
            "  consumer   {} credit={} unacked={}\n",
            cs.subscription, cs.credit, cs.unacked
        ));
    }
    let loss = if s.stored == 0 {
        0.0
    } else {
        100.0 * s.dropped_total() as f64 / s.stored as f64
    };
    out.push_str(&format!(
        "  loss       {loss:.2}%  balanced={}\n",
        if s.is_balanced() { "yes" } else { "NO" }
    ));
    out
}

/// Message numbers (1-based, in publish order) as compact ranges: `#3, #5-#9`. Keeps at most
/// [`Ranges::MAX`] ranges (then counts the rest), so a long run stays bounded.
#[derive(Debug, Default)]
struct Ranges {
    ranges: Vec<(u64, u64)>,
    more: u64,
}

impl Ranges {
    const MAX: usize = 32;

    fn add(&mut self, n: u64) {
        if let Some((_, hi)) = self.ranges.last_mut()
            && *hi + 1 == n
        {
            *hi = n;
        } else if self.ranges.len() < Self::MAX {
            self.ranges.push((n, n));
        } else {
            self.more += 1;
        }
    }

    fn from_sorted(ns: impl IntoIterator<Item = u64>) -> Ranges {
        let mut r = Ranges::default();
        for n in ns {
            r.add(n);
        }
        r
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl std::fmt::Display for Ranges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if lo == hi {
                write!(f, "#{lo}")?;
            } else {
                write!(f, "#{lo}-#{hi}")?;
            }
        }
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// `levee publish`
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 every message stored; 3 some were dropped or rejected \
    by the queue's policy (0 with --allow-drops); 4 the connection was lost with messages \
    unconfirmed; 130 interrupted (Ctrl-C); 1 other errors. On Ctrl-C or a lost connection the \
    counts so far and the numbers of the messages not confirmed are printed on stderr.\n\n\
    Examples:\n  \
    levee publish jobs hello world\n  \
    levee publish jobs --count 100000 --size 1KiB\n  \
    tail -f app.log | levee publish logs\n  \
    levee publish prices --key EURUSD 1.0842 --ttl 10s"
)]
pub(crate) struct PublishArgs {
    /// Queue name (with --exchange: the first message).
    #[arg(required_unless_present = "exchange")]
    pub queue: Option<String>,
    /// Messages to publish; with none, one message per line of standard input, published as
    /// each line arrives (or generated payloads with --count).
    pub messages: Vec<String>,
    /// Publish this many messages: the given ones repeated, or generated `message-N` payloads.
    #[arg(long)]
    pub count: Option<u64>,
    /// Generated payload size (with --count and no messages): 256, 1KiB, 16MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_usize)]
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
    /// Time-to-live of each message: 10s, 500ms, 5m (a bare number is milliseconds).
    #[arg(long, alias = "ttl", value_name = "DURATION", value_parser = parse_millis)]
    pub ttl_ms: Option<u64>,
    /// Exit 0 even when the broker dropped or rejected some messages.
    #[arg(long)]
    pub allow_drops: bool,
    /// Publish to this exchange instead of a queue ("" is the default exchange).
    #[arg(long, value_name = "EXCHANGE")]
    pub exchange: Option<String>,
    /// Routing key of messages published to --exchange [default: empty].
    #[arg(long, value_name = "KEY", requires = "exchange", default_value = "")]
    pub routing_key: String,
    /// A header on every message, NAME=VALUE (repeatable; headers exchanges match on them).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub conn: Conn,
}

/// Where `publish` takes its payloads from.
pub(crate) enum Source {
    /// Arguments or generated payloads.
    Iter(Box<dyn Iterator<Item = Bytes> + Send>),
    /// Lines of standard input, read by a thread as they arrive.
    Stdin(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>),
}

impl Source {
    /// Lines read ahead of the producer; bounds the memory of a fast input behind a slow queue.
    const STDIN_AHEAD: usize = 256;

    pub(crate) fn stdin() -> Source {
        let (tx, rx) = tokio::sync::mpsc::channel(Self::STDIN_AHEAD);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for line in stdin.lock().lines() {
                let stop = line.is_err();
                if tx.blocking_send(line.map(Bytes::from)).is_err() || stop {
                    break;
                }
            }
        });
        Source::Stdin(rx)
    }

    /// The next payload; `None` at the end. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        match self {
            Source::Iter(it) => it.next().map(Ok),
            Source::Stdin(rx) => rx.recv().await,
        }
    }
}

/// Why the publish loop stopped.
enum Stop {
    EndOfInput,
    Interrupted,
    Failed(anyhow::Error),
}

/// Outcomes of `publish` so far.
#[derive(Default)]
struct Tally {
    published: u64,
    stored: u64,
    dropped: u64,
    rejected: u64,
    /// Confirms that failed with the connection: outcome unknown.
    lost: u64,
    /// Message numbers published and not yet confirmed.
    pending: BTreeSet<u64>,
    /// Message numbers whose confirm failed with the connection.
    lost_ids: Ranges,
    /// Message numbers dropped or rejected.
    not_stored: Ranges,
    last_rejection: Option<String>,
}

impl Tally {
    /// Counts one confirm; false when it failed with the connection (nothing more can be
    /// published: the CLI does not reconnect).
    fn confirm(&mut self, n: u64, r: Result<PublishOutcome, ClientError>) -> bool {
        self.pending.remove(&n);
        let lost = matches!(
            r,
            Err(ClientError::ConnectionLost | ClientError::Timeout(_))
        );
        match r {
            // A duplicate (its message id was stored before) is in the queue once: stored.
            Ok(PublishOutcome::Stored { .. } | PublishOutcome::Duplicate { .. }) => {
                self.stored += 1;
            }
            Ok(PublishOutcome::Dropped { reason }) => {
                self.dropped += 1;
                self.not_stored.add(n);
                self.last_rejection = Some(format!("dropped ({reason})"));
            }
            Ok(other) => {
                self.rejected += 1;
                self.not_stored.add(n);
                self.last_rejection = Some(format!("{other:?}"));
            }
            Err(ClientError::ConnectionLost | ClientError::Timeout(_)) => {
                self.lost += 1;
                self.lost_ids.add(n);
            }
            // Rejected, server errors, an open breaker: the message was not stored.
            Err(e) => {
                self.rejected += 1;
                self.not_stored.add(n);
                self.last_rejection = Some(e.to_string());
            }
        }
        !lost
    }

    fn unconfirmed(&self) -> u64 {
        self.lost + self.pending.len() as u64
    }

    fn line(&self, queue: &str, secs: f64) -> String {
        format!(
            "published {} to {queue}: stored={} dropped={} rejected={} unconfirmed={} in {secs:.2}s ({:.0} msg/s)",
            self.published,
            self.stored,
            self.dropped,
            self.rejected,
            self.unconfirmed(),
            self.published as f64 / secs.max(1e-9)
        )
    }
}

/// Counts the outcome of message `n`, or, following a failover, puts it back for sending again
/// if it was lost. False when the command must stop (a lost confirm without following).
fn settle(
    t: &mut Tally,
    resend: &mut Option<crate::cli_follow::Resend>,
    n: u64,
    r: Result<PublishOutcome, ClientError>,
) -> bool {
    if let Some(rs) = resend.as_mut() {
        if let Err(e) = &r
            && crate::cli_follow::retriable(e)
        {
            rs.again(n);
            return true;
        }
        rs.settled(n);
    }
    t.confirm(n, r)
}

/// Whether the connection is gone for good: at once without following, after
/// [`crate::cli_follow::FOLLOW_FOR`] with.
fn gone(client: &Client, resend: &mut Option<crate::cli_follow::Resend>) -> bool {
    match resend.as_mut() {
        Some(r) => r.gave_up(client.is_connected()),
        None => !client.is_connected(),
    }
}

/// `levee publish`: prints one summary line of outcomes (stdout when it ran to the end, stderr
/// with the reason when it was cut short).
pub(crate) async fn publish(conn: &Conn, args: PublishArgs) -> anyhow::Result<Outcome> {
    if args.exchange.is_some() {
        return crate::cli_routing::publish(conn, args).await;
    }
    let queue = args.queue.clone().unwrap_or_default();
    let headers = crate::cli_routing::parse_headers(&args.headers)?;
    let mut sigint = Interrupt::install()?;
    let mut source = if !args.messages.is_empty() {
        let given: Vec<Bytes> = args
            .messages
            .iter()
            .map(|m| Bytes::from(m.clone()))
            .collect();
        let total = args.count.unwrap_or(given.len() as u64) as usize;
        Source::Iter(Box::new(given.into_iter().cycle().take(total)))
    } else if let Some(count) = args.count {
        let size = args.size;
        Source::Iter(Box::new((0..count).map(move |i| match size {
            Some(n) => Bytes::from(vec![(i % 251) as u8; n]),
            None => Bytes::from(format!("message-{i}")),
        })))
    } else {
        Source::stdin()
    };
    let client = conn.client_for_stream(&queue).await?;
    let producer = client.producer(&queue, ProducerOptions::default()).await?;
    let started = Instant::now();
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut t = Tally::default();
    // Following a failover (several nodes given, see `cli_follow`): lost confirms are sent
    // again with the same message id instead of ending the command.
    let mut resend = conn.follows().then(crate::cli_follow::Resend::new);
    let mut confirms = FuturesUnordered::new();
    let mut alive = tokio::time::interval(Duration::from_millis(250));
    alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let lost = || Stop::Failed(anyhow::Error::new(ClientError::ConnectionLost));
    let stop = 'run: loop {
        // A message to send again first, else the next payload (and its pacing slot), taking
        // confirms as they come.
        let (n, m) = match resend.as_mut().and_then(|r| r.next_retry()) {
            Some(again) => again,
            None => {
                let n = t.published + 1;
                let due = interval.map(|iv| started + iv.mul_f64(t.published as f64));
                let payload = loop {
                    tokio::select! {
                        biased;
                        () = sigint.recv() => break 'run Stop::Interrupted,
                        Some((n, r)) = confirms.next(), if !confirms.is_empty() => {
                            if !settle(&mut t, &mut resend, n, r) {
                                break 'run lost();
                            }
                            if resend.as_ref().is_some_and(|r| r.has_retries()) {
                                continue 'run;
                            }
                        }
                        // Notice a broker that went away while the input is quiet (`tail -f`).
                        _ = alive.tick() => {
                            if gone(&client, &mut resend) {
                                break 'run lost();
                            }
                        }
                        p = async {
                            if let Some(due) = due {
                                tokio::time::sleep_until(due.into()).await;
                            }
                            source.next().await
                        } => match p {
                            None => break 'run Stop::EndOfInput,
                            Some(Err(e)) => break 'run Stop::Failed(
                                anyhow::Error::new(e).context("reading standard input"),
                            ),
                            Some(Ok(p)) => break p,
                        },
                    }
                };
                let mut m = Message::new(payload).with_priority(args.priority);
                if let Some(k) = &args.key {
                    m = m.with_key(k.clone());
                }
                if let Some(ttl) = args.ttl_ms {
                    m = m.with_ttl_ms(ttl);
                }
                m.headers.clone_from(&headers);
                if let Some(r) = resend.as_mut() {
                    r.track(n, &mut m);
                }
                t.published = n;
                t.pending.insert(n);
                (n, m)
            }
        };
        // Admission: window room and, on a block queue, publish credit.
        let publishing = producer.publish(m);
        tokio::pin!(publishing);
        let confirm = loop {
            tokio::select! {
                biased;
                () = sigint.recv() => break 'run Stop::Interrupted,
                Some((n, r)) = confirms.next(), if !confirms.is_empty() => {
                    if !settle(&mut t, &mut resend, n, r) {
                        break 'run lost();
                    }
                }
                r = &mut publishing => break r,
            }
        };
        match confirm {
            Ok(c) => confirms.push(crate::cli_follow::numbered(n, c)),
            Err(e) if resend.is_some() && crate::cli_follow::retriable(&e) => {
                // Not sent (the connection is moving): again in a moment.
                if let Some(r) = resend.as_mut() {
                    r.later(n);
                    if r.gave_up(client.is_connected()) {
                        break lost();
                    }
                }
                tokio::select! {
                    biased;
                    () = sigint.recv() => break Stop::Interrupted,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Err(e) => {
                t.pending.remove(&n);
                if n == t.published {
                    t.published -= 1;
                }
                break Stop::Failed(
                    anyhow::Error::new(e).context(format!("publishing message #{n} (not sent)")),
                );
            }
        }
    };
    // Send the open batch and wait for the outstanding confirms (following a failover: and send
    // again what was lost); a (further) Ctrl-C stops waiting: what is still pending is reported
    // as unconfirmed.
    let flush = producer.flush();
    tokio::pin!(flush);
    let mut flushed = false;
    let mut abandoned = false;
    let resending = matches!(stop, Stop::EndOfInput);
    loop {
        if resending && let Some(r) = resend.as_mut() {
            while let Some((n, m)) = r.next_retry() {
                match producer.try_publish(m) {
                    Ok(c) => confirms.push(crate::cli_follow::numbered(n, c)),
                    Err(_) => {
                        r.later(n);
                        break;
                    }
                }
            }
        }
        let retrying = resend.as_ref().is_some_and(|r| r.has_retries());
        if confirms.is_empty() && !(resending && retrying) {
            break;
        }
        tokio::select! {
            biased;
            () = sigint.recv() => {
                abandoned = true;
                break;
            }
            Some((n, r)) = confirms.next(), if !confirms.is_empty() => {
                settle(&mut t, &mut resend, n, r);
            }
            () = &mut flush, if !flushed => flushed = true,
            _ = alive.tick() => {
                if resend.is_some() && gone(&client, &mut resend) {
                    abandoned = true;
                    break;
                }
            }
        }
    }
    if let Some(r) = &resend
        && r.resent > 0
    {
        eprintln!(
            "levee: sent {} messages again after a lost connection (same message ids: stored once)",
            r.resent
        );
    }
    let stop = match stop {
        Stop::EndOfInput if abandoned => Stop::Interrupted,
        s => s,
    };
    let secs = started.elapsed().as_secs_f64();
    let unconfirmed = Ranges::from_sorted(t.pending.iter().copied());
    let report_cut_short = |why: &str| {
        eprintln!("levee: {why}: {}", t.line(&queue, secs));
        if !unconfirmed.is_empty() || !t.lost_ids.is_empty() {
            let mut ids = t.lost_ids.to_string();
            if !unconfirmed.is_empty() {
                if !ids.is_empty() {
                    ids.push_str(", ");
                }
                ids.push_str(&unconfirmed.to_string());
            }
            eprintln!("levee: not confirmed (may or may not be stored): {ids}");
        }
    };
    let outcome = match stop {
        Stop::EndOfInput if t.lost == 0 => {
            println!("{}", t.line(&queue, secs));
            Outcome::Done
        }
        Stop::EndOfInput => {
            report_cut_short("connection lost");
            Outcome::Unconfirmed
        }
        Stop::Interrupted => {
            report_cut_short(if abandoned {
                "interrupted (stopped waiting for confirms)"
            } else {
                "interrupted"
            });
            Outcome::Interrupted
        }
        Stop::Failed(e) => {
            report_cut_short(&format!("stopped: {e:#}"));
            if t.unconfirmed() > 0 {
                Outcome::Unconfirmed
            } else {
                return Err(e);
            }
        }
    };
    if !t.not_stored.is_empty() {
        eprintln!("levee: not stored: {}", t.not_stored);
    }
    if let Some(e) = &t.last_rejection {
        eprintln!("last rejection: {e}");
    }
    client.close().await.ok();
    Ok(match outcome {
        Outcome::Done if t.dropped + t.rejected > 0 && !args.allow_drops => Outcome::NotStored,
        o => o,
    })
}

/// `levee consume`
#[derive(Args, Debug)]
#[command(
    after_help = "Stop it with Ctrl-C (the messages in hand are returned to the queue \
    and the counts printed, exit status 130), or with --count / --idle-ms.\n\n\
    Examples:\n  \
    levee consume jobs\n  \
    levee consume jobs --count 10 --credit 1\n  \
    levee consume jobs --quiet --idle 2s\n  \
    levee consume jobs | head -5    (unread messages are returned to the queue)"
)]
pub(crate) struct ConsumeArgs {
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
    /// Stop when no message arrived for this long: 2s, 500ms (a bare number is milliseconds).
    #[arg(long, alias = "idle", value_name = "DURATION", value_parser = parse_millis)]
    pub idle_ms: Option<u64>,
    /// Simulated processing time per message: 10ms, 1s (a bare number is milliseconds).
    #[arg(long, alias = "work", value_name = "DURATION", value_parser = parse_millis, default_value = "0")]
    pub work_ms: u64,
    /// Only count messages; do not print them.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// `levee consume`: prints each message (or counts them) and acks it after processing; the
/// summary (consumed, acked) goes to stderr however it ends.
pub(crate) async fn consume(conn: &Conn, args: ConsumeArgs) -> anyhow::Result<Outcome> {
    let mut sigint = Interrupt::install()?;
    // Several nodes given: the consumer follows a failover (see `cli_follow`); an ack lost with
    // the connection means the message comes again (at-least-once).
    let follow = conn.follows();
    let client = conn.client_for_stream(&args.queue).await?;
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
    let (mut n, mut acked) = (0u64, 0u64);
    let idle = args.idle_ms.map(Duration::from_millis);
    let work = Duration::from_millis(args.work_ms);
    let mut out = std::io::stdout().lock();
    let mut failure: Option<anyhow::Error> = None;
    let mut interrupted = false;
    let (mut acks_lost, mut failing_since) = (0u64, None::<Instant>);
    while args.count.is_none_or(|c| n < c) {
        let next = tokio::select! {
            biased;
            () = sigint.recv() => {
                interrupted = true;
                break;
            }
            next = async {
                match idle {
                    Some(d) => tokio::time::timeout(d, consumer.next()).await.ok(),
                    None => Some(consumer.next().await),
                }
            } => next,
        };
        let Some(Some(delivery)) = next else { break };
        let delivery = match delivery {
            Ok(d) => {
                failing_since = None;
                d
            }
            Err(e)
                if follow
                    && crate::cli_follow::retriable(&e)
                    && failing_since.get_or_insert_with(Instant::now).elapsed()
                        < crate::cli_follow::FOLLOW_FOR =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context("consuming"));
                break;
            }
        };
        n += 1;
        if !work.is_zero() {
            tokio::select! {
                biased;
                () = sigint.recv() => {
                    interrupted = true;
                    break; // the delivery is dropped unsettled: back to the queue
                }
                () = tokio::time::sleep(work) => {}
            }
        }
        if !args.quiet {
            let written = out
                .write_all(delivery.payload())
                .and_then(|()| out.write_all(b"\n"))
                .and_then(|()| out.flush());
            if let Err(e) = written {
                // `levee consume q | head`: the reader is gone; this message goes back.
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    failure = Some(anyhow::Error::new(e).context("writing to standard output"));
                }
                n -= 1;
                break;
            }
        }
        if !args.no_ack {
            match delivery.ack() {
                Ok(()) => acked += 1,
                // The connection moved: the message comes again, marked redelivered.
                Err(e) if follow && crate::cli_follow::retriable(&e) => acks_lost += 1,
                Err(e) => {
                    failure = Some(anyhow::Error::new(e).context("acking"));
                    break;
                }
            }
        } else {
            acked += 1;
        }
    }
    drop(out);
    consumer.close().await.ok();
    let secs = started.elapsed().as_secs_f64();
    let summary = format!(
        "consumed {n} from {} in {secs:.2}s ({:.0} msg/s): acked={acked}{}",
        args.queue,
        n as f64 / secs.max(1e-9),
        if args.no_ack { " (auto-ack)" } else { "" }
    );
    client.close().await.ok();
    if acks_lost > 0 {
        eprintln!(
            "levee: {acks_lost} acks were lost with a connection: those messages are delivered again"
        );
    }
    if let Some(e) = failure {
        eprintln!("levee: stopped: {summary}");
        return Err(e);
    }
    if interrupted {
        eprintln!("levee: interrupted: {summary}");
        return Ok(Outcome::Interrupted);
    }
    eprintln!("{summary}");
    Ok(Outcome::Done)
}

/// `levee stats`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    levee stats\n  \
    levee stats --watch\n  \
    levee stats jobs\n  \
    levee stats --json --watch | jq -c '.queues[] | {name, ready: .stats.ready}'")]
pub(crate) struct StatsArgs {
    /// Only this queue.
    pub queue: Option<String>,
    /// Print again every second until Ctrl-C, which ends it with status 0 (redrawn in place on
    /// a terminal, timestamped frames otherwise).
    #[arg(long)]
    pub watch: bool,
    /// One JSON document per line: `{"time": ..., "queues": [...]}` (the queue documents of
    /// `GET /api/queues`), or with QUEUE that queue's document.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

/// A UTC timestamp, `2026-12-01T21:40:05Z`.
pub(crate) fn utc_timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The table of `levee stats`, one line per queue.
fn render_table(infos: &[QueueInfo]) -> String {
    let row = |cols: [&dyn std::fmt::Display; 12]| {
        format!(
            "{:<24} {:>10} {:>10} {:>12} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6],
            cols[7],
            cols[8],
            cols[9],
            cols[10],
            cols[11]
        )
    };
    let mut out = row([
        &"queue",
        &"ready",
        &"unacked",
        &"bytes",
        &"published",
        &"rejected",
        &"acked",
        &"dropped",
        &"expired",
        &"consumers",
        &"pub/s",
        &"ack/s",
    ]);
    for info in infos {
        let s = &info.stats;
        out.push_str(&row([
            &info.queue,
            &s.ready,
            &s.unacked,
            &s.bytes,
            &s.published,
            &s.rejected,
            &s.acked,
            &s.dropped_total(),
            &s.expired,
            &s.consumers.len(),
            &s.publish_rate,
            &s.ack_rate,
        ]));
    }
    out
}

/// `levee stats`: one line per queue (or the full view of one queue); `--json` for scripts.
pub(crate) async fn stats(conn: &Conn, args: StatsArgs) -> anyhow::Result<Outcome> {
    let mut sigint = Interrupt::install()?;
    let client = match &args.queue {
        Some(q) => conn.client_for(q).await?,
        None => conn.client().await?,
    };
    let redraw = args.watch && !args.json && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let now = SystemTime::now();
        let text = match &args.queue {
            Some(q) => {
                let info = client.inspect(q).await?;
                if args.json {
                    snapshot_json(info) + "\n"
                } else {
                    render_info(&info)
                }
            }
            None => {
                let mut infos = Vec::new();
                for name in client.list_queues().await? {
                    match client.inspect(&name).await {
                        Ok(info) => infos.push(info),
                        Err(e) if is_unknown_queue(&e) => {} // deleted meanwhile
                        Err(e) => return Err(e.into()),
                    }
                }
                if args.json {
                    let snaps: Vec<QueueSnapshot> = infos
                        .into_iter()
                        .map(|info| QueueSnapshot {
                            info,
                            storage: None,
                        })
                        .collect();
                    let queues = render_queues_json(&snaps, &[]);
                    format!(
                        "{{\"time\":\"{}\",\"queues\":{}}}\n",
                        utc_timestamp(now),
                        queues.trim_end()
                    )
                } else {
                    render_table(&infos)
                }
            }
        };
        let mut out = std::io::stdout().lock();
        let written = if args.json || !args.watch {
            out.write_all(text.as_bytes())
        } else if redraw {
            // Home, clear, then the frame: redrawn in place.
            write!(
                out,
                "\x1b[H\x1b[2J{}  levee stats\n{text}",
                utc_timestamp(now)
            )
        } else {
            write!(
                out,
                "{}{}\n{text}",
                if first { "" } else { "\n" },
                utc_timestamp(now)
            )
        };
        if let Err(e) = written.and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                break;
            }
            return Err(e.into());
        }
        first = false;
        if !args.watch {
            break;
        }
        tokio::select! {
            () = sigint.recv() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_proto::RateLimit;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // a leap day
        assert_eq!(utc_timestamp(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(t), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn ranges_are_compact_and_bounded() {
        let r = Ranges::from_sorted([1, 2, 3, 5, 7, 8]);
        assert_eq!(r.to_string(), "#1-#3, #5, #7-#8");
        let r = Ranges::from_sorted((0..200).map(|i| i * 2));
        assert_eq!(r.ranges.len(), Ranges::MAX);
        assert!(r.to_string().ends_with(" and 168 more"), "{r}");
    }

    #[test]
    fn config_is_printed_in_the_words_of_the_flags() {
        let c = QueueConfig {
            durability: Durability::Disk(Fsync::Interval(50)),
            max_deliveries: None,
            ..QueueConfig::default()
        };
        assert_eq!(
            render_config(&c),
            "max_messages=100000 max_bytes=64MiB overflow=block order=fifo durability=disk \
             fsync=interval:50 ack_timeout=30s max_deliveries=unlimited dead_letter=none \
             ttl=none rate_msgs=none rate_bytes=none dedup=2m/100000"
        );
        let c = QueueConfig {
            durability: Durability::Memory,
            message_ttl_ms: Some(5_000),
            rate_limit: Some(RateLimit::msgs(100)),
            ..QueueConfig::default()
        };
        let text = render_config(&c);
        assert!(text.contains("durability=memory ack_timeout"), "{text}");
        assert!(
            text.contains("ttl=5s rate_msgs=100 rate_bytes=none"),
            "{text}"
        );
        let off = QueueConfig {
            dedup: None,
            ..QueueConfig::default()
        };
        assert!(render_config(&off).ends_with(" dedup=off"));
    }

    #[test]
    fn omitted_flags_keep_the_existing_settings() {
        let existing = QueueConfig {
            max_messages: 10,
            durability: Durability::Disk(Fsync::Never),
            dead_letter: Some("dlq".into()),
            ..QueueConfig::default()
        };
        let none = DeclareArgs {
            name: "q".into(),
            ..DeclareArgs::default()
        };
        assert_eq!(none.config_over(&existing).unwrap(), existing);
        let disk = DeclareArgs {
            durability: Some("disk".into()),
            ..DeclareArgs::default()
        };
        assert_eq!(disk.config_over(&existing).unwrap(), existing);
        let memory = DeclareArgs {
            durability: Some("memory".into()),
            max_messages: Some(20),
            ..DeclareArgs::default()
        };
        let c = memory.config_over(&existing).unwrap();
        assert_eq!((c.durability, c.max_messages), (Durability::Memory, 20));
        let both = DeclareArgs {
            durability: Some("memory".into()),
            fsync: Some(Fsync::Never),
            ..DeclareArgs::default()
        };
        let err = both.config_over(&existing).unwrap_err().to_string();
        assert!(err.contains("fsync"), "{err}");
    }
}
