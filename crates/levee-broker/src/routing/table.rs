//! The exchange table: every exchange with its config, bindings and counters, and the routing
//! decision. Pure: no I/O, no async; the broker holds it behind a lock and persists what
//! [`Table::durable`] lists.
//!
//! # Invariants
//! - The default exchange `""` is never in the map: it has no bindings (every queue is bound to
//!   it by its own name) and cannot be declared, deleted or bound.
//! - The predeclared `amq.*` exchanges are always present; they cannot be deleted or redeclared
//!   with another config.
//! - A binding is unique by (queue, key, arguments) within its exchange; a headers binding's
//!   `x-match` was checked when it was made.
//! - A binding is durable when both its exchange and its queue are (decided at bind time: a
//!   queue's durability never changes).
//! - An `auto_delete` exchange is removed as soon as its last binding goes (not before it had
//!   one).
//! - [`Table::route`] returns each target queue at most once, sorted by name.
//! - Memory: at most `max_exchanges` declared exchanges ([`MAX_EXCHANGES`]) and `max_bindings`
//!   bindings in all ([`MAX_BINDINGS`]); past them a declare or bind is refused
//!   (`invalid-config`), so what clients can make the broker hold (and what `exchanges.meta`
//!   holds) is bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use levee_proto::{
    Binding, ExchangeConfig, ExchangeInfo, ExchangeKind, PREDECLARED_EXCHANGES, ProtoError,
    validate_exchange_name, validate_routing_key,
};

use super::matching::{XMatch, headers_match, topic_matches};
use crate::error::BrokerError;

/// Most declared exchanges (besides the default and predeclared ones).
pub(crate) const MAX_EXCHANGES: usize = 10_000;

/// Most bindings, over all exchanges.
pub(crate) const MAX_BINDINGS: usize = 100_000;

/// An exchange's counters, shared with publishers that route through it.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) routed: AtomicU64,
    pub(crate) unroutable: AtomicU64,
}

#[derive(Debug, Clone)]
struct Bound {
    queue: String,
    key: String,
    arguments: Vec<(String, Bytes)>,
    /// Parsed `x-match` (headers exchanges).
    how: XMatch,
    durable: bool,
}

#[derive(Debug, Clone)]
struct Exchange {
    config: ExchangeConfig,
    predeclared: bool,
    bindings: Vec<Bound>,
    counters: Arc<Counters>,
}

impl Exchange {
    fn matches(&self, b: &Bound, routing_key: &str, headers: &[(String, Bytes)]) -> bool {
        match self.config.kind {
            ExchangeKind::Direct => b.key == routing_key,
            ExchangeKind::Fanout => true,
            ExchangeKind::Topic => topic_matches(&b.key, routing_key),
            ExchangeKind::Headers => headers_match(b.how, &b.arguments, headers),
            // levee-proto's enum is non_exhaustive: a kind this broker does not know cannot be
            // declared (`Table::declare` refuses it), so nothing routes through one.
            _ => false,
        }
    }
}

/// What [`Table::route`] decided for one exchange.
#[derive(Debug)]
pub(crate) struct Route<'a> {
    /// Matching queues of each message (sorted, deduplicated).
    pub(crate) targets: Vec<Vec<&'a str>>,
    /// The exchange's counters (`None` for the default exchange's... never: see `Table`).
    pub(crate) counters: Arc<Counters>,
}

/// See the module documentation. A clone shares the counters.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    exchanges: BTreeMap<String, Exchange>,
    /// The default exchange's counters.
    default_counters: Arc<Counters>,
    /// Bindings over all exchanges.
    bindings: usize,
    max_exchanges: usize,
    max_bindings: usize,
}

/// The default exchange's config as listed: direct, durable.
fn default_config() -> ExchangeConfig {
    ExchangeConfig::new(ExchangeKind::Direct)
}

fn access(exchange: &str, reason: &'static str) -> BrokerError {
    BrokerError::ExchangeAccess {
        exchange: exchange.to_string(),
        reason,
    }
}

impl Table {
    /// A table with the predeclared exchanges only, and the default limits.
    pub(crate) fn new() -> Self {
        Self::with_limits(MAX_EXCHANGES, MAX_BINDINGS)
    }

    /// A table with the predeclared exchanges only, and these limits.
    pub(crate) fn with_limits(max_exchanges: usize, max_bindings: usize) -> Self {
        let mut exchanges = BTreeMap::new();
        for (name, kind) in PREDECLARED_EXCHANGES {
            exchanges.insert(
                name.to_string(),
                Exchange {
                    config: ExchangeConfig::new(kind),
                    predeclared: true,
                    bindings: Vec::new(),
                    counters: Arc::default(),
                },
            );
        }
        Table {
            exchanges,
            default_counters: Arc::default(),
            bindings: 0,
            max_exchanges,
            max_bindings,
        }
    }

    /// Declares an exchange: `Ok(true)` if created, `Ok(false)` if it exists with this config
    /// (or, `passive`, exists at all).
    pub(crate) fn declare(
        &mut self,
        name: &str,
        config: &ExchangeConfig,
        passive: bool,
    ) -> Result<bool, BrokerError> {
        if name.is_empty() {
            if passive {
                return Ok(false);
            }
            return Err(access(name, "the default exchange cannot be declared"));
        }
        validate_exchange_name(name)?;
        if let Some(x) = self.exchanges.get(name) {
            if passive || x.config == *config {
                return Ok(false);
            }
            return Err(BrokerError::ExchangeMismatch {
                exchange: name.to_string(),
                differences: x.config.describe_differences(config),
            });
        }
        if passive {
            return Err(BrokerError::UnknownExchange(name.to_string()));
        }
        if name.starts_with("amq.") {
            return Err(access(name, "names starting with amq. are reserved"));
        }
        if !ExchangeKind::ALL.contains(&config.kind) {
            return Err(BrokerError::Proto(ProtoError::InvalidConfig {
                field: "type",
                reason: format!("{} is not supported by this broker", config.kind),
            }));
        }
        config.validate()?;
        if self.exchanges.len() - PREDECLARED_EXCHANGES.len() >= self.max_exchanges {
            return Err(BrokerError::Proto(ProtoError::InvalidConfig {
                field: "exchanges",
                reason: format!(
                    "the broker holds its limit of {} declared exchanges: delete some first",
                    self.max_exchanges
                ),
            }));
        }
        self.exchanges.insert(
            name.to_string(),
            Exchange {
                config: config.clone(),
                predeclared: false,
                bindings: Vec::new(),
                counters: Arc::default(),
            },
        );
        Ok(true)
    }

    /// Deletes an exchange with its bindings; returns whether it was durable.
    pub(crate) fn delete(&mut self, name: &str, if_unused: bool) -> Result<bool, BrokerError> {
        if name.is_empty() {
            return Err(access(name, "the default exchange cannot be deleted"));
        }
        let Some(x) = self.exchanges.get(name) else {
            return Err(BrokerError::UnknownExchange(name.to_string()));
        };
        if x.predeclared {
            return Err(access(name, "predeclared exchanges cannot be deleted"));
        }
        if if_unused && !x.bindings.is_empty() {
            return Err(BrokerError::ExchangeInUse {
                exchange: name.to_string(),
                bindings: x.bindings.len() as u64,
            });
        }
        let durable = x.config.durable;
        self.bindings -= x.bindings.len();
        self.exchanges.remove(name);
        Ok(durable)
    }

    /// Whether `name` is a declared (or predeclared) exchange.
    pub(crate) fn contains(&self, name: &str) -> bool {
        name.is_empty() || self.exchanges.contains_key(name)
    }

    /// Binds (the queue exists: the caller checked; `queue_durable`: it has a catalog entry).
    /// `Ok(true)`: a new binding; `Ok(false)`: it existed. Returns also whether the binding is
    /// durable (the catalog must be rewritten).
    pub(crate) fn bind(
        &mut self,
        b: &Binding,
        queue_durable: bool,
    ) -> Result<(bool, bool), BrokerError> {
        if b.exchange.is_empty() {
            return Err(access("", "queues cannot be bound to the default exchange"));
        }
        b.validate()?;
        let Some(x) = self.exchanges.get_mut(&b.exchange) else {
            return Err(BrokerError::UnknownExchange(b.exchange.clone()));
        };
        let how = if x.config.kind == ExchangeKind::Headers {
            XMatch::of(&b.arguments)?
        } else {
            XMatch::All
        };
        let durable = x.config.durable && queue_durable;
        if x.bindings.iter().any(|e| same(e, b)) {
            return Ok((false, durable));
        }
        if self.bindings >= self.max_bindings {
            return Err(BrokerError::Proto(ProtoError::InvalidConfig {
                field: "bindings",
                reason: format!(
                    "the broker holds its limit of {} bindings: remove some first",
                    self.max_bindings
                ),
            }));
        }
        self.bindings += 1;
        x.bindings.push(Bound {
            queue: b.queue.clone(),
            key: b.key.clone(),
            arguments: b.arguments.clone(),
            how,
            durable,
        });
        Ok((true, durable))
    }

    /// Removes a binding. Returns (it existed, it was durable, the exchange was auto-deleted and
    /// was durable).
    pub(crate) fn unbind(&mut self, b: &Binding) -> Result<Unbound, BrokerError> {
        if b.exchange.is_empty() {
            return Err(access(
                "",
                "queues cannot be unbound from the default exchange",
            ));
        }
        let Some(x) = self.exchanges.get_mut(&b.exchange) else {
            return Err(BrokerError::UnknownExchange(b.exchange.clone()));
        };
        let Some(i) = x.bindings.iter().position(|e| same(e, b)) else {
            return Ok(Unbound::default());
        };
        let gone = x.bindings.remove(i);
        self.bindings -= 1;
        let mut out = Unbound {
            existed: true,
            durable_changed: gone.durable,
            auto_deleted: Vec::new(),
        };
        if x.bindings.is_empty() && x.config.auto_delete && !x.predeclared {
            out.durable_changed |= x.config.durable;
            out.auto_deleted.push(b.exchange.clone());
            self.exchanges.remove(&b.exchange);
        }
        Ok(out)
    }

    /// Removes every binding of `queue` (it is being deleted), auto-deleting exchanges left
    /// without bindings.
    pub(crate) fn remove_queue(&mut self, queue: &str) -> Unbound {
        let mut out = Unbound::default();
        for (name, x) in &mut self.exchanges {
            let before = x.bindings.len();
            x.bindings.retain(|b| {
                let keep = b.queue != queue;
                if !keep {
                    out.existed = true;
                    out.durable_changed |= b.durable;
                }
                keep
            });
            self.bindings -= before - x.bindings.len();
            if before > 0 && x.bindings.is_empty() && x.config.auto_delete && !x.predeclared {
                out.durable_changed |= x.config.durable;
                out.auto_deleted.push(name.clone());
            }
        }
        for name in &out.auto_deleted {
            self.exchanges.remove(name);
        }
        out
    }

    /// Routes messages published to `exchange` with `routing_key`: each message's headers are
    /// given by `headers(i)` (only headers exchanges read them); `queue_exists` tells the default
    /// exchange which names are queues. `n` messages.
    pub(crate) fn route<'a, 'h>(
        &'a self,
        exchange: &str,
        routing_key: &'a str,
        n: usize,
        headers: impl Fn(usize) -> &'h [(String, Bytes)],
        queue_exists: impl Fn(&str) -> bool,
    ) -> Result<Route<'a>, BrokerError> {
        validate_routing_key(routing_key)?;
        if exchange.is_empty() {
            let t: Vec<&str> = if queue_exists(routing_key) {
                vec![routing_key]
            } else {
                Vec::new()
            };
            return Ok(Route {
                targets: vec![t; n],
                counters: self.default_counters.clone(),
            });
        }
        let Some(x) = self.exchanges.get(exchange) else {
            return Err(BrokerError::UnknownExchange(exchange.to_string()));
        };
        if x.config.internal {
            return Err(access(
                exchange,
                "internal exchanges cannot be published to",
            ));
        }
        let select = |hdrs: &[(String, Bytes)]| {
            let mut t: Vec<&str> = x
                .bindings
                .iter()
                .filter(|b| x.matches(b, routing_key, hdrs))
                .map(|b| b.queue.as_str())
                .collect();
            t.sort_unstable();
            t.dedup();
            t
        };
        let targets = if x.config.kind == ExchangeKind::Headers {
            (0..n).map(|i| select(headers(i))).collect()
        } else {
            vec![select(&[]); n]
        };
        Ok(Route {
            targets,
            counters: x.counters.clone(),
        })
    }

    /// Routes one dead letter through `exchange` (internal exchanges included): the matching
    /// queues, or `None` if the exchange does not exist.
    pub(crate) fn route_dead_letter<'a>(
        &'a self,
        exchange: &str,
        routing_key: &'a str,
        headers: &[(String, Bytes)],
        queue_exists: impl Fn(&str) -> bool,
    ) -> Option<(Vec<&'a str>, Arc<Counters>)> {
        if exchange.is_empty() {
            let t = if queue_exists(routing_key) {
                vec![routing_key]
            } else {
                Vec::new()
            };
            return Some((t, self.default_counters.clone()));
        }
        let x = self.exchanges.get(exchange)?;
        let mut t: Vec<&str> = x
            .bindings
            .iter()
            .filter(|b| x.matches(b, routing_key, headers))
            .map(|b| b.queue.as_str())
            .collect();
        t.sort_unstable();
        t.dedup();
        Some((t, x.counters.clone()))
    }

    /// Every exchange (the default one first), with its counters.
    pub(crate) fn list(&self) -> Vec<ExchangeInfo> {
        let info = |name: &str, config: ExchangeConfig, predeclared, bindings, c: &Counters| {
            ExchangeInfo {
                name: name.to_string(),
                config,
                predeclared,
                bindings,
                routed: c.routed.load(Ordering::Relaxed),
                unroutable: c.unroutable.load(Ordering::Relaxed),
            }
        };
        let mut out = vec![info("", default_config(), true, 0, &self.default_counters)];
        for (name, x) in &self.exchanges {
            out.push(info(
                name,
                x.config.clone(),
                x.predeclared,
                x.bindings.len() as u64,
                &x.counters,
            ));
        }
        out
    }

    /// One exchange's info.
    pub(crate) fn info(&self, name: &str) -> Option<ExchangeInfo> {
        // The list is short to build for one exchange; reuse its shape.
        self.list().into_iter().find(|i| i.name == name)
    }

    /// The bindings of `exchange` (all exchanges' when `None`), sorted.
    pub(crate) fn bindings(&self, exchange: Option<&str>) -> Result<Vec<Binding>, BrokerError> {
        if let Some(x) = exchange
            && !self.contains(x)
        {
            return Err(BrokerError::UnknownExchange(x.to_string()));
        }
        let mut out: Vec<Binding> = self
            .exchanges
            .iter()
            .filter(|(name, _)| exchange.is_none_or(|x| x == name.as_str()))
            .flat_map(|(name, x)| {
                x.bindings.iter().map(move |b| Binding {
                    exchange: name.clone(),
                    queue: b.queue.clone(),
                    key: b.key.clone(),
                    arguments: b.arguments.clone(),
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// What the catalog keeps: the durable declared exchanges and the durable bindings (of
    /// declared and predeclared exchanges).
    pub(crate) fn durable(&self) -> (Vec<(String, ExchangeConfig)>, Vec<Binding>) {
        let mut exchanges = Vec::new();
        let mut bindings = Vec::new();
        for (name, x) in &self.exchanges {
            if !x.config.durable {
                continue;
            }
            if !x.predeclared {
                exchanges.push((name.clone(), x.config.clone()));
            }
            for b in x.bindings.iter().filter(|b| b.durable) {
                bindings.push(Binding {
                    exchange: name.clone(),
                    queue: b.queue.clone(),
                    key: b.key.clone(),
                    arguments: b.arguments.clone(),
                });
            }
        }
        (exchanges, bindings)
    }
}

/// What an unbind (or a queue's removal) changed.
#[derive(Debug, Default)]
pub(crate) struct Unbound {
    /// A binding was removed.
    pub(crate) existed: bool,
    /// Something durable changed (the catalog must be rewritten).
    pub(crate) durable_changed: bool,
    /// Auto-delete exchanges removed because their last binding went.
    pub(crate) auto_deleted: Vec<String>,
}

fn same(e: &Bound, b: &Binding) -> bool {
    e.queue == b.queue && e.key == b.key && e.arguments == b.arguments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_all(t: &Table, x: &str, key: &str) -> Vec<String> {
        let r = t.route(x, key, 1, |_| &[], |q| q == "q-default").unwrap();
        r.targets[0].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn predeclared_and_default() {
        let mut t = Table::new();
        let names: Vec<String> = t.list().into_iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            ["", "amq.direct", "amq.fanout", "amq.headers", "amq.topic"]
        );
        assert_eq!(route_all(&t, "", "q-default"), ["q-default"]);
        assert!(route_all(&t, "", "missing").is_empty());
        let direct = ExchangeConfig::new(ExchangeKind::Direct);
        assert!(matches!(
            t.declare("", &direct, false),
            Err(BrokerError::ExchangeAccess { .. })
        ));
        assert!(!t.declare("amq.direct", &direct, false).unwrap());
        assert!(matches!(
            t.declare(
                "amq.direct",
                &ExchangeConfig::new(ExchangeKind::Topic),
                false
            ),
            Err(BrokerError::ExchangeMismatch { .. })
        ));
        assert!(matches!(
            t.declare("amq.mine", &direct, false),
            Err(BrokerError::ExchangeAccess { .. })
        ));
        assert!(matches!(
            t.delete("amq.fanout", false),
            Err(BrokerError::ExchangeAccess { .. })
        ));
        assert!(matches!(
            t.bind(&Binding::new("", "q", "q"), true),
            Err(BrokerError::ExchangeAccess { .. })
        ));
    }

    #[test]
    fn declare_passive_mismatch_delete() {
        let mut t = Table::new();
        let c = ExchangeConfig::new(ExchangeKind::Fanout);
        assert!(matches!(
            t.declare("logs", &c, true),
            Err(BrokerError::UnknownExchange(_))
        ));
        assert!(t.declare("logs", &c, false).unwrap());
        assert!(!t.declare("logs", &c, false).unwrap());
        assert!(
            !t.declare("logs", &ExchangeConfig::new(ExchangeKind::Topic), true)
                .unwrap()
        );
        match t.declare("logs", &c.clone().durable(false), false) {
            Err(BrokerError::ExchangeMismatch { differences, .. }) => {
                assert!(differences.contains("durable"), "{differences}");
            }
            other => panic!("{other:?}"),
        }
        t.bind(&Binding::new("logs", "a", ""), true).unwrap();
        assert!(matches!(
            t.delete("logs", true),
            Err(BrokerError::ExchangeInUse { bindings: 1, .. })
        ));
        assert!(t.delete("logs", false).unwrap());
        assert!(!t.contains("logs"));
    }

    #[test]
    fn direct_fanout_topic_headers() {
        let mut t = Table::new();
        for (name, kind) in [
            ("d", ExchangeKind::Direct),
            ("f", ExchangeKind::Fanout),
            ("t", ExchangeKind::Topic),
            ("h", ExchangeKind::Headers),
        ] {
            t.declare(name, &ExchangeConfig::new(kind), false).unwrap();
        }
        t.bind(&Binding::new("d", "q1", "red"), true).unwrap();
        t.bind(&Binding::new("d", "q2", "red"), true).unwrap();
        t.bind(&Binding::new("d", "q3", "blue"), true).unwrap();
        assert_eq!(route_all(&t, "d", "red"), ["q1", "q2"]);
        assert!(route_all(&t, "d", "green").is_empty());
        for q in ["c", "a", "b"] {
            t.bind(&Binding::new("f", q, "ignored"), true).unwrap();
        }
        assert_eq!(route_all(&t, "f", "anything"), ["a", "b", "c"]);
        t.bind(&Binding::new("t", "eu", "*.eu.#"), true).unwrap();
        t.bind(&Binding::new("t", "all", "#"), true).unwrap();
        t.bind(&Binding::new("t", "all", "orders.#"), true).unwrap();
        assert_eq!(route_all(&t, "t", "orders.eu.paris"), ["all", "eu"]);
        assert_eq!(route_all(&t, "t", "orders.us"), ["all"]);
        let b = Binding::new("h", "pdf", "")
            .with_argument("x-match", "any")
            .with_argument("format", "pdf")
            .with_argument("kind", "report");
        t.bind(&b, true).unwrap();
        let hdrs: Vec<(String, Bytes)> = vec![("format".into(), Bytes::from_static(b"pdf"))];
        let none: Vec<(String, Bytes)> = vec![("format".into(), Bytes::from_static(b"png"))];
        let r = t
            .route("h", "", 2, |i| if i == 0 { &hdrs } else { &none }, |_| true)
            .unwrap();
        assert_eq!(r.targets, vec![vec!["pdf"], vec![]]);
        let bad = Binding::new("h", "x", "").with_argument("x-match", "most");
        assert!(t.bind(&bad, true).is_err());
    }

    #[test]
    fn bindings_unique_unbind_auto_delete_and_queue_removal() {
        let mut t = Table::new();
        let auto = ExchangeConfig::new(ExchangeKind::Direct).auto_delete(true);
        t.declare("auto", &auto, false).unwrap();
        let b = Binding::new("auto", "q", "k");
        assert_eq!(t.bind(&b, true).unwrap(), (true, true));
        assert_eq!(t.bind(&b, true).unwrap(), (false, true));
        t.bind(&Binding::new("auto", "q", "k2"), true).unwrap();
        let u = t.unbind(&b).unwrap();
        assert!(u.existed && u.auto_deleted.is_empty());
        assert!(!t.unbind(&b).unwrap().existed);
        // The last binding goes with its queue: the exchange goes too.
        let u = t.remove_queue("q");
        assert!(u.existed && u.durable_changed);
        assert_eq!(u.auto_deleted, ["auto"]);
        assert!(!t.contains("auto"));
    }

    #[test]
    fn durable_lists_only_durable_things() {
        let mut t = Table::new();
        t.declare("keep", &ExchangeConfig::new(ExchangeKind::Fanout), false)
            .unwrap();
        t.declare(
            "temp",
            &ExchangeConfig::new(ExchangeKind::Fanout).durable(false),
            false,
        )
        .unwrap();
        t.bind(&Binding::new("keep", "dq", ""), true).unwrap();
        t.bind(&Binding::new("keep", "tq", ""), false).unwrap();
        t.bind(&Binding::new("temp", "dq", ""), true).unwrap();
        t.bind(&Binding::new("amq.topic", "dq", "#"), true).unwrap();
        let (xs, bs) = t.durable();
        assert_eq!(
            xs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["keep"]
        );
        assert_eq!(
            bs.iter()
                .map(|b| (b.exchange.as_str(), b.queue.as_str()))
                .collect::<Vec<_>>(),
            [("amq.topic", "dq"), ("keep", "dq")]
        );
    }

    #[test]
    fn exchanges_and_bindings_are_bounded() {
        let mut t = Table::with_limits(2, 3);
        let c = ExchangeConfig::new(ExchangeKind::Direct);
        t.declare("x1", &c, false).unwrap();
        t.declare("x2", &c, false).unwrap();
        let e = t.declare("x3", &c, false).unwrap_err();
        assert!(e.to_string().contains("limit of 2"), "{e}");
        for q in ["a", "b", "c"] {
            t.bind(&Binding::new("x1", q, ""), true).unwrap();
        }
        // A binding that exists is not a new one: still fine at the limit.
        assert!(!t.bind(&Binding::new("x1", "a", ""), true).unwrap().0);
        let e = t.bind(&Binding::new("x2", "d", ""), true).unwrap_err();
        assert!(e.to_string().contains("limit of 3"), "{e}");
        // Room comes back by unbinding, deleting a queue or an exchange.
        t.unbind(&Binding::new("x1", "a", "")).unwrap();
        t.bind(&Binding::new("x2", "d", ""), true).unwrap();
        t.remove_queue("b");
        t.bind(&Binding::new("x2", "e", ""), true).unwrap();
        t.delete("x2", false).unwrap();
        t.declare("x3", &c, false).unwrap();
        t.bind(&Binding::new("x3", "f", ""), true).unwrap();
        t.bind(&Binding::new("x3", "g", ""), true).unwrap();
        assert!(t.bind(&Binding::new("x3", "h", ""), true).is_err());
    }

    #[test]
    fn internal_exchanges_refuse_publishes_but_take_dead_letters() {
        let mut t = Table::new();
        t.declare(
            "dlx",
            &ExchangeConfig::new(ExchangeKind::Fanout).internal(true),
            false,
        )
        .unwrap();
        t.bind(&Binding::new("dlx", "dead", ""), true).unwrap();
        assert!(matches!(
            t.route("dlx", "k", 1, |_| &[], |_| true),
            Err(BrokerError::ExchangeAccess { .. })
        ));
        let (targets, _) = t.route_dead_letter("dlx", "k", &[], |_| true).unwrap();
        assert_eq!(targets, ["dead"]);
    }
}
