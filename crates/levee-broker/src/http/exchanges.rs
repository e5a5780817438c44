//! The exchange endpoints of the HTTP API, their JSON forms and handlers:
//!
//! - `GET /api/exchanges`: every exchange (the default exchange is listed as `""`);
//!   `GET /api/exchanges/{name}`: one (`amq.default` names the default exchange in paths);
//! - `PUT /api/exchanges/{name}` with `{"type": "topic", "durable": true, "auto_delete": false,
//!   "internal": false, "arguments": {"k": "v"}}` (only `type` is required): declare, answering
//!   201 created, 200 existed with this config, 409 `exchange-config-mismatch` (with the
//!   differences), 403 `forbidden` (the default exchange, `amq.` names), 400 invalid;
//! - `DELETE /api/exchanges/{name}[?if_unused=true]`: 200, 404 `unknown-exchange`, 409
//!   `exchange-in-use`, 403 for predeclared exchanges;
//! - `GET /api/exchanges/{name}/bindings`: its bindings;
//! - `PUT /api/exchanges/{x}/bindings/{queue}` with `{"key": "a.*", "arguments": {...}}` (both
//!   optional): bind (201 new, 200 existed; 404 unknown exchange or queue); `DELETE` on the same
//!   path with the same body: unbind (200 with `"existed"`);
//! - `POST /api/exchanges/{name}/publish` with `{"routing_key": "k", "payload": "text",
//!   "headers": {"h": "v"}}`: publish one message and answer its outcome once every target
//!   queue has (`"outcome"`: `stored`, `dropped`, `rejected`, `throttled` or `unroutable`, with
//!   `targets`, and `code`/`reason` for a refusal). A message held by a full `block` queue is
//!   answered 202 `"outcome": "held"` after [`PUBLISH_WAIT`] and discarded (counted
//!   `publisher-gone`): HTTP publishes are for tests and tools, not for flow control.
//!
//! Arguments and headers are JSON objects of strings (values are stored as their UTF-8 bytes).

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use levee_proto::{Binding, ExchangeConfig, ExchangeInfo, Message, PublishOutcome, RoutedOutcome};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::error::{HttpError, json_response};
use crate::broker::Broker;
use crate::error::BrokerError;

/// How long `POST /api/exchanges/{name}/publish` waits for every target to answer.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// The routes of this module (merged into the API router).
pub(super) fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/exchanges", get(list))
        .route(
            "/api/exchanges/{name}",
            get(get_one).put(declare).delete(delete),
        )
        .route("/api/exchanges/{name}/bindings", get(bindings))
        .route(
            "/api/exchanges/{name}/bindings/{queue}",
            put(bind).delete(unbind),
        )
        .route("/api/exchanges/{name}/publish", post(publish))
}

/// The default exchange's name in paths.
const DEFAULT_ALIAS: &str = "amq.default";

fn name_of(path: &str) -> &str {
    if path == DEFAULT_ALIAS { "" } else { path }
}

fn args_to_json(args: &[(String, bytes::Bytes)]) -> Value {
    let mut m = Map::new();
    for (k, v) in args {
        m.insert(
            k.clone(),
            Value::String(String::from_utf8_lossy(v).into_owned()),
        );
    }
    Value::Object(m)
}

fn args_from_json(v: Option<Map<String, Value>>) -> Result<Vec<(String, bytes::Bytes)>, HttpError> {
    let mut out = Vec::new();
    for (k, v) in v.unwrap_or_default() {
        let s = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(HttpError::InvalidConfig {
                    field: "arguments",
                    reason: format!("{k}: {other} is not a string, number or boolean"),
                });
            }
        };
        out.push((k, bytes::Bytes::from(s)));
    }
    Ok(out)
}

/// An exchange's configuration as `PUT /api/exchanges/{name}` takes it (and definitions
/// documents hold it).
pub(crate) fn exchange_config_to_json(c: &ExchangeConfig) -> Value {
    json!({
        "type": c.kind.as_str(),
        "durable": c.durable,
        "auto_delete": c.auto_delete,
        "internal": c.internal,
        "arguments": args_to_json(&c.arguments),
    })
}

/// Parses the body of `PUT /api/exchanges/{name}` (unknown fields refused).
pub(crate) fn exchange_config_from_json(v: Value) -> Result<ExchangeConfig, HttpError> {
    let body: ExchangeBody =
        serde_json::from_value(v).map_err(|e| HttpError::BadJson(e.to_string()))?;
    config_from(body)
}

/// Parses a binding (`{"exchange", "queue", "key", "arguments"}`; exchange and queue required,
/// `""` naming the default exchange).
pub(crate) fn binding_from_json(v: Value) -> Result<Binding, HttpError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Full {
        exchange: String,
        queue: String,
        key: Option<String>,
        arguments: Option<Map<String, Value>>,
    }
    let b: Full = serde_json::from_value(v).map_err(|e| HttpError::BadJson(e.to_string()))?;
    Ok(Binding {
        exchange: b.exchange,
        queue: b.queue,
        key: b.key.unwrap_or_default(),
        arguments: args_from_json(b.arguments)?,
    })
}

/// The JSON form of an exchange.
pub fn exchange_to_json(i: &ExchangeInfo) -> Value {
    json!({
        "name": i.name,
        "type": i.config.kind.as_str(),
        "durable": i.config.durable,
        "auto_delete": i.config.auto_delete,
        "internal": i.config.internal,
        "arguments": args_to_json(&i.config.arguments),
        "predeclared": i.predeclared,
        "bindings": i.bindings,
        "routed": i.routed,
        "unroutable": i.unroutable,
    })
}

/// A binding's JSON form: `{"exchange", "queue", "key", "arguments"}`.
pub(crate) fn binding_to_json(b: &Binding) -> Value {
    json!({
        "exchange": b.exchange,
        "queue": b.queue,
        "key": b.key,
        "arguments": args_to_json(&b.arguments),
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HttpError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| HttpError::BadJson(e.to_string()))
}

async fn list(State(broker): State<Broker>) -> Response {
    let all: Vec<Value> = broker.exchanges().iter().map(exchange_to_json).collect();
    json_response(StatusCode::OK, &Value::Array(all))
}

async fn get_one(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match broker.check_exchange(name_of(&name)) {
        Ok(i) => json_response(StatusCode::OK, &exchange_to_json(&i)),
        Err(e) => HttpError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    durable: Option<bool>,
    auto_delete: Option<bool>,
    internal: Option<bool>,
    arguments: Option<Map<String, Value>>,
}

fn config_from(body: ExchangeBody) -> Result<ExchangeConfig, HttpError> {
    let Some(kind) = body.kind else {
        return Err(HttpError::InvalidConfig {
            field: "type",
            reason: "required: direct, fanout, topic or headers".into(),
        });
    };
    let kind = kind
        .parse()
        .map_err(|e: levee_proto::ProtoError| HttpError::InvalidConfig {
            field: "type",
            reason: e.to_string(),
        })?;
    let mut c = ExchangeConfig::new(kind)
        .durable(body.durable.unwrap_or(true))
        .auto_delete(body.auto_delete.unwrap_or(false))
        .internal(body.internal.unwrap_or(false));
    c.arguments = args_from_json(body.arguments)?;
    Ok(c)
}

async fn declare(State(broker): State<Broker>, Path(name): Path<String>, body: Bytes) -> Response {
    let config = match parse::<ExchangeBody>(&body).and_then(config_from) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let name = name_of(&name).to_string();
    match broker.declare_exchange(&name, config.clone()).await {
        Ok(created) => json_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &json!({ "exchange": name, "created": created }),
        ),
        Err(e @ BrokerError::ExchangeMismatch { .. }) => {
            let http = HttpError::from(e);
            let mut body = http.body();
            if let Some(existing) = broker.exchange(&name) {
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
        Err(e) => HttpError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    if_unused: Option<bool>,
}

async fn delete(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let name = name_of(&name).to_string();
    match broker
        .delete_exchange(&name, q.if_unused.unwrap_or(false))
        .await
    {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({ "exchange": name, "deleted": true }),
        ),
        Err(e) => HttpError::from(e).into_response(),
    }
}

async fn bindings(State(broker): State<Broker>, Path(name): Path<String>) -> Response {
    match broker.bindings(Some(name_of(&name))) {
        Ok(bs) => json_response(
            StatusCode::OK,
            &Value::Array(bs.iter().map(binding_to_json).collect()),
        ),
        Err(e) => HttpError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingBody {
    key: Option<String>,
    arguments: Option<Map<String, Value>>,
}

fn binding_from(exchange: &str, queue: String, body: &[u8]) -> Result<Binding, HttpError> {
    let b: BindingBody = parse(body)?;
    Ok(Binding {
        exchange: name_of(exchange).to_string(),
        queue,
        key: b.key.unwrap_or_default(),
        arguments: args_from_json(b.arguments)?,
    })
}

async fn bind(
    State(broker): State<Broker>,
    Path((name, queue)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let b = match binding_from(&name, queue, &body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match broker.add_binding(&b).await {
        Ok(created) => {
            let mut v = binding_to_json(&b);
            v["created"] = Value::Bool(created);
            json_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &v,
            )
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

async fn unbind(
    State(broker): State<Broker>,
    Path((name, queue)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let b = match binding_from(&name, queue, &body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    match broker.remove_binding(&b).await {
        Ok(existed) => {
            let mut v = binding_to_json(&b);
            v["existed"] = Value::Bool(existed);
            json_response(StatusCode::OK, &v)
        }
        Err(e) => HttpError::from(e).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    routing_key: Option<String>,
    payload: Option<String>,
    headers: Option<Map<String, Value>>,
}

/// The JSON form of a routed outcome.
pub fn outcome_to_json(o: &RoutedOutcome) -> Value {
    match o {
        RoutedOutcome::Unroutable => json!({ "outcome": "unroutable", "targets": 0 }),
        RoutedOutcome::Routed { targets, outcome } => {
            let mut v = match outcome {
                PublishOutcome::Stored { seq } => json!({ "outcome": "stored", "seq": seq }),
                PublishOutcome::Dropped { reason } => {
                    json!({ "outcome": "dropped", "reason": reason.as_str() })
                }
                PublishOutcome::Rejected { code, reason } => {
                    json!({ "outcome": "rejected", "code": code.name(), "reason": reason })
                }
                PublishOutcome::Throttled { retry_after_ms } => {
                    json!({ "outcome": "throttled", "retry_after_ms": retry_after_ms })
                }
                // levee-proto's enum is non_exhaustive: never shown as stored.
                other => json!({ "outcome": "unknown", "reason": format!("{other:?}") }),
            };
            v["targets"] = json!(targets);
            v
        }
        // levee-proto's enum is non_exhaustive: never shown as stored.
        other => json!({ "outcome": "unknown", "reason": format!("{other:?}") }),
    }
}

async fn publish(State(broker): State<Broker>, Path(name): Path<String>, body: Bytes) -> Response {
    let b: PublishBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let headers = match args_from_json(b.headers) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let mut m = Message::new(b.payload.unwrap_or_default());
    m.headers = headers;
    let exchange = name_of(&name).to_string();
    let key = b.routing_key.unwrap_or_default();
    match tokio::time::timeout(
        PUBLISH_WAIT,
        broker.publish_to_exchange(&exchange, &key, vec![m]),
    )
    .await
    {
        Ok(Ok(outcomes)) => match outcomes.first() {
            Some(o) => json_response(StatusCode::OK, &outcome_to_json(o)),
            None => HttpError::from(BrokerError::Internal("no outcome".into())).into_response(),
        },
        Ok(Err(e)) => HttpError::from(e).into_response(),
        Err(_) => json_response(
            StatusCode::ACCEPTED,
            &json!({ "outcome": "held", "reason": "a full block queue held the message; its held copy was discarded when the request ended (other targets may have stored it)" }),
        ),
    }
}

/// Appends the exchange counters to a Prometheus exposition: messages routed to at least one
/// queue and messages that matched none (dropped), per exchange (`""`: the default exchange).
pub(super) fn render_exchange_metrics(text: &mut String, broker: &Broker) {
    use std::fmt::Write;
    let all = broker.exchanges();
    for (metric, help, get) in [
        (
            "levee_exchange_routed_total",
            "Messages published to the exchange that matched at least one queue.",
            (|i: &ExchangeInfo| i.routed) as fn(&ExchangeInfo) -> u64,
        ),
        (
            "levee_exchange_unroutable_total",
            "Messages published to the exchange that matched no queue (dropped).",
            |i: &ExchangeInfo| i.unroutable,
        ),
    ] {
        let _ = writeln!(text, "# HELP {metric} {help}");
        let _ = writeln!(text, "# TYPE {metric} counter");
        for i in &all {
            // Exchange names are [A-Za-z0-9._:-]: nothing to escape in a label value.
            let _ = writeln!(text, "{metric}{{exchange=\"{}\"}} {}", i.name, get(i));
        }
    }
}
