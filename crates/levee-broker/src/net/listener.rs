//! The wire protocol's accept loop: [`Broker::serve`] and [`Broker::bind`], the admission of each
//! accepted socket against `max_connections`, and the accept back-off shared with the HTTP
//! listener.
//!
//! Each accepted socket goes through the listener's `security::Acceptor` (plain, or a TLS
//! handshake) in the connection's own task, never in the accept loop.
//!
//! It is the only place that starts a `conn` (the broker registry itself knows nothing of
//! connections), so a second protocol front end gets a listener of its own beside this one.
//!
//! # Invariants
//! - Every served connection holds one `max_connections` slot from accept to its end; one more
//!   is refused with a `Close` saying so (`limits`; on a TLS listener it is only closed), never
//!   served.
//! - A failing `accept` never spins the loop nor stops it: per-connection errors are skipped,
//!   resource errors (out of descriptors or memory) wait a bounded back-off of at most 20 ms.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::security::Acceptor;

impl Broker {
    /// Accepts connections on `listener` until the task is dropped.
    ///
    /// Cancel-safe: dropping the future stops accepting; connections already accepted go on.
    ///
    /// At most `max_connections` connections are served at once; one more is answered with a
    /// `Close` saying so and closed (see `limits`).
    /// Speaks TLS if the broker's config has `[tls]` (see [`Broker::serve_with`]).
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        self.serve_with(listener, Acceptor::new(self.security()))
            .await
    }

    /// [`Broker::serve`] with an explicit acceptor (plain for a loopback listener kept beside
    /// TLS ones, say).
    ///
    /// Cancel-safe, as [`Broker::serve`].
    pub async fn serve_with(
        &self,
        listener: TcpListener,
        acceptor: Acceptor,
    ) -> std::io::Result<()> {
        let mut backoff = AcceptBackoff::default();
        loop {
            let (stream, peer) = backoff.accept(&listener).await;
            let Some(slot) = self.inner.limits.admit() else {
                tracing::debug!(%peer, "refused: max_connections reached");
                // A TLS peer could not read a plaintext `Close`: it is just closed.
                if !acceptor.is_tls() {
                    self.inner.limits.refuse(stream);
                }
                continue;
            };
            let broker = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let accepted = match acceptor.accept(stream).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let r =
                    super::conn::serve(broker, accepted.stream, accepted.peer, accepted.cert_user)
                        .await;
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    /// Binds `addr` and serves on it (refused with `PermissionDenied` if `addr` is not loopback
    /// and no users are configured, see `Security::check_exposure`); returns the bound address (useful with port 0) and the
    /// serving task.
    ///
    /// Cancel-safe: dropped before it returns, nothing is listening.
    pub async fn bind(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
        self.security().check_exposure(addr).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, e.to_string())
        })?;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let broker = self.clone();
        Ok((
            local,
            tokio::spawn(async move { broker.serve(listener).await }),
        ))
    }
}

/// What an accept loop does after `accept` failed: per-connection errors (the peer reset before
/// it was accepted) are skipped at once; others (EMFILE, ENFILE, ENOBUFS: out of descriptors or
/// memory) wait a short, bounded backoff (1 ms doubling to 20 ms) so the loop neither spins nor
/// stalls clients once descriptors are free again. One warning per burst of failures.
#[derive(Default)]
pub(crate) struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// Accepts the next connection, backing off on each failure (EMFILE and friends).
    ///
    /// # Cancel safety
    /// Cancel-safe: `TcpListener::accept` is, and nothing else is held across an await.
    pub(crate) async fn accept(
        &mut self,
        listener: &TcpListener,
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(x) => {
                    self.reset();
                    return x;
                }
                Err(e) => self.wait(&e).await,
            }
        }
    }

    const MAX: std::time::Duration = std::time::Duration::from_millis(20);

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// # Cancel safety
    /// Cancel-safe (a sleep).
    pub(crate) async fn wait(&mut self, e: &std::io::Error) {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused
        ) {
            return;
        }
        if self.failures == 0 {
            tracing::warn!(error = %e, "accept failed; retrying (is the file descriptor limit too low for max_connections?)");
        }
        let delay = std::time::Duration::from_millis(1 << self.failures.min(5)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}
