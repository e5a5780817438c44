//! The Prometheus text exposition format 0.0.4 of the broker: per-queue families from snapshots
//! ([`render_metrics`]) and the broker-wide limits and their use (`render_limits`).
//!
//! # Invariants
//! - Every family appears once, with its `HELP` and `TYPE` lines, its samples grouped under it;
//!   label values are escaped (backslash, double quote, line feed).
//! - A queue that could not be inspected is reported as `levee_queue_available{queue} 0`, never
//!   left out silently.

use std::fmt::Write as _;

use levee_proto::DropReason;
use levee_store::LogStats;

use super::snapshot::QueueSnapshot;
use crate::broker::Broker;

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Appends a label value to `out`, escaping backslash, double quote and line feed.
fn push_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// One metric family being written in the Prometheus text format: [`Family::new`] writes its
/// `# HELP` and `# TYPE` lines, each [`Family::sample`] one sample line with its labels escaped.
/// Every `/metrics` family goes through it, the cluster node's too.
pub struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    /// Starts family `name` of `kind` (`counter`, `gauge`, ...) in `out`.
    pub fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        // HELP text escapes backslash and line feed; ours contain neither.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    /// Writes one sample of `name` (the family's name, or a suffixed one such as `_bucket`).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                push_label_value(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

type Getter = fn(&QueueSnapshot) -> u64;
type ConsumerGetter = fn(&levee_proto::ConsumerStats) -> u64;
type StorageGetter = fn(&LogStats) -> u64;

/// Renders snapshots in the Prometheus text exposition format 0.0.4: every family once, with
/// `HELP` and `TYPE` lines, its samples grouped under them. `unavailable` names the queues that
/// could not be inspected (reported as `levee_queue_available 0`).
pub fn render_metrics(queues: &[QueueSnapshot], unavailable: &[String]) -> String {
    let mut out = String::with_capacity(1024 + queues.len() * 2048);
    let per_queue: [(&str, &str, &str, Getter); 14] = [
        (
            "levee_queue_published_total",
            "counter",
            "Messages received in Publish frames for the queue.",
            |q| q.info.stats.published,
        ),
        (
            "levee_queue_stored_total",
            "counter",
            "Messages accepted into the queue's accounting (stored or dropped by policy).",
            |q| q.info.stats.stored,
        ),
        (
            "levee_queue_rejected_total",
            "counter",
            "Messages refused (rejected or throttled), never stored.",
            |q| q.info.stats.rejected,
        ),
        (
            "levee_queue_acked_total",
            "counter",
            "Messages acked by consumers.",
            |q| q.info.stats.acked,
        ),
        (
            "levee_queue_expired_total",
            "counter",
            "Messages whose TTL ran out.",
            |q| q.info.stats.expired,
        ),
        (
            "levee_queue_dead_lettered_total",
            "counter",
            "Messages moved to the dead-letter queue.",
            |q| q.info.stats.dead_lettered,
        ),
        (
            "levee_queue_duplicates_total",
            "counter",
            "Publishes answered duplicate (message id seen within the dedup window).",
            |q| q.info.stats.duplicates,
        ),
        (
            "levee_queue_ready",
            "gauge",
            "Messages waiting for delivery.",
            |q| q.info.stats.ready,
        ),
        (
            "levee_queue_unacked",
            "gauge",
            "Messages delivered and not yet settled.",
            |q| q.info.stats.unacked,
        ),
        (
            "levee_queue_bytes",
            "gauge",
            "Payload bytes of ready and unacked messages.",
            |q| q.info.stats.bytes,
        ),
        (
            "levee_queue_max_messages",
            "gauge",
            "The queue's limit on stored messages.",
            |q| q.info.config.max_messages,
        ),
        (
            "levee_queue_max_bytes",
            "gauge",
            "The queue's limit on stored payload bytes.",
            |q| q.info.config.max_bytes,
        ),
        (
            "levee_queue_consumers",
            "gauge",
            "Subscriptions consuming from the queue.",
            |q| q.info.stats.consumers.len() as u64,
        ),
        (
            "levee_queue_publish_credit_outstanding",
            "gauge",
            "Publish credit granted to producers and not yet used (block queues).",
            |q| q.info.stats.publish_credit_outstanding,
        ),
    ];

    let mut f = Family::new(&mut out, "levee_queues", "gauge", "Queues in the broker.");
    f.sample("levee_queues", &[], queues.len() + unavailable.len());

    let name = "levee_queue_available";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "1 if the queue answered this scrape, 0 if it did not (its other series are then absent).",
    );
    let mut all: Vec<(&str, u8)> = queues.iter().map(|q| (q.info.queue.as_str(), 1)).collect();
    all.extend(unavailable.iter().map(|q| (q.as_str(), 0)));
    all.sort_unstable();
    for (queue, up) in all {
        f.sample(name, &[("queue", queue)], up);
    }

    for (name, kind, help, get) in per_queue {
        let mut f = Family::new(&mut out, name, kind, help);
        for q in queues {
            f.sample(name, &[("queue", &q.info.queue)], get(q));
        }
    }

    let name = "levee_queue_dropped_total";
    let mut f = Family::new(
        &mut out,
        name,
        "counter",
        "Messages dropped, by reason (expiry is counted in levee_queue_expired_total).",
    );
    for q in queues {
        for r in DropReason::ALL {
            if r != DropReason::Expired {
                let n = q.info.stats.dropped(r);
                f.sample(name, &[("queue", &q.info.queue), ("reason", r.as_str())], n);
            }
        }
    }

    let name = "levee_queue_loss_ratio";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Dropped messages divided by stored messages (0 when nothing was stored).",
    );
    for q in queues {
        f.sample(name, &[("queue", &q.info.queue)], q.loss_pct() / 100.0);
    }

    let consumer: [(&str, &str, ConsumerGetter); 2] = [
        (
            "levee_consumer_credit",
            "Credit a subscription still has: messages it may be sent without asking again.",
            |c| c.credit,
        ),
        (
            "levee_consumer_unacked",
            "Messages delivered to a subscription and not yet settled.",
            |c| c.unacked,
        ),
    ];
    for (name, help, get) in consumer {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for q in queues {
            for c in &q.info.stats.consumers {
                let sub = c.subscription.to_string();
                f.sample(
                    name,
                    &[("queue", &q.info.queue), ("subscription", &sub)],
                    get(c),
                );
            }
        }
    }

    let storage: [(&str, &str, &str, StorageGetter); 3] = [
        (
            "levee_queue_disk_bytes",
            "gauge",
            "Bytes of the queue log's segment files (disk queues).",
            |l| l.bytes_on_disk,
        ),
        (
            "levee_queue_segments",
            "gauge",
            "Segment files of the queue log (disk queues).",
            |l| l.segments as u64,
        ),
        (
            "levee_queue_fsyncs_total",
            "counter",
            "Syncs that made the queue log's records durable since the broker opened it: its own sync cycles, or with the shared WAL the WAL commits covering them (disk queues).",
            |l| l.fsyncs,
        ),
    ];
    for (name, kind, help, get) in storage {
        let mut f = Family::new(&mut out, name, kind, help);
        for q in queues {
            if let Some(l) = &q.storage {
                f.sample(name, &[("queue", &q.info.queue)], get(l));
            }
        }
    }
    out
}

/// The broker-wide bounds and how much of them is in use.
pub(super) fn render_limits(out: &mut String, broker: &Broker) {
    let cfg = broker.config();
    let gauges: [(&str, &str, u64); 6] = [
        (
            "levee_connections",
            "Open wire connections (handshake included).",
            broker.open_connections() as u64,
        ),
        (
            "levee_http_connections",
            "Open HTTP connections (this scrape's included).",
            broker.open_http_connections() as u64,
        ),
        (
            "levee_max_http_connections",
            "The limit on open HTTP connections.",
            cfg.max_http_connections as u64,
        ),
        (
            "levee_max_connections",
            "The limit on open wire connections.",
            cfg.max_connections as u64,
        ),
        (
            "levee_partial_frame_bytes",
            "Bytes of the frame budget reserved by large frames still arriving.",
            broker.partial_frame_bytes(),
        ),
        (
            "levee_max_partial_frame_bytes",
            "The frame budget: most bytes buffered for large frames still arriving.",
            cfg.max_partial_frame_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        Family::new(out, name, "gauge", help).sample(name, &[], value);
    }
    let sec = broker.security().counters();
    let counters: [(&str, &str, u64); 3] = [
        (
            "levee_logins_total",
            "Successful logins (all listeners).",
            sec.logins,
        ),
        (
            "levee_login_failures_total",
            "Refused logins: unknown user, wrong password, no credentials.",
            sec.login_failures,
        ),
        (
            "levee_forbidden_total",
            "Operations refused for lack of permission.",
            sec.forbidden,
        ),
    ];
    for (name, help, value) in counters {
        Family::new(out, name, "counter", help).sample(name, &[], value);
    }
}

/// The shared write-ahead log's counters (`levee_wal_*`).
pub(super) fn render_wal(out: &mut String, broker: &Broker) {
    let w = broker.wal_stats();
    let counters: [(&str, &str, u64); 4] = [
        (
            "levee_wal_commits_total",
            "Write-ahead log commits (one write and one fdatasync each, for all queues).",
            w.commits,
        ),
        (
            "levee_wal_bytes_total",
            "Bytes committed to the write-ahead log.",
            w.bytes,
        ),
        (
            "levee_wal_checkpoints_total",
            "Checkpoints (full WAL files deleted after the segments they cover were fsynced).",
            w.checkpoints,
        ),
        (
            "levee_wal_failures_total",
            "WAL write or fsync failures survived (each failed the logs attached then).",
            w.failures,
        ),
    ];
    for (name, help, value) in counters {
        Family::new(out, name, "counter", help).sample(name, &[], value);
    }
    // Seconds, Prometheus's base unit (promtool's lint refuses a `_microseconds` name).
    let name = "levee_wal_last_commit_seconds";
    Family::new(
        out,
        name,
        "gauge",
        "Duration of the last WAL commit's write and fdatasync.",
    )
    .sample(name, &[], w.last_commit.map_or(0.0, |d| d.as_secs_f64()));
    let name = "levee_wal_attached_logs";
    Family::new(
        out,
        name,
        "gauge",
        "Queue logs attached to the write-ahead log.",
    )
    .sample(name, &[], w.attached as u64);
}
