//! Broker-wide bounds on what clients can make the broker hold, whatever their number: open wire
//! connections (`max_connections`), open HTTP connections (`max_http_connections`) and bytes
//! buffered for large frames still arriving (`max_partial_frame_bytes`).
//!
//! It lives in `net` because everything it bounds is a connection or bytes arriving on one, and
//! it writes the refusals in each front end's own terms (a wire `Close`, an HTTP 503). The broker
//! owns the one instance (`Inner::limits`), so every front end, HTTP included, shares the same
//! budgets; it takes plain numbers, not the `BrokerConfig`, so it depends on nothing of the broker.
//!
//! # Invariants
//! - Every served connection holds one permit of `connections` (wire) or `http` from accept to
//!   its end; a connection over the cap is refused (`Limits::refuse`, a `Close` frame or a 503)
//!   without being served. Refusals in progress
//!   are themselves bounded ([`MAX_REFUSING`]); past that, the socket is just closed.
//! - A connection buffering a frame of more than [`UNRESERVED_FRAME`] bytes holds a reservation of
//!   that frame's size from the frame budget until the frame is decoded (or the connection
//!   ends); it reads the frame's body only once it holds it. So the bytes buffered for frames
//!   beyond the connections' standing 64 KiB read buffers never exceed the budget.
//!   A connection that cannot reserve waits, not reading (TCP backpressure on that client only;
//!   nothing is refused or lost). Only connections past the handshake reserve, so peers that
//!   have not said Hello cannot take any of the budget.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use levee_proto::ServerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size (the standing read buffer of a connection) need no reservation.
pub(crate) const UNRESERVED_FRAME: usize = 64 * 1024;
/// Most refusals (over-cap connections being told why) in progress at once.
pub(crate) const MAX_REFUSING: usize = 64;
/// How long a refused connection is kept so its peer can read the reason (and send its Hello).
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The broker-wide budgets.
pub(crate) struct Limits {
    max_connections: usize,
    connections: Arc<Semaphore>,
    max_http_connections: usize,
    http: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    frame_budget: u64,
    frames: Arc<Semaphore>,
}

/// A connection's share of the frame budget, released when dropped.
pub(crate) type FrameReservation = OwnedSemaphorePermit;

/// A connection's slot, released when dropped.
pub(crate) type ConnectionSlot = OwnedSemaphorePermit;

impl Limits {
    /// Budgets from a validated `BrokerConfig`'s `max_connections`, `max_http_connections` and
    /// `max_partial_frame_bytes` (plain numbers, so this module does not depend on the broker).
    pub(crate) fn new(
        max_connections: usize,
        max_http_connections: usize,
        max_partial_frame_bytes: u64,
    ) -> Limits {
        // Validated: at most u32::MAX, far below Semaphore::MAX_PERMITS.
        let frame_budget = max_partial_frame_bytes;
        Limits {
            max_connections,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_http_connections,
            http: Arc::new(Semaphore::new(max_http_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            frame_budget,
            frames: Arc::new(Semaphore::new(frame_budget as usize)),
        }
    }

    /// Connections holding a slot.
    pub(crate) fn open_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// Bytes of the frame budget reserved.
    pub(crate) fn partial_frame_bytes(&self) -> u64 {
        self.frame_budget - self.frames.available_permits() as u64
    }

    /// Open HTTP connections.
    pub(crate) fn open_http_connections(&self) -> usize {
        self.max_http_connections - self.http.available_permits()
    }

    /// A slot for a new wire connection, `None` if `max_connections` are open.
    pub(crate) fn admit(&self) -> Option<ConnectionSlot> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A slot for a new HTTP connection, `None` if `max_http_connections` are open.
    pub(crate) fn admit_http(&self) -> Option<ConnectionSlot> {
        self.http.clone().try_acquire_owned().ok()
    }

    /// Tells a wire connection over the cap why it is refused (a `Close` frame); see
    /// [`Limits::refuse_with`].
    pub(crate) fn refuse(&self, stream: TcpStream) {
        let reason = format!(
            "too many connections: the server's limit of {} open connections is reached; try again later",
            self.max_connections
        );
        let mut buf = BytesMut::new();
        if (ServerFrame::Close { code: None, reason })
            .encode(&mut buf)
            .is_ok()
        {
            self.refuse_with(stream, buf.freeze());
        }
    }

    /// Answers an HTTP connection over the cap with `503 Service Unavailable` (a JSON error body
    /// like every other error of the API); see [`Limits::refuse_with`].
    pub(crate) fn refuse_http(&self, stream: TcpStream) {
        let body = format!(
            "{{\"error\":\"too-many-connections\",\"message\":\"the server's limit of {} open HTTP \
             connections is reached; try again later\"}}",
            self.max_http_connections
        );
        let resp = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.refuse_with(stream, bytes::Bytes::from(resp));
    }

    /// Sends `answer` on a refused connection in a task of its own that lingers at most
    /// [`REFUSAL_LINGER`]; with [`MAX_REFUSING`] such tasks running, closes it at once instead.
    fn refuse_with(&self, stream: TcpStream, answer: bytes::Bytes) {
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_LINGER, answer_and_close(stream, answer)).await;
        });
    }

    /// Waits until `frame_len` bytes of the frame budget are free and reserves them.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropped before it completes, nothing is reserved (the place in line is lost).
    pub(crate) async fn reserve_frame(&self, frame_len: usize) -> FrameReservation {
        // A frame is never larger than the budget (validated: budget >= max_frame), but never ask
        // for more than exists, which would wait forever.
        let n = (frame_len as u64).min(self.frame_budget);
        self.frames
            .clone()
            .acquire_many_owned(n as u32)
            .await
            .expect("the frame budget semaphore is never closed")
    }
}

/// Sends `answer`, then reads (and drops) what the peer sends until it closes, so the peer gets
/// the answer instead of a reset caused by its unread request.
async fn answer_and_close(mut stream: TcpStream, answer: bytes::Bytes) {
    if stream.write_all(&answer).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
