//! The monitor task: once a second, samples every queue (its stats and an [`Observation`]),
//! appends a point to its history, evaluates the alert rules on it and announces fires and
//! clears. A thin shell: the decisions are in `history` and `alerts`.
//!
//! # Invariants
//! - Holds the broker weakly, upgraded only to list the queues' command channels (never across
//!   an await): it ends once the broker is gone and never keeps its data directory locked.
//! - A queue that does not answer within [`SAMPLE_TIMEOUT`] is left out of that tick (its
//!   history has a gap; its alert instances are cleared as if the queue were gone, and come back).
//!   Ticks missed while one runs long are skipped, not bunched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use levee_proto::{DropReason, QueueInfo};

use super::Observation;
use super::alerts::{Condition, QueueObs};
use super::history::Point;
use crate::actor::{Cmd, now_ms};
use crate::broker::Broker;
use crate::error::BrokerError;

/// How long a queue may take to answer one tick's sample.
pub(crate) const SAMPLE_TIMEOUT: Duration = Duration::from_millis(900);
/// Most ready messages read per tick for a queue watched by value rules.
pub(crate) const MAX_LATEST: usize = 1000;

impl Broker {
    /// What the monitor samples of `name` beyond [`Broker::inspect`].
    pub(crate) async fn observe(
        &self,
        name: &str,
        latest: usize,
    ) -> Result<Observation, BrokerError> {
        let tx = self.sender(name)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        tx.send(Cmd::Observe { latest, reply })
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))?;
        rx.await
            .map_err(|_| BrokerError::UnknownQueue(name.to_string()))
    }
}

/// Starts the monitor and webhook tasks of `broker`.
pub(crate) fn start(broker: &Broker) {
    let ops = Arc::downgrade(&broker.inner.ops);
    if let Some(rx) = broker.inner.ops.webhook.take_receiver() {
        tokio::spawn(super::webhook::run(rx, ops));
    }
    let weak = Arc::downgrade(&broker.inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            // The broker is held only while its queues are listed, never across an await: its
            // data directory's lock goes when the last handle of the application goes.
            let (ops, queues) = {
                let Some(inner) = weak.upgrade() else { break };
                let broker = Broker { inner };
                let queues: Vec<(String, QueueTx)> = broker
                    .list()
                    .into_iter()
                    .filter_map(|n| broker.inner.queue_sender(&n).map(|tx| (n, tx)))
                    .collect();
                (broker.inner.ops.clone(), queues)
            };
            sample(&ops, queues).await;
        }
    });
}

type QueueTx = tokio::sync::mpsc::UnboundedSender<Cmd>;

/// Inspects and observes one queue through its command channel.
async fn ask(tx: &QueueTx, latest: usize) -> Option<(QueueInfo, Observation)> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    tx.send(Cmd::Inspect(reply)).ok()?;
    let info = rx.await.ok()?;
    let (reply, rx) = tokio::sync::oneshot::channel();
    tx.send(Cmd::Observe { latest, reply }).ok()?;
    Some((info, rx.await.ok()?))
}

/// Messages lost: dropped, except by conflation (replaced by a newer one), purges and deletes
/// (an operator's decision).
pub(crate) fn lost(info: &QueueInfo) -> u64 {
    let s = &info.stats;
    s.dropped_total()
        .saturating_sub(s.dropped(DropReason::Conflated))
        .saturating_sub(s.dropped(DropReason::Purged))
        .saturating_sub(s.dropped(DropReason::QueueDeleted))
}

/// One point of `info` at `now`.
pub(crate) fn point(now: u64, info: &QueueInfo, o: &Observation) -> Point {
    let s = &info.stats;
    Point {
        t: now,
        ready: s.ready,
        unacked: s.unacked,
        bytes: s.bytes,
        consumers: s.consumers.len() as u64,
        oldest_ms: o.oldest_ready_ms.map_or(0, |t| now.saturating_sub(t)),
        published: s.published,
        delivered: o.delivered,
        acked: s.acked,
        dropped: lost(info),
        replaced: s.dropped(DropReason::Conflated),
        rejected: s.rejected,
        expired: s.expired,
        dead_lettered: s.dead_lettered,
    }
}

/// One tick over `queues` (name, command channel).
async fn sample(ops: &super::Ops, queues: Vec<(String, QueueTx)>) {
    // Queues some value rule watches get their ready messages read.
    let watched: Vec<String> = ops
        .alerts
        .lock()
        .rules()
        .iter()
        .filter(|r| matches!(r.condition, Condition::Value { .. }))
        .map(|r| r.config.queue.clone())
        .collect();
    let names: Vec<String> = queues.iter().map(|(n, _)| n.clone()).collect();
    let mut set = tokio::task::JoinSet::new();
    for (name, tx) in queues {
        let latest = if watched.iter().any(|q| q == "*" || *q == name) {
            MAX_LATEST
        } else {
            0
        };
        set.spawn(async move {
            tokio::time::timeout(SAMPLE_TIMEOUT, ask(&tx, latest))
                .await
                .ok()
                .flatten()
        });
    }
    let mut got: Vec<(QueueInfo, Observation)> = Vec::new();
    while let Some(j) = set.join_next().await {
        if let Ok(Some(r)) = j {
            got.push(r);
        }
    }
    got.sort_by(|a, b| a.0.queue.cmp(&b.0.queue));
    let now = now_ms();
    {
        let mut h = ops.history.lock();
        for (info, o) in &got {
            h.record(&info.queue, point(now, info, o));
        }
        let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        h.retain(|q| names.contains(q));
    }
    let ready: HashMap<&str, u64> = got
        .iter()
        .map(|(i, _)| (i.queue.as_str(), i.stats.ready))
        .collect();
    let obs: Vec<QueueObs> = got
        .iter()
        .map(|(info, o)| QueueObs {
            queue: info.queue.clone(),
            ready: info.stats.ready,
            oldest_ms: o.oldest_ready_ms.map(|t| now.saturating_sub(t)),
            published: info.stats.published,
            lost: lost(info),
            consumers_with_credit: info.stats.consumers.iter().filter(|c| c.credit > 0).count(),
            dead_letter_ready: info
                .config
                .dead_letter
                .as_deref()
                .map(|d| ready.get(d).copied().unwrap_or(0)),
            latest: o.latest.clone(),
        })
        .collect();
    let transitions = ops.alerts.lock().evaluate(now, &obs);
    ops.announce(transitions);
    let mut last = ops.last.lock();
    last.clear();
    for (info, mut o) in got {
        o.latest = Vec::new();
        last.insert(info.queue, o);
    }
}
