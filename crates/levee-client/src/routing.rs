//! Exchanges and routing (protocol 2): declare / delete exchanges, bind / unbind queues, list,
//! and publish a batch to an exchange with a routing key. Defined on [`Client`] here so the
//! queue operations in `client` stay as they are.
//!
//! A routed publish is a request / reply: its `RoutedConfirm` comes when every target queue has
//! answered, so a message held by a full `block` queue keeps it waiting (up to the client's
//! `request_timeout`).

use levee_proto::{
    Binding, ClientFrame, ExchangeConfig, ExchangeInfo, Message, RoutedOutcome, ServerFrame,
};

use crate::client::Client;
use crate::conn::unexpected;
use crate::error::Result;

impl Client {
    async fn exchange_ok(&self, make: impl FnOnce(u64) -> ClientFrame) -> Result<bool> {
        match self.inner.request(make).await? {
            ServerFrame::ExchangeOk { created, .. } => Ok(created),
            other => Err(unexpected(&other)),
        }
    }

    /// Declares an exchange, or checks that the existing one has this config (a different one
    /// is a server error `exchange-config-mismatch` naming the differences). Returns whether it
    /// was created.
    ///
    /// # Cancel safety
    /// As [`Client::declare`]: the exchange may or may not have been created; declaring again is
    /// idempotent.
    pub async fn declare_exchange(&self, exchange: &str, config: ExchangeConfig) -> Result<bool> {
        let exchange = exchange.to_string();
        self.exchange_ok(|req| ClientFrame::DeclareExchange {
            req,
            exchange,
            config,
            passive: false,
        })
        .await
    }

    /// Checks that an exchange exists (a server error `unknown-exchange` if not).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn check_exchange(&self, exchange: &str) -> Result<()> {
        let exchange = exchange.to_string();
        self.exchange_ok(|req| ClientFrame::DeclareExchange {
            req,
            exchange,
            config: ExchangeConfig::new(levee_proto::ExchangeKind::Direct),
            passive: true,
        })
        .await
        .map(|_| ())
    }

    /// Deletes an exchange and its bindings (`if_unused`: refused with `exchange-in-use` while
    /// it has any).
    ///
    /// # Cancel safety
    /// As [`Client::declare`]: it may or may not have been deleted.
    pub async fn delete_exchange(&self, exchange: &str, if_unused: bool) -> Result<()> {
        let exchange = exchange.to_string();
        self.exchange_ok(|req| ClientFrame::DeleteExchange {
            req,
            exchange,
            if_unused,
        })
        .await
        .map(|_| ())
    }

    /// Binds a queue to an exchange; returns whether the binding is new.
    ///
    /// # Cancel safety
    /// As [`Client::declare`]; binding again is idempotent.
    pub async fn bind(&self, binding: Binding) -> Result<bool> {
        self.exchange_ok(|req| ClientFrame::Bind { req, binding })
            .await
    }

    /// Removes a binding; returns whether it existed.
    ///
    /// # Cancel safety
    /// As [`Client::declare`].
    pub async fn unbind(&self, binding: Binding) -> Result<bool> {
        self.exchange_ok(|req| ClientFrame::Unbind { req, binding })
            .await
    }

    /// Every exchange with its counters (the default exchange `""` first).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn list_exchanges(&self) -> Result<Vec<ExchangeInfo>> {
        match self
            .inner
            .request(|req| ClientFrame::ListExchanges { req })
            .await?
        {
            ServerFrame::ExchangeList { exchanges, .. } => Ok(exchanges),
            other => Err(unexpected(&other)),
        }
    }

    /// The bindings of one exchange (all with `None`).
    ///
    /// # Cancel safety
    /// Cancel-safe: it only reads.
    pub async fn list_bindings(&self, exchange: Option<&str>) -> Result<Vec<Binding>> {
        let exchange = exchange.map(str::to_string);
        match self
            .inner
            .request(|req| ClientFrame::ListBindings { req, exchange })
            .await?
        {
            ServerFrame::BindingList { bindings, .. } => Ok(bindings),
            other => Err(unexpected(&other)),
        }
    }

    /// Publishes a batch to an exchange (`""`: the default exchange, routing key = queue name)
    /// and waits for one outcome per message: `Unroutable`, or the combination of its targets'
    /// outcomes (see [`RoutedOutcome`]).
    ///
    /// # Cancel safety
    /// Not idempotent: dropped after sending, the messages may have been stored; the outcome is
    /// lost.
    pub async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<RoutedOutcome>> {
        let (exchange, routing_key) = (exchange.to_string(), routing_key.to_string());
        match self
            .inner
            .request(|req| ClientFrame::PublishRouted {
                req,
                exchange,
                routing_key,
                messages,
            })
            .await?
        {
            ServerFrame::RoutedConfirm { outcomes, .. } => Ok(outcomes),
            other => Err(unexpected(&other)),
        }
    }
}
