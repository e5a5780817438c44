//! HTTP authentication and authorization: every route's required (action, resource) in one table
//! ([`ROUTES`]), and the middleware that logs the request's user in (Basic auth, or the client
//! certificate's user on an mTLS listener) and authorizes it before any handler runs.
//!
//! A new endpoint adds one line to [`ROUTES`]: its method, its path with `{param}` segments, and
//! what it needs. Routes not in the table need a logged-in user (so a 404 is no oracle for
//! anonymous callers) and no particular right.
//!
//! # Invariants
//! - `/healthz` and `/readyz` are open (probes); with users configured everything else needs a
//!   login: none gives 401 with `WWW-Authenticate: Basic`, a wrong one 401 after the failed-login
//!   delay, a right that is missing 403 `{"error": "forbidden"}`.
//! - Path parameters are percent-decoded before they are authorized, exactly as axum decodes
//!   them for the handler, so `/api/queues/%62illing` is authorized as `billing`.
//! - The logged-in [`Principal`] is put in the request's extensions for handlers that filter
//!   what they show (the queue list).

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use serde_json::json;

use super::error::json_response;
use crate::broker::Broker;
use crate::security::{Action, Principal, Resource};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Nothing: open to anyone (probes).
    Open,
    /// A logged-in user; the handler decides what it shows.
    Login,
    /// `action` on the queue named by path parameter `param`.
    Queue(Action, &'static str),
    /// `action` on the exchange named by path parameter `param`.
    Exchange(Action, &'static str),
    /// `action` on the whole broker.
    Broker(Action),
}

/// Every route: (method, path pattern, what it needs). `*` as method: any.
pub(crate) const ROUTES: &[(&str, &str, Needs)] = &[
    ("*", "/healthz", Needs::Open),
    ("*", "/readyz", Needs::Open),
    ("GET", "/", Needs::Broker(Action::Monitor)),
    ("GET", "/metrics", Needs::Broker(Action::Monitor)),
    ("GET", "/api/queues", Needs::Login),
    (
        "GET",
        "/api/queues/{name}",
        Needs::Queue(Action::Monitor, "name"),
    ),
    (
        "PUT",
        "/api/queues/{name}",
        Needs::Queue(Action::Manage, "name"),
    ),
    (
        "DELETE",
        "/api/queues/{name}",
        Needs::Queue(Action::Manage, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/purge",
        Needs::Queue(Action::Manage, "name"),
    ),
    // Messaging over HTTP and queue updates (ops branch; inert until those routes exist).
    (
        "PATCH",
        "/api/queues/{name}",
        Needs::Queue(Action::Manage, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/messages",
        Needs::Queue(Action::Publish, "name"),
    ),
    (
        "GET",
        "/api/queues/{name}/messages",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/receive",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/ack",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/nack",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/reject",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/extend",
        Needs::Queue(Action::Consume, "name"),
    ),
    (
        "POST",
        "/api/queues/{name}/move",
        Needs::Queue(Action::Manage, "name"),
    ),
    // Operations (docs/operations.md): history, alert rules, the overview.
    (
        "GET",
        "/api/queues/{name}/history",
        Needs::Queue(Action::Monitor, "name"),
    ),
    ("GET", "/api/alerts", Needs::Broker(Action::Monitor)),
    ("PUT", "/api/alerts/{name}", Needs::Broker(Action::Manage)),
    (
        "DELETE",
        "/api/alerts/{name}",
        Needs::Broker(Action::Manage),
    ),
    ("GET", "/api/overview", Needs::Broker(Action::Monitor)),
    ("GET", "/api/definitions", Needs::Broker(Action::Monitor)),
    ("POST", "/api/definitions", Needs::Broker(Action::Manage)),
    // The API's description is public, as the probes are.
    ("GET", "/openapi.json", Needs::Open),
    // Exchanges (routing): bindings change what flows into the queue, so they need `manage` on
    // it; publishing to `amq.default` (the default exchange) needs `publish` on the exchange
    // name as written in the path.
    ("GET", "/api/exchanges", Needs::Login),
    (
        "GET",
        "/api/exchanges/{name}",
        Needs::Exchange(Action::Monitor, "name"),
    ),
    (
        "PUT",
        "/api/exchanges/{name}",
        Needs::Exchange(Action::Manage, "name"),
    ),
    (
        "DELETE",
        "/api/exchanges/{name}",
        Needs::Exchange(Action::Manage, "name"),
    ),
    (
        "GET",
        "/api/exchanges/{name}/bindings",
        Needs::Exchange(Action::Monitor, "name"),
    ),
    (
        "PUT",
        "/api/exchanges/{name}/bindings/{queue}",
        Needs::Queue(Action::Manage, "queue"),
    ),
    (
        "DELETE",
        "/api/exchanges/{name}/bindings/{queue}",
        Needs::Queue(Action::Manage, "queue"),
    ),
    (
        "POST",
        "/api/exchanges/{name}/publish",
        Needs::Exchange(Action::Publish, "name"),
    ),
];

/// The connection a request came on (put in the request's extensions by `serve_http`).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) cert_user: Option<String>,
}

/// What `method path` needs, with the decoded resource name.
pub(crate) fn needs(method: &Method, path: &str) -> (Needs, Option<String>) {
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    // HEAD runs the GET handler (axum strips the body): it needs what GET needs.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    for &(m, pattern, needs) in ROUTES {
        if m != "*" && m != method {
            continue;
        }
        let pat: Vec<&str> = pattern.split('/').skip(1).collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut params: Vec<(&str, String)> = Vec::new();
        let matched = pat.iter().zip(&segs).all(|(p, s)| {
            match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) => {
                    params.push((name, percent_decode(s)));
                    true
                }
                None => p == s,
            }
        });
        if !matched {
            continue;
        }
        let param = |want: &str| {
            params
                .iter()
                .find(|(n, _)| *n == want)
                .map(|(_, v)| v.clone())
        };
        let name = match needs {
            Needs::Queue(_, p) | Needs::Exchange(_, p) => param(p),
            Needs::Open | Needs::Login | Needs::Broker(_) => None,
        };
        return (needs, name);
    }
    (Needs::Login, None)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unauthorized(message: &str) -> Response {
    let mut r = json_response(
        StatusCode::UNAUTHORIZED,
        &json!({ "error": "unauthorized", "message": message }),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"levee\""),
    );
    r
}

/// `Authorization: Basic base64(user:password)` → (user, password).
fn basic(req: &Request) -> Result<Option<(String, String)>, ()> {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let (scheme, b64) = v.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| ())?;
    let raw = String::from_utf8(raw).map_err(|_| ())?;
    let (u, p) = raw.split_once(':').ok_or(())?;
    Ok(Some((u.to_string(), p.to_string())))
}

/// The middleware: login, then the route's check, then the handler.
pub(crate) async fn layer(State(broker): State<Broker>, mut req: Request, next: Next) -> Response {
    let (needs, name) = needs(req.method(), req.uri().path());
    if needs == Needs::Open {
        return next.run(req).await;
    }
    let security = broker.security();
    let info = req.extensions().get::<ConnInfo>().cloned();
    let peer = info
        .as_ref()
        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.peer);
    let cert_user = info.and_then(|i| i.cert_user);
    let creds = match basic(&req) {
        Ok(c) => c,
        // No users: credentials are ignored, whatever their form.
        Err(()) if !security.users_configured() => None,
        Err(()) => {
            return unauthorized("the Authorization header must be Basic base64(user:password)");
        }
    };
    let principal: Principal = match security
        .login(
            creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
            cert_user.as_deref(),
            peer,
        )
        .await
    {
        Ok(p) => p,
        Err(e) => return unauthorized(&e.to_string()),
    };
    drop(creds);
    let checked = match (needs, name.as_deref()) {
        (Needs::Queue(a, _), Some(q)) => security.authorize(&principal, a, Resource::Queue(q)),
        (Needs::Exchange(a, _), Some(x)) => {
            security.authorize(&principal, a, Resource::Exchange(x))
        }
        (Needs::Broker(a), _) => security.authorize(&principal, a, Resource::Broker),
        (Needs::Login, _) => Ok(()),
        // A pattern's parameter is always captured when it matched; should a table line name a
        // parameter its path lacks, the route is refused rather than left open.
        (Needs::Queue(a, _) | Needs::Exchange(a, _), None) => {
            security.authorize(&principal, a, Resource::Broker)
        }
        (Needs::Open, _) => Ok(()),
    };
    if let Err(e) = checked {
        return json_response(
            StatusCode::FORBIDDEN,
            &json!({ "error": "forbidden", "message": e.to_string() }),
        );
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_maps_to_its_need() {
        let get = Method::GET;
        assert_eq!(needs(&get, "/healthz").0, Needs::Open);
        assert_eq!(needs(&get, "/metrics").0, Needs::Broker(Action::Monitor));
        assert_eq!(
            needs(&Method::HEAD, "/metrics").0,
            Needs::Broker(Action::Monitor)
        );
        assert_eq!(
            needs(&Method::POST, "/api/queues/jobs/purge"),
            (Needs::Queue(Action::Manage, "name"), Some("jobs".into()))
        );
        assert_eq!(
            needs(&get, "/api/queues/%62illing"),
            (
                Needs::Queue(Action::Monitor, "name"),
                Some("billing".into())
            )
        );
        assert_eq!(needs(&Method::DELETE, "/api/queues").0, Needs::Login);
        assert_eq!(needs(&get, "/nope").0, Needs::Login);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
