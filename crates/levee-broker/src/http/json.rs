//! The JSON form of a [`QueueConfig`] ([`config_from_json`], [`config_to_json`]) and the JSON views
//! of queues ([`QueueSnapshot::to_json`], [`render_queues_json`]): field names and order of every
//! JSON body the API serves (see `docs/design.md`, section "HTTP API and metrics").
//!
//! # Invariants
//! - A config round-trips: what [`config_to_json`] writes, [`config_from_json`] reads back equal.
//! - Parsing checks the shape and vocabularies (unknown fields are refused, to catch typos) and
//!   never panics on input; ranges are left to [`QueueConfig::validate`].

use levee_proto::{
    Dedup, DropReason, Durability, Fsync, Order, Overflow, ProtoError, QueueConfig, QueueStats,
    RateLimit,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::HttpError;
use super::snapshot::QueueSnapshot;

/// Deserializes a present field (even `null`) as `Some(inner)`, so that "missing" (the field's
/// default) and `null` (explicitly none) can be told apart.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    max_messages: Option<u64>,
    max_bytes: Option<u64>,
    overflow: Option<String>,
    order: Option<String>,
    durability: Option<String>,
    fsync: Option<Value>,
    ack_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    max_deliveries: Option<Option<u32>>,
    dead_letter: Option<String>,
    message_ttl_ms: Option<u64>,
    rate_limit: Option<RateLimitBody>,
    dead_letter_exchange: Option<String>,
    dead_letter_routing_key: Option<String>,
    single_active_consumer: Option<bool>,
    expires_ms: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    dedup: Option<Option<DedupBody>>,
    replicas: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DedupBody {
    #[serde(default, deserialize_with = "present")]
    window_ms: Option<Option<u64>>,
    max_ids: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitBody {
    msgs_per_sec: Option<u32>,
    bytes_per_sec: Option<u64>,
    burst_msgs: Option<u32>,
    burst_bytes: Option<u64>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> HttpError {
    HttpError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

fn parse_fsync(v: &Value) -> Result<Fsync, HttpError> {
    const EXPECTED: &str = r#"expected "always", "never" or {"interval_ms": n}"#;
    match v {
        Value::String(s) if s == "always" => Ok(Fsync::Always),
        Value::String(s) if s == "never" => Ok(Fsync::Never),
        Value::Object(m) if m.len() == 1 => match m.get("interval_ms").and_then(Value::as_u64) {
            Some(ms) => u32::try_from(ms)
                .map(Fsync::Interval)
                .map_err(|_| invalid("fsync", format!("interval_ms {ms} is too large"))),
            None => Err(invalid("fsync", format!("{v}: {EXPECTED}"))),
        },
        _ => Err(invalid("fsync", format!("{v}: {EXPECTED}"))),
    }
}

/// Parses a queue config from its JSON form (see the module docs); missing fields take the
/// [`QueueConfig::default`] values, an empty body is the default config.
///
/// Checks the JSON shape and vocabularies (unknown fields are refused, to catch typos) but not
/// the ranges: [`QueueConfig::validate`] does that, as `Broker::declare` does.
pub fn config_from_json(body: &[u8]) -> Result<QueueConfig, HttpError> {
    let body: ConfigBody = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_str("{}").map_err(|e| HttpError::BadJson(e.to_string()))?
    } else {
        serde_json::from_slice(body).map_err(|e| HttpError::BadJson(e.to_string()))?
    };
    let d = QueueConfig::default();
    let proto = |e: ProtoError| match e {
        ProtoError::InvalidConfig { field, reason } => invalid(field, reason),
        other => invalid("config", other.to_string()),
    };
    let fsync = body.fsync.as_ref().map(parse_fsync).transpose()?;
    let durability = Durability::from_parts(body.durability.as_deref(), fsync).map_err(proto)?;
    let rate_limit = match body.rate_limit {
        None => None,
        Some(rl) => {
            if rl.msgs_per_sec.is_none() && rl.bytes_per_sec.is_none() {
                return Err(invalid(
                    "rate_limit",
                    "needs msgs_per_sec or bytes_per_sec (use null for no limit)",
                ));
            }
            Some(RateLimit {
                msgs_per_sec: rl.msgs_per_sec,
                bytes_per_sec: rl.bytes_per_sec,
                burst_msgs: rl.burst_msgs.unwrap_or(rl.msgs_per_sec.unwrap_or(0)),
                burst_bytes: rl.burst_bytes.unwrap_or(rl.bytes_per_sec.unwrap_or(0)),
            })
        }
    };
    Ok(QueueConfig {
        max_messages: body.max_messages.unwrap_or(d.max_messages),
        max_bytes: body.max_bytes.unwrap_or(d.max_bytes),
        overflow: match body.overflow {
            Some(s) => s.parse::<Overflow>().map_err(proto)?,
            None => d.overflow,
        },
        order: match body.order {
            Some(s) => s.parse::<Order>().map_err(proto)?,
            None => d.order,
        },
        durability,
        ack_timeout_ms: body.ack_timeout_ms.unwrap_or(d.ack_timeout_ms),
        max_deliveries: body.max_deliveries.unwrap_or(d.max_deliveries),
        dead_letter: body.dead_letter,
        message_ttl_ms: body.message_ttl_ms,
        rate_limit,
        dead_letter_exchange: body.dead_letter_exchange,
        dead_letter_routing_key: body.dead_letter_routing_key,
        single_active_consumer: body
            .single_active_consumer
            .unwrap_or(d.single_active_consumer),
        expires_ms: body.expires_ms,
        dedup: match body.dedup {
            None => d.dedup,
            Some(None) => None,
            Some(Some(b)) => {
                let def = Dedup::default();
                Some(Dedup {
                    window_ms: b.window_ms.unwrap_or(def.window_ms),
                    max_ids: b.max_ids.unwrap_or(def.max_ids),
                })
            }
        },
        replicas: body.replicas.unwrap_or(d.replicas),
    })
}

/// The JSON form of a config: every field present (`null` = none), accepted back by
/// [`config_from_json`].
pub fn config_to_json(c: &QueueConfig) -> Value {
    serde_json::to_value(ConfigView::from(c)).unwrap_or(Value::Null)
}

#[derive(Serialize)]
#[serde(untagged)]
enum FsyncView {
    Named(&'static str),
    Interval { interval_ms: u32 },
}

#[derive(Serialize)]
struct RateLimitView {
    msgs_per_sec: Option<u32>,
    bytes_per_sec: Option<u64>,
    burst_msgs: u32,
    burst_bytes: u64,
}

/// Field order and names of the config JSON (see [`config_from_json`] for the input side).
#[derive(Serialize)]
struct ConfigView<'a> {
    max_messages: u64,
    max_bytes: u64,
    overflow: &'static str,
    order: &'static str,
    durability: &'static str,
    fsync: Option<FsyncView>,
    ack_timeout_ms: u64,
    max_deliveries: Option<u32>,
    dead_letter: Option<&'a str>,
    message_ttl_ms: Option<u64>,
    rate_limit: Option<RateLimitView>,
    dead_letter_exchange: Option<&'a str>,
    dead_letter_routing_key: Option<&'a str>,
    single_active_consumer: bool,
    expires_ms: Option<u64>,
    dedup: Option<DedupView>,
    replicas: u8,
}

#[derive(Serialize)]
struct DedupView {
    window_ms: Option<u64>,
    max_ids: u32,
}

impl<'a> From<&'a QueueConfig> for ConfigView<'a> {
    fn from(c: &'a QueueConfig) -> Self {
        let (durability, fsync) = match c.durability {
            Durability::Disk(Fsync::Always) => ("disk", Some(FsyncView::Named("always"))),
            Durability::Disk(Fsync::Interval(ms)) => {
                ("disk", Some(FsyncView::Interval { interval_ms: ms }))
            }
            Durability::Disk(Fsync::Never) => ("disk", Some(FsyncView::Named("never"))),
            // levee-proto's enums are non_exhaustive. A fsync mode this broker does not know runs
            // as `always` (`storage::log_config`: the strictest), so show that, never a weaker one.
            Durability::Disk(_) => ("disk", Some(FsyncView::Named("always"))),
            Durability::Memory => ("memory", None),
            Durability::Transient => ("transient", None),
            // A durability this broker does not know cannot be started (`Broker::start_queue`
            // refuses it); were one shown, it must not claim to be either known kind.
            _ => ("unknown", None),
        };
        ConfigView {
            max_messages: c.max_messages,
            max_bytes: c.max_bytes,
            overflow: c.overflow.as_str(),
            order: c.order.as_str(),
            durability,
            fsync,
            ack_timeout_ms: c.ack_timeout_ms,
            max_deliveries: c.max_deliveries,
            dead_letter: c.dead_letter.as_deref(),
            message_ttl_ms: c.message_ttl_ms,
            rate_limit: c.rate_limit.map(|r| RateLimitView {
                msgs_per_sec: r.msgs_per_sec,
                bytes_per_sec: r.bytes_per_sec,
                burst_msgs: r.burst_msgs,
                burst_bytes: r.burst_bytes,
            }),
            dead_letter_exchange: c.dead_letter_exchange.as_deref(),
            dead_letter_routing_key: c.dead_letter_routing_key.as_deref(),
            single_active_consumer: c.single_active_consumer,
            expires_ms: c.expires_ms,
            dedup: c.dedup.map(|d| DedupView {
                window_ms: d.window_ms,
                max_ids: d.max_ids,
            }),
            replicas: c.replicas,
        }
    }
}

/// `{reason: count}` for every reason but expiry (which has its own counter), zeros included.
struct DroppedView<'a>(&'a QueueStats);

impl Serialize for DroppedView<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        ser.collect_map(
            DropReason::ALL
                .into_iter()
                .filter(|r| *r != DropReason::Expired)
                .map(|r| (r.as_str(), self.0.dropped(r))),
        )
    }
}

#[derive(Serialize)]
struct ConsumerView {
    subscription: u64,
    credit: u64,
    unacked: u64,
}

#[derive(Serialize)]
struct StatsView<'a> {
    published: u64,
    stored: u64,
    rejected: u64,
    acked: u64,
    dropped: DroppedView<'a>,
    dropped_total: u64,
    expired: u64,
    dead_lettered: u64,
    ready: u64,
    unacked: u64,
    bytes: u64,
    publish_credit_outstanding: u64,
    consumers: Vec<ConsumerView>,
    publish_rate: u64,
    deliver_rate: u64,
    ack_rate: u64,
    duplicates: u64,
    balanced: bool,
}

#[derive(Serialize)]
struct StorageView {
    bytes_on_disk: u64,
    segments: usize,
    unsettled: u64,
    unsettled_bytes: u64,
    appended: u64,
    settled: u64,
    fsyncs: u64,
    last_fsync_us: Option<u64>,
    reclaimed_segments: u64,
}

#[derive(Serialize)]
struct QueueView<'a> {
    name: &'a str,
    config: ConfigView<'a>,
    stats: StatsView<'a>,
    loss_pct: f64,
    storage: Option<StorageView>,
}

#[derive(Serialize)]
struct UnavailableView<'a> {
    name: &'a str,
    error: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EntryView<'a> {
    Queue(Box<QueueView<'a>>),
    Unavailable(UnavailableView<'a>),
}

impl EntryView<'_> {
    fn name(&self) -> &str {
        match self {
            EntryView::Queue(q) => q.name,
            EntryView::Unavailable(u) => u.name,
        }
    }
}

/// The body of `GET /api/queues`: the queues and, as `{"name", "error"}`, the unavailable ones,
/// sorted by name.
pub fn render_queues_json(queues: &[QueueSnapshot], unavailable: &[(String, HttpError)]) -> String {
    let mut list: Vec<EntryView<'_>> = queues
        .iter()
        .map(|q| EntryView::Queue(Box::new(q.view())))
        .chain(unavailable.iter().map(|(name, e)| {
            EntryView::Unavailable(UnavailableView {
                name,
                error: e.to_string(),
            })
        }))
        .collect();
    list.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
}

impl QueueSnapshot {
    /// The JSON form served by `/api/queues/{name}` (one element of `/api/queues`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    fn view(&self) -> QueueView<'_> {
        let s = &self.info.stats;
        QueueView {
            name: &self.info.queue,
            config: ConfigView::from(&self.info.config),
            stats: StatsView {
                published: s.published,
                stored: s.stored,
                rejected: s.rejected,
                acked: s.acked,
                dropped: DroppedView(s),
                dropped_total: s.dropped_total(),
                expired: s.expired,
                dead_lettered: s.dead_lettered,
                ready: s.ready,
                unacked: s.unacked,
                bytes: s.bytes,
                publish_credit_outstanding: s.publish_credit_outstanding,
                consumers: s
                    .consumers
                    .iter()
                    .map(|c| ConsumerView {
                        subscription: c.subscription,
                        credit: c.credit,
                        unacked: c.unacked,
                    })
                    .collect(),
                publish_rate: s.publish_rate,
                deliver_rate: s.deliver_rate,
                ack_rate: s.ack_rate,
                duplicates: s.duplicates,
                balanced: s.is_balanced(),
            },
            loss_pct: self.loss_pct(),
            storage: self.storage.as_ref().map(|l| StorageView {
                bytes_on_disk: l.bytes_on_disk,
                segments: l.segments,
                unsettled: l.unsettled,
                unsettled_bytes: l.unsettled_bytes,
                appended: l.appended,
                settled: l.settled,
                fsyncs: l.fsyncs,
                last_fsync_us: l.last_fsync.map(|d| d.as_micros() as u64),
                reclaimed_segments: l.reclaimed_segments,
            }),
        }
    }
}
