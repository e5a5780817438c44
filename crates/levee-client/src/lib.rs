//! The Levee client: a [`Client`] (one TCP connection, shared by clones, reconnecting with
//! backoff), [`Producer`]s (batching with a linger time, bounded in-flight window, publish credit
//! on `block` queues, confirms as futures, optional circuit breaker) and [`Consumer`]s (a
//! `futures::Stream` of [`Delivery`]s with ack / nack / reject and automatic credit: fixed, or
//! adaptive, sized from measured processing time and round trip, see [`credit`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), levee_client::ClientError> {
//! use futures::StreamExt;
//! use levee_client::{Client, ClientOptions, ConsumerOptions, Message, ProducerOptions, QueueConfig};
//!
//! let client = Client::connect("127.0.0.1:5671", ClientOptions::default()).await?;
//! client.declare("orders", QueueConfig::default()).await?;
//! let producer = client.producer("orders", ProducerOptions::default()).await?;
//! producer.send(Message::new("hello")).await?; // stored and fsynced
//! let mut consumer = client.consumer("orders", ConsumerOptions::default()).await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(&delivery.payload()[..], b"hello");
//!     delivery.ack()?;
//! }
//! # Ok(()) }
//! ```
//!
//! Modules: `client` (connection state, requests, reconnection), `conn` (one connection's
//! reader / writer tasks), `producer`, `consumer`, `window` (the in-flight window), [`credit`]
//! (credit bookkeeping and the adaptive algorithm), `options`, `error`. Every async method
//! documents its cancel-safety.
//!
//! Dependencies point one way, with no loop: `producer` and `consumer` -> `client` -> `conn`.
//! `conn` reaches a subscription through the `conn::Subscriber` trait and `client` reaches its
//! producers and consumers (to re-register them after a reconnection) through the
//! `client::ProducerHandle` and `client::ConsumerHandle` traits, which `producer` and `consumer`
//! implement; [`Client::producer`] and [`Client::consumer`] are defined in those modules.

mod client;
mod conn;
mod consumer;
pub mod credit;
mod error;
mod options;
mod producer;
mod routing;
mod window;

pub use client::{Client, ClientStats, DeclareOk};
pub use consumer::{Consumer, CreditStats, Delivery};
pub use error::{ClientError, Result, TryPublishError};
pub use levee_flow::{BreakerConfig, BreakerState, BreakerStats};
pub use levee_proto::{
    Binding, ConsumerStats, DropReason, Durability, ErrorCode, ExchangeConfig, ExchangeInfo,
    ExchangeKind, Fsync, Message, Order, Overflow, PublishOutcome, QueueConfig, QueueInfo,
    QueueStats, RoutedOutcome,
};
pub use options::{Backoff, ClientOptions, ConsumerOptions, Credit, ProducerOptions};
pub use producer::{ConfirmFuture, Producer};
