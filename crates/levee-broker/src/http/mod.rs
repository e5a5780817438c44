//! The broker's HTTP side: a JSON management API, Prometheus metrics and a live dashboard.
//!
//! Endpoints (see `docs/design.md`, section "HTTP API and metrics", for the JSON shapes):
//! - `GET /api/queues`: every queue with its config, counters, rates, loss % and, for disk queues,
//!   storage figures; `GET /api/queues/{name}`: one queue;
//! - `PUT /api/queues/{name}` (JSON config body; missing fields take their defaults): declare,
//!   answering 201 created, 200 existed with this config, 409 exists with another config (with
//!   the differences), 400 invalid; `DELETE /api/queues/{name}`;
//!   `POST /api/queues/{name}/purge`;
//! - `/api/exchanges…`: exchanges, bindings and publishing to an exchange (see `exchanges`);
//! - `GET /metrics`: Prometheus text exposition format 0.0.4 (rates are left to Prometheus:
//!   counters, never rate gauges);
//! - `/api/queues/{name}/history`, `/api/alerts…`, `/api/overview`: server-side history, alert
//!   rules, the node and its connections (see `ops` and `crate::ops`);
//! - `GET /`: a self-contained HTML dashboard (no external assets) drawing the server history
//!   and acting on queues through the API;
//! - `GET /healthz`, `GET /readyz`: probes (`{"status": "ok"}`), open without a login.
//!
//! Every other route needs a login and a right, as listed in `auth::ROUTES` (one line per
//! endpoint); `GET /api/queues` shows only the queues the user has a right on.
//! With `[tls]`, the listener speaks HTTPS only.
//!
//! Modules: `mod.rs` (this file) the router, the handlers and [`serve_http`]; `auth`
//! (the route table and the login / authorize middleware); `error`
//! ([`HttpError`] and the JSON response writers); `json` (the JSON form of a
//! [`QueueConfig`](levee_proto::QueueConfig), which round-trips: a config read from `GET` can be
//! `PUT` back unchanged, and the JSON views of queues); `snapshot` ([`QueueSnapshot`]: inspecting
//! queues with a deadline); `metrics` (Prometheus rendering); `ops` (history, alerts, overview, broker-level metrics). Dependencies point one way: `mod` ->
//! `json`, `metrics` -> `snapshot` -> `error`.
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

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::error::BrokerError;

mod admin;
mod auth;
mod error;
mod exchanges;
mod json;
mod messages;
mod metrics;
pub mod openapi;
mod ops;
pub mod session;
mod snapshot;

pub use error::HttpError;
use error::{json_response, json_text_response};
pub use exchanges::{PUBLISH_WAIT, exchange_to_json, outcome_to_json};
pub(crate) use exchanges::{
    binding_from_json, binding_to_json, exchange_config_from_json, exchange_config_to_json,
};
pub use json::{config_from_json, config_to_json, render_queues_json};
pub use messages::peek_json;
pub use metrics::{Family, PROMETHEUS_CONTENT_TYPE, render_metrics};
use metrics::{render_limits, render_wal};
pub use snapshot::{INSPECT_TIMEOUT, QueueSnapshot, snapshot, snapshot_all};

/// Longest request body accepted (64 KiB): a queue config is a few hundred bytes.
pub const MAX_BODY: usize = 64 * 1024;

static DASHBOARD: &str = include_str!("../../assets/dashboard.html");

async fn list_queues(
    State(broker): State<Broker>,
    principal: Option<axum::Extension<crate::security::Principal>>,
) -> Response {
    let (mut ok, mut failed) = snapshot_all(&broker).await;
    if let Some(axum::Extension(p)) = principal {
        use crate::security::{Action, Resource};
        let security = broker.security();
        let visible = |q: &str| {
            [
                Action::Monitor,
                Action::Publish,
                Action::Consume,
                Action::Manage,
            ]
            .into_iter()
            .any(|a| security.permits(&p, a, Resource::Queue(q)))
        };
        ok.retain(|s| visible(&s.info.queue));
        failed.retain(|(name, _)| visible(name));
    }
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
    ops::render_ops_metrics(&mut text, &broker, &ok).await;
    render_wal(&mut text, &broker);
    exchanges::render_exchange_metrics(&mut text, &broker);
    broker.render_metrics_source(&mut text);
    let mut resp = text.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn fallback(uri: axum::http::Uri) -> Response {
    HttpError::NoRoute(uri.path().to_string()).into_response()
}

/// Messaging over HTTP (`messages.rs`) and the health probes. Publishing takes bodies up to
/// [`messages::MAX_PUBLISH_BODY`].
fn messaging_routes() -> Router<Broker> {
    Router::new()
        .route(
            "/api/queues/{name}/messages",
            post(messages::publish)
                .layer(DefaultBodyLimit::max(messages::MAX_PUBLISH_BODY))
                .get(admin::peek),
        )
        .route("/api/queues/{name}/receive", post(messages::receive))
        .route("/api/queues/{name}/ack", post(messages::ack))
        .route("/api/queues/{name}/nack", post(messages::nack))
        .route("/api/queues/{name}/reject", post(messages::reject))
        .route("/api/queues/{name}/extend", post(messages::extend))
        .route("/api/queues/{name}/move", post(admin::move_messages))
        .route("/api/queues/{name}/history", get(ops::history))
        .route("/api/alerts", get(ops::list_alerts))
        .route(
            "/api/alerts/{name}",
            axum::routing::put(ops::put_alert).delete(ops::delete_alert),
        )
        .route("/api/overview", get(ops::overview))
        .route(
            "/api/definitions",
            get(admin::export_definitions).merge(
                post(admin::import_definitions)
                    .layer(DefaultBodyLimit::max(messages::MAX_PUBLISH_BODY)),
            ),
        )
        .route(
            "/openapi.json",
            get(|| async { error::json_response(StatusCode::OK, &openapi::document()) }),
        )
        .route("/healthz", get(messages::healthz))
        .route("/readyz", get(messages::readyz))
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
            get(get_queue)
                .put(put_queue)
                .delete(delete_queue)
                .patch(admin::patch_queue),
        )
        .route("/api/queues/{name}/purge", post(purge_queue))
        .merge(exchanges::routes())
        .merge(messaging_routes())
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            auth::layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(axum::Extension(std::sync::Arc::new(
            session::Sessions::default(),
        )))
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
    let acceptor = crate::security::Acceptor::new(broker.security());
    serve_http_with(broker, listener, acceptor).await
}

/// [`serve_http`] with an explicit acceptor (plain or TLS).
///
/// # Cancel safety
/// Cancel-safe, as [`serve_http`].
pub async fn serve_http_with(
    broker: Broker,
    listener: TcpListener,
    acceptor: crate::security::Acceptor,
) -> std::io::Result<()> {
    let timeout = Duration::from_millis(broker.config().http_header_timeout_ms.into());
    let limits = broker.clone();
    let service = hyper_util::service::TowerToHyperService::new(router(broker));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout);
    let mut backoff = crate::net::listener::AcceptBackoff::default();
    loop {
        let (stream, peer) = backoff.accept(&listener).await;
        let Some(slot) = limits.inner.limits.admit_http() else {
            tracing::debug!(%peer, "http refused: max_http_connections reached");
            // A TLS peer could not read a plaintext 503: it is just closed.
            if !acceptor.is_tls() {
                limits.inner.limits.refuse_http(stream);
            }
            continue;
        };
        let service = service.clone();
        let acceptor = acceptor.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let accepted = match acceptor.accept(stream).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "http: TLS handshake failed");
                    return;
                }
            };
            let info = auth::ConnInfo {
                peer: accepted.peer,
                cert_user: accepted.cert_user,
            };
            // Each request carries its connection's peer and certificate user to the auth layer.
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    hyper::service::Service::call(&service, req)
                },
            );
            let conn =
                http.serve_connection(hyper_util::rt::TokioIo::new(accepted.stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
}
