//! Changing and inspecting queues over HTTP: `PATCH /api/queues/{name}` (change a live queue's
//! configuration). The JSON shapes are in `docs/http.md`.

use axum::body::Bytes;
use axum::extract::{Path, State};
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
