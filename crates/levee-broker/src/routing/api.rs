//! The exchange operations of [`Broker`]: declare, delete, bind, unbind, list, publish, and the
//! catalog writes and recovery behind them.
//!
//! Every change runs under the exchange writer lock: the change is applied to a copy of the
//! table, the copy's durable part is written to the catalog when the change touched something
//! durable, and only then the copy replaces the table (so a failed write changes nothing, and a
//! durable change is on disk before it is announced). Counters are shared between the copies.

use std::sync::Arc;

use levee_proto::{Binding, ExchangeConfig, ExchangeInfo, Message, RoutedOutcome};
use tokio::sync::oneshot;

use super::catalog::{self, Durable};
use super::confirm::{ConfirmCallback, RoutedConfirm};
use super::publish::RoutedPublisher;
use super::table::Table;
use crate::actor::InFlight;
use crate::broker::Broker;
use crate::error::BrokerError;

impl Broker {
    /// Applies `f` to a copy of the table; persists the copy when `f` says something durable
    /// changed; then installs it.
    async fn change_exchanges<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<(R, bool), BrokerError>,
    ) -> Result<R, BrokerError> {
        let _writer = self.inner.exchanges.writer.lock().await;
        let mut next = self.inner.exchanges.table.read().clone();
        let (result, durable) = f(&mut next)?;
        if durable {
            self.save_exchanges(&next).await?;
        }
        *self.inner.exchanges.table.write() = next;
        Ok(result)
    }

    async fn save_exchanges(&self, table: &Table) -> Result<(), BrokerError> {
        let (exchanges, bindings) = table.durable();
        let d = Durable {
            exchanges,
            bindings,
        };
        let backend = self.inner.backend.clone();
        let dir = self.inner.config.data_dir.clone();
        tokio::task::spawn_blocking(move || catalog::save(backend.as_ref(), &dir, &d))
            .await
            .map_err(BrokerError::join)?
    }

    /// Declares an exchange, or checks that an existing one has this config: `Ok(true)` if it
    /// was created. Errors: [`BrokerError::ExchangeMismatch`] naming every difference,
    /// [`BrokerError::ExchangeAccess`] for the default exchange and `amq.` names,
    /// [`BrokerError::Proto`] for a bad name or arguments. A durable exchange is in the catalog
    /// before this returns.
    ///
    /// Not cancel-safe: dropped after the catalog write, the exchange exists.
    pub async fn declare_exchange(
        &self,
        name: &str,
        config: ExchangeConfig,
    ) -> Result<bool, BrokerError> {
        if let Some(info) = self.exchange(name) {
            // Fast path, no lock and no catalog work: an equal redeclare, or a mismatch. (The
            // table is not touched: the exchange may be deleted meanwhile, and a declare that
            // found it then would insert it without the catalog write.)
            if name.is_empty() {
                return Err(BrokerError::ExchangeAccess {
                    exchange: String::new(),
                    reason: "the default exchange cannot be declared",
                });
            }
            if info.config != config {
                return Err(BrokerError::ExchangeMismatch {
                    exchange: name.to_string(),
                    differences: info.config.describe_differences(&config),
                });
            }
            return Ok(false);
        }
        self.change_exchanges(|t| {
            let created = t.declare(name, &config, false)?;
            Ok((created, created && config.durable))
        })
        .await
    }

    /// Passive declare: the exchange's info if it exists, else
    /// [`BrokerError::UnknownExchange`]. Cancel-safe: it only reads.
    pub fn check_exchange(&self, name: &str) -> Result<ExchangeInfo, BrokerError> {
        self.exchange(name)
            .ok_or_else(|| BrokerError::UnknownExchange(name.to_string()))
    }

    /// Deletes an exchange and its bindings (`if_unused`: refused with
    /// [`BrokerError::ExchangeInUse`] while it has any). The default and predeclared exchanges
    /// cannot be deleted ([`BrokerError::ExchangeAccess`]).
    ///
    /// Not cancel-safe: dropped after the catalog write, the exchange is gone.
    pub async fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), BrokerError> {
        self.change_exchanges(|t| {
            let durable = t.delete(name, if_unused)?;
            Ok(((), durable))
        })
        .await
    }

    /// Binds a queue to an exchange: `Ok(true)` if the binding is new. The queue must exist
    /// ([`BrokerError::UnknownQueue`]); the binding is durable (in the catalog before this
    /// returns) when both the exchange and the queue are.
    ///
    /// Not cancel-safe: dropped after the catalog write, the binding exists.
    pub async fn add_binding(&self, binding: &Binding) -> Result<bool, BrokerError> {
        self.change_exchanges(|t| {
            let Some(queue_durable) = self.inner.queue_keeps_definition(&binding.queue) else {
                return Err(BrokerError::UnknownQueue(binding.queue.clone()));
            };
            let (created, durable) = t.bind(binding, queue_durable)?;
            Ok((created, created && durable))
        })
        .await
    }

    /// Removes a binding: `Ok(true)` if it existed. An `auto_delete` exchange goes with its last
    /// binding.
    ///
    /// Not cancel-safe: dropped after the catalog write, the binding is gone.
    pub async fn remove_binding(&self, binding: &Binding) -> Result<bool, BrokerError> {
        self.change_exchanges(|t| {
            let u = t.unbind(binding)?;
            Ok((u.existed, u.durable_changed))
        })
        .await
    }

    /// Removes every binding of a deleted queue (called by the queue's deletion, before a
    /// queue of the same name can be declared again). Applied even if the catalog write fails:
    /// the catalog then keeps bindings to a queue that is gone, which the next start skips.
    pub(crate) async fn remove_queue_bindings(&self, queue: &str) {
        let _writer = self.inner.exchanges.writer.lock().await;
        let mut next = self.inner.exchanges.table.read().clone();
        let u = next.remove_queue(queue);
        if !u.existed {
            return;
        }
        if u.durable_changed
            && let Err(e) = self.save_exchanges(&next).await
        {
            tracing::error!(%queue, error = %e,
                "could not remove the deleted queue's bindings from the catalog");
        }
        *self.inner.exchanges.table.write() = next;
    }

    /// Every exchange (the default exchange `""` first, then by name) with its counters.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        self.inner.exchanges.table.read().list()
    }

    /// One exchange's info.
    pub fn exchange(&self, name: &str) -> Option<ExchangeInfo> {
        self.inner.exchanges.table.read().info(name)
    }

    /// The bindings of one exchange (of every exchange with `None`), sorted.
    pub fn bindings(&self, exchange: Option<&str>) -> Result<Vec<Binding>, BrokerError> {
        self.inner.exchanges.table.read().bindings(exchange)
    }

    /// A publisher for routed publishes with in-flight limits of its own (the broker's
    /// `max_in_flight_*`); see [`RoutedPublisher`].
    pub fn routed_publisher(
        &self,
        on_confirm: impl Fn(RoutedConfirm) + Send + Sync + 'static,
    ) -> RoutedPublisher {
        RoutedPublisher::new(self, Arc::new(InFlight::default()), Box::new(on_confirm))
    }

    /// A publisher sharing a connection's in-flight charge with its direct publishes.
    pub(crate) fn routed_publisher_sharing(
        &self,
        in_flight: Arc<InFlight>,
        on_confirm: ConfirmCallback,
    ) -> RoutedPublisher {
        RoutedPublisher::new(self, in_flight, on_confirm)
    }

    /// Publishes one batch to an exchange and waits for its confirm (for one-shot callers: the
    /// HTTP API, tests). A message held by a full `block` queue keeps this waiting until room
    /// frees; dropping the future discards what is still held (counted `publisher-gone`).
    pub async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<RoutedOutcome>, BrokerError> {
        let (tx, rx) = oneshot::channel();
        let tx = parking_lot::Mutex::new(Some(tx));
        let mut publisher = self.routed_publisher(move |c| {
            if let Some(tx) = tx.lock().take() {
                let _ = tx.send(c);
            }
        });
        publisher.publish(0, exchange, routing_key, messages)?;
        let confirm = rx
            .await
            .map_err(|_| BrokerError::Internal("a routed confirm was lost".into()))?;
        drop(publisher);
        Ok(confirm.outcomes)
    }

    /// Loads the exchange catalog (after the queues were recovered): durable exchanges, then
    /// durable bindings whose queue exists.
    pub(crate) async fn recover_exchanges(&self) -> Result<(), BrokerError> {
        let backend = self.inner.backend.clone();
        let dir = self.inner.config.data_dir.clone();
        let d = tokio::task::spawn_blocking(move || catalog::load(backend.as_ref(), &dir))
            .await
            .map_err(BrokerError::join)??;
        let path = self.inner.config.data_dir.join(catalog::FILE);
        let mut skipped = false;
        let table = {
            let mut t = self.inner.exchanges.table.read().clone();
            for (name, config) in &d.exchanges {
                t.declare(name, config, false)
                    .map_err(|e| BrokerError::Catalog {
                        path: path.clone(),
                        reason: format!("exchange {name}: {e}"),
                    })?;
            }
            for b in &d.bindings {
                match self.inner.queue_keeps_definition(&b.queue) {
                    Some(true) => {
                        t.bind(b, true).map_err(|e| BrokerError::Catalog {
                            path: path.clone(),
                            reason: format!("binding {} -> {}: {e}", b.exchange, b.queue),
                        })?;
                    }
                    _ => {
                        tracing::warn!(exchange = %b.exchange, queue = %b.queue,
                            "binding to a queue that no longer exists: dropped");
                        skipped = true;
                    }
                }
            }
            t
        };
        if skipped {
            self.save_exchanges(&table).await?;
        }
        *self.inner.exchanges.table.write() = table;
        Ok(())
    }
}
