//! Operations over HTTP: a queue's server-side history (`GET /api/queues/{name}/history`), alert
//! rules and what fires (`GET /api/alerts`, `PUT`/`DELETE /api/alerts/{name}`), the node
//! overview with connections, consumers and producers (`GET /api/overview`), and the broker-level
//! `/metrics` families (`render_ops_metrics`). Shapes in `docs/http.md` and `docs/operations.md`.
//!
//! # Invariants
//! - Rules changed over HTTP live until the broker stops (the config file's `[[alerts]]` are what
//!   a restart brings back); a rule is checked completely before it replaces one.
//! - Every answer is bounded: history by the ring's capacity, the overview by the open
//!   connections and subscriptions (each bounded by the broker's limits), alerts by `MAX_RULES`
//!   and `RECENT_TRANSITIONS`.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{HttpError, json_response};
use super::metrics::Family;
use super::snapshot::{INSPECT_TIMEOUT, QueueSnapshot};
use crate::broker::Broker;
use crate::ops::{FSYNC, Observation, PUBLISH_CONFIRM, RuleConfig, node};
use crate::security::{Action, Principal, Resource};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    since: Option<u64>,
}

/// `GET /api/queues/{name}/history?since=MS`: `{"queue", "interval_ms", "capacity", "points"}`.
pub(super) async fn history(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let ops = &broker.inner.ops;
    let (points, capacity) = {
        let h = ops.history.lock();
        (h.points(&name, q.since.unwrap_or(0)), h.capacity())
    };
    let points = match points {
        Some(p) => p,
        // A queue declared less than a second ago has no point yet.
        None if broker.list().contains(&name) => Vec::new(),
        None => {
            return HttpError::from(crate::error::BrokerError::UnknownQueue(name)).into_response();
        }
    };
    json_response(
        StatusCode::OK,
        &json!({ "queue": name, "interval_ms": 1000, "capacity": capacity, "points": points }),
    )
}

/// `GET /api/alerts`: `{"rules": [...], "firing": [...], "recent": [...]}` (recent: the last
/// fires and clears, newest last).
pub(super) async fn list_alerts(State(broker): State<Broker>) -> Response {
    let ops = &broker.inner.ops;
    let (rules, firing) = {
        let e = ops.alerts.lock();
        let rules: Vec<RuleConfig> = e.rules().iter().map(|r| r.config.clone()).collect();
        (rules, e.firing())
    };
    let recent: Vec<_> = ops.recent.lock().iter().cloned().collect();
    json_response(
        StatusCode::OK,
        &json!({ "rules": rules, "firing": firing, "recent": recent }),
    )
}

/// `PUT /api/alerts/{name}` with a rule (its `name`, if given, must match the path): 201 created,
/// 200 replaced, 400 invalid.
pub(super) async fn put_alert(
    State(broker): State<Broker>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let mut config: RuleConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return HttpError::BadJson(e.to_string()).into_response(),
    };
    if !config.name.is_empty() && config.name != name {
        return HttpError::BadRequest(format!(
            "the body names rule {:?}, the path {name:?}",
            config.name
        ))
        .into_response();
    }
    config.name = name.clone();
    let rule = match config.clone().compile() {
        Ok(r) => r,
        Err(e) => return HttpError::BadRequest(e.to_string()).into_response(),
    };
    let ops = &broker.inner.ops;
    let now = crate::actor::now_ms();
    let existed = ops
        .alerts
        .lock()
        .rules()
        .iter()
        .any(|r| r.config.name == name);
    let cleared = match ops.alerts.lock().set_rule(now, rule) {
        Ok(c) => c,
        Err(e) => return HttpError::BadRequest(e.to_string()).into_response(),
    };
    ops.announce(cleared);
    tracing::info!(rule = %name, "alert rule set over HTTP");
    json_response(
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &json!({ "rule": config, "created": !existed }),
    )
}

/// `DELETE /api/alerts/{name}`: 200 `{"rule", "deleted": true}`, 404 unknown.
pub(super) async fn delete_alert(
    State(broker): State<Broker>,
    Path(name): Path<String>,
) -> Response {
    let ops = &broker.inner.ops;
    let removed = ops.alerts.lock().remove_rule(crate::actor::now_ms(), &name);
    match removed {
        Some(cleared) => {
            ops.announce(cleared);
            tracing::info!(rule = %name, "alert rule removed over HTTP");
            json_response(StatusCode::OK, &json!({ "rule": name, "deleted": true }))
        }
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "unknown-alert", "message": format!("no alert rule {name:?}") }),
        ),
    }
}

/// Every queue's observation, taken now (bounded by [`INSPECT_TIMEOUT`] each).
async fn observe_all(broker: &Broker) -> BTreeMap<String, Observation> {
    let mut set = tokio::task::JoinSet::new();
    for name in broker.list() {
        let b = broker.clone();
        set.spawn(async move {
            let r = tokio::time::timeout(INSPECT_TIMEOUT, b.observe(&name, 0)).await;
            (name, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(j) = set.join_next().await {
        if let Ok((name, Ok(Ok(o)))) = j {
            out.insert(name, o);
        }
    }
    out
}

/// `GET /api/overview`: the node, the broker's totals, alerts firing, and every native or AMQP connection
/// with its consumers and producers (what the dashboard's overview shows).
pub(super) async fn overview(
    State(broker): State<Broker>,
    principal: Option<axum::Extension<Principal>>,
) -> Response {
    let (queues, failed) = super::snapshot_all(&broker).await;
    let observed = observe_all(&broker).await;
    let ops = &broker.inner.ops;
    let cfg = broker.config();
    let mem = node::memory();
    let disk = node::disk(&cfg.data_dir);
    let disk_bytes: u64 = queues
        .iter()
        .filter_map(|q| q.storage.as_ref())
        .map(|s| s.bytes_on_disk)
        .sum();
    // Connections, with their consumers and producers.
    let mut conns: BTreeMap<u64, Value> = BTreeMap::new();
    let mut unattached: Vec<Value> = Vec::new();
    let conn_json = |id: u64, e: &crate::ops::ConnEntry| {
        json!({
            "id": id, "peer": e.peer.to_string(), "user": e.user, "client": e.client,
            "since": e.since, "consumers": [], "producers": [],
        })
    };
    let mut consumers = 0usize;
    for q in &queues {
        for c in &q.info.stats.consumers {
            consumers += 1;
            let v = json!({
                "queue": q.info.queue, "subscription": c.subscription,
                "credit": c.credit, "unacked": c.unacked,
            });
            match ops.conn_of_sub(c.subscription) {
                Some((id, e)) => {
                    let entry = conns.entry(id).or_insert_with(|| conn_json(id, &e));
                    if let Some(list) = entry["consumers"].as_array_mut() {
                        list.push(v);
                    }
                }
                // HTTP receive sessions and redrives are not connections.
                None => unattached.push(v),
            }
        }
    }
    let mut producers = 0usize;
    for (queue, o) in &observed {
        for (id, credit) in &o.producers {
            producers += 1;
            let v = json!({ "queue": queue, "credit": credit });
            if let Some(e) = ops.conn(*id) {
                let entry = conns.entry(*id).or_insert_with(|| conn_json(*id, &e));
                if let Some(list) = entry["producers"].as_array_mut() {
                    list.push(v);
                }
            }
        }
    }
    let firing = ops.alerts.lock().firing();
    let security = broker.security();
    let can = |a: Action, r: Resource<'_>| match &principal {
        Some(axum::Extension(p)) => security.permits(p, a, r),
        None => true,
    };
    let manage: Vec<&str> = queues
        .iter()
        .map(|q| q.info.queue.as_str())
        .filter(|q| can(Action::Manage, Resource::Queue(q)))
        .collect();
    let publish: Vec<&str> = queues
        .iter()
        .map(|q| q.info.queue.as_str())
        .filter(|q| can(Action::Publish, Resource::Queue(q)))
        .collect();
    let consume: Vec<&str> = queues
        .iter()
        .map(|q| q.info.queue.as_str())
        .filter(|q| can(Action::Consume, Resource::Queue(q)))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": ops.uptime_secs(),
            "started_ms": ops.started_ms,
            "node": {
                "rss_bytes": node::rss_bytes(),
                "memory_total_bytes": mem.map(|m| m.0),
                "memory_available_bytes": mem.map(|m| m.1),
                "disk_total_bytes": disk.map(|d| d.0),
                "disk_free_bytes": disk.map(|d| d.1),
                "data_dir": cfg.data_dir.display().to_string(),
            },
            "queues": queues.len() + failed.len(),
            "disk_bytes": disk_bytes,
            "connections": broker.open_connections(),
            "http_connections": broker.open_http_connections(),
            "consumers": consumers,
            "producers": producers,
            "alerts_firing": firing,
            "connection_list": conns.into_values().collect::<Vec<_>>(),
            "other_consumers": unattached,
            "security": security.users_configured(),
            "permissions": { "manage": manage, "publish": publish, "consume": consume },
        }),
    )
}

/// The broker-level families of `/metrics` and the per-queue ones that need an observation.
pub(super) async fn render_ops_metrics(
    out: &mut String,
    broker: &Broker,
    queues: &[QueueSnapshot],
) {
    let observed = observe_all(broker).await;
    let ops = &broker.inner.ops;
    let now = crate::actor::now_ms();

    let name = "levee_build_info";
    Family::new(out, name, "gauge", "Always 1; the version in a label.").sample(
        name,
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    let name = "levee_start_time_seconds";
    Family::new(
        out,
        name,
        "gauge",
        "When the broker started, seconds since the Unix epoch.",
    )
    .sample(name, &[], ops.started_ms as f64 / 1000.0);
    let name = "levee_uptime_seconds";
    Family::new(out, name, "gauge", "Seconds since the broker started.").sample(
        name,
        &[],
        format!("{:.3}", ops.uptime_secs()),
    );
    let consumers: usize = queues.iter().map(|q| q.info.stats.consumers.len()).sum();
    let producers: usize = observed.values().map(|o| o.producers.len()).sum();
    let disk_bytes: u64 = queues
        .iter()
        .filter_map(|q| q.storage.as_ref())
        .map(|s| s.bytes_on_disk)
        .sum();
    let mut gauges: Vec<(&str, &str, u64)> = vec![
        (
            "levee_consumers",
            "Subscriptions, all queues.",
            consumers as u64,
        ),
        (
            "levee_producers",
            "Producers (a connection publishing to a queue), all queues.",
            producers as u64,
        ),
        (
            "levee_disk_bytes",
            "Bytes of every disk queue's log segments.",
            disk_bytes,
        ),
    ];
    if let Some(rss) = node::rss_bytes() {
        gauges.push((
            "levee_resident_memory_bytes",
            "Resident memory of the broker process.",
            rss,
        ));
    }
    if let Some((_, free)) = node::disk(&broker.config().data_dir) {
        gauges.push((
            "levee_disk_free_bytes",
            "Free bytes of the data directory's file system.",
            free,
        ));
    }
    for (name, help, v) in gauges {
        Family::new(out, name, "gauge", help).sample(name, &[], v);
    }

    let name = "levee_queue_delivered_total";
    let mut f = Family::new(
        out,
        name,
        "counter",
        "Deliveries to consumers (redeliveries included).",
    );
    for (q, o) in &observed {
        f.sample(name, &[("queue", q)], o.delivered);
    }
    let name = "levee_queue_oldest_ready_age_seconds";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Age of the next ready message (0 when the queue has none ready).",
    );
    for (q, o) in &observed {
        let age = o.oldest_ready_ms.map_or(0, |t| now.saturating_sub(t));
        f.sample(name, &[("queue", q)], age as f64 / 1000.0);
    }

    PUBLISH_CONFIRM.render(
        out,
        "levee_publish_confirm_seconds",
        "Time from a publish reaching its queue to its confirm (after the fsync on disk queues).",
    );
    FSYNC.render(
        out,
        "levee_fsync_seconds",
        "Time a disk queue waited for its log to make an append durable (the sync cycle).",
    );

    let name = "levee_alert_firing";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "1 while an alert rule fires for a queue, else 0.",
    );
    for (rule, queue, firing) in ops.alerts.lock().instances() {
        f.sample(
            name,
            &[("rule", &rule), ("queue", &queue)],
            u8::from(firing),
        );
    }
    let (sent, failed, dropped) = ops.webhook_counts();
    let name = "levee_alert_webhooks_total";
    let mut f = Family::new(out, name, "counter", "Alert webhook deliveries, by result.");
    for (r, v) in [("sent", sent), ("failed", failed), ("dropped", dropped)] {
        f.sample(name, &[("result", r)], v);
    }
}
