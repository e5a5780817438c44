//! How `levee publish` follows a failover mid-stream when `--addr` lists a cluster's nodes: every
//! message gets a message id (unique to this run), a copy is kept until its outcome is known,
//! and one whose confirm was lost with the connection (or voided by a deposed leader,
//! `not-leader`: it may still have been committed) is sent again, with the same id, once the
//! client has reconnected to the node serving the queue. The queue's deduplication window
//! (replicated with it) stores it once.
//!
//! # Invariants
//! - A message is either confirmed (stored, dropped, rejected: counted once), waiting for its
//!   confirm, or in the retry queue; never two of these.
//! - Memory: the copies are the messages in flight, bounded by the producer's window (plus those
//!   waiting to be sent again, which were in flight).
//! - The command gives up ([`Resend::gave_up`]) once the client has been disconnected for
//!   [`FOLLOW_FOR`]; what is then unconfirmed is reported as before.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use levee_client::{ClientError, ConfirmFuture, Message, PublishOutcome};

/// How long `publish` waits for a lost connection to come back before it gives up.
pub(crate) const FOLLOW_FOR: Duration = Duration::from_secs(30);

/// The resend state of one `publish` run; see the module docs.
pub(crate) struct Resend {
    prefix: String,
    inflight: HashMap<u64, Message>,
    retry: VecDeque<u64>,
    down_since: Option<Instant>,
    /// Messages sent again so far.
    pub(crate) resent: u64,
}

impl Resend {
    pub(crate) fn new() -> Resend {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Resend {
            prefix: format!("levee-cli-{}-{nanos:x}", std::process::id()),
            inflight: HashMap::new(),
            retry: VecDeque::new(),
            down_since: None,
            resent: 0,
        }
    }

    /// Gives message number `n` its id and keeps a copy until [`Resend::settled`].
    pub(crate) fn track(&mut self, n: u64, m: &mut Message) {
        if m.message_id.is_none() {
            m.message_id = Some(format!("{}-{n}", self.prefix).into());
        }
        self.inflight.insert(n, m.clone());
    }

    /// The next message to send again, if any.
    pub(crate) fn next_retry(&mut self) -> Option<(u64, Message)> {
        while let Some(n) = self.retry.pop_front() {
            if let Some(m) = self.inflight.get(&n) {
                return Some((n, m.clone()));
            }
        }
        None
    }

    /// Message `n`'s confirm was lost: send it again.
    pub(crate) fn again(&mut self, n: u64) {
        self.resent += 1;
        self.retry.push_back(n);
    }

    /// Message `n` could not be handed to the producer now (no connection): first in line.
    pub(crate) fn later(&mut self, n: u64) {
        self.retry.push_front(n);
    }

    /// Message `n` has its outcome.
    pub(crate) fn settled(&mut self, n: u64) {
        self.inflight.remove(&n);
    }

    /// Whether messages wait to be sent again.
    pub(crate) fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Whether the client has been disconnected for longer than [`FOLLOW_FOR`] (called on a
    /// tick with whether it is connected now).
    pub(crate) fn gave_up(&mut self, connected: bool) -> bool {
        if connected {
            self.down_since = None;
            return false;
        }
        self.down_since.get_or_insert_with(Instant::now).elapsed() > FOLLOW_FOR
    }
}

/// Whether a publish that failed this way may have been lost with the connection (or voided by
/// a deposed leader) rather than refused: worth sending again after a reconnection.
pub(crate) fn retriable(e: &ClientError) -> bool {
    matches!(e, ClientError::ConnectionLost | ClientError::Timeout(_))
        || e.not_leader_text().is_some()
}

/// A confirm with its message number (one future type for every push).
pub(crate) async fn numbered(
    n: u64,
    confirm: ConfirmFuture,
) -> (u64, Result<PublishOutcome, ClientError>) {
    (n, confirm.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_message_is_sent_again_with_its_id_until_settled() {
        let mut r = Resend::new();
        let mut m = Message::new("a");
        r.track(1, &mut m);
        let id = m.message_id.clone().expect("an id");
        let mut m2 = Message::new("b");
        r.track(2, &mut m2);
        assert_ne!(m2.message_id, Some(id.clone()), "ids are unique");
        assert!(r.next_retry().is_none());
        r.again(1);
        r.again(2);
        r.settled(2); // confirmed meanwhile (a late confirm): not sent again
        let (n, again) = r.next_retry().expect("1 again");
        assert_eq!((n, again.message_id), (1, Some(id)));
        assert!(r.next_retry().is_none() && !r.has_retries());
        r.later(1);
        assert!(r.has_retries());
        assert_eq!(r.resent, 2);
    }

    #[test]
    fn lost_connections_and_deposed_leaders_are_retriable_refusals_are_not() {
        assert!(retriable(&ClientError::ConnectionLost));
        assert!(retriable(&ClientError::Rejected {
            code: levee_client::ErrorCode::NotLeader,
            reason: "queue q is replicated and served by another node".into(),
        }));
        assert!(!retriable(&ClientError::Rejected {
            code: levee_client::ErrorCode::QueueFull,
            reason: "full".into(),
        }));
    }
}
