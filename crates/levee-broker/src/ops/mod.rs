//! Operating the broker: server-side history (`history`), alert rules (`alerts`, I/O-free),
//! latency histograms (`histogram`), the registry of wire connections (who consumes and
//! produces where), node figures (memory, disk, uptime) and the monitor task that samples every
//! queue once a second and feeds history and rules (`monitor`, with its webhook sender).
//!
//! One `Ops` per broker, owned by it; the monitor task holds the broker weakly and ends with it.
//!
//! # Invariants
//! - Memory: history as documented in `history`; rules as in `alerts`; the last
//!   [`RECENT_TRANSITIONS`] fires and clears; one registry entry per open wire connection and
//!   one per open subscription of those (removed when they end); webhook deliveries wait in a
//!   channel of `webhook::QUEUE` (more are dropped and counted).
//! - The histograms are process-wide (one broker per process in production; tests that open
//!   several brokers in one process share them).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use levee_proto::Message;
use parking_lot::Mutex;

pub mod alerts;
pub mod histogram;
pub mod history;
pub(crate) mod monitor;
pub(crate) mod node;
mod webhook;

pub use alerts::{AlertError, RuleConfig};
use histogram::Histogram;

/// Time from a publish reaching its queue to its confirm (after fsync on `always` disk queues).
pub static PUBLISH_CONFIRM: Histogram = Histogram::new();
/// Time a queue waited for its log to report an append durable (one sync cycle and the wait
/// for it).
pub static FSYNC: Histogram = Histogram::new();

/// Fires and clears kept for the dashboard.
pub const RECENT_TRANSITIONS: usize = 100;

/// What the monitor asks a queue beyond its stats.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Cumulative deliveries (redeliveries included).
    pub delivered: u64,
    /// Publish time of the next ready message, ms since the Unix epoch.
    pub oldest_ready_ms: Option<u64>,
    /// (producer = connection id, unused publish credit).
    pub producers: Vec<(u64, u64)>,
    /// Ready messages, when asked (value rules).
    pub latest: Vec<Message>,
}

/// An open wire connection.
#[derive(Debug, Clone)]
pub struct ConnEntry {
    /// Peer address.
    pub peer: SocketAddr,
    /// Logged-in user.
    pub user: String,
    /// The client's name from its Hello.
    pub client: String,
    /// Opened at, ms since the Unix epoch.
    pub since: u64,
}

/// The broker's operations state.
pub(crate) struct Ops {
    pub(crate) started: std::time::Instant,
    pub(crate) started_ms: u64,
    pub(crate) history: Mutex<history::History>,
    pub(crate) alerts: Mutex<alerts::Engine>,
    pub(crate) recent: Mutex<VecDeque<alerts::Transition>>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    /// subscription → connection id.
    subs: Mutex<HashMap<u64, u64>>,
    /// Delivered counters and producers as of the last tick (for `/metrics`, `/api/overview`).
    pub(crate) last: Mutex<HashMap<String, Observation>>,
    pub(crate) webhook: webhook::Sender,
    pub(crate) webhooks_failed: AtomicU64,
    pub(crate) webhooks_sent: AtomicU64,
}

impl Ops {
    pub(crate) fn new(history_seconds: u32, rules: Vec<alerts::Rule>) -> Ops {
        Ops {
            started: std::time::Instant::now(),
            started_ms: crate::actor::now_ms(),
            history: Mutex::new(history::History::new(history_seconds as usize)),
            alerts: Mutex::new(alerts::Engine::new(rules)),
            recent: Mutex::new(VecDeque::new()),
            conns: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
            webhook: webhook::Sender::default(),
            webhooks_failed: AtomicU64::new(0),
            webhooks_sent: AtomicU64::new(0),
        }
    }

    /// Registers a wire connection; the guard removes it (and its subscriptions) when dropped.
    pub(crate) fn register_conn(
        self: &std::sync::Arc<Self>,
        id: u64,
        entry: ConnEntry,
    ) -> ConnGuard {
        self.conns.lock().insert(id, entry);
        ConnGuard {
            ops: self.clone(),
            id,
        }
    }

    /// Subscription `sub` is on connection `conn`.
    pub(crate) fn register_sub(&self, sub: u64, conn: u64) {
        self.subs.lock().insert(sub, conn);
    }

    /// Subscription `sub` ended.
    pub(crate) fn unregister_sub(&self, sub: u64) {
        self.subs.lock().remove(&sub);
    }

    /// The connection a subscription is on, with its entry.
    pub(crate) fn conn_of_sub(&self, sub: u64) -> Option<(u64, ConnEntry)> {
        let id = *self.subs.lock().get(&sub)?;
        self.conns.lock().get(&id).map(|e| (id, e.clone()))
    }

    /// A connection's entry.
    pub(crate) fn conn(&self, id: u64) -> Option<ConnEntry> {
        self.conns.lock().get(&id).cloned()
    }

    /// Records transitions: a log line each, the recent list, the webhook.
    pub(crate) fn announce(&self, transitions: Vec<alerts::Transition>) {
        if transitions.is_empty() {
            return;
        }
        let mut recent = self.recent.lock();
        for t in transitions {
            if t.firing {
                tracing::warn!(rule = %t.rule, queue = %t.queue, value = t.value, "alert firing: {}", t.detail);
            } else {
                tracing::info!(rule = %t.rule, queue = %t.queue, value = t.value, "alert cleared: {}", t.detail);
            }
            if let Some(url) = &t.webhook {
                self.webhook.send(url.clone(), &t);
            }
            if recent.len() == RECENT_TRANSITIONS {
                recent.pop_front();
            }
            recent.push_back(t);
        }
    }

    /// Seconds since the broker opened.
    pub(crate) fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(crate) fn webhook_counts(&self) -> (u64, u64, u64) {
        (
            self.webhooks_sent.load(Ordering::Relaxed),
            self.webhooks_failed.load(Ordering::Relaxed),
            self.webhook.dropped(),
        )
    }
}

/// Removes its connection from the registry when dropped.
pub(crate) struct ConnGuard {
    ops: std::sync::Arc<Ops>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.ops.conns.lock().remove(&self.id);
        self.ops.subs.lock().retain(|_, c| *c != self.id);
    }
}
