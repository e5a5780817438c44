//! How a node (or the CLI) opens a connection to a node's cluster listener: TCP, then TLS when
//! the cluster speaks it, then a login (`Hello`) when credentials are set; and the listener's
//! side of that login (`admit`).
//!
//! # Invariants
//! - With TLS the peer's certificate is always verified (against the cluster's CA, for the host
//!   of the address dialled); there is no "accept anything" mode.
//! - A connection carries Raft or admin requests only after the login: when the broker has
//!   users, the listener reads at most one small frame ([`MAX_HELLO`], within
//!   [`HELLO_TIMEOUT`]) from a peer that has not logged in, and answers anything but a valid
//!   login (user and password) from a user allowed to `manage` the broker with `Refused` and
//!   closes. A client certificate (mTLS) is checked by the TLS handshake; it does not replace
//!   the password here.
//! - Passwords never appear in logs or `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use levee_broker::security::{Action, Resource, Security};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::raft::net::{Rpc, RpcReply, read_frame, read_frame_max, write_frame};

/// The largest frame read from a peer that has not logged in.
pub const MAX_HELLO: usize = 64 << 10;
/// How long a peer has after connecting (and its TLS handshake) to log in.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to or from a node: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A connected, logged-in stream.
pub type Stream = Box<dyn Io>;

/// How to reach nodes' cluster listeners: TLS (a rustls client config: the CA that node
/// certificates chain to, and this side's own certificate for mTLS) and the user to log in as.
/// The default is plain TCP without a login (a cluster without users).
#[derive(Clone, Default)]
pub struct Link {
    tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tls", &self.tls.is_some())
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl Link {
    /// Plain TCP, no login.
    pub fn plain() -> Link {
        Link::default()
    }

    /// Speaks TLS with `config` (the server name verified is the host of each address dialled).
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Link {
        self.tls = Some(config);
        self
    }

    /// Logs in as `user` with `password` on every connection.
    pub fn with_credentials(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Link {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Whether this link speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects to `addr` (`HOST:PORT`), runs the TLS handshake and the login.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropped, the half-open connection is closed.
    pub async fn connect(&self, addr: &str) -> std::io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut s: Stream = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(host.to_string()).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("TLS server name {host:?}: {e}"),
                    )
                })?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                Box::new(tls)
            }
        };
        if let Some((user, password)) = &self.credentials {
            write_frame(
                &mut s,
                &Rpc::Hello {
                    user: user.clone(),
                    password: password.clone(),
                },
            )
            .await?;
            match read_frame(&mut s).await? {
                Some(RpcReply::Welcome) => {}
                Some(RpcReply::Refused(why)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        why,
                    ));
                }
                Some(_) => {
                    return Err(std::io::Error::other(
                        "answered the login with another reply",
                    ));
                }
                None => return Err(std::io::Error::other("closed before answering the login")),
            }
        }
        Ok(s)
    }
}

/// The listener's side of the login, on a stream just accepted (after its TLS handshake):
/// without users on this broker, everyone is admitted (a `Hello` is answered later, by the
/// request loop). With users, the first frame must be a `Hello` whose password checks, from a
/// user allowed to `manage` the broker. `Err` (after `Refused` was sent): close the connection.
pub(crate) async fn admit(
    security: &Security,
    stream: &mut Stream,
    peer: std::net::SocketAddr,
) -> Result<(), String> {
    if !security.users_configured() {
        return Ok(());
    }
    let first =
        tokio::time::timeout(HELLO_TIMEOUT, read_frame_max::<_, Rpc>(stream, MAX_HELLO)).await;
    let principal = match first {
        Ok(Ok(Some(Rpc::Hello { user, password }))) => {
            security.login(Some((&user, &password)), None, peer).await
        }
        Ok(Ok(None)) => return Err("closed before logging in".into()),
        Ok(Ok(Some(_))) => {
            return refuse(stream, "log in first: this cluster has users".into()).await;
        }
        Ok(Err(e)) => return refuse(stream, format!("a bad login frame: {e}")).await,
        Err(_) => return refuse(stream, "no login in time".into()).await,
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => return refuse(stream, e.to_string()).await,
    };
    if !security.permits(&principal, Action::Manage, Resource::Broker) {
        return refuse(
            stream,
            format!(
                "user {} may not join the cluster: it needs manage on the broker",
                principal.name()
            ),
        )
        .await;
    }
    write_frame(stream, &RpcReply::Welcome)
        .await
        .map_err(|e| e.to_string())
}

async fn refuse(stream: &mut Stream, why: String) -> Result<(), String> {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write_frame(stream, &RpcReply::Refused(why.clone())),
    )
    .await;
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use levee_broker::security::{ActionName, PermissionConfig, SecurityConfig, UserConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn security() -> Security {
        let hash = levee_broker::security::hash_password(b"secret", b"0123456789abcdef").unwrap();
        let user = |name: &str, queues: Option<&str>, action| UserConfig {
            name: name.into(),
            password_hash: Some(hash.clone()),
            permissions: vec![PermissionConfig {
                queues: queues.map(str::to_string),
                exchanges: None,
                actions: vec![action],
            }],
            max_connections: None,
            publish_rate: None,
        };
        Security::new(&SecurityConfig {
            users: vec![
                user("node", None, ActionName::Admin),
                // Manages some queues, not the broker.
                user("app", Some("a*"), ActionName::Manage),
            ],
            ..SecurityConfig::default()
        })
        .unwrap()
    }

    async fn admitted(first: Vec<u8>) -> (Result<(), String>, Option<RpcReply>) {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let mut ours: Stream = Box::new(ours);
        peer.write_all(&first).await.unwrap();
        let addr = "127.0.0.1:1".parse().unwrap();
        let result = admit(&security(), &mut ours, addr).await;
        drop(ours);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        let reply = read_frame::<_, RpcReply>(&mut rest.as_slice())
            .await
            .unwrap();
        (result, reply)
    }

    async fn hello(user: &str, password: &str) -> Vec<u8> {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &Rpc::Hello {
                user: user.into(),
                password: password.into(),
            },
        )
        .await
        .unwrap();
        buf
    }

    #[tokio::test]
    async fn only_a_user_that_manages_the_broker_is_admitted() {
        let (r, reply) = admitted(hello("node", "secret").await).await;
        assert!(
            r.is_ok() && matches!(reply, Some(RpcReply::Welcome)),
            "{r:?}"
        );
        let (r, reply) = admitted(hello("node", "guess").await).await;
        assert!(matches!(reply, Some(RpcReply::Refused(_))), "{r:?}");
        assert!(r.unwrap_err().contains("authentication failed"));
        let (r, _) = admitted(hello("app", "secret").await).await;
        assert!(r.unwrap_err().contains("may not join the cluster"));
        let mut status = Vec::new();
        write_frame(&mut status, &Rpc::Admin(crate::admin::AdminRequest::Status))
            .await
            .unwrap();
        let (r, _) = admitted(status).await;
        assert!(r.unwrap_err().contains("log in first"));
    }

    #[tokio::test]
    async fn a_login_frame_past_the_bound_is_refused_unread() {
        // Only the length is sent: the listener must refuse on it, not wait for 64 KiB + 1.
        let len = (MAX_HELLO as u32 + 1).to_le_bytes().to_vec();
        let (r, reply) = admitted(len).await;
        assert!(matches!(reply, Some(RpcReply::Refused(_))));
        assert!(r.unwrap_err().contains("too large"), "refused for its size");
        // At the bound it is read (and fails as a frame, not for its size).
        let mut at = (MAX_HELLO as u32).to_le_bytes().to_vec();
        at.resize(4 + MAX_HELLO, 0xff);
        let (r, _) = admitted(at).await;
        assert!(!r.unwrap_err().contains("too large"));
    }
}
