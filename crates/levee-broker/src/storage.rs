//! Every mapping between the broker's types and levee-store's, and recovery of a queue from its
//! log into a [`QueueState`].
//!
//! Owns: the log record of a message (TTL made absolute from the publish time, the message id in
//! the record's own field; a version-1 record's reserved producer-id header still read), settlements as the log records them, the wire error code of a
//! storage error, which storage errors are worth retrying, and the log configuration of a queue.
//!
//! # Invariants
//! - `from_record(to_record(t, m, c))` gives back `m` (with the queue's TTL merged in).
//! - Recovery restores unsettled messages in sequence order with their delivery counts and TTL
//!   deadlines; bodies stay on disk (read back, with their publish time, when delivered), except
//!   the keys a conflating queue needs.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use levee_proto::{ErrorCode, Fsync, Message, Overflow, QueueConfig};
use levee_store::{Backend, FsyncPolicy, LogConfig, NewMessage, QueueLog, StoreError};

use crate::error::BrokerError;
use crate::queue::{QueueState, Queued, Recovered, Settlement, effective_ttl};

/// Format version 1 kept the (then unused) producer id as this reserved header; such a record's
/// id becomes its message id in decimal, as on the wire.
const PRODUCER_ID_HEADER: &str = "\0levee-producer-id";

/// The log record for a message published at `timestamp_ms`.
pub(crate) fn to_record(timestamp_ms: u64, m: &Message, config: &QueueConfig) -> NewMessage {
    NewMessage {
        timestamp_ms,
        key: m.key.clone(),
        priority: m.priority,
        ttl_ms: effective_ttl(m, config),
        headers: m.headers.clone(),
        message_id: m.message_id.clone(),
        properties: m.properties.clone(),
        payload: m.payload.clone(),
    }
}

/// The message of a log record.
pub(crate) fn from_record(r: NewMessage) -> Message {
    let mut message_id = r.message_id;
    let headers = r
        .headers
        .into_iter()
        .filter(|(name, value)| {
            if name == PRODUCER_ID_HEADER {
                if message_id.is_none() {
                    message_id = value[..]
                        .try_into()
                        .ok()
                        .map(|b| Bytes::from(u64::from_le_bytes(b).to_string()));
                }
                false
            } else {
                true
            }
        })
        .collect();
    Message {
        key: r.key,
        priority: r.priority,
        ttl_ms: r.ttl_ms,
        headers,
        message_id,
        properties: r.properties,
        payload: r.payload,
    }
}

/// How the log records a settlement.
pub(crate) fn to_settlement(how: Settlement, config: &QueueConfig) -> levee_store::Settlement {
    match how {
        Settlement::Acked => levee_store::Settlement::Acked,
        Settlement::Dropped(r) => levee_store::Settlement::Dropped(r.as_str().into()),
        Settlement::Expired => levee_store::Settlement::Expired,
        Settlement::DeadLettered => {
            levee_store::Settlement::DeadLettered(config.dead_letter.clone().unwrap_or_default())
        }
    }
}

/// The wire code a storage error is reported with.
pub(crate) fn storage_code(e: &StoreError) -> ErrorCode {
    if e.is_disk_full() {
        ErrorCode::StorageFull
    } else {
        ErrorCode::Internal
    }
}

/// Errors after which a settlement is worth retrying: space may come back, a failed log is
/// reopened. (Settled / unknown sequence numbers are final.)
pub(crate) fn retriable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::DiskFull { .. }
            | StoreError::Failed { .. }
            | StoreError::Io { .. }
            | StoreError::Closed
    )
}

/// The log configuration of a disk queue with this fsync mode and dedup window: segments keep
/// ids for the window's time and recovery returns up to its count, so the window survives a
/// restart. (A count-only window keeps no settled segment for it: after a restart it holds the
/// ids that recovery still finds.)
pub(crate) fn log_config_for(config: &QueueConfig, segment_bytes: u64) -> LogConfig {
    let fsync = config.durability.fsync().unwrap_or_default();
    let mut lc = log_config(fsync, segment_bytes);
    if let Some(d) = config.dedup {
        lc.keep_ids_ms = d.window_ms.unwrap_or(0);
        lc.recover_ids = d.max_ids as usize;
    }
    lc
}

/// The log configuration of a disk queue with this fsync mode.
pub(crate) fn log_config(fsync: Fsync, segment_bytes: u64) -> LogConfig {
    let fsync = match fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval(ms) => FsyncPolicy::Interval(std::time::Duration::from_millis(ms.into())),
        Fsync::Never => FsyncPolicy::Never,
        // A mode added to the wire later: never weaker than asked, so the strictest.
        _ => FsyncPolicy::Always,
    };
    LogConfig {
        fsync,
        segment_bytes,
        // `recover_counting` pages through the index instead.
        recover_unsettled: false,
        ..LogConfig::default()
    }
}

/// Opens a disk queue's log (blocking: reads every segment) and rebuilds its state from the
/// unsettled messages, in sequence order.
#[cfg(test)]
pub(crate) fn recover(
    backend: Arc<dyn Backend>,
    dir: &Path,
    lc: LogConfig,
    config: QueueConfig,
) -> Result<(QueueState, QueueLog), BrokerError> {
    recover_counting(backend, dir, lc, config, 0)
}

/// [`recover`], counting every unsettled message as delivered at least `min_deliveries` times:
/// a replicated queue taken over after a failover passes 1, because the old leader may have
/// delivered any of them (first deliveries are not logged), so each is delivered again with the
/// redelivered mark (`delivery_count > 1`).
pub(crate) fn recover_counting(
    backend: Arc<dyn Backend>,
    dir: &Path,
    lc: LogConfig,
    config: QueueConfig,
    min_deliveries: u32,
) -> Result<(QueueState, QueueLog), BrokerError> {
    let conflate = config.overflow == Overflow::ConflateByKey;
    let (log, rec) = QueueLog::open(backend, dir, lc)?;
    if let Some(t) = &rec.report.truncated {
        tracing::warn!(path = %t.path.display(), offset = t.offset,
            bytes = t.bytes, reason = %t.reason, "truncated a torn log tail");
    }
    let mut state = QueueState::new(config, log.stats().next_seq);
    for m in &rec.message_ids {
        state.restore_id(m.seq, m.timestamp_ms, &m.id);
    }
    // Page by page, so a deep backlog's metadata is not held twice (the broker's log configs
    // leave `rec.unsettled` empty: `recover_unsettled: false`).
    drop(rec.unsettled);
    let mut from = 0;
    loop {
        let page = log.unsettled_page(from, 4096);
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for m in page {
            // Conflation needs the key bytes; other policies need no payload.
            let key = if conflate && m.key_hash.is_some() {
                log.read(m.seq)?.message.key
            } else {
                None
            };
            state.restore(Recovered {
                seq: m.seq,
                weight: u64::from(m.payload_len),
                priority: m.priority,
                key,
                queued: Queued {
                    message: None,
                    // Read back with the body when it is delivered.
                    timestamp_ms: 0,
                    expires_at: m.expires_at_ms,
                    deliveries: m.delivery_count.max(min_deliveries),
                },
            });
        }
    }
    Ok((state, log))
}
