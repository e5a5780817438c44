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
    dedup: Option<DedupDoc>,
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

/// A definitions document.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsDoc {
    levee_definitions: u64,
    queues: Vec<QueueDefinitionDoc>,
    /// Reserved (empty in this build).
    exchanges: Option<Vec<Value>>,
    /// Reserved (empty in this build).
    bindings: Option<Vec<Value>>,
    /// Reserved (empty in this build).
    users: Option<Vec<Value>>,
}

/// A queue that could not be imported.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportErrorDoc {
    queue: String,
    error: String,
    message: String,
}

/// Answer of an import.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportedDoc {
    created: Vec<String>,
    unchanged: Vec<String>,
    updated: Vec<String>,
    errors: Vec<ImportErrorDoc>,
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

#[utoipa::path(get, path = "/api/definitions", responses((status = 200, description = "Every definition", body = DefinitionsDoc)))]
fn export_definitions() {}

#[utoipa::path(post, path = "/api/definitions", request_body = DefinitionsDoc, responses(
    (status = 200, description = "Imported", body = ImportedDoc),
    (status = 400, description = "Invalid document", body = ErrorBody),
    (status = 409, description = "Some queues could not be imported", body = ImportedDoc)))]
fn import_definitions() {}

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
        export_definitions,
        import_definitions
    )
)]
struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #[test]
    fn bodies_refuse_unlisted_properties() {
        let doc = super::document();
        let s = &doc["components"]["schemas"]["OutcomeDoc"];
        assert_eq!(s["additionalProperties"], false, "{s}");
        assert!(doc["components"]["schemas"]["MessageDoc"]["properties"]["receipt"].is_object());
    }
}
