//! The broker's HTTP side: a JSON management API, Prometheus metrics and a live dashboard.
//!
//! Endpoints (see `docs/design.md`, section "HTTP API and metrics", for the JSON shapes):
//! - `GET /api/queues`: every queue with its config, counters, rates, loss % and, for disk queues,
//!   storage figures; `GET /api/queues/{name}`: one queue;
//! - `PUT /api/queues/{name}` (JSON config body; missing fields take their defaults): declare,
//!   answering 201 created, 200 existed with this config, 409 exists with another config (with
//!   the differences), 400 invalid; `DELETE /api/queues/{name}`;
//!   `POST /api/queues/{name}/purge`;
//! - `GET /metrics`: Prometheus text exposition format 0.0.4;
//! - `GET /`: a self-contained HTML dashboard (no external assets) polling `/api/queues`.
//!
//! This module owns the JSON form of a [`QueueConfig`] ([`config_from_json`],
//! [`config_to_json`]), which round-trips: a config read from `GET` can be `PUT` back unchanged.
//!
//! # Invariants
//! - Every error is answered with a JSON body `{"error": code, "message": text}` and a 4xx/5xx
//!   status; bad input never panics.
//! - A queue whose actor does not answer an inspect within [`INSPECT_TIMEOUT`] (or has stopped)
//!   does not stall the API nor vanish from it: it is listed with an `error` (and counted in
//!   `/metrics` as `levee_queue_available{queue} 0`); other queues are unaffected.
//!
//! # Memory bounds
//! - A connection waits at most `http_header_timeout_ms` for each request's headers (idle
//!   keep-alive connections included), so idle or half-sent requests do not pile up.
//! - Request bodies are limited to [`MAX_BODY`] (64 KiB); larger ones get 413.
//! - A `/api/queues` or `/metrics` response holds one snapshot of every queue: O(queues +
//!   consumers) (consumers per queue are at most `levee_proto::MAX_LIST`). The HTTP server keeps
//!   no state between requests.

use std::fmt::Write as _;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use levee_proto::{
    DropReason, Durability, ErrorCode, Fsync, Order, Overflow, ProtoError, QueueConfig, QueueInfo,
    QueueStats, RateLimit,
};
use levee_store::LogStats;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::error::BrokerError;

/// Longest request body accepted (64 KiB): a queue config is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// How long one queue may take to answer an inspect before the API reports it as unavailable.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// An error of the HTTP layer, answered as a JSON body with [`HttpError::status`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The request body is not valid JSON, or not of the expected shape (400).
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    /// A config field has a value outside its range or vocabulary (400).
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `"overflow"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A queue is registered but did not answer an inspect: it took longer than
    /// [`INSPECT_TIMEOUT`] or its task has stopped (503).
    #[error("queue {queue} is unavailable: {reason}")]
    Unavailable {
        /// The queue.
        queue: String,
        /// Why, e.g. `"no answer within 2s"`.
        reason: String,
    },
    /// No route for this path (404).
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The broker refused or failed the operation; the status follows its error code.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl HttpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::BadJson(_) | HttpError::InvalidConfig { .. } => StatusCode::BAD_REQUEST,
            HttpError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::NoRoute(_) => StatusCode::NOT_FOUND,
            HttpError::Broker(e) => match e.code() {
                ErrorCode::UnknownQueue => StatusCode::NOT_FOUND,
                ErrorCode::QueueConfigMismatch => StatusCode::CONFLICT,
                ErrorCode::InvalidName | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
                ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// A short stable code for the JSON body, e.g. `"unknown-queue"`.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::BadJson(_) => "bad-json",
            HttpError::InvalidConfig { .. } => ErrorCode::InvalidConfig.name(),
            HttpError::Unavailable { .. } => "unavailable",
            HttpError::NoRoute(_) => "not-found",
            HttpError::Broker(e) => e.code().name(),
        }
    }

    fn body(&self) -> Value {
        json!({ "error": self.code(), "message": self.to_string() })
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json_response(self.status(), &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut text = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    text.push('\n');
    json_text_response(status, text)
}

fn json_text_response(status: StatusCode, text: String) -> Response {
    let mut resp = (status, text).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// ---------------------------------------------------------------------------------------------
// Config <-> JSON
// ---------------------------------------------------------------------------------------------

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
}

impl<'a> From<&'a QueueConfig> for ConfigView<'a> {
    fn from(c: &'a QueueConfig) -> Self {
        let (durability, fsync) = match c.durability {
            Durability::Disk(Fsync::Always) => ("disk", Some(FsyncView::Named("always"))),
            Durability::Disk(Fsync::Interval(ms)) => {
                ("disk", Some(FsyncView::Interval { interval_ms: ms }))
            }
            Durability::Disk(_) => ("disk", Some(FsyncView::Named("never"))),
            _ => ("memory", None),
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

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

/// One queue as seen by the HTTP layer: its inspect answer and, for disk queues, its log figures.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    /// Name, config and counters.
    pub info: QueueInfo,
    /// Storage figures (`None` for memory queues).
    pub storage: Option<LogStats>,
}

impl QueueSnapshot {
    /// Dropped messages as a percentage of stored ones (`Σ dropped / stored × 100`, 0 when
    /// nothing was stored). Expired and dead-lettered messages are not counted as lost.
    pub fn loss_pct(&self) -> f64 {
        let s = &self.info.stats;
        if s.stored == 0 {
            0.0
        } else {
            s.dropped_total() as f64 * 100.0 / s.stored as f64
        }
    }

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

/// Inspects one queue, bounded by [`INSPECT_TIMEOUT`].
///
/// Cancel-safe: dropping it abandons the inspect; the queue is unaffected.
pub async fn snapshot(broker: &Broker, name: &str) -> Result<QueueSnapshot, HttpError> {
    let unavailable = |reason: String| HttpError::Unavailable {
        queue: name.to_string(),
        reason,
    };
    let info = match tokio::time::timeout(INSPECT_TIMEOUT, broker.inspect(name)).await {
        Ok(Ok(info)) => info,
        // Still registered, yet its actor is gone: report it rather than hide the queue.
        Ok(Err(BrokerError::UnknownQueue(_))) if broker.list().iter().any(|q| q == name) => {
            return Err(unavailable("its task has stopped".into()));
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(unavailable(format!("no answer within {INSPECT_TIMEOUT:?}")));
        }
    };
    Ok(QueueSnapshot {
        storage: broker.log_stats(name),
        info,
    })
}

/// Inspects every queue concurrently; returns the snapshots sorted by name and the queues that
/// failed ([`HttpError::Unavailable`]), also sorted. Queues deleted meanwhile are left out.
///
/// Cancel-safe: dropping it abandons the inspects (their tasks are aborted).
pub async fn snapshot_all(broker: &Broker) -> (Vec<QueueSnapshot>, Vec<(String, HttpError)>) {
    let mut set = tokio::task::JoinSet::new();
    for name in broker.list() {
        let b = broker.clone();
        set.spawn(async move {
            let r = snapshot(&b, &name).await;
            (name, r)
        });
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(s))) => ok.push(s),
            Ok((_, Err(HttpError::Broker(BrokerError::UnknownQueue(_))))) => {}
            Ok((name, Err(e))) => {
                tracing::warn!(queue = %name, error = %e, "queue stats unavailable");
                failed.push((name, e));
            }
            Err(e) => tracing::error!(error = %e, "inspect task failed"),
        }
    }
    ok.sort_by(|a, b| a.info.queue.cmp(&b.info.queue));
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    (ok, failed)
}

// ---------------------------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------------------------

/// Appends a label value to `out`, escaping backslash, double quote and line feed.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        // HELP text escapes backslash and line feed; ours contain neither.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                push_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

type Getter = fn(&QueueSnapshot) -> u64;
type ConsumerGetter = fn(&levee_proto::ConsumerStats) -> u64;
type StorageGetter = fn(&LogStats) -> u64;

/// Renders snapshots in the Prometheus text exposition format 0.0.4: every family once, with
/// `HELP` and `TYPE` lines, its samples grouped under them. `unavailable` names the queues that
/// could not be inspected (reported as `levee_queue_available 0`).
pub fn render_metrics(queues: &[QueueSnapshot], unavailable: &[String]) -> String {
    let mut out = String::with_capacity(1024 + queues.len() * 2048);
    let per_queue: [(&str, &str, &str, Getter); 16] = [
        (
            "levee_queue_published_total",
            "counter",
            "Messages received in Publish frames for the queue.",
            |q| q.info.stats.published,
        ),
        (
            "levee_queue_stored_total",
            "counter",
            "Messages accepted into the queue's accounting (stored or dropped by policy).",
            |q| q.info.stats.stored,
        ),
        (
            "levee_queue_rejected_total",
            "counter",
            "Messages refused (rejected or throttled), never stored.",
            |q| q.info.stats.rejected,
        ),
        (
            "levee_queue_acked_total",
            "counter",
            "Messages acked by consumers.",
            |q| q.info.stats.acked,
        ),
        (
            "levee_queue_expired_total",
            "counter",
            "Messages whose TTL ran out.",
            |q| q.info.stats.expired,
        ),
        (
            "levee_queue_dead_lettered_total",
            "counter",
            "Messages moved to the dead-letter queue.",
            |q| q.info.stats.dead_lettered,
        ),
        (
            "levee_queue_ready",
            "gauge",
            "Messages waiting for delivery.",
            |q| q.info.stats.ready,
        ),
        (
            "levee_queue_unacked",
            "gauge",
            "Messages delivered and not yet settled.",
            |q| q.info.stats.unacked,
        ),
        (
            "levee_queue_bytes",
            "gauge",
            "Payload bytes of ready and unacked messages.",
            |q| q.info.stats.bytes,
        ),
        (
            "levee_queue_max_messages",
            "gauge",
            "The queue's limit on stored messages.",
            |q| q.info.config.max_messages,
        ),
        (
            "levee_queue_max_bytes",
            "gauge",
            "The queue's limit on stored payload bytes.",
            |q| q.info.config.max_bytes,
        ),
        (
            "levee_queue_consumers",
            "gauge",
            "Subscriptions consuming from the queue.",
            |q| q.info.stats.consumers.len() as u64,
        ),
        (
            "levee_queue_publish_credit_outstanding",
            "gauge",
            "Publish credit granted to producers and not yet used (block queues).",
            |q| q.info.stats.publish_credit_outstanding,
        ),
        (
            "levee_queue_publish_rate",
            "gauge",
            "Messages published per second over the broker's stats window.",
            |q| q.info.stats.publish_rate,
        ),
        (
            "levee_queue_deliver_rate",
            "gauge",
            "Messages delivered per second over the broker's stats window.",
            |q| q.info.stats.deliver_rate,
        ),
        (
            "levee_queue_ack_rate",
            "gauge",
            "Messages acked per second over the broker's stats window.",
            |q| q.info.stats.ack_rate,
        ),
    ];

    let mut f = Family::new(&mut out, "levee_queues", "gauge", "Queues in the broker.");
    f.sample("levee_queues", &[], queues.len() + unavailable.len());

    let name = "levee_queue_available";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "1 if the queue answered this scrape, 0 if it did not (its other series are then absent).",
    );
    let mut all: Vec<(&str, u8)> = queues.iter().map(|q| (q.info.queue.as_str(), 1)).collect();
    all.extend(unavailable.iter().map(|q| (q.as_str(), 0)));
    all.sort_unstable();
    for (queue, up) in all {
        f.sample(name, &[("queue", queue)], up);
    }

    for (name, kind, help, get) in per_queue {
        let mut f = Family::new(&mut out, name, kind, help);
        for q in queues {
            f.sample(name, &[("queue", &q.info.queue)], get(q));
        }
    }

    let name = "levee_queue_dropped_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Messages dropped, by reason (expiry is counted in levee_queue_expired_total).",
    );
    for q in queues {
        for r in DropReason::ALL {
            if r != DropReason::Expired {
                let n = q.info.stats.dropped(r);
                f.sample(name, &[("queue", &q.info.queue), ("reason", r.as_str())], n);
            }
        }
    }

    let name = "levee_queue_loss_ratio";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Dropped messages divided by stored messages (0 when nothing was stored).",
    );
    for q in queues {
        f.sample(name, &[("queue", &q.info.queue)], q.loss_pct() / 100.0);
    }

    let consumer: [(&str, &str, ConsumerGetter); 2] = [
        (
            "levee_consumer_credit",
            "Credit a subscription still has: messages it may be sent without asking again.",
            |c| c.credit,
        ),
        (
            "levee_consumer_unacked",
            "Messages delivered to a subscription and not yet settled.",
            |c| c.unacked,
        ),
    ];
    for (name, help, get) in consumer {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for q in queues {
            for c in &q.info.stats.consumers {
                let sub = c.subscription.to_string();
                f.sample(
                    name,
                    &[("queue", &q.info.queue), ("subscription", &sub)],
                    get(c),
                );
            }
        }
    }

    let storage: [(&str, &str, &str, StorageGetter); 3] = [
        (
            "levee_queue_disk_bytes",
            "gauge",
            "Bytes of the queue log's segment files (disk queues).",
            |l| l.bytes_on_disk,
        ),
        (
            "levee_queue_segments",
            "gauge",
            "Segment files of the queue log (disk queues).",
            |l| l.segments as u64,
        ),
        (
            "levee_queue_fsyncs_total",
            "counter",
            "Sync cycles of the queue log since the broker opened it (disk queues).",
            |l| l.fsyncs,
        ),
    ];
    for (name, kind, help, get) in storage {
        let mut f = Family::new(&mut out, name, kind, help);
        for q in queues {
            if let Some(l) = &q.storage {
                f.sample(name, &[("queue", &q.info.queue)], get(l));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------------

async fn list_queues(State(broker): State<Broker>) -> Response {
    let (ok, failed) = snapshot_all(&broker).await;
    json_text_response(StatusCode::OK, render_queues_json(&ok, &failed))
}

async fn get_queue(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match snapshot(&broker, &name).await {
        Ok(s) => json_response(StatusCode::OK, &s.to_json()),
        Err(e) => e.into_response(),
    }
}

async fn put_queue(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let config = match config_from_json(&body) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match broker.declare(&name, config.clone()).await {
        Ok((created, messages)) => {
            if created {
                tracing::info!(queue = %name, "queue declared over HTTP");
            }
            json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &json!({ "queue": name, "created": created, "messages": messages }),
            )
        }
        Err(e @ BrokerError::ConfigMismatch { .. }) => {
            let http = HttpError::from(e);
            let mut body = http.body();
            // Structured differences, against the config the queue has now.
            if let Ok(Ok(existing)) =
                tokio::time::timeout(INSPECT_TIMEOUT, broker.inspect(&name)).await
            {
                body["differences"] = existing
                    .config
                    .differences(&config)
                    .into_iter()
                    .map(|d| {
                        json!({ "field": d.field, "existing": d.existing, "requested": d.requested })
                    })
                    .collect();
            }
            json_response(http.status(), &body)
        }
        // The only unknown queue a declare can name is its dead-letter queue: bad input.
        Err(e @ BrokerError::UnknownQueue(_)) => json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "unknown-queue", "message": e.to_string() }),
        ),
        Err(e) => HttpError::from(e).into_response(),
    }
}

async fn delete_queue(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match broker.delete(&name).await {
        Ok(dropped) => {
            tracing::info!(queue = %name, messages = dropped, "queue deleted over HTTP");
            json_response(
                StatusCode::OK,
                &json!({ "queue": name, "deleted": true, "messages": dropped }),
            )
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

async fn purge_queue(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match broker.purge(&name).await {
        Ok(purged) => json_response(StatusCode::OK, &json!({ "queue": name, "purged": purged })),
        Err(e) => HttpError::from(e).into_response(),
    }
}

async fn metrics(State(broker): State<Broker>) -> Response {
    let (ok, failed) = snapshot_all(&broker).await;
    let failed: Vec<String> = failed.into_iter().map(|(name, _)| name).collect();
    let mut text = render_metrics(&ok, &failed);
    render_limits(&mut text, &broker);
    let mut resp = text.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The broker-wide bounds and how much of them is in use.
fn render_limits(out: &mut String, broker: &Broker) {
    let cfg = broker.config();
    let gauges: [(&str, &str, u64); 6] = [
        (
            "levee_connections",
            "Open wire connections (handshake included).",
            broker.open_connections() as u64,
        ),
        (
            "levee_http_connections",
            "Open HTTP connections (this scrape's included).",
            broker.open_http_connections() as u64,
        ),
        (
            "levee_max_http_connections",
            "The limit on open HTTP connections.",
            cfg.max_http_connections as u64,
        ),
        (
            "levee_max_connections",
            "The limit on open wire connections.",
            cfg.max_connections as u64,
        ),
        (
            "levee_partial_frame_bytes",
            "Bytes of the frame budget reserved by large frames still arriving.",
            broker.partial_frame_bytes(),
        ),
        (
            "levee_max_partial_frame_bytes",
            "The frame budget: most bytes buffered for large frames still arriving.",
            cfg.max_partial_frame_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        Family::new(out, name, "gauge", help).sample(name, &[], value);
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn fallback(uri: axum::http::Uri) -> Response {
    HttpError::NoRoute(uri.path().to_string()).into_response()
}

/// The HTTP API, metrics and dashboard of `broker`, as an axum router (to be served, or nested
/// into a larger application).
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics))
        .route("/api/queues", get(list_queues))
        .route(
            "/api/queues/{name}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route("/api/queues/{name}/purge", post(purge_queue))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(broker)
}

/// Serves [`router`] on `listener` (HTTP/1.1) until the future is dropped.
///
/// At most `max_http_connections` connections are served at once; one more is answered `503`
/// (`{"error": "too-many-connections", ...}`) and closed. Each connection must send a request's
/// headers within `http_header_timeout_ms` of opening or of
/// the previous response, else it is closed: a client that sends half a header, or keeps an idle
/// connection open, does not hold it forever. A request being answered is not timed. Accept
/// failures (EMFILE, ...) are retried after a short bounded backoff.
///
/// # Cancel safety
/// Cancel-safe: dropping the future stops accepting; requests already being served go on in
/// their own tasks.
pub async fn serve_http(broker: Broker, listener: TcpListener) -> std::io::Result<()> {
    let timeout = Duration::from_millis(broker.config().http_header_timeout_ms.into());
    let limits = broker.clone();
    let service = hyper_util::service::TowerToHyperService::new(router(broker));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    let mut backoff = crate::net::listener::AcceptBackoff::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                backoff.wait(&e).await;
                continue;
            }
        };
        let Some(slot) = limits.inner.limits.admit_http() else {
            tracing::debug!(%peer, "http refused: max_http_connections reached");
            limits.inner.limits.refuse_http(stream);
            continue;
        };
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}
