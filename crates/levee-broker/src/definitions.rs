//! Definitions: the broker's declared objects as one JSON document, exported and imported
//! (`GET|POST /api/definitions`, `levee definitions export|import`), like RabbitMQ's.
//!
//! ```json
//! {"levee_definitions": 1, "queues": [{"name": "jobs", "config": {...}}],
//!  "exchanges": [], "bindings": [], "users": []}
//! ```
//!
//! `config` is the queue config JSON of the HTTP API (`PUT /api/queues/{name}`). Import
//! declares the queues in an order where every dead-letter queue comes before the queues that
//! use it; a queue that exists with the same config is left alone, one with another config is
//! changed live where the change is allowed (`Broker::update`), else reported.
//!
//! # Extension point
//! Other kinds of definitions (exchanges and bindings, users without their secrets) belong in
//! the sections of the same name. This build has none: [`EXTENSION_SECTIONS`] lists the
//! sections it knows of, exports them empty and refuses to import a non-empty one (rather than
//! silently dropping it). A branch adding exchanges adds its export to [`to_json`]'s caller and
//! its import to [`import`] (after the queues, since bindings name queues), and removes its
//! section from [`EXTENSION_SECTIONS`].

use std::collections::{BTreeMap, BTreeSet};

use levee_proto::QueueConfig;
use serde_json::{Value, json};

use crate::broker::Broker;
use crate::error::BrokerError;
use crate::http::{config_from_json, config_to_json};

/// The format version written as `levee_definitions`.
pub const FORMAT: u64 = 1;

/// Sections reserved for definitions this build does not have yet (see the module docs).
pub const EXTENSION_SECTIONS: [&str; 3] = ["exchanges", "bindings", "users"];

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

/// The document for these queues.
pub fn to_json(queues: &[(String, QueueConfig)]) -> Value {
    let mut v = json!({
        "levee_definitions": FORMAT,
        "queues": queues.iter().map(|(n, c)| json!({"name": n, "config": config_to_json(c)})).collect::<Vec<_>>(),
    });
    for s in EXTENSION_SECTIONS {
        v[s] = json!([]);
    }
    v
}

/// Parses a document into its queues, ordered so that each queue's dead-letter queue (when it
/// is in the document) comes first.
pub fn from_json(body: &[u8]) -> Result<Vec<(String, QueueConfig)>, DefinitionsError> {
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
            "queues" => {}
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
    Ok(ordered)
}

/// What an import did, per queue.
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
}

impl ImportReport {
    /// The JSON answer of `POST /api/definitions`.
    pub fn to_json(&self) -> Value {
        json!({
            "created": self.created,
            "unchanged": self.unchanged,
            "updated": self.updated,
            "errors": self.errors.iter().map(|(q, e)| json!({
                "queue": q, "error": e.code().name(), "message": e.to_string(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Every queue of the broker with its config, sorted by name.
pub async fn export(broker: &Broker) -> Result<Value, BrokerError> {
    let mut names = broker.list();
    names.sort();
    let mut queues = Vec::new();
    for n in names {
        match broker.inspect(&n).await {
            Ok(info) => queues.push((n, info.config)),
            // Deleted meanwhile.
            Err(BrokerError::UnknownQueue(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(to_json(&queues))
}

/// Imports parsed definitions (see the module documentation).
pub async fn import(broker: &Broker, queues: Vec<(String, QueueConfig)>) -> ImportReport {
    let mut report = ImportReport::default();
    for (name, config) in queues {
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
    report
}
