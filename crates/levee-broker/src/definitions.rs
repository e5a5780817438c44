//! Definitions: the broker's declared objects as one JSON document, exported and imported
//! (`GET|POST /api/definitions`, `levee definitions export|import`), like RabbitMQ's.
//!
//! ```json
//! {"levee_definitions": 1, "queues": [{"name": "jobs", "config": {...}}],
//!  "exchanges": [{"name": "events", "type": "topic", "durable": true, "auto_delete": false,
//!                 "internal": false, "arguments": {}}],
//!  "bindings": [{"exchange": "events", "queue": "jobs", "key": "a.*", "arguments": {}}],
//!  "users": []}
//! ```
//!
//! `config` is the queue config JSON of the HTTP API (`PUT /api/queues/{name}`), an exchange is
//! the body of `PUT /api/exchanges/{name}` with its name. Export lists every queue, every
//! declared exchange (not the predeclared `""` and `amq.*` ones) and every binding (those of
//! predeclared exchanges too). Import declares the queues first, in an order where every
//! dead-letter queue comes before the queues that use it (a queue that exists with the same
//! config is left alone, one with another config is changed live where the change is allowed,
//! `Broker::update`, else reported), then the exchanges (an existing one with another config is
//! reported: exchanges cannot be changed), then the bindings (they name both). Each failure is
//! reported and the rest is still imported.
//!
//! # Extension point
//! Users belong in the `users` section, without their secrets; this build never exports them
//! (a password hash is a secret). [`EXTENSION_SECTIONS`] lists the sections it knows of but
//! does not fill: they are exported empty and a non-empty one is refused on import (rather than
//! silently dropped).

use std::collections::{BTreeMap, BTreeSet};

use levee_proto::{Binding, ExchangeConfig, QueueConfig};
use serde_json::{Value, json};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::http::{
    binding_from_json, binding_to_json, config_from_json, config_to_json,
    exchange_config_from_json, exchange_config_to_json,
};

/// The format version written as `levee_definitions`.
pub const FORMAT: u64 = 1;

/// Sections reserved for definitions this build does not have yet (see the module docs).
pub const EXTENSION_SECTIONS: [&str; 1] = ["users"];

/// Why a definitions document is refused (nothing was imported).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionsError {
    /// Not the expected JSON shape.
    #[error("invalid definitions: {0}")]
    Invalid(String),
    /// A section this build cannot import holds entries.
    #[error(
        "section {0:?} is not supported by this broker (it has no {0}); remove it or leave it empty"
    )]
    Unsupported(String),
}

/// The declared objects of a definitions document.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Definitions {
    /// Queues, each dead-letter queue before the queues that use it (when parsed).
    pub queues: Vec<(String, QueueConfig)>,
    /// Declared exchanges (never the predeclared ones).
    pub exchanges: Vec<(String, ExchangeConfig)>,
    /// Bindings.
    pub bindings: Vec<Binding>,
}

/// The document for these definitions.
pub fn to_json(d: &Definitions) -> Value {
    let mut v = json!({
        "levee_definitions": FORMAT,
        "queues": d.queues.iter().map(|(n, c)| json!({"name": n, "config": config_to_json(c)})).collect::<Vec<_>>(),
        "exchanges": d.exchanges.iter().map(|(n, c)| {
            let mut x = exchange_config_to_json(c);
            x["name"] = json!(n);
            x
        }).collect::<Vec<_>>(),
        "bindings": d.bindings.iter().map(binding_to_json).collect::<Vec<_>>(),
    });
    for s in EXTENSION_SECTIONS {
        v[s] = json!([]);
    }
    v
}

/// The exchanges of a document (`name` plus the `PUT /api/exchanges/{name}` body).
fn exchanges_from(list: Option<&Value>) -> Result<Vec<(String, ExchangeConfig)>, DefinitionsError> {
    let list = match list {
        None => return Ok(Vec::new()),
        Some(Value::Array(l)) => l,
        Some(_) => {
            return Err(DefinitionsError::Invalid(
                "\"exchanges\" is not a list".into(),
            ));
        }
    };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, x) in list.iter().enumerate() {
        let mut x = x.clone();
        let Some(Value::String(name)) = x.as_object_mut().and_then(|m| m.remove("name")) else {
            return Err(DefinitionsError::Invalid(format!(
                "exchanges[{i}]: missing name"
            )));
        };
        let config = exchange_config_from_json(x)
            .map_err(|e| DefinitionsError::Invalid(format!("exchanges[{i}] ({name}): {e}")))?;
        if !seen.insert(name.clone()) {
            return Err(DefinitionsError::Invalid(format!(
                "exchange {name} is listed twice"
            )));
        }
        out.push((name, config));
    }
    Ok(out)
}

/// The bindings of a document.
fn bindings_from(list: Option<&Value>) -> Result<Vec<Binding>, DefinitionsError> {
    match list {
        None => Ok(Vec::new()),
        Some(Value::Array(l)) => l
            .iter()
            .enumerate()
            .map(|(i, b)| {
                binding_from_json(b.clone())
                    .map_err(|e| DefinitionsError::Invalid(format!("bindings[{i}]: {e}")))
            })
            .collect(),
        Some(_) => Err(DefinitionsError::Invalid(
            "\"bindings\" is not a list".into(),
        )),
    }
}

/// Parses a document: its queues ordered so that each queue's dead-letter queue (when it is in
/// the document) comes first, its exchanges and its bindings.
pub fn from_json(body: &[u8]) -> Result<Definitions, DefinitionsError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| DefinitionsError::Invalid(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(DefinitionsError::Invalid("expected a JSON object".into()));
    };
    for (k, val) in &map {
        match k.as_str() {
            "levee_definitions" => {
                if val.as_u64() != Some(FORMAT) {
                    return Err(DefinitionsError::Invalid(format!(
                        "levee_definitions {val}: this broker reads format {FORMAT}"
                    )));
                }
            }
            "queues" | "exchanges" | "bindings" => {}
            s if EXTENSION_SECTIONS.contains(&s) => {
                if val.as_array().is_none_or(|a| !a.is_empty()) {
                    return Err(DefinitionsError::Unsupported(s.into()));
                }
            }
            other => {
                return Err(DefinitionsError::Invalid(format!(
                    "unknown section {other:?}"
                )));
            }
        }
    }
    let exchanges = exchanges_from(map.get("exchanges"))?;
    let bindings = bindings_from(map.get("bindings"))?;
    let Some(Value::Array(list)) = map.get("queues") else {
        return Err(DefinitionsError::Invalid(
            "missing \"queues\": [...]".into(),
        ));
    };
    let mut queues: BTreeMap<String, QueueConfig> = BTreeMap::new();
    for (i, q) in list.iter().enumerate() {
        let name = q["name"]
            .as_str()
            .ok_or_else(|| DefinitionsError::Invalid(format!("queues[{i}]: missing name")))?;
        let config = q.get("config").cloned().unwrap_or(json!({})).to_string();
        let config = config_from_json(config.as_bytes())
            .map_err(|e| DefinitionsError::Invalid(format!("queues[{i}] ({name}): {e}")))?;
        config
            .validate(name)
            .map_err(|e| DefinitionsError::Invalid(format!("queues[{i}]: {e}")))?;
        if queues.insert(name.to_string(), config).is_some() {
            return Err(DefinitionsError::Invalid(format!(
                "queue {name} is listed twice"
            )));
        }
    }
    // Dead-letter targets first (depth-first; a cycle cannot be declared).
    let mut ordered = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for name in queues.keys() {
        let mut chain = Vec::new();
        let mut cur = Some(name.clone());
        while let Some(n) = cur {
            if done.contains(&n) || !queues.contains_key(&n) {
                break;
            }
            if chain.contains(&n) {
                return Err(DefinitionsError::Invalid(format!(
                    "dead-letter queues form a cycle through {n}"
                )));
            }
            chain.push(n.clone());
            cur = queues[&n].dead_letter.clone();
        }
        for n in chain.into_iter().rev() {
            if done.insert(n.clone()) {
                ordered.push((n.clone(), queues[&n].clone()));
            }
        }
    }
    Ok(Definitions {
        queues: ordered,
        exchanges,
        bindings,
    })
}

/// What an import did, per queue, exchange and binding.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Queues created.
    pub created: Vec<String>,
    /// Queues that existed with this config.
    pub unchanged: Vec<String>,
    /// Queues changed live to the imported config.
    pub updated: Vec<String>,
    /// Queues that could not be imported, with the error.
    pub errors: Vec<(String, BrokerError)>,
    /// Exchanges created.
    pub exchanges_created: Vec<String>,
    /// Exchanges that existed with this config.
    pub exchanges_unchanged: Vec<String>,
    /// Exchanges that could not be imported (one with another config among them).
    pub exchange_errors: Vec<(String, BrokerError)>,
    /// Bindings added.
    pub bindings_created: u64,
    /// Bindings that existed.
    pub bindings_unchanged: u64,
    /// Bindings that could not be added (an unknown queue or exchange...).
    pub binding_errors: Vec<(Binding, BrokerError)>,
}

impl ImportReport {
    /// Whether everything was imported.
    pub fn is_complete(&self) -> bool {
        self.errors.is_empty() && self.exchange_errors.is_empty() && self.binding_errors.is_empty()
    }

    /// The JSON answer of `POST /api/definitions`.
    pub fn to_json(&self) -> Value {
        let err = |e: &BrokerError| (e.code().name(), e.to_string());
        let mut errors: Vec<Value> = Vec::new();
        for (q, e) in &self.errors {
            let (code, message) = err(e);
            errors.push(json!({"queue": q, "error": code, "message": message}));
        }
        for (x, e) in &self.exchange_errors {
            let (code, message) = err(e);
            errors.push(json!({"exchange": x, "error": code, "message": message}));
        }
        for (b, e) in &self.binding_errors {
            let (code, message) = err(e);
            errors.push(json!({"binding": binding_to_json(b), "error": code, "message": message}));
        }
        json!({
            "created": self.created,
            "unchanged": self.unchanged,
            "updated": self.updated,
            "exchanges_created": self.exchanges_created,
            "exchanges_unchanged": self.exchanges_unchanged,
            "bindings_created": self.bindings_created,
            "bindings_unchanged": self.bindings_unchanged,
            "errors": errors,
        })
    }
}

/// Every queue of the broker with its config (sorted by name), every declared exchange and
/// every binding.
pub async fn export(broker: &Broker) -> Result<Value, BrokerError> {
    let mut names = broker.list();
    names.sort();
    let mut d = Definitions::default();
    for n in names {
        match broker.inspect(&n).await {
            Ok(info) => d.queues.push((n, info.config)),
            // Deleted meanwhile.
            Err(BrokerError::UnknownQueue(_)) => {}
            Err(e) => return Err(e),
        }
    }
    d.exchanges = broker
        .exchanges()
        .into_iter()
        .filter(|x| !x.predeclared)
        .map(|x| (x.name, x.config))
        .collect();
    d.bindings = broker.bindings(None)?;
    Ok(to_json(&d))
}

/// Imports parsed definitions (see the module documentation).
pub async fn import(broker: &Broker, d: Definitions) -> ImportReport {
    let mut report = ImportReport::default();
    for (name, config) in d.queues {
        match broker.declare(&name, config.clone()).await {
            Ok((true, _)) => report.created.push(name),
            Ok((false, _)) => report.unchanged.push(name),
            Err(BrokerError::ConfigMismatch { .. }) => match broker.update(&name, config).await {
                Ok(_) => report.updated.push(name),
                Err(e) => report.errors.push((name, e)),
            },
            Err(e) => report.errors.push((name, e)),
        }
    }
    for (name, config) in d.exchanges {
        match broker.declare_exchange(&name, config).await {
            Ok(true) => report.exchanges_created.push(name),
            Ok(false) => report.exchanges_unchanged.push(name),
            Err(e) => report.exchange_errors.push((name, e)),
        }
    }
    for b in d.bindings {
        match broker.add_binding(&b).await {
            Ok(true) => report.bindings_created += 1,
            Ok(false) => report.bindings_unchanged += 1,
            Err(e) => report.binding_errors.push((b, e)),
        }
    }
    report
}
