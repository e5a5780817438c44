//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`, generated with
//! `utoipa` from the types below: one `#[utoipa::path]` per endpoint and one schema type per
//! JSON body. The bodies themselves are written by `json.rs` (queue views), `messages.rs` and
//! `admin.rs`; the types here state their shapes (`deny_unknown_fields`: no property may be
//! added without the document saying so) and `crates/levee/tests/openapi.rs` checks every
//! endpoint's live responses against this document, so the two cannot drift apart silently.

#![allow(dead_code)] // The path functions exist for their attributes only.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use super::auth::{Needs, ROUTES};

/// Every error: a stable code and a human-readable message.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Stable code, e.g. `unknown-queue`, `bad-request`, `method-not-allowed`.
    pub error: String,
    /// What went wrong.
    pub message: String,
    /// Declares only (409): the fields that differ.
    pub differences: Option<Vec<Value>>,
}

/// A rate limit.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDoc {
    msgs_per_sec: Option<u32>,
    bytes_per_sec: Option<u64>,
    burst_msgs: u32,
    burst_bytes: u64,
}

/// A dedup window.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupDoc {
    window_ms: Option<u64>,
    max_ids: u32,
}

/// A queue's configuration (what `PUT` takes; missing fields take their defaults).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfigDoc {
    max_messages: u64,
    max_bytes: u64,
    /// `block`, `reject`, `drop-newest`, `drop-oldest`, `conflate-by-key`, `shed-priority`.
    overflow: String,
    /// `fifo` or `priority`.
    order: String,
    /// `disk`, `memory` or `transient`.
    durability: String,
    /// `"always"`, `"never"`, `{"interval_ms": n}`, or null (memory queues).
    fsync: Option<Value>,
    ack_timeout_ms: u64,
    max_deliveries: Option<u32>,
    dead_letter: Option<String>,
    message_ttl_ms: Option<u64>,
    rate_limit: Option<RateLimitDoc>,
    /// Dead letters go through this exchange (instead of to `dead_letter`).
    dead_letter_exchange: Option<String>,
    /// The routing key of dead letters sent through `dead_letter_exchange` (default: the
    /// message's key).
    dead_letter_routing_key: Option<String>,
    /// One consumer at a time gets the messages (the longest-subscribed); the next takes over
    /// when it leaves.
    single_active_consumer: bool,
    /// The queue is deleted once unused (no consumer, no get, no redeclare) this long.
    expires_ms: Option<u64>,
    dedup: Option<DedupDoc>,
    /// Copies a cluster keeps: 1 = a local queue; 2 or more = a replicated queue (a cluster
    /// only; disk, fsync always).
    replicas: u8,
}

/// One consumer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDoc {
    subscription: u64,
    credit: u64,
    unacked: u64,
}

/// A queue's counters.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsDoc {
    published: u64,
    stored: u64,
    rejected: u64,
    acked: u64,
    /// Count per drop reason.
    dropped: BTreeMap<String, u64>,
    dropped_total: u64,
    expired: u64,
    dead_lettered: u64,
    ready: u64,
    unacked: u64,
    bytes: u64,
    publish_credit_outstanding: u64,
    consumers: Vec<ConsumerDoc>,
    publish_rate: u64,
    deliver_rate: u64,
    ack_rate: u64,
    duplicates: u64,
    balanced: bool,
}

/// Storage figures of a disk queue.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorageDoc {
    bytes_on_disk: u64,
    segments: u64,
    unsettled: u64,
    unsettled_bytes: u64,
    appended: u64,
    settled: u64,
    fsyncs: u64,
    last_fsync_us: Option<u64>,
    reclaimed_segments: u64,
}

/// A queue (or, with only `name` and `error`, one that did not answer).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDoc {
    name: String,
    config: Option<QueueConfigDoc>,
    stats: Option<StatsDoc>,
    loss_pct: Option<f64>,
    storage: Option<StorageDoc>,
    error: Option<String>,
}

/// Answer of a declare.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeclaredDoc {
    queue: String,
    created: bool,
    messages: u64,
}

/// Answer of a delete.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeletedDoc {
    queue: String,
    deleted: bool,
    messages: u64,
}

/// Answer of a purge.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgedDoc {
    queue: String,
    purged: u64,
}

/// Answer of a `PATCH`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatedDoc {
    queue: String,
    config: QueueConfigDoc,
    previous: QueueConfigDoc,
}

/// One message to publish.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishMessageDoc {
    /// UTF-8 text payload.
    payload: Option<String>,
    /// Binary payload, base64.
    payload_base64: Option<String>,
    key: Option<String>,
    priority: Option<u8>,
    ttl_ms: Option<u64>,
    headers: Option<BTreeMap<String, String>>,
    /// Deduplication id (at most 255 bytes).
    message_id: Option<String>,
}

/// A publish: one message (`payload` ...) or `{"messages": [...]}`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishDoc {
    messages: Option<Vec<PublishMessageDoc>>,
    payload: Option<String>,
    payload_base64: Option<String>,
    key: Option<String>,
    priority: Option<u8>,
    ttl_ms: Option<u64>,
    headers: Option<BTreeMap<String, String>>,
    message_id: Option<String>,
}

/// One message's fate.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeDoc {
    /// `stored`, `dropped`, `rejected` or `duplicate`.
    outcome: String,
    /// `stored`, `duplicate`: the queue sequence number (of the first copy for a duplicate).
    seq: Option<u64>,
    /// `dropped`, `rejected`: why.
    reason: Option<String>,
    /// `rejected`: the stable code.
    code: Option<String>,
    retry_after_ms: Option<u64>,
}

/// Answer of a publish.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomesDoc {
    outcomes: Vec<OutcomeDoc>,
}

/// A delivered (receive) or peeked message.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageDoc {
    /// Receive only: what ack / nack / reject / extend take.
    receipt: Option<String>,
    seq: u64,
    delivery_count: u32,
    timestamp_ms: u64,
    priority: u8,
    headers: BTreeMap<String, String>,
    /// The payload when it is UTF-8.
    payload: Option<String>,
    /// The payload otherwise, base64.
    payload_base64: Option<String>,
    key: Option<String>,
    message_id: Option<String>,
    ttl_ms: Option<u64>,
    /// Peek only: the full payload length.
    payload_bytes: Option<u64>,
    /// Peek only: the payload was cut to the preview.
    payload_truncated: Option<bool>,
}

/// Answer of a receive or a peek.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagesDoc {
    messages: Vec<MessageDoc>,
}

/// Receipts to settle.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleDoc {
    receipts: Vec<String>,
    /// nack only: requeue delay.
    delay_ms: Option<u64>,
    /// extend only: new lease from now (0 / missing: the queue's ack timeout).
    extend_ms: Option<u64>,
}

/// A refused receipt.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusedDoc {
    receipt: String,
    error: String,
    message: String,
}

/// Answer of ack / nack / reject / extend.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettledDoc {
    settled: u64,
    refused: Vec<RefusedDoc>,
}

/// A move.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveDoc {
    to: String,
    max: Option<u64>,
    /// Only messages with this header value.
    header: Option<HeaderMatchDoc>,
}

/// A header to match.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchDoc {
    name: String,
    value: String,
}

/// Answer of a move.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MovedDoc {
    moved: u64,
    /// Why it ended early (the target is full, ...).
    stopped: Option<String>,
}

/// One queue definition.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueDefinitionDoc {
    name: String,
    config: QueueConfigDoc,
}

/// A declared exchange in a definitions document.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDefinitionDoc {
    name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    kind: String,
    durable: Option<bool>,
    auto_delete: Option<bool>,
    internal: Option<bool>,
    arguments: Option<BTreeMap<String, Value>>,
}

/// A binding in a definitions document (`""`: the default exchange).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingDefinitionDoc {
    exchange: String,
    queue: String,
    key: Option<String>,
    arguments: Option<BTreeMap<String, Value>>,
}

/// A definitions document.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsDoc {
    levee_definitions: u64,
    queues: Vec<QueueDefinitionDoc>,
    /// Declared exchanges (never the predeclared ones).
    exchanges: Option<Vec<ExchangeDefinitionDoc>>,
    bindings: Option<Vec<BindingDefinitionDoc>>,
    /// Reserved: always empty (user secrets are never exported).
    users: Option<Vec<Value>>,
}

/// Something that could not be imported: a queue, an exchange or a binding.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportErrorDoc {
    queue: Option<String>,
    exchange: Option<String>,
    binding: Option<BindingDoc>,
    error: String,
    message: String,
}

/// Answer of an import.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportedDoc {
    /// Queues created.
    created: Vec<String>,
    /// Queues that existed with this config.
    unchanged: Vec<String>,
    /// Queues changed live.
    updated: Vec<String>,
    exchanges_created: Vec<String>,
    exchanges_unchanged: Vec<String>,
    bindings_created: u64,
    bindings_unchanged: u64,
    errors: Vec<ImportErrorDoc>,
}

/// An exchange's configuration (what `PUT /api/exchanges/{name}` takes; only `type` is
/// required).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfigDoc {
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    kind: String,
    durable: Option<bool>,
    auto_delete: Option<bool>,
    internal: Option<bool>,
    /// Strings (numbers and booleans are taken as their text).
    arguments: Option<BTreeMap<String, Value>>,
}

/// An exchange (`""`: the default exchange).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDoc {
    name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: BTreeMap<String, String>,
    /// Built in (`""`, `amq.*`): neither declared nor deleted by clients.
    predeclared: bool,
    /// How many bindings it has.
    bindings: u64,
    /// Messages that matched at least one queue.
    routed: u64,
    /// Messages that matched none (dropped).
    unroutable: u64,
}

/// Answer of an exchange declare.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeclaredDoc {
    exchange: String,
    created: bool,
}

/// Answer of an exchange delete.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangeDeletedDoc {
    exchange: String,
    deleted: bool,
}

/// What a bind or unbind takes (both optional).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingBodyDoc {
    /// The binding key (default `""`).
    key: Option<String>,
    arguments: Option<BTreeMap<String, Value>>,
}

/// A binding (with `created` after a bind, `existed` after an unbind).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingDoc {
    exchange: String,
    queue: String,
    key: String,
    arguments: BTreeMap<String, String>,
    created: Option<bool>,
    existed: Option<bool>,
}

/// A publish to an exchange.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExchangePublishDoc {
    routing_key: Option<String>,
    /// UTF-8 text payload.
    payload: Option<String>,
    headers: Option<BTreeMap<String, Value>>,
}

/// The fate of a message published to an exchange.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutedOutcomeDoc {
    /// `stored`, `dropped`, `rejected`, `throttled`, `unroutable` or (202) `held`.
    outcome: String,
    /// How many queues it was routed to (absent for `held`).
    targets: Option<u64>,
    seq: Option<u64>,
    reason: Option<String>,
    code: Option<String>,
    retry_after_ms: Option<u64>,
}

/// One point of a queue's history (counters cumulative).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointDoc {
    /// ms since the Unix epoch.
    t: u64,
    ready: u64,
    unacked: u64,
    bytes: u64,
    consumers: u64,
    /// Age of the next ready message, ms.
    oldest_ms: u64,
    published: u64,
    delivered: u64,
    acked: u64,
    /// Lost (dropped, conflation excluded).
    dropped: u64,
    /// Replaced by a newer message of the same key (conflation).
    replaced: u64,
    rejected: u64,
    expired: u64,
    dead_lettered: u64,
}

/// A queue's history.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryDoc {
    queue: String,
    interval_ms: u64,
    /// Points kept at most.
    capacity: u64,
    points: Vec<PointDoc>,
}

/// An alert rule (one condition; see docs/operations.md).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    name: Option<String>,
    queue: String,
    for_ms: Option<u64>,
    depth_above: Option<u64>,
    oldest_above_ms: Option<u64>,
    loss_above_pct: Option<f64>,
    window_ms: Option<u64>,
    no_consumer_credit: Option<bool>,
    dead_letter_not_empty: Option<bool>,
    key: Option<String>,
    field: Option<String>,
    header: Option<String>,
    above: Option<f64>,
    below: Option<f64>,
    webhook: Option<String>,
}

/// A firing alert.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FiringDoc {
    rule: String,
    queue: String,
    since: u64,
    value: f64,
    detail: String,
}

/// A fire or a clear.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionDoc {
    rule: String,
    queue: String,
    firing: bool,
    at: u64,
    value: f64,
    detail: String,
}

/// The rules and what fires.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsDoc {
    rules: Vec<RuleDoc>,
    firing: Vec<FiringDoc>,
    /// The last fires and clears, newest last.
    recent: Vec<TransitionDoc>,
}

/// Answer of a rule change.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSetDoc {
    rule: RuleDoc,
    created: bool,
}

/// Answer of a rule removal.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleDeletedDoc {
    rule: String,
    deleted: bool,
}

/// The node's figures (absent where the platform does not tell).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    rss_bytes: Option<u64>,
    memory_total_bytes: Option<u64>,
    memory_available_bytes: Option<u64>,
    disk_total_bytes: Option<u64>,
    disk_free_bytes: Option<u64>,
    data_dir: String,
}

/// A consumer on a connection.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnConsumerDoc {
    queue: String,
    subscription: u64,
    credit: u64,
    unacked: u64,
}

/// A producer on a connection.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnProducerDoc {
    queue: String,
    /// Publish credit held unused.
    credit: u64,
}

/// A native or AMQP connection.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionDoc {
    id: u64,
    peer: String,
    user: String,
    client: String,
    since: u64,
    consumers: Vec<ConnConsumerDoc>,
    producers: Vec<ConnProducerDoc>,
}

/// Which queues the caller may act on.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionsDoc {
    manage: Vec<String>,
    publish: Vec<String>,
    consume: Vec<String>,
}

/// The overview.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverviewDoc {
    version: String,
    uptime_secs: f64,
    started_ms: u64,
    node: NodeDoc,
    queues: u64,
    disk_bytes: u64,
    connections: u64,
    http_connections: u64,
    consumers: u64,
    producers: u64,
    alerts_firing: Vec<FiringDoc>,
    connection_list: Vec<ConnectionDoc>,
    /// Consumers not on a connection (HTTP receive sessions, redrives).
    other_consumers: Vec<ConnConsumerDoc>,
    /// Whether users are configured.
    security: bool,
    permissions: PermissionsDoc,
}

/// A health or readiness answer.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthDoc {
    status: String,
    queues: Option<u64>,
}

#[utoipa::path(get, path = "/", responses((status = 200, description = "The dashboard", content_type = "text/html", body = String)))]
fn dashboard() {}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
fn metrics() {}

#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document", body = Object)))]
fn openapi() {}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process answers", body = HealthDoc)))]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Recovered and the data directory takes a write", body = HealthDoc),
    (status = 503, description = "Not ready", body = ErrorBody)))]
fn readyz() {}

#[utoipa::path(get, path = "/api/queues", responses((status = 200, description = "Every queue", body = Vec<QueueDoc>)))]
fn list_queues() {}

#[utoipa::path(get, path = "/api/queues/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "The queue", body = QueueDoc),
    (status = 404, description = "No such queue", body = ErrorBody),
    (status = 503, description = "The queue did not answer", body = ErrorBody)))]
fn get_queue() {}

#[utoipa::path(put, path = "/api/queues/{name}", params(("name" = String, Path)), request_body = QueueConfigDoc, responses(
    (status = 201, description = "Created", body = DeclaredDoc),
    (status = 200, description = "Exists with this config", body = DeclaredDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 409, description = "Exists with another config", body = ErrorBody)))]
fn put_queue() {}

#[utoipa::path(patch, path = "/api/queues/{name}", params(("name" = String, Path)), request_body = QueueConfigDoc, responses(
    (status = 200, description = "Changed live", body = UpdatedDoc),
    (status = 400, description = "Invalid or not changeable", body = ErrorBody),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn patch_queue() {}

#[utoipa::path(delete, path = "/api/queues/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "Deleted", body = DeletedDoc),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn delete_queue() {}

#[utoipa::path(post, path = "/api/queues/{name}/purge", params(("name" = String, Path)), responses(
    (status = 200, description = "Purged", body = PurgedDoc),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn purge_queue() {}

#[utoipa::path(post, path = "/api/queues/{name}/messages", params(("name" = String, Path)), request_body = PublishDoc, responses(
    (status = 200, description = "Every message's outcome, once durable", body = OutcomesDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 404, description = "No such queue", body = ErrorBody),
    (status = 429, description = "A full block queue (Retry-After)", body = ErrorBody)))]
fn publish() {}

#[utoipa::path(get, path = "/api/queues/{name}/messages", params(("name" = String, Path),
    ("count" = Option<u32>, Query, description = "1..=1000, default 10"),
    ("preview" = Option<u64>, Query, description = "payload preview bytes, default 1024")), responses(
    (status = 200, description = "The next ready messages, not consumed", body = MessagesDoc),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn peek() {}

#[utoipa::path(post, path = "/api/queues/{name}/receive", params(("name" = String, Path),
    ("max" = Option<u32>, Query, description = "1..=1000, default 1"),
    ("wait" = Option<u64>, Query, description = "long poll seconds, 0..=20")), responses(
    (status = 200, description = "Leased messages with receipts", body = MessagesDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 503, description = "Too many receives waiting (Retry-After)", body = ErrorBody)))]
fn receive() {}

#[utoipa::path(post, path = "/api/queues/{name}/ack", params(("name" = String, Path)), request_body = SettleDoc, responses(
    (status = 200, description = "Settled and refused receipts", body = SettledDoc),
    (status = 400, description = "Invalid", body = ErrorBody)))]
fn ack() {}

#[utoipa::path(post, path = "/api/queues/{name}/nack", params(("name" = String, Path)), request_body = SettleDoc, responses(
    (status = 200, description = "Settled and refused receipts", body = SettledDoc),
    (status = 400, description = "Invalid", body = ErrorBody)))]
fn nack() {}

#[utoipa::path(post, path = "/api/queues/{name}/reject", params(("name" = String, Path)), request_body = SettleDoc, responses(
    (status = 200, description = "Settled and refused receipts", body = SettledDoc),
    (status = 400, description = "Invalid", body = ErrorBody)))]
fn reject() {}

#[utoipa::path(post, path = "/api/queues/{name}/extend", params(("name" = String, Path)), request_body = SettleDoc, responses(
    (status = 200, description = "Renewed and refused receipts", body = SettledDoc),
    (status = 400, description = "Invalid", body = ErrorBody)))]
fn extend() {}

#[utoipa::path(post, path = "/api/queues/{name}/move", params(("name" = String, Path)), request_body = MoveDoc, responses(
    (status = 200, description = "Moved", body = MovedDoc),
    (status = 400, description = "Invalid or unknown target", body = ErrorBody),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn move_messages() {}

#[utoipa::path(get, path = "/api/queues/{name}/history", params(("name" = String, Path),
    ("since" = Option<u64>, Query, description = "only points at or after this time, ms since the Unix epoch")), responses(
    (status = 200, description = "The queue's points, oldest first", body = HistoryDoc),
    (status = 404, description = "No such queue", body = ErrorBody)))]
fn queue_history() {}

#[utoipa::path(get, path = "/api/alerts", responses((status = 200, description = "Rules, firing alerts, recent fires and clears", body = AlertsDoc)))]
fn list_alerts() {}

#[utoipa::path(put, path = "/api/alerts/{name}", params(("name" = String, Path)), request_body = RuleDoc, responses(
    (status = 201, description = "Created", body = RuleSetDoc),
    (status = 200, description = "Replaced", body = RuleSetDoc),
    (status = 400, description = "Invalid", body = ErrorBody)))]
fn put_alert() {}

#[utoipa::path(delete, path = "/api/alerts/{name}", params(("name" = String, Path)), responses(
    (status = 200, description = "Removed", body = RuleDeletedDoc),
    (status = 404, description = "No such rule", body = ErrorBody)))]
fn delete_alert() {}

#[utoipa::path(get, path = "/api/overview", responses((status = 200, description = "Node, totals, alerts, connections", body = OverviewDoc)))]
fn overview() {}

#[utoipa::path(get, path = "/api/definitions", responses((status = 200, description = "Every definition", body = DefinitionsDoc)))]
fn export_definitions() {}

#[utoipa::path(post, path = "/api/definitions", request_body = DefinitionsDoc, responses(
    (status = 200, description = "Imported", body = ImportedDoc),
    (status = 400, description = "Invalid document", body = ErrorBody),
    (status = 409, description = "Some queues, exchanges or bindings could not be imported (the rest was)", body = ImportedDoc)))]
fn import_definitions() {}

#[utoipa::path(get, path = "/api/exchanges", responses((status = 200, description = "Every exchange", body = Vec<ExchangeDoc>)))]
fn list_exchanges() {}

#[utoipa::path(get, path = "/api/exchanges/{name}", params(("name" = String, Path, description = "`amq.default`: the default exchange")), responses(
    (status = 200, description = "The exchange", body = ExchangeDoc),
    (status = 404, description = "No such exchange", body = ErrorBody)))]
fn get_exchange() {}

#[utoipa::path(put, path = "/api/exchanges/{name}", params(("name" = String, Path)), request_body = ExchangeConfigDoc, responses(
    (status = 201, description = "Created", body = ExchangeDeclaredDoc),
    (status = 200, description = "Exists with this config", body = ExchangeDeclaredDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 403, description = "The default exchange or an `amq.` name", body = ErrorBody),
    (status = 409, description = "Exists with another config (`differences`)", body = ErrorBody)))]
fn put_exchange() {}

#[utoipa::path(delete, path = "/api/exchanges/{name}", params(("name" = String, Path),
    ("if_unused" = Option<bool>, Query, description = "refuse (409) if it has bindings")), responses(
    (status = 200, description = "Deleted", body = ExchangeDeletedDoc),
    (status = 400, description = "Invalid query", body = ErrorBody),
    (status = 403, description = "A predeclared exchange", body = ErrorBody),
    (status = 404, description = "No such exchange", body = ErrorBody),
    (status = 409, description = "In use", body = ErrorBody)))]
fn delete_exchange() {}

#[utoipa::path(get, path = "/api/exchanges/{name}/bindings", params(("name" = String, Path)), responses(
    (status = 200, description = "Its bindings", body = Vec<BindingDoc>),
    (status = 404, description = "No such exchange", body = ErrorBody)))]
fn exchange_bindings() {}

#[utoipa::path(put, path = "/api/exchanges/{name}/bindings/{queue}", params(("name" = String, Path), ("queue" = String, Path)), request_body = BindingBodyDoc, responses(
    (status = 201, description = "Bound", body = BindingDoc),
    (status = 200, description = "Was bound already", body = BindingDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 403, description = "Not allowed (the default exchange's implicit bindings)", body = ErrorBody),
    (status = 404, description = "No such exchange or queue", body = ErrorBody)))]
fn bind() {}

#[utoipa::path(delete, path = "/api/exchanges/{name}/bindings/{queue}", params(("name" = String, Path), ("queue" = String, Path)), request_body = BindingBodyDoc, responses(
    (status = 200, description = "Unbound (`existed`: whether it was bound)", body = BindingDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 403, description = "Not allowed (the default exchange's implicit bindings)", body = ErrorBody),
    (status = 404, description = "No such exchange or queue", body = ErrorBody)))]
fn unbind() {}

#[utoipa::path(post, path = "/api/exchanges/{name}/publish", params(("name" = String, Path)), request_body = ExchangePublishDoc, responses(
    (status = 200, description = "The outcome once every target queue answered", body = RoutedOutcomeDoc),
    (status = 202, description = "Held by a full block queue, then discarded", body = RoutedOutcomeDoc),
    (status = 400, description = "Invalid", body = ErrorBody),
    (status = 403, description = "An internal exchange", body = ErrorBody),
    (status = 404, description = "No such exchange", body = ErrorBody)))]
fn publish_to_exchange() {}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Levee HTTP API",
        description = "Queues, messaging, metrics. See docs/http.md."
    ),
    paths(
        dashboard,
        metrics,
        openapi,
        healthz,
        readyz,
        list_queues,
        get_queue,
        put_queue,
        patch_queue,
        delete_queue,
        purge_queue,
        publish,
        peek,
        receive,
        ack,
        nack,
        reject,
        extend,
        move_messages,
        queue_history,
        list_alerts,
        put_alert,
        delete_alert,
        overview,
        export_definitions,
        import_definitions,
        list_exchanges,
        get_exchange,
        put_exchange,
        delete_exchange,
        exchange_bindings,
        bind,
        unbind,
        publish_to_exchange
    )
)]
struct ApiDoc;

/// The OpenAPI document as JSON, with the answers of the auth middleware (`auth::ROUTES`) on
/// every operation that can give them: 401 wherever a login is needed, 403 wherever a right is
/// (both only when users are configured).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    let error = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
    for &(method, path, needs) in ROUTES {
        let (login, right) = match needs {
            Needs::Open => (false, false),
            Needs::Login => (true, false),
            Needs::Queue(..) | Needs::Exchange(..) | Needs::Broker(_) => (true, true),
        };
        // `*` (the probes) is documented as GET. `get_mut`, not indexing: indexing a
        // `Value` mutably would add the operation it looks for.
        let method = if method == "*" {
            "get".to_string()
        } else {
            method.to_ascii_lowercase()
        };
        let Some(responses) = doc
            .get_mut("paths")
            .and_then(|p| p.get_mut(path))
            .and_then(|p| p.get_mut(method.as_str()))
            .and_then(|o| o.get_mut("responses"))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let mut add = |status: &str, description: &str| {
            responses.entry(status).or_insert_with(|| {
                serde_json::json!({
                    "description": description,
                    "content": {"application/json": {"schema": error.clone()}},
                })
            });
        };
        if login {
            add(
                "401",
                "Users are configured and no valid login was given (`WWW-Authenticate: Basic`)",
            );
        }
        if right {
            add("403", "The user lacks the right this endpoint needs");
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ROUTES;

    /// The auth table has one line per route the router serves (a route missing from it would
    /// need only a login); the document must list exactly the same (method, path) pairs, and
    /// `crates/levee/tests/openapi.rs` calls each of them on the real binary.
    #[test]
    fn the_document_lists_exactly_the_routes_of_the_auth_table() {
        let doc = super::document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_uppercase(), p.clone()))
            })
            .collect();
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|&(m, p, _)| (if m == "*" { "GET" } else { m }.to_string(), p.to_string()))
            .collect();
        assert_eq!(documented, routed);
    }

    #[test]
    fn guarded_operations_list_401_and_403() {
        let doc = super::document();
        let put = &doc["paths"]["/api/exchanges/{name}"]["put"]["responses"];
        assert!(put["401"].is_object() && put["403"].is_object(), "{put}");
        let list = &doc["paths"]["/api/queues"]["get"]["responses"];
        assert!(list["401"].is_object() && list["403"].is_null(), "{list}");
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
    }

    #[test]
    fn bodies_refuse_unlisted_properties() {
        let doc = super::document();
        let s = &doc["components"]["schemas"]["OutcomeDoc"];
        assert_eq!(s["additionalProperties"], false, "{s}");
        assert!(doc["components"]["schemas"]["MessageDoc"]["properties"]["receipt"].is_object());
    }
}
