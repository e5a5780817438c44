//! The cluster network: Raft RPCs (and the cluster's admin requests) between nodes over TCP.
//!
//! A frame is `[len u32 LE][bincode body]`, at most [`MAX_FRAME`] bytes; every request gets one
//! reply on the same connection, in order. Each (group, peer) pair has its own connection,
//! opened on first use and dropped on any error (the next call reconnects), so a slow group
//! never holds up another's heartbeats. Connections are opened by a [`crate::link::Link`]
//! (TLS, login) and their first frames may be the login (`Hello`, answered `Welcome` or
//! `Refused`).
//!
//! # Invariants
//! - A call has a deadline (openraft's `RPCOption::hard_ttl`, or [`ADMIN_TIMEOUT`]); an I/O error
//!   or a missed deadline is reported to openraft as `Unreachable`, never as an answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::TypeConfig;
use crate::admin::{AdminReply, AdminRequest};
use crate::link::{Link, Stream};

/// The largest frame accepted (a snapshot chunk or a batch of entries is far smaller).
pub(crate) const MAX_FRAME: usize = 64 << 20;
/// Deadline of an admin call.
pub(crate) const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of a membership change (`add-node`, `remove-node`): a new node's catch-up and the
/// queue groups' following take up to 30 s each on the metadata leader.
pub(crate) const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(90);

/// A request between nodes.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum Rpc {
    Append(String, AppendEntriesRequest<TypeConfig>),
    Vote(String, VoteRequest<u64>),
    Snapshot(String, InstallSnapshotRequest<TypeConfig>),
    Admin(AdminRequest),
    /// The login (see `link`): the first frame of a connection to a broker with users.
    Hello {
        user: String,
        password: String,
    },
    /// A publish forwarded to the node serving a replicated queue (see `crate::forward`): a
    /// `ClientFrame::Publish` in the native encoding.
    Forward(Vec<u8>),
}

/// Its reply.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum RpcReply {
    Append(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    Snapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The group does not exist (yet) on that node.
    NoGroup,
    Admin(AdminReply),
    /// The login was accepted.
    Welcome,
    /// The connection is refused (no or a bad login, a user without the right); it is closed.
    Refused(String),
    /// The answer to `Forward`: the serving node's `ServerFrame` (`PublishConfirm`, or `Error`
    /// with the outcome unknown) in the native encoding; `Err`: this node does not serve the
    /// queue, nothing was stored.
    Forwarded(Result<Vec<u8>, String>),
}

/// Writes one frame.
pub(crate) async fn write_frame<S: AsyncWrite + Unpin + ?Sized, T: serde::Serialize>(
    s: &mut S,
    v: &T,
) -> std::io::Result<()> {
    let body = bincode::serialize(v).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf).await
}

/// Reads one frame (`None` at a clean end of stream).
pub(crate) async fn read_frame<S: AsyncRead + Unpin + ?Sized, T: serde::de::DeserializeOwned>(
    s: &mut S,
) -> std::io::Result<Option<T>> {
    read_frame_max(s, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes (`None` at a clean end of stream).
pub(crate) async fn read_frame_max<
    S: AsyncRead + Unpin + ?Sized,
    T: serde::de::DeserializeOwned,
>(
    s: &mut S,
    max: usize,
) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    bincode::deserialize(&body)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// One request and its reply on a fresh connection (admin calls, the CLI).
pub(crate) async fn call_once(link: &Link, addr: &str, rpc: &Rpc) -> std::io::Result<RpcReply> {
    let deadline = match rpc {
        Rpc::Admin(AdminRequest::AddNode { .. } | AdminRequest::RemoveNode { .. }) => {
            MEMBERSHIP_TIMEOUT
        }
        _ => ADMIN_TIMEOUT,
    };
    tokio::time::timeout(deadline, async {
        let mut s = link.connect(addr).await?;
        write_frame(&mut s, rpc).await?;
        match read_frame(&mut s).await? {
            Some(RpcReply::Refused(why)) => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                why,
            )),
            Some(r) => Ok(r),
            None => Err(std::io::Error::other("connection closed before the reply")),
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply in time"))?
}

/// openraft's network factory for one group.
pub(crate) struct Network {
    pub(crate) group: String,
    /// Where this node reaches each peer: its own `[cluster]` configuration, which wins over the
    /// address in the replicated membership (so each node may reach a peer its own way, e.g.
    /// through a proxy, and a peer's address can change without a membership change).
    pub(crate) addrs: Arc<BTreeMap<u64, String>>,
    /// How connections are opened (TLS, login).
    pub(crate) link: Arc<Link>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Conn {
        Conn {
            group: self.group.clone(),
            addr: self
                .addrs
                .get(&target)
                .cloned()
                .unwrap_or_else(|| node.addr.clone()),
            link: self.link.clone(),
            stream: None,
        }
    }
}

/// A connection to one peer for one group.
pub(crate) struct Conn {
    group: String,
    addr: String,
    link: Arc<Link>,
    stream: Option<Stream>,
}

impl Conn {
    async fn call(&mut self, rpc: Rpc, ttl: Duration) -> std::io::Result<RpcReply> {
        let res = tokio::time::timeout(ttl, async {
            if self.stream.is_none() {
                self.stream = Some(self.link.connect(&self.addr).await?);
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(std::io::Error::other("not connected"));
            };
            write_frame(s, &rpc).await?;
            match read_frame(s).await? {
                Some(RpcReply::Refused(why)) => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    why,
                )),
                Some(r) => Ok(r),
                None => Err(std::io::Error::other("connection closed")),
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timeout")));
        if res.is_err() {
            // The reply may still arrive later: never reuse a connection out of step.
            self.stream = None;
        }
        res
    }
}

fn unreachable<E: std::error::Error>(e: &std::io::Error) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(e))
}

fn mismatch<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        "peer answered another request kind",
    )))
}

fn no_group<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    unreachable(&std::io::Error::other("group not on that node (yet)"))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(Rpc::Append(self.group.clone(), rpc), option.hard_ttl())
            .await
        {
            Ok(RpcReply::Append(Ok(r))) => Ok(r),
            Ok(RpcReply::Append(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(0, e))),
            Ok(RpcReply::NoGroup) => Err(no_group()),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(&e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        match self
            .call(Rpc::Snapshot(self.group.clone(), rpc), option.hard_ttl())
            .await
        {
            Ok(RpcReply::Snapshot(Ok(r))) => Ok(r),
            Ok(RpcReply::Snapshot(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(0, e))),
            Ok(RpcReply::NoGroup) => Err(no_group()),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(&e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        match self
            .call(Rpc::Vote(self.group.clone(), rpc), option.hard_ttl())
            .await
        {
            Ok(RpcReply::Vote(Ok(r))) => Ok(r),
            Ok(RpcReply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(0, e))),
            Ok(RpcReply::NoGroup) => Err(no_group()),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(unreachable(&e)),
        }
    }
}
