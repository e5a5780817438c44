//! Messaging over HTTP: publish, receive (long poll), ack / nack / reject / extend by receipt,
//! health and readiness. The JSON shapes are documented in `docs/http.md`; the mechanics (an HTTP
//! publisher or consumer is an in-process connection of the queue actor) in [`super::session`].
//!
//! # Invariants
//! - A publish is answered only once every message has its outcome, which for `stored` means
//!   durable under the queue's fsync policy; a `block` queue without room for the batch answers
//!   429 with `Retry-After` and stores nothing.
//! - Bad input (shape, base64, header count, sizes) is a 400 JSON error and changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use levee_proto::{Delivery, MAX_BATCH, Message, PublishOutcome};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::error::{HttpError, json_response};
use super::session::{PublishError, ReceiveError, Sessions};
use crate::broker::Broker;
use crate::queue::core::SettleKind;

/// Longest body of a publish request (8 MiB).
pub(super) const MAX_PUBLISH_BODY: usize = 8 << 20;

/// Longest message id (bytes), as on the wire.
const MAX_MESSAGE_ID: usize = 255;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    payload: Option<String>,
    payload_base64: Option<String>,
    key: Option<String>,
    priority: Option<u8>,
    ttl_ms: Option<u64>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    message_id: Option<String>,
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::BadRequest(msg.into())
}

impl MessageBody {
    fn into_message(self, i: usize) -> Result<Message, HttpError> {
        let payload = match (self.payload, self.payload_base64) {
            (Some(p), None) => Bytes::from(p),
            (None, Some(b)) => Bytes::from(
                B64.decode(b.as_bytes())
                    .map_err(|e| bad(format!("messages[{i}].payload_base64: {e}")))?,
            ),
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "messages[{i}]: give payload or payload_base64, not both"
                )));
            }
        };
        if self.headers.len() > crate::queue::MAX_USER_HEADERS {
            return Err(bad(format!(
                "messages[{i}]: {} headers; at most {} are allowed",
                self.headers.len(),
                crate::queue::MAX_USER_HEADERS
            )));
        }
        for (n, v) in &self.headers {
            if n.len() > 255 || v.len() > 65_535 {
                return Err(bad(format!(
                    "messages[{i}]: header {n:?}: names are at most 255 bytes, values 65535"
                )));
            }
        }
        if let Some(k) = &self.key
            && k.len() > 65_535
        {
            return Err(bad(format!("messages[{i}].key: at most 65535 bytes")));
        }
        if let Some(id) = &self.message_id
            && id.len() > MAX_MESSAGE_ID
        {
            return Err(bad(format!(
                "messages[{i}].message_id: at most {MAX_MESSAGE_ID} bytes"
            )));
        }
        Ok(Message {
            key: self.key.map(Bytes::from),
            priority: self.priority.unwrap_or(0),
            ttl_ms: self.ttl_ms,
            headers: self
                .headers
                .into_iter()
                .map(|(n, v)| (n, Bytes::from(v)))
                .collect(),
            message_id: self.message_id.map(Bytes::from),
            properties: None,
            payload,
        })
    }
}

/// Parses `{"payload": ...}` (one message) or `{"messages": [...]}`.
fn parse_publish(body: &[u8]) -> Result<Vec<Message>, HttpError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| HttpError::BadJson(e.to_string()))?;
    let Value::Object(map) = &v else {
        return Err(HttpError::BadJson("expected a JSON object".into()));
    };
    let bodies: Vec<MessageBody> = if map.contains_key("messages") {
        if map.len() != 1 {
            return Err(HttpError::BadJson(
                "a batch is {\"messages\": [...]} and nothing else".into(),
            ));
        }
        serde_json::from_value(map["messages"].clone())
            .map_err(|e| HttpError::BadJson(format!("messages: {e}")))?
    } else {
        vec![serde_json::from_value(v).map_err(|e| HttpError::BadJson(e.to_string()))?]
    };
    if bodies.is_empty() || bodies.len() > MAX_BATCH {
        return Err(bad(format!(
            "a publish carries 1..={MAX_BATCH} messages, not {}",
            bodies.len()
        )));
    }
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| b.into_message(i))
        .collect()
}

/// The JSON of one publish outcome.
pub(crate) fn outcome_json(o: &PublishOutcome) -> Value {
    match o {
        PublishOutcome::Stored { seq } => json!({ "outcome": "stored", "seq": seq }),
        PublishOutcome::Dropped { reason } => {
            json!({ "outcome": "dropped", "reason": reason.as_str() })
        }
        PublishOutcome::Rejected { code, reason } => {
            json!({ "outcome": "rejected", "code": code.name(), "reason": reason })
        }
        PublishOutcome::Throttled { retry_after_ms } => json!({
            "outcome": "rejected",
            "code": "throttled",
            "reason": format!("over the queue's rate limit: retry after {retry_after_ms} ms"),
            "retry_after_ms": retry_after_ms,
        }),
        PublishOutcome::Duplicate { seq } => json!({ "outcome": "duplicate", "seq": seq }),
        // levee-proto's enum is non_exhaustive: an outcome this broker does not know is not a
        // success the client could rely on.
        _ => json!({ "outcome": "rejected", "code": "internal", "reason": format!("{o:?}") }),
    }
}

/// `POST /api/queues/{name}/messages`.
pub(super) async fn publish(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let messages = match parse_publish(&body) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    match super::session::publish(&broker, &name, messages).await {
        Ok(outcomes) => json_response(
            StatusCode::OK,
            &json!({ "outcomes": outcomes.iter().map(outcome_json).collect::<Vec<_>>() }),
        ),
        Err(e @ PublishError::Full { .. }) => {
            let mut r = json_response(
                StatusCode::TOO_MANY_REQUESTS,
                &json!({ "error": "queue-full", "message": e.to_string() }),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(PublishError::Broker(e)) => HttpError::from(e).into_response(),
    }
}

/// Query of `receive`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReceiveQuery {
    max: Option<u32>,
    wait: Option<u64>,
}

/// The JSON of a delivered (or peeked) message: payload as text when it is UTF-8, else base64.
pub(crate) fn delivery_json(d: &Delivery, receipt: Option<&str>) -> Value {
    let m = &d.message;
    let mut v = json!({
        "seq": d.seq,
        "delivery_count": d.delivery_count,
        "timestamp_ms": d.timestamp_ms,
        "priority": m.priority,
        "headers": m.headers.iter().map(|(n, v)| {
            (n.clone(), Value::String(String::from_utf8_lossy(v).into_owned()))
        }).collect::<serde_json::Map<_, _>>(),
    });
    match std::str::from_utf8(&m.payload) {
        Ok(s) => v["payload"] = Value::String(s.into()),
        Err(_) => v["payload_base64"] = Value::String(B64.encode(&m.payload)),
    }
    if let Some(r) = receipt {
        v["receipt"] = Value::String(r.into());
    }
    if let Some(k) = &m.key {
        v["key"] = Value::String(String::from_utf8_lossy(k).into_owned());
    }
    if let Some(id) = &m.message_id {
        v["message_id"] = Value::String(String::from_utf8_lossy(id).into_owned());
    }
    if let Some(t) = m.ttl_ms {
        v["ttl_ms"] = t.into();
    }
    v
}

/// The JSON of a peeked message (the receive shape without a receipt), as `levee queue peek
/// --json` prints it.
pub fn peek_json(d: &Delivery) -> Value {
    delivery_json(d, None)
}

/// `POST /api/queues/{name}/receive?max=N&wait=S`.
pub(super) async fn receive(
    State(broker): State<Broker>,
    Extension(sessions): Extension<Arc<Sessions>>,
    Path(name): Path<String>,
    Query(q): Query<ReceiveQuery>,
) -> Response {
    let max = q.max.unwrap_or(1);
    if max == 0 || max > super::session::MAX_RECEIVE {
        return bad(format!(
            "max must be in 1..={}",
            super::session::MAX_RECEIVE
        ))
        .into_response();
    }
    let wait = q.wait.unwrap_or(0);
    if wait > super::session::MAX_WAIT_S {
        return bad(format!(
            "wait is at most {} seconds",
            super::session::MAX_WAIT_S
        ))
        .into_response();
    }
    match sessions
        .receive(&broker, &name, max, Duration::from_secs(wait))
        .await
    {
        Ok(got) => json_response(
            StatusCode::OK,
            &json!({ "messages": got.iter().map(|r| delivery_json(&r.delivery, Some(&r.receipt))).collect::<Vec<_>>() }),
        ),
        Err(e @ ReceiveError::Busy { .. }) => {
            let mut r = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": "too-many-receivers", "message": e.to_string() }),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(ReceiveError::Broker(e)) => HttpError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleBody {
    receipts: Vec<String>,
    delay_ms: Option<u64>,
    extend_ms: Option<u64>,
}

/// Which settlement a `…/{action}` path names.
#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Ack,
    Nack,
    Reject,
    Extend,
}

async fn settle(
    broker: &Broker,
    sessions: &Sessions,
    name: &str,
    action: Action,
    body: &[u8],
) -> Response {
    let b: SettleBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => return HttpError::BadJson(e.to_string()).into_response(),
    };
    if b.receipts.len() > levee_proto::MAX_TAGS {
        return bad(format!("at most {} receipts", levee_proto::MAX_TAGS)).into_response();
    }
    let how = match action {
        Action::Ack => SettleKind::Ack,
        Action::Reject => SettleKind::Reject,
        Action::Nack => SettleKind::Nack {
            delay_ms: b.delay_ms.unwrap_or(0),
        },
        Action::Extend => SettleKind::Extend {
            extend_ms: b.extend_ms.unwrap_or(0),
        },
    };
    let misplaced = match action {
        Action::Nack => b.extend_ms.is_some().then_some("extend_ms"),
        Action::Extend => b.delay_ms.is_some().then_some("delay_ms"),
        Action::Ack | Action::Reject => b
            .delay_ms
            .map(|_| "delay_ms")
            .or(b.extend_ms.map(|_| "extend_ms")),
    };
    if let Some(f) = misplaced {
        return bad(format!("{f} does not apply to {action:?}")).into_response();
    }
    if let Err(e) = broker.sender(name) {
        return HttpError::from(e).into_response();
    }
    match sessions.settle(name, how, &b.receipts).await {
        Ok(refused) => json_response(
            StatusCode::OK,
            &json!({
                "settled": b.receipts.len() - refused.len(),
                "refused": refused.iter().map(|(r, why)| json!({
                    "receipt": r, "error": "receipt-not-outstanding", "message": why,
                })).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => HttpError::from(e).into_response(),
    }
}

macro_rules! settle_handler {
    ($name:ident, $action:expr, $doc:literal) => {
        #[doc = $doc]
        pub(super) async fn $name(
            State(broker): State<Broker>,
            Extension(sessions): Extension<Arc<Sessions>>,
            Path(name): Path<String>,
            body: Bytes,
        ) -> Response {
            settle(&broker, &sessions, &name, $action, &body).await
        }
    };
}

settle_handler!(ack, Action::Ack, "`POST /api/queues/{name}/ack`.");
settle_handler!(nack, Action::Nack, "`POST /api/queues/{name}/nack`.");
settle_handler!(reject, Action::Reject, "`POST /api/queues/{name}/reject`.");
settle_handler!(extend, Action::Extend, "`POST /api/queues/{name}/extend`.");

/// `GET /healthz`: the process answers.
pub(super) async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({ "status": "alive" }))
}

/// `GET /readyz`: recovery is done (the broker serves) and the data directory takes a write.
pub(super) async fn readyz(State(broker): State<Broker>) -> Response {
    let dir = broker.config().data_dir.clone();
    let probe = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let path = dir.join(".readyz");
        let mut f = std::fs::File::create(&path)?;
        f.write_all(b"ok")?;
        f.sync_all()?;
        std::fs::remove_file(&path)
    })
    .await;
    match probe {
        Ok(Ok(())) => json_response(
            StatusCode::OK,
            &json!({ "status": "ready", "queues": broker.list().len() }),
        ),
        Ok(Err(e)) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "not-ready", "message": format!("data directory not writable: {e}") }),
        ),
        Err(e) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "not-ready", "message": e.to_string() }),
        ),
    }
}
