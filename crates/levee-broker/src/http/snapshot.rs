//! [`QueueSnapshot`]: one queue as the HTTP layer sees it (its inspect answer and, for a disk
//! queue, its log figures), and how snapshots are taken ([`snapshot`], [`snapshot_all`]).
//!
//! # Invariants
//! - An inspect waits at most [`INSPECT_TIMEOUT`]: a queue whose actor does not answer in time (or
//!   has stopped) is reported as [`HttpError::Unavailable`], never stalls the API nor vanishes from
//!   it; other queues are unaffected.
//! - A snapshot of every queue is O(queues + consumers) and is not kept after the response.

use std::time::Duration;

use levee_proto::QueueInfo;
use levee_store::LogStats;

use super::error::HttpError;
use crate::broker::Broker;
use crate::error::BrokerError;

/// How long one queue may take to answer an inspect before the API reports it as unavailable.
pub const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One queue as seen by the HTTP layer: its inspect answer and, for disk queues, its log figures.
#[derive(Debug, Clone)]
pub struct QueueSnapshot {
    /// Name, config and counters.
    pub info: QueueInfo,
    /// Storage figures (`None` for memory queues).
    pub storage: Option<LogStats>,
}

impl QueueSnapshot {
    /// Dropped messages as a percentage of stored ones (`Σ dropped / stored × 100`, 0 when
    /// nothing was stored). Expired and dead-lettered messages are not counted as lost.
    pub fn loss_pct(&self) -> f64 {
        let s = &self.info.stats;
        if s.stored == 0 {
            0.0
        } else {
            s.dropped_total() as f64 * 100.0 / s.stored as f64
        }
    }
}

/// Inspects one queue, bounded by [`INSPECT_TIMEOUT`].
///
/// Cancel-safe: dropping it abandons the inspect; the queue is unaffected.
pub async fn snapshot(broker: &Broker, name: &str) -> Result<QueueSnapshot, HttpError> {
    let unavailable = |reason: String| HttpError::Unavailable {
        queue: name.to_string(),
        reason,
    };
    let info = match tokio::time::timeout(INSPECT_TIMEOUT, broker.inspect(name)).await {
        Ok(Ok(info)) => info,
        // Still registered, yet its actor is gone: report it rather than hide the queue.
        Ok(Err(BrokerError::UnknownQueue(_))) if broker.list().iter().any(|q| q == name) => {
            return Err(unavailable("its task has stopped".into()));
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            return Err(unavailable(format!("no answer within {INSPECT_TIMEOUT:?}")));
        }
    };
    Ok(QueueSnapshot {
        storage: broker.log_stats(name),
        info,
    })
}

/// Inspects every queue concurrently; returns the snapshots sorted by name and the queues that
/// failed ([`HttpError::Unavailable`]), also sorted. Queues deleted meanwhile are left out.
///
/// Cancel-safe: dropping it abandons the inspects (their tasks are aborted).
pub async fn snapshot_all(broker: &Broker) -> (Vec<QueueSnapshot>, Vec<(String, HttpError)>) {
    let mut set = tokio::task::JoinSet::new();
    for name in broker.list() {
        let b = broker.clone();
        set.spawn(async move {
            let r = snapshot(&b, &name).await;
            (name, r)
        });
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(s))) => ok.push(s),
            Ok((_, Err(HttpError::Broker(BrokerError::UnknownQueue(_))))) => {}
            Ok((name, Err(e))) => {
                tracing::warn!(queue = %name, error = %e, "queue stats unavailable");
                failed.push((name, e));
            }
            Err(e) => tracing::error!(error = %e, "inspect task failed"),
        }
    }
    ok.sort_by(|a, b| a.info.queue.cmp(&b.info.queue));
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    (ok, failed)
}
