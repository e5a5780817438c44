//! Operations on live queues beyond declare / delete: changing a queue's configuration
//! ([`Broker::update`]), browsing it ([`Broker::peek`]), moving messages ([`Broker::move_messages`]). A child module of `broker` (it uses the registry and the catalog lock),
//! kept in a file of its own.
//!
//! # Invariants
//! - A change is checked completely (ranges, immutable fields, the dead-letter queue) before
//!   anything is written; then the catalog entry is replaced (atomically, fsynced) and only then
//!   the actor applies it, so a crash in between restarts the queue with the new configuration.
//! - Serialised with declare and delete (the catalog lock).

use levee_proto::{ProtoError, QueueConfig};

use super::Broker;
use crate::actor::Cmd;
use crate::error::BrokerError;
use crate::queue::reconfigure::{ReconfigureError, check_change};

fn refused(e: ReconfigureError) -> BrokerError {
    let field = match &e {
        ReconfigureError::Immutable { field, .. } => *field,
    };
    BrokerError::Proto(ProtoError::InvalidConfig {
        field,
        reason: e.to_string(),
    })
}

/// Most messages one peek returns.
pub(crate) const MAX_PEEK: usize = 1_000;

impl Broker {
    /// The next `count` (at most 1000) ready messages of `name` in delivery order,
    /// without consuming them (`subscription` and `tag` are 0: they cannot be settled).
    pub async fn peek(
        &self,
        name: &str,
        count: usize,
    ) -> Result<Vec<levee_proto::Delivery>, BrokerError> {
        let tx = self.sender(name)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Cmd::Peek(count.min(MAX_PEEK), reply))
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))?;
        rx.await
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))
    }

    /// Replaces the configuration of the live queue `name` by `config` without losing a message
    /// (see `queue::reconfigure` for what may change and how lowered limits apply). Returns the
    /// previous configuration.
    ///
    /// A replicated queue is changed through the cluster ([`crate::Replication::update`]), from
    /// any node.
    pub async fn update(
        &self,
        name: &str,
        config: QueueConfig,
    ) -> Result<QueueConfig, BrokerError> {
        config.validate(name)?;
        if self.is_replicated(name)
            && let Some(replication) = self.replication()
        {
            return replication.update(name.to_string(), config).await;
        }
        self.reconfigure(name, config, true).await
    }

    /// Checks that `new` may replace `old` on a live queue (what [`Broker::update`] refuses).
    pub fn check_update(old: &QueueConfig, new: &QueueConfig) -> Result<(), BrokerError> {
        check_change(old, new).map_err(refused)
    }

    /// Applies a config to a queue served by [`Broker::load_external`] whose owner has
    /// already checked and recorded it (a replicated queue's config changed through the
    /// cluster). No catalog entry is written. Returns the previous config.
    pub async fn reconfigure_external(
        &self,
        name: &str,
        config: QueueConfig,
    ) -> Result<QueueConfig, BrokerError> {
        config.validate(name)?;
        self.reconfigure(name, config, false).await
    }

    async fn reconfigure(
        &self,
        name: &str,
        config: QueueConfig,
        write_catalog: bool,
    ) -> Result<QueueConfig, BrokerError> {
        let _guard = self.inner.catalog.lock().await;
        let (old, tx, dir) = {
            let queues = self.inner.queues.read();
            let e = queues
                .get(name)
                .ok_or_else(|| BrokerError::UnknownQueue(name.to_string()))?;
            (e.config.clone(), e.tx.clone(), e.dir.clone())
        };
        check_change(&old, &config).map_err(refused)?;
        if let Some(dlq) = &config.dead_letter
            && !self.inner.queue_exists(dlq)
        {
            return Err(BrokerError::UnknownQueue(format!(
                "{dlq} (the dead-letter queue of {name}: declare it first)"
            )));
        }
        if old == config {
            return Ok(old);
        }
        if let Some(dir) = dir
            && write_catalog
            && config.durability.keeps_definition()
        {
            let backend = self.inner.backend.clone();
            let (n, c) = (name.to_string(), config.clone());
            tokio::task::spawn_blocking(move || {
                crate::catalog::rewrite(backend.as_ref(), &dir, &n, &c)
            })
            .await
            .map_err(BrokerError::join)??;
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Cmd::Reconfigure(Box::new(config.clone()), reply))
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))?;
        rx.await
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))?
            .map_err(refused)?;
        if let Some(e) = self.inner.queues.write().get_mut(name) {
            e.config = config;
        }
        tracing::info!(queue = %name, "queue configuration changed");
        Ok(old)
    }
}
