//! The AMQP 0-9-1 front end: existing RabbitMQ clients (pika, Celery/kombu, lapin, amqplib) talk
//! to the same queues as the native protocol.
//!
//! - `codec`: frame splitting with the `frame_max` check, encoding (methods and properties are
//!   `amq-protocol`'s);
//! - `connection` and `channel`: the I/O-free state machine of one connection (connection and
//!   channel levels);
//! - `mapping`: declare arguments onto [`levee_proto::QueueConfig`], properties onto Levee
//!   messages and back;
//! - `auth`: the one place credentials are checked and operations authorized;
//! - `shell`: the tokio task around one connection, generic over the stream (TLS can wrap it);
//! - this module: the listener ([`Broker::bind_amqp`]) and its settings ([`AmqpConfig`]).
//!
//! Dependencies point one way: listener -> `shell` -> `connection`/`channel` -> `codec`,
//! `mapping`, `auth`; the shell talks to queue actors exactly as the native connection does
//! (`actor::Cmd`, the connection's `outbox`).

mod auth;
mod channel;
mod codec;
mod connection;
mod mapping;
mod shell;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::net::listener::AcceptBackoff;

/// Settings of the AMQP front end.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// Most payload bytes of publishes one connection may have held for `block` queues that
    /// granted no credit yet (default 16 MiB). Past it the connection gets `connection.blocked`
    /// and is not read until they fall to half of it.
    pub max_held_bytes: u64,
    /// Heartbeat proposed in `connection.tune`, seconds (default: the broker's heartbeat).
    pub heartbeat_s: Option<u16>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            max_held_bytes: 16 * 1024 * 1024,
            heartbeat_s: None,
        }
    }
}

/// Largest frame offered to AMQP clients (RabbitMQ's default).
const AMQP_FRAME_MAX: u32 = 128 * 1024;
/// Most channels per AMQP connection (RabbitMQ's default).
const AMQP_CHANNEL_MAX: u16 = 2047;

/// A running AMQP listener.
pub struct AmqpListener {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl AmqpListener {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and tells every open AMQP connection the broker is going away
    /// (`connection.close` 320 CONNECTION_FORCED).
    pub fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.task.abort();
    }
}

impl Broker {
    /// Binds `addr` and serves AMQP 0-9-1 on it. Connections share the broker's
    /// `max_connections` slots with the native protocol.
    ///
    /// Cancel-safe: dropped before it returns, nothing is listening.
    pub async fn bind_amqp(
        &self,
        addr: SocketAddr,
        config: AmqpConfig,
    ) -> std::io::Result<AmqpListener> {
        // The safe default of every listener: no users, no public address.
        self.security().check_exposure(addr).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
        })?;
        let listener = TcpListener::bind(addr).await?;
        let acceptor = crate::security::Acceptor::new(self.security());
        let local = listener.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        let shared = Arc::new(shell::Shared::new(
            self.clone(),
            self.amqp_settings(&config),
            rx,
        ));
        let broker = self.clone();
        let task = tokio::spawn(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let (stream, peer) = backoff.accept(&listener).await;
                let Some(slot) = broker.inner.limits.admit() else {
                    tracing::debug!(%peer, "AMQP connection refused: max_connections reached");
                    continue;
                };
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    // TLS (with `[tls]`) is negotiated here, off the accept loop.
                    match acceptor.accept(stream).await {
                        Ok(a) => serve_amqp_stream(shared, a.stream, a.peer, a.cert_user).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "AMQP connection dropped before its handshake");
                        }
                    }
                });
            }
        });
        Ok(AmqpListener {
            addr: local,
            task,
            shutdown,
        })
    }

    fn amqp_settings(&self, config: &AmqpConfig) -> connection::Settings {
        let cfg = self.config();
        connection::Settings {
            frame_max: AMQP_FRAME_MAX.min(cfg.max_frame as u32),
            channel_max: AMQP_CHANNEL_MAX,
            heartbeat_s: config
                .heartbeat_s
                .unwrap_or_else(|| u16::try_from((cfg.heartbeat_ms / 1000).max(1)).unwrap_or(60)),
            max_message: cfg.max_frame as u64,
            max_held_bytes: config.max_held_bytes.max(1),
            max_in_flight_bytes: cfg.max_in_flight_bytes,
            max_in_flight_messages: cfg.max_in_flight_messages,
            queue_defaults: levee_proto::QueueConfig::default(),
            server_name: cfg.server_name.clone(),
        }
    }
}

/// Serves one AMQP connection on any byte stream (a TCP socket, or TLS around one).
async fn serve_amqp_stream<S>(
    shared: Arc<shell::Shared>,
    stream: S,
    peer: SocketAddr,
    cert_user: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    shell::serve(shared, stream, peer, cert_user).await;
}
