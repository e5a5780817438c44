//! `levee serve`: settings from defaults, then a TOML config file, then `LEVEE_*` environment
//! variables, then flags (each overriding the one before); runs until SIGINT / SIGTERM.
//!
//! Security (`[[users]]`, `[tls]`, `allow_anonymous`) comes from the config file only, and is
//! read again on SIGHUP (users, permissions, certificates; other settings need a restart).
//!
//! On start it prints one line per listener to stdout, `levee: wire listening on ADDR` and
//! `levee: http listening on ADDR`, then `levee: amqp listening on ADDR` (or `levee: amqp off`),
//! with the bound addresses (so port 0 can be used in tests).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use levee_broker::{Broker, BrokerConfig};
use serde::Deserialize;

/// Flags of `levee serve`.
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// TOML config file (keys as the flags, with underscores: `listen`, `http`, `data_dir`, ...).
    #[arg(long, env = "LEVEE_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the wire protocol listener [default: 127.0.0.1:5680].
    #[arg(long, env = "LEVEE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address of the HTTP API, metrics and dashboard [default: 127.0.0.1:5681].
    #[arg(long, env = "LEVEE_HTTP")]
    http: Option<SocketAddr>,
    /// Directory of durable queues [default: ./levee-data].
    #[arg(long, env = "LEVEE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest frame accepted from a client: 1MiB, 16MiB, or bytes [default: 16MiB].
    #[arg(long, env = "LEVEE_MAX_FRAME", value_name = "SIZE", value_parser = crate::units::parse_size_usize)]
    max_frame: Option<usize>,
    /// Heartbeat interval: 10s, 500ms, or milliseconds [default: 10s].
    #[arg(long, alias = "heartbeat", env = "LEVEE_HEARTBEAT_MS", value_name = "DURATION", value_parser = crate::units::parse_millis_u32)]
    heartbeat_ms: Option<u32>,
    /// Most unconfirmed publish bytes per connection: 64MiB, or bytes [default: 64MiB].
    #[arg(long, env = "LEVEE_MAX_IN_FLIGHT_BYTES", value_name = "SIZE", value_parser = crate::units::parse_size)]
    max_in_flight_bytes: Option<u64>,
    /// Segment file size of queue logs: 64MiB, or bytes [default: 64MiB].
    #[arg(long, env = "LEVEE_SEGMENT_BYTES", value_name = "SIZE", value_parser = crate::units::parse_size)]
    segment_bytes: Option<u64>,
    /// Most open wire connections; more are refused with a Close saying so [default: 10000].
    #[arg(long, env = "LEVEE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most open HTTP connections; more are answered 503 [default: 1024].
    #[arg(long, env = "LEVEE_MAX_HTTP_CONNECTIONS")]
    max_http_connections: Option<usize>,
    /// Most bytes buffered, across all connections, for frames over 64 KiB still arriving;
    /// a connection whose frame does not fit waits (at least max_frame) [default: 256 MiB].
    #[arg(long, env = "LEVEE_MAX_PARTIAL_FRAME_BYTES")]
    max_partial_frame_bytes: Option<u64>,
    /// HTTP: ms to wait for a request's headers, from connect or the previous response (also the
    /// idle timeout between requests) [default: 30000].
    #[arg(long, env = "LEVEE_HTTP_HEADER_TIMEOUT_MS")]
    http_header_timeout_ms: Option<u32>,
    /// AMQP 0-9-1 listen address (default 127.0.0.1:5672; `off` disables the listener; port 0
    /// picks a free port, printed as `levee: amqp listening on ADDR`).
    #[arg(long, env = "LEVEE_AMQP", value_name = "ADDR|off")]
    amqp: Option<String>,
    /// AMQP: most payload bytes of publishes one connection may have held for full `block`
    /// queues before it is sent `connection.blocked` and no longer read (default 16 MiB).
    #[arg(long, env = "LEVEE_AMQP_MAX_HELD_BYTES", value_name = "SIZE", value_parser = crate::units::parse_size)]
    amqp_max_held_bytes: Option<u64>,
}

/// The config file: every key optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    http: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::units::de_size_usize")]
    max_frame: Option<usize>,
    #[serde(default, deserialize_with = "crate::units::de_millis_u32")]
    heartbeat_ms: Option<u32>,
    #[serde(default, deserialize_with = "crate::units::de_size")]
    max_in_flight_bytes: Option<u64>,
    #[serde(default, deserialize_with = "crate::units::de_size")]
    segment_bytes: Option<u64>,
    max_connections: Option<usize>,
    max_http_connections: Option<usize>,
    max_partial_frame_bytes: Option<u64>,
    http_header_timeout_ms: Option<u32>,
    /// Users (see docs/security.md): `[[users]] name, password_hash, permissions, ...`.
    #[serde(default)]
    users: Vec<levee_broker::security::UserConfig>,
    /// TLS on every listener: `[tls] cert, key, client_ca`.
    tls: Option<levee_broker::security::TlsConfig>,
    /// No users, yet listen on a public address (a warning at start).
    #[serde(default)]
    allow_anonymous: bool,
    amqp: Option<String>,
    #[serde(default, deserialize_with = "crate::units::de_size")]
    amqp_max_held_bytes: Option<u64>,
    /// Alert rules (see docs/operations.md): `[[alerts]] name, queue, <condition>, for_ms, ...`.
    #[serde(default)]
    alerts: Vec<levee_broker::ops::RuleConfig>,
    /// `[history] seconds = 900`: per-queue history kept at 1 s resolution.
    history: Option<HistoryConfig>,
    /// The shared write-ahead log: `[wal] enabled, file_bytes, max_pending_bytes, lazy_commit_ms`.
    wal: Option<WalFileConfig>,
    /// Clustering (docs/cluster.md): `[cluster] node_id, listen, data_dir` and
    /// `[[cluster.nodes]] id, cluster, wire`.
    cluster: Option<ClusterSection>,
}

/// `[history]`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct HistoryConfig {
    seconds: Option<u32>,
}

/// `[wal]`: levee-store's `WalConfig` (every key optional).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct WalFileConfig {
    /// `false`: every disk queue keeps a standalone log (`BrokerConfig::shared_wal`).
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "crate::units::de_size")]
    file_bytes: Option<u64>,
    #[serde(default, deserialize_with = "crate::units::de_size_usize")]
    max_pending_bytes: Option<usize>,
    #[serde(default, deserialize_with = "crate::units::de_millis_u32")]
    lazy_commit_ms: Option<u32>,
    #[serde(default, deserialize_with = "crate::units::de_size_usize")]
    write_behind_bytes: Option<usize>,
    #[serde(default, deserialize_with = "crate::units::de_size_usize")]
    write_behind_total: Option<usize>,
    /// Full WAL files kept as spares and reused (`WalConfig::recycle_files`); 0 deletes them.
    recycle_files: Option<usize>,
}

/// The `[cluster]` section.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    node_id: u64,
    /// This node's cluster (Raft) listener.
    listen: SocketAddr,
    /// Raft logs, snapshots and replicated queues [default: DATA_DIR/cluster].
    data_dir: Option<PathBuf>,
    /// Every member, this node included.
    nodes: Vec<ClusterNode>,
    /// Raft heartbeat interval, ms [default: 150]: must exceed the slowest round trip between
    /// nodes (it is also how long a leader waits for a follower's answer).
    raft_heartbeat_ms: Option<u64>,
    /// Shortest election timeout, ms [default: 600, or 4 heartbeats if more; at least 3].
    raft_election_timeout_ms: Option<u64>,
    /// The user this node logs in as on its peers' cluster listeners (one of the `[[users]]`,
    /// the same on every node, allowed to `manage` the broker). Needed when users exist.
    user: Option<String>,
    /// A file holding that user's password (its first line).
    password_file: Option<PathBuf>,
    /// With `[tls]`: the CA (PEM) the peers' certificates chain to [default: `[tls] client_ca`].
    tls_ca: Option<PathBuf>,
    /// Join a running cluster (`levee cluster add-node`) instead of forming one [default: false].
    #[serde(default)]
    join: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct ClusterNode {
    id: u64,
    cluster: String,
    wire: String,
}

/// How this node dials its peers: TLS whenever the broker speaks TLS (its `[tls]` certificate
/// presented, the peers' checked against `[cluster] tls_ca` or `[tls] client_ca`), logged in as
/// `[cluster] user` (required when `[[users]]` exist: the peers admit only their users).
fn cluster_link(
    c: &ClusterSection,
    tls: Option<&levee_broker::security::TlsConfig>,
    has_users: bool,
) -> anyhow::Result<levee_cluster::Link> {
    let mut link = levee_cluster::Link::plain();
    if let Some(tls) = tls {
        let Some(ca) = c.tls_ca.as_ref().or(tls.client_ca.as_ref()) else {
            anyhow::bail!(
                "[cluster] with [tls]: the cluster links speak TLS and need the CA the nodes' \
                 certificates chain to: set [cluster] tls_ca (or [tls] client_ca)"
            );
        };
        let opts = levee_client::TlsOptions::new(Some(ca), Some((&tls.cert, &tls.key)))
            .map_err(|e| anyhow::anyhow!("[cluster] TLS: {e}"))?;
        link = link.with_tls(opts.client_config());
    }
    match (&c.user, &c.password_file) {
        (Some(user), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("[cluster] password_file {}", file.display()))?;
            let password = text.lines().next().unwrap_or_default().to_string();
            link = link.with_credentials(user.clone(), password);
        }
        (Some(_), None) => anyhow::bail!("[cluster] user needs password_file"),
        (None, Some(_)) => anyhow::bail!("[cluster] password_file needs user"),
        (None, None) if has_users => anyhow::bail!(
            "[cluster] with [[users]]: the peers admit only their users; set [cluster] user and \
             password_file (a user allowed to manage the broker, the same on every node)"
        ),
        (None, None) => {}
    }
    Ok(link)
}

impl FileConfig {
    fn security(&self) -> levee_broker::security::SecurityConfig {
        levee_broker::security::SecurityConfig {
            users: self.users.clone(),
            tls: self.tls.clone(),
            allow_anonymous: self.allow_anonymous,
        }
    }
}

fn read_file_config(path: &std::path::Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut file: FileConfig =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    // Relative TLS paths are relative to the config file.
    if let Some(tls) = &mut file.tls {
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for p in [&mut tls.cert, &mut tls.key]
            .into_iter()
            .chain(tls.client_ca.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    Ok(file)
}

/// `ADDR` or `off`.
fn parse_amqp(v: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .with_context(|| format!("invalid amqp address {v:?}: expected HOST:PORT or off"))
}

/// Final settings.
struct Settings {
    /// `None`: the AMQP listener is off.
    amqp: Option<SocketAddr>,
    amqp_config: levee_broker::AmqpConfig,
    listen: SocketAddr,
    http: SocketAddr,
    broker: BrokerConfig,
    cluster: Option<levee_cluster::ClusterConfig>,
}

fn settings(args: ServeArgs) -> anyhow::Result<Settings> {
    let file: FileConfig = match &args.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    let mut broker = BrokerConfig {
        security: file.security(),
        alerts: file.alerts.clone(),
        ..BrokerConfig::default()
    };
    if let Some(v) = file.history.as_ref().and_then(|h| h.seconds) {
        broker.history_seconds = v;
    }
    if let Some(v) = args.data_dir.or(file.data_dir) {
        broker.data_dir = v;
    }
    if let Some(v) = args.max_frame.or(file.max_frame) {
        broker.max_frame = v;
    }
    if let Some(v) = args.heartbeat_ms.or(file.heartbeat_ms) {
        broker.heartbeat_ms = v;
    }
    if let Some(v) = args.max_in_flight_bytes.or(file.max_in_flight_bytes) {
        broker.max_in_flight_bytes = v;
    }
    if let Some(v) = args.segment_bytes.or(file.segment_bytes) {
        broker.segment_bytes = v;
    }
    if let Some(v) = args.max_connections.or(file.max_connections) {
        broker.max_connections = v;
    }
    if let Some(v) = args.max_http_connections.or(file.max_http_connections) {
        broker.max_http_connections = v;
    }
    if let Some(v) = args
        .max_partial_frame_bytes
        .or(file.max_partial_frame_bytes)
    {
        broker.max_partial_frame_bytes = v;
    }
    if let Some(v) = args.http_header_timeout_ms.or(file.http_header_timeout_ms) {
        broker.http_header_timeout_ms = v;
    }
    if let Some(w) = &file.wal {
        if let Some(v) = w.enabled {
            broker.shared_wal = v;
        }
        if let Some(v) = w.file_bytes {
            broker.wal.file_bytes = v;
        }
        if let Some(v) = w.max_pending_bytes {
            broker.wal.max_pending_bytes = v;
        }
        if let Some(v) = w.lazy_commit_ms {
            broker.wal.lazy_commit = std::time::Duration::from_millis(v.into());
        }
        if let Some(v) = w.write_behind_bytes {
            broker.wal.write_behind_bytes = v;
        }
        if let Some(v) = w.write_behind_total {
            broker.wal.write_behind_total = v;
        }
        if let Some(v) = w.recycle_files {
            broker.wal.recycle_files = v;
        }
    }
    // Every range is checked here, before anything is opened, with the setting's name.
    broker.validate()?;
    let amqp = parse_amqp(
        args.amqp
            .as_deref()
            .or(file.amqp.as_deref())
            .unwrap_or("127.0.0.1:5672"),
    )?;
    let cluster = match &file.cluster {
        Some(c) => {
            let mut nodes = std::collections::BTreeMap::new();
            for n in &c.nodes {
                let addrs = levee_cluster::NodeAddrs {
                    cluster: n.cluster.clone(),
                    wire: n.wire.clone(),
                };
                anyhow::ensure!(
                    nodes.insert(n.id, addrs).is_none(),
                    "[cluster] nodes lists node {} twice",
                    n.id
                );
            }
            let heartbeat = c
                .raft_heartbeat_ms
                .unwrap_or(levee_cluster::DEFAULT_HEARTBEAT_MS);
            let config = levee_cluster::ClusterConfig {
                node_id: c.node_id,
                listen: c.listen,
                nodes,
                data_dir: c
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| broker.data_dir.join("cluster")),
                heartbeat_ms: heartbeat,
                // Scaled with a raised heartbeat, so setting only that stays valid.
                election_timeout_ms: c.raft_election_timeout_ms.unwrap_or(
                    levee_cluster::DEFAULT_ELECTION_TIMEOUT_MS.max(4 * heartbeat.min(60_000)),
                ),
                link: cluster_link(c, file.tls.as_ref(), !file.users.is_empty())?,
                join: c.join,
            };
            config.validate()?;
            Some(config)
        }
        None => None,
    };
    let mut amqp_config = levee_broker::AmqpConfig::default();
    if let Some(v) = args.amqp_max_held_bytes.or(file.amqp_max_held_bytes) {
        if v == 0 {
            anyhow::bail!("invalid setting amqp_max_held_bytes: must be at least 1, got 0");
        }
        amqp_config.max_held_bytes = v;
    }
    Ok(Settings {
        amqp,
        amqp_config,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:5680".parse().expect("valid")),
        http: args
            .http
            .or(file.http)
            .unwrap_or_else(|| "127.0.0.1:5681".parse().expect("valid")),
        broker,
        cluster,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// File descriptors kept beyond one per connection: queue log segments, listeners, refusals.
const FD_RESERVE: u64 = 1024;

/// Raises the soft limit on open files towards `connections` (wire + HTTP caps) + [`FD_RESERVE`]
/// (within the hard limit), so the connection caps, not EMFILE, are what refuse connections;
/// warns if it cannot.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every Unix
fn raise_fd_limit(connections: usize) {
    let wanted = connections as u64 + FD_RESERVE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit / setrlimit only read and write the struct passed, which lives on the stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let soft = lim.rlim_cur as u64;
    if soft >= wanted {
        return;
    }
    let mut effective = soft;
    let new_soft = wanted.min(lim.rlim_max as u64);
    if new_soft > soft {
        let raised = libc::rlimit {
            rlim_cur: new_soft as libc::rlim_t,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            effective = new_soft;
        }
    }
    if effective >= wanted {
        return;
    }
    tracing::warn!(
        fd_limit = effective,
        connections,
        "the open-file limit is below max_connections + max_http_connections + {FD_RESERVE}: past \
         about {} connections accepts fail with EMFILE; raise `ulimit -n` or lower the caps",
        effective.saturating_sub(FD_RESERVE)
    );
}

#[cfg(not(unix))]
fn raise_fd_limit(_connections: usize) {}

/// What `Broker::open` found on disk.
struct Recovered {
    queues: usize,
    /// Ready + unacked messages of the recovered queues.
    messages: u64,
    took: std::time::Duration,
}

impl Recovered {
    async fn of(broker: &Broker, took: std::time::Duration) -> Recovered {
        let names = broker.list();
        let mut messages = 0;
        for name in &names {
            if let Ok(info) = broker.inspect(name).await {
                messages += info.stats.ready + info.stats.unacked;
            }
        }
        Recovered {
            queues: names.len(),
            messages,
            took,
        }
    }
}

/// The start-up banner: one more stdout line after the listener lines (which stay exactly
/// `levee: wire listening on ADDR` / `levee: http listening on ADDR` for the tools that parse
/// them), and the same facts as one structured log event.
fn banner(wire: SocketAddr, http: SocketAddr, data_dir: &std::path::Path, r: &Recovered) {
    let version = env!("CARGO_PKG_VERSION");
    let took_ms = r.took.as_millis() as u64;
    println!(
        "levee: version {version}, recovered {} queues ({} messages) in {took_ms} ms",
        r.queues, r.messages
    );
    tracing::info!(
        version,
        %wire,
        %http,
        data = %data_dir.display(),
        queues = r.queues,
        messages = r.messages,
        recovery_ms = took_ms,
        "levee serving"
    );
}

/// On each SIGHUP, reads the config file again and hands its security part to the broker; a
/// config that does not load is logged and the one in force kept.
#[cfg(unix)]
fn reload_on_sighup(broker: Broker, config: Option<PathBuf>) -> anyhow::Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing a SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(path) = &config else {
                tracing::warn!("SIGHUP: no config file to reload (start with --config FILE)");
                continue;
            };
            let loaded =
                read_file_config(path).and_then(|f| Ok(broker.security().reload(&f.security())?));
            match loaded {
                Ok(()) => {
                    tracing::info!(config = %path.display(), "SIGHUP: security config reloaded");
                }
                Err(e) => {
                    tracing::error!("SIGHUP: config not reloaded, the previous one stays: {e:#}");
                }
            }
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_broker: Broker, _config: Option<PathBuf>) -> anyhow::Result<()> {
    Ok(())
}

/// Runs the broker until a shutdown signal.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config_path = args.config.clone();
    let s = settings(args)?;
    raise_fd_limit(s.broker.max_connections + s.broker.max_http_connections);
    let data_dir = s.broker.data_dir.clone();
    // Users, certificates and the safe default are checked before the data directory is opened:
    // a bad certificate or a public address without users is the error, not the directory.
    let probe = levee_broker::security::Security::new(&s.broker.security)?;
    probe.check_exposure(s.listen)?;
    probe.check_exposure(s.http)?;
    drop(probe);
    let opening = std::time::Instant::now();
    let broker = Broker::open(s.broker)
        .await
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    // Marks the broker as exposed (a reload may then not remove every user).
    broker.security().check_exposure(s.listen)?;
    broker.security().check_exposure(s.http)?;
    let recovered = Recovered::of(&broker, opening.elapsed()).await;
    let (wire_addr, wire) = broker
        .bind(s.listen)
        .await
        .with_context(|| format!("listening on {}", s.listen))?;
    // `[tls] plaintext_loopback`: one plaintext wire listener, loopback only.
    let plain = match broker
        .config()
        .security
        .tls
        .as_ref()
        .and_then(|t| t.plaintext_loopback)
    {
        Some(addr) => {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "[tls] plaintext_loopback = {addr} is not a loopback address: a plaintext \
                 listener is allowed only on 127.0.0.1 or ::1"
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr()?;
            let b = broker.clone();
            let task = tokio::spawn(async move {
                b.serve_with(listener, levee_broker::security::Acceptor::plain())
                    .await
            });
            Some((local, task))
        }
        None => None,
    };
    let http_listener = tokio::net::TcpListener::bind(s.http)
        .await
        .with_context(|| format!("listening on {}", s.http))?;
    let http_addr = http_listener.local_addr()?;
    let http = tokio::spawn(levee_broker::http::serve_http(
        broker.clone(),
        http_listener,
    ));
    let amqp = match s.amqp {
        Some(addr) => Some(
            broker
                .bind_amqp(addr, s.amqp_config.clone())
                .await
                .with_context(|| format!("AMQP listening on {addr}"))?,
        ),
        None => None,
    };
    println!("levee: wire listening on {wire_addr}");
    println!("levee: http listening on {http_addr}");
    match &amqp {
        Some(l) => println!("levee: amqp listening on {}", l.local_addr()),
        None => println!("levee: amqp off"),
    }
    println!("levee: data in {}", data_dir.display());
    if broker.security().tls_enabled() {
        println!("levee: tls on every listener");
    }
    if let Some((addr, _)) = &plain {
        println!("levee: plaintext wire listening on {addr}");
    }
    let cluster = match s.cluster {
        Some(c) => {
            // Like every listener: not reachable from other machines without users.
            broker.security().check_exposure(c.listen)?;
            let node = levee_cluster::Node::start(c, broker.clone())
                .await
                .context("starting the cluster node")?;
            println!(
                "levee: cluster node {} listening on {}",
                node.status().node,
                node.local_addr()
            );
            Some(node)
        }
        None => None,
    };
    reload_on_sighup(broker.clone(), config_path)?;
    banner(wire_addr, http_addr, &data_dir, &recovered);
    shutdown_signal().await;
    tracing::info!("shutting down");
    wire.abort();
    if let Some((_, task)) = plain {
        task.abort();
    }
    http.abort();
    if let Some(l) = amqp {
        l.shutdown();
        // Let the connections send their connection.close before the queues stop.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if let Some(node) = &cluster {
        node.shutdown().await;
    }
    broker.shutdown().await;
    drop(cluster);
    Ok(())
}
