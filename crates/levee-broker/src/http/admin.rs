//! Changing and inspecting queues over HTTP: `PATCH /api/queues/{name}` (change a live queue's
//! configuration), `GET /api/queues/{name}/messages?count=N` (peek), `POST
//! /api/queues/{name}/move` (redrive). The JSON shapes are in `docs/http.md`.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{HttpError, json_response};
use super::json::{config_from_json, config_to_json};
use crate::broker::Broker;

/// `PATCH /api/queues/{name}`: the fields given replace the queue's current ones (the others
/// stay as they are; `null` clears an optional one), then the queue is reconfigured live.
pub(super) async fn patch_queue(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(m)) => Value::Object(m),
        Ok(_) => return HttpError::BadJson("expected a JSON object".into()).into_response(),
        Err(e) => return HttpError::BadJson(e.to_string()).into_response(),
    };
    let current = match broker.inspect(&name).await {
        Ok(info) => info.config,
        Err(e) => return HttpError::from(e).into_response(),
    };
    let mut merged = config_to_json(&current);
    if let (Value::Object(m), Value::Object(p)) = (&mut merged, patch) {
        for (k, v) in p {
            // A partial rate limit or dedup object replaces the whole object (its missing
            // fields take their defaults), as in a declare.
            m.insert(k, v);
        }
    }
    let text = merged.to_string();
    let config = match config_from_json(text.as_bytes()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match broker.update(&name, config.clone()).await {
        Ok(previous) => json_response(
            StatusCode::OK,
            &json!({
                "queue": name,
                "config": config_to_json(&config),
                "previous": config_to_json(&previous),
            }),
        ),
        Err(e @ crate::error::BrokerError::UnknownQueue(_)) if name_differs(&e, &name) => {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "error": "unknown-queue", "message": e.to_string() }),
            )
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

/// An unknown-queue error about another queue than the one patched (its dead-letter queue) is
/// the request's fault, not a missing resource.
fn name_differs(e: &crate::error::BrokerError, name: &str) -> bool {
    matches!(e, crate::error::BrokerError::UnknownQueue(q) if q != name)
}

/// Query of a peek.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PeekQuery {
    count: Option<usize>,
    preview: Option<usize>,
}

/// Longest payload preview a peek returns by default, in bytes.
const PREVIEW_BYTES: usize = 1024;

/// `GET /api/queues/{name}/messages?count=N&preview=BYTES`: the next ready messages (receive
/// shape without receipts), not consumed; payloads cut to `preview` bytes (default 1 KiB),
/// with `payload_bytes` the full length and `payload_truncated` when cut.
pub(super) async fn peek(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    Query(q): Query<PeekQuery>,
) -> Response {
    let count = q.count.unwrap_or(10);
    if !(1..=1000).contains(&count) {
        return HttpError::BadRequest("count must be in 1..=1000".into()).into_response();
    }
    let preview = q.preview.unwrap_or(PREVIEW_BYTES);
    match broker.peek(&name, count).await {
        Ok(list) => {
            let messages: Vec<Value> = list
                .into_iter()
                .map(|mut d| {
                    let full = d.message.payload.len();
                    let cut = full > preview;
                    if cut {
                        d.message.payload.truncate(preview);
                    }
                    let mut v = super::messages::delivery_json(&d, None);
                    v["payload_bytes"] = full.into();
                    if cut {
                        v["payload_truncated"] = true.into();
                        if v.get("payload").is_none() && v.get("payload_base64").is_none() {
                            v["payload"] = "".into();
                        }
                    }
                    v
                })
                .collect();
            json_response(StatusCode::OK, &json!({ "messages": messages }))
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveBody {
    to: String,
    max: Option<u64>,
    header: Option<HeaderMatch>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderMatch {
    name: String,
    value: String,
}

/// `POST /api/queues/{name}/move` `{"to": "queue", "max": N, "header": {"name", "value"}}`:
/// moves ready messages (all, or at most `max`; with `header`, only those carrying it) to `to`; answers `{"moved": N}` (and `"stopped"`: why it ended early, e.g. the
/// target is full).
pub(super) async fn move_messages(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    principal: Option<axum::Extension<crate::security::Principal>>,
    body: Bytes,
) -> Response {
    let b: MoveBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return HttpError::BadJson(e.to_string()).into_response(),
    };
    // The route table checked `manage` on the source; moving also publishes into the target.
    if let Some(axum::Extension(p)) = &principal
        && let Err(e) = broker.security().authorize(
            p,
            crate::security::Action::Publish,
            crate::security::Resource::Queue(&b.to),
        )
    {
        return HttpError::from(crate::error::BrokerError::Forbidden(e)).into_response();
    }
    if let Err(e) = broker.sender(&b.to) {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "error": "unknown-queue", "message": format!("target: {e}") }),
        );
    }
    let header = b
        .header
        .as_ref()
        .map(|h| (h.name.as_str(), h.value.as_bytes()));
    match crate::redrive::move_matching(&broker, &name, &b.to, b.max, header).await {
        Ok(m) => {
            let mut v = json!({ "moved": m.moved });
            if let Some(s) = m.stopped {
                v["stopped"] = s.into();
            }
            json_response(StatusCode::OK, &v)
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

/// `GET /api/definitions`: every queue, declared exchange and binding (see `crate::definitions`).
pub(super) async fn export_definitions(State(broker): State<Broker>) -> Response {
    match crate::definitions::export(&broker).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => HttpError::from(e).into_response(),
    }
}

/// `POST /api/definitions`: imports a definitions document; 200 with what was created,
/// unchanged and updated, or 409 listing the queues, exchanges and bindings that could not be imported (the others
/// were).
pub(super) async fn import_definitions(State(broker): State<Broker>, body: Bytes) -> Response {
    let defs = match crate::definitions::from_json(&body) {
        Ok(d) => d,
        Err(e) => return HttpError::BadRequest(e.to_string()).into_response(),
    };
    let report = crate::definitions::import(&broker, defs).await;
    let status = if report.is_complete() {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    json_response(status, &report.to_json())
}
