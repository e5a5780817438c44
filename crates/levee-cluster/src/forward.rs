//! Publishes forwarded between nodes: the [`Forwarder`] a node installs in its broker, so that a
//! publish made on this node (any exchange, AMQP's default exchange included) or a dead letter
//! for a replicated queue that another node serves reaches that node and is confirmed with its
//! outcomes; and the serving node's side of it (`serve`).
//!
//! On the wire (the cluster listener, see `raft::net`): `Rpc::Forward` carries a
//! `ClientFrame::Publish` in the native encoding (levee-proto's decoder checks it, as a client's);
//! the answer `RpcReply::Forwarded` is `Ok(ServerFrame::PublishConfirm)` (or `Ok(ServerFrame::Error)`:
//! the queue stopped with the batch in flight, which may or may not be stored), or `Err` when the
//! node does not serve the queue (nothing was stored).
//!
//! # Invariants
//! - The serving node publishes a forwarded batch only to a queue it serves itself
//!   ([`levee_broker::Broker::publish_here`]): a batch is never forwarded twice.
//! - A batch is sent again only when it is known not to be stored (no node serves the queue,
//!   the connection could not be opened, the node asked does not serve it), until
//!   [`SERVING_WAIT`] has passed; a failure after the batch was written is handed back, its
//!   outcome unknown (the publisher resends; a message id makes that safe).
//! - Idle connections kept: at most [`MAX_IDLE`] per node; every call has a deadline
//!   ([`FORWARD_TIMEOUT`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee_broker::remote::{ForwardError, Forwarder, Forwarding};
use levee_broker::{Broker, BrokerError};
use levee_proto::{ClientFrame, ErrorCode, Message, PublishOutcome, ServerFrame};

use crate::link::{Link, Stream};
use crate::raft::net::{MAX_FRAME, Rpc, RpcReply, read_frame, write_frame};

/// How long a forward looks for a node that serves the queue (an election, a leader moving).
pub const SERVING_WAIT: Duration = Duration::from_secs(10);
/// Deadline of one forwarded batch (the serving node waits up to 60 s for its confirm).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(70);
/// Idle connections kept per node.
pub const MAX_IDLE: usize = 16;

/// Where a queue is served now: the cluster address of the node serving it (this node's own,
/// when it was just elected: its broker's queue opens in a moment).
pub(crate) type Resolve = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The [`Forwarder`] of a cluster node.
pub(crate) struct ClusterForwarder {
    inner: Arc<Inner>,
}

struct Inner {
    link: Arc<Link>,
    rt: tokio::runtime::Handle,
    resolve: Resolve,
    idle: parking_lot::Mutex<HashMap<String, Vec<Stream>>>,
}

impl ClusterForwarder {
    /// Forwards over `link`, on the cluster's runtime `rt`, to the node `resolve` names.
    pub(crate) fn new(link: Arc<Link>, rt: tokio::runtime::Handle, resolve: Resolve) -> Self {
        ClusterForwarder {
            inner: Arc::new(Inner {
                link,
                rt,
                resolve,
                idle: parking_lot::Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Forwarder for ClusterForwarder {
    fn forward(&self, queue: &str, messages: Vec<Message>) -> Forwarding {
        let inner = self.inner.clone();
        let queue = queue.to_string();
        Box::pin(async move {
            let mut buf = bytes::BytesMut::new();
            ClientFrame::Publish {
                req: 1,
                queue: queue.clone(),
                messages,
            }
            .encode_limited(&mut buf, MAX_FRAME)
            .map_err(|e| ForwardError {
                code: e.code(),
                message: format!("cannot forward to the node serving {queue}: {e}"),
            })?;
            let rt = inner.rt.clone();
            rt.spawn(async move { inner.send(&queue, buf.to_vec()).await })
                .await
                .unwrap_or_else(|e| {
                    Err(ForwardError {
                        code: ErrorCode::Internal,
                        message: format!("forwarding task failed: {e}"),
                    })
                })
        })
    }
}

/// A call's failure: whether the batch may have reached the node.
enum CallError {
    NotSent(String),
    Unknown(String),
}

impl Inner {
    async fn send(&self, queue: &str, frame: Vec<u8>) -> Result<Vec<PublishOutcome>, ForwardError> {
        let started = Instant::now();
        let rpc = Rpc::Forward(frame);
        loop {
            let why = match (self.resolve)(queue) {
                None => format!("no node serves queue {queue} now"),
                Some(addr) => match self.call(&addr, &rpc).await {
                    Ok(RpcReply::Forwarded(Ok(reply))) => return decode_reply(queue, &reply),
                    Ok(RpcReply::Forwarded(Err(why))) | Err(CallError::NotSent(why)) => why,
                    Ok(_) => {
                        return Err(ForwardError {
                            code: ErrorCode::Internal,
                            message: format!("{addr} answered a forward with another reply"),
                        });
                    }
                    Err(CallError::Unknown(why)) => {
                        return Err(ForwardError {
                            code: ErrorCode::Internal,
                            message: format!(
                                "forwarding to {addr} failed, the publish may or may not be \
                                 stored: {why}"
                            ),
                        });
                    }
                },
            };
            if started.elapsed() >= SERVING_WAIT {
                return Err(ForwardError {
                    code: ErrorCode::NotLeader,
                    message: why,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request on an idle connection to `addr` (or a new one), kept for the next call if
    /// it answered.
    async fn call(&self, addr: &str, rpc: &Rpc) -> Result<RpcReply, CallError> {
        let idle = self.idle.lock().get_mut(addr).and_then(Vec::pop);
        let mut stream = match idle {
            Some(s) => s,
            None => tokio::time::timeout(FORWARD_TIMEOUT, self.link.connect(addr))
                .await
                .map_err(|_| CallError::NotSent(format!("connecting to {addr} timed out")))?
                .map_err(|e| CallError::NotSent(format!("connecting to {addr}: {e}")))?,
        };
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, async {
            write_frame(&mut stream, rpc).await?;
            read_frame::<_, RpcReply>(&mut stream).await
        })
        .await;
        match reply {
            Ok(Ok(Some(r))) => {
                let mut idle = self.idle.lock();
                let kept = idle.entry(addr.to_string()).or_default();
                if kept.len() < MAX_IDLE {
                    kept.push(stream);
                }
                Ok(r)
            }
            Ok(Ok(None)) => Err(CallError::Unknown(format!("{addr} closed the connection"))),
            Ok(Err(e)) => Err(CallError::Unknown(e.to_string())),
            Err(_) => Err(CallError::Unknown(format!(
                "no answer from {addr} within {} s",
                FORWARD_TIMEOUT.as_secs()
            ))),
        }
    }
}

fn decode_reply(queue: &str, reply: &[u8]) -> Result<Vec<PublishOutcome>, ForwardError> {
    let mut buf = bytes::BytesMut::from(reply);
    match ServerFrame::decode(&mut buf, MAX_FRAME) {
        Ok(Some(ServerFrame::PublishConfirm { outcomes, .. })) => Ok(outcomes),
        Ok(Some(ServerFrame::Error { code, message, .. })) => Err(ForwardError { code, message }),
        Ok(_) => Err(ForwardError {
            code: ErrorCode::Internal,
            message: format!("the node serving {queue} answered a forward with another frame"),
        }),
        Err(e) => Err(ForwardError {
            code: ErrorCode::Internal,
            message: format!("the node serving {queue} answered a forward undecodably: {e}"),
        }),
    }
}

/// The serving node's side: publishes the forwarded batch `frame` to a queue it serves.
pub(crate) async fn serve(broker: &Broker, frame: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut buf = bytes::BytesMut::from(&frame[..]);
    let reply = match ClientFrame::decode(&mut buf, MAX_FRAME) {
        Ok(Some(ClientFrame::Publish {
            queue, messages, ..
        })) => match broker.publish_here(&queue, messages).await {
            Ok(outcomes) => ServerFrame::PublishConfirm { req: 1, outcomes },
            // Not served here: nothing was stored (the sender looks again).
            Err(e @ (BrokerError::NotLeader { .. } | BrokerError::UnknownQueue(_))) => {
                return Err(e.to_string());
            }
            Err(e) => ServerFrame::Error {
                req: 1,
                code: e.code(),
                message: e.to_string(),
            },
        },
        Ok(_) => ServerFrame::Error {
            req: 1,
            code: ErrorCode::ProtocolViolation,
            message: "a forward must carry one Publish frame".into(),
        },
        Err(e) => ServerFrame::Error {
            req: 1,
            code: e.code(),
            message: format!("undecodable forward: {e}"),
        },
    };
    let mut out = bytes::BytesMut::new();
    if let Err(e) = reply.encode_limited(&mut out, MAX_FRAME) {
        // Never `Err` here: the batch may be stored. (A small frame always encodes.)
        out.clear();
        let _ = ServerFrame::Error {
            req: 1,
            code: ErrorCode::Internal,
            message: format!("cannot encode the forward's answer: {e}"),
        }
        .encode(&mut out);
    }
    Ok(out.to_vec())
}
