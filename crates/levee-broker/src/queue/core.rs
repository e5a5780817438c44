//! [`QueueCore`]: one queue's state machine together with its log and its confirm ledger — every
//! decision of a queue, driven by events and the current time, with no async and no clock.
//!
//! The queue actor is a thin shell around it: it feeds commands in (`publish`, `ack`, ...),
//! claims connection room for the consumers [`QueueCore::consumers_wanting`] names, calls
//! [`QueueCore::flush`], and carries out the [`Output`]s it polls. The core talks to the log
//! directly (levee-store's API is synchronous: appends are one `pwrite` into the page cache,
//! fsyncs happen on the log's own thread); the only blocking step, reopening a failed log, is
//! handed out as a [`Reopen`] job for the caller to run where blocking is allowed. A seeded
//! simulation (`queue::sim`) drives the same core on the fault-injecting backend.
//!
//! # Invariants
//! - A publish is confirmed `Stored` only after the log reports it durable under the queue's
//!   fsync policy (after an fsync under `always`), and a message is delivered only once durable:
//!   the durability watermark moves only on a successful fsync.
//! - Messages accepted by the state machine are appended in sequence order (one place appends:
//!   `QueueCore::append`), so the log's sequence numbers and the state machine's agree.
//! - Settlement records are appended after the messages they settle; one the log cannot take (a
//!   full disk, a failed log) is kept and retried until written.
//! - Under fsync `always` a settlement written is fsynced within [`SETTLE_SYNC_MS`] even when no
//!   publish comes to carry it (a consume-only stretch): a crash or a failover brings back at
//!   most that much of acked work, not everything acked since the last publish.
//! - After a failed fsync the messages past the watermark are written again into a reopened log
//!   (never trusting a retried fsync) and delivered only once that is durable.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use levee_proto::{
    Delivery, ErrorCode, MAX_BATCH, Message, Overflow, PublishOutcome, QueueConfig, QueueStats,
};
use levee_store::{Appended, Backend, Durability, LogConfig, NewMessage, QueueLog, StoreError};

use super::confirms::{Completed, Confirms, SessionId, token};
use super::{
    ConsumerId, DEATH_HEADERS, DELIVERY_OVERHEAD, DeadLetterTarget, Effect, Outgoing, ProducerId,
    QueueState, SettleError,
};
use crate::storage::{from_record, retriable, storage_code, to_record, to_settlement};

/// How long kept settlements wait before the next retry.
pub const RETRY_MS: u64 = 500;

/// Under fsync `always`, the longest a written settlement waits for an fsync of its own when no
/// publish's group commit carries it first. (A replicated queue's fsync is its Raft commit: this
/// bounds the acks a failover undoes.)
pub const SETTLE_SYNC_MS: u64 = 100;

/// Something the core's caller must carry out.
#[derive(Debug)]
pub enum Output {
    /// Send this publish confirm to the session (it releases the session's in-flight limit).
    Confirm(Completed),
    /// A request will never be confirmed: the queue stopped. Releases the in-flight limit.
    Void {
        /// The publisher.
        session: SessionId,
        /// Its request.
        req: u64,
        /// Messages and bytes the request held.
        messages: u64,
        /// See `messages`.
        bytes: u64,
    },
    /// Send these deliveries (one `Deliver` frame, charged `bytes` to the consumer's connection).
    Deliver {
        /// The consumer.
        consumer: ConsumerId,
        /// At most [`MAX_BATCH`] deliveries, about 4 MiB.
        deliveries: Vec<Delivery>,
        /// Their encoded size as charged.
        bytes: u64,
    },
    /// Grant a producer publish credit.
    Credit {
        /// The producer.
        producer: ProducerId,
        /// Messages.
        n: u32,
    },
    /// Publish this message to the dead-letter queue or exchange `target`.
    DeadLetter {
        /// The target queue or exchange.
        target: DeadLetterTarget,
        /// The message, with its `x-death-*` headers.
        message: Message,
    },
    /// The queue has gone unused for its `expires_ms`: delete it. Output once.
    Expired,
    /// A consumer settled tags it does not hold.
    UnknownTags {
        /// The consumer.
        consumer: ConsumerId,
        /// The tags.
        tags: Vec<u64>,
    },
}

/// What a checked settlement does ([`QueueCore::settle_checked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleKind {
    /// Acknowledge.
    Ack,
    /// Return to the queue after a delay.
    Nack {
        /// Requeue delay.
        delay_ms: u64,
    },
    /// To the dead-letter queue.
    Reject,
    /// Renew the lease.
    Extend {
        /// New lease from now (0: the queue's ack timeout).
        extend_ms: u64,
    },
}

/// A blocking job: reopen the failed log at `dir` (run it, then [`QueueCore::reopened`]).
pub struct Reopen {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The log directory.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: LogConfig,
}

impl Reopen {
    /// Runs the job (blocking: recovery reads every segment).
    pub fn run(self) -> Result<(QueueLog, levee_store::Recovered), StoreError> {
        QueueLog::open(self.backend, &self.dir, self.config)
    }
}

/// A disk queue's log and what is needed to reopen it.
struct Disk {
    /// `None` while failed and not yet reopened.
    log: Option<Arc<QueueLog>>,
    dir: PathBuf,
    config: LogConfig,
    backend: Arc<dyn Backend>,
    /// Under fsync `always`, confirms and deliveries wait for fsyncs.
    fsync_waits: bool,
    failed: bool,
    reopen_at: Option<u64>,
    reopen_backoff_ms: u64,
    /// Appends not yet durable: (last seq + 1, handle), in append order.
    syncing: VecDeque<(u64, Durability)>,
    /// Settlements the log could not take, retried until written. Bounded by the log's
    /// unsettled messages: each is for a distinct one.
    retry: Vec<(u64, levee_store::Settlement)>,
    retry_at: Option<u64>,
    /// Under fsync `always`: when settlements written since the last fsync request get one
    /// ([`SETTLE_SYNC_MS`] after the first of them).
    settle_sync_at: Option<u64>,
}

impl Disk {
    /// A reopen attempt failed: try again later, backing off (doubling up to 5 s).
    fn reopen_later(&mut self, now: u64) {
        self.reopen_backoff_ms = (self.reopen_backoff_ms * 2).min(5_000);
        self.reopen_at = Some(now + self.reopen_backoff_ms);
    }
}

/// See the module documentation.
pub struct QueueCore {
    name: String,
    state: QueueState,
    disk: Option<Disk>,
    /// Messages with a sequence number below this are durable.
    durable: u64,
    confirms: Confirms,
    outputs: VecDeque<Output>,
}

impl QueueCore {
    /// A memory queue's core.
    pub fn memory(name: String, state: QueueState) -> Self {
        QueueCore {
            name,
            durable: u64::MAX,
            state,
            disk: None,
            confirms: Confirms::new(),
            outputs: VecDeque::new(),
        }
    }

    /// A disk queue's core over its (recovered) log.
    pub fn disk(
        name: String,
        mut state: QueueState,
        log: Arc<QueueLog>,
        backend: Arc<dyn Backend>,
    ) -> Self {
        let durable = state.next_seq();
        state.set_durable(durable);
        let disk = Disk {
            dir: log.dir().to_path_buf(),
            config: log.config().clone(),
            fsync_waits: log.config().fsync == levee_store::FsyncPolicy::Always,
            log: Some(log),
            backend,
            failed: false,
            reopen_at: None,
            reopen_backoff_ms: 100,
            syncing: VecDeque::new(),
            retry: Vec::new(),
            retry_at: None,
            settle_sync_at: None,
        };
        QueueCore {
            name,
            durable,
            state,
            disk: Some(disk),
            confirms: Confirms::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state machine (read-only).
    pub fn state(&self) -> &QueueState {
        &self.state
    }

    /// The queue's configuration.
    pub fn config(&self) -> &QueueConfig {
        self.state.config()
    }

    /// The log, when the queue is on disk and its log is open.
    pub fn log(&self) -> Option<&Arc<QueueLog>> {
        self.disk.as_ref()?.log.as_ref()
    }

    /// A stats snapshot (rates left to the caller).
    pub fn stats(&self) -> QueueStats {
        self.state.stats()
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest time [`QueueCore::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<u64> {
        let d = self.disk.as_ref();
        [
            self.state.next_deadline(),
            d.and_then(|d| d.reopen_at),
            d.and_then(|d| d.retry_at),
            d.and_then(|d| d.settle_sync_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The oldest append waiting for durability, for the caller to await; report its result to
    /// [`QueueCore::on_durable`] with the sequence number.
    pub fn syncing_front(&mut self) -> Option<(u64, &mut Durability)> {
        let (seq, d) = self.disk.as_mut()?.syncing.front_mut()?;
        Some((*seq, d))
    }

    // ---- publishing -------------------------------------------------------------------------

    /// A publish request of `session` (a producer: its connection).
    ///
    /// `credited`: the publisher works within publish credit (a native `Publish`): on a `block`
    /// queue a publish without enough credit is refused. Uncredited publishes (routed through an
    /// exchange) need none: on a full `block` queue they are held until room frees, bounded by
    /// their publisher's in-flight limits.
    pub fn publish(
        &mut self,
        now: u64,
        session: SessionId,
        req: u64,
        messages: Vec<Message>,
        credited: bool,
    ) {
        let n = messages.len();
        let bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
        let slot = self.confirms.open(session, req, n, bytes);
        let mut stored: Vec<(u64, Message)> = Vec::new();
        let credit_ok = !credited || self.state.has_credit(session, n as u32);
        let keep = self.disk.is_some();
        for (i, m) in messages.into_iter().enumerate() {
            if !credit_ok {
                let o = self.state.refuse_publish(
                    ErrorCode::NoPublishCredit,
                    format!(
                        "queue {}: publish without publish credit on a block queue",
                        self.name
                    ),
                );
                self.confirms.push(slot, Some(o));
                continue;
            }
            let copy = keep.then(|| m.clone());
            let outcome = self.state.publish(now, session, token(slot, i), m);
            if let (Some(PublishOutcome::Stored { seq }), Some(m)) = (&outcome, copy) {
                stored.push((*seq, m));
            }
            if let Some(PublishOutcome::Duplicate { seq }) = &outcome {
                self.wait_for_original(slot, *seq);
            }
            self.confirms.push(slot, outcome);
        }
        let _kept = self.append(now, stored, Some(slot));
        self.apply_effects(now);
    }

    /// A duplicate is confirmed only once the copy it names is durable (it may have been stored
    /// moments ago, in a batch not yet fsynced).
    fn wait_for_original(&mut self, slot: u64, seq: u64) {
        if self.disk.as_ref().is_some_and(|d| d.fsync_waits) && seq >= self.durable {
            self.confirms.wait_for(slot, seq + 1);
        }
    }

    /// A message dead-lettered into this queue. It needs no credit; on a full `block` queue it is
    /// refused (counted as rejected here) rather than held, so dead-lettering cannot pile up.
    pub fn dead_letter_in(&mut self, now: u64, message: Message) {
        if self.state.config().overflow == Overflow::Block && !self.state.would_fit(&message) {
            let _ = self
                .state
                .refuse_publish(ErrorCode::QueueFull, "dead-letter queue is full".into());
            return;
        }
        let copy = self.disk.is_some().then(|| message.clone());
        let outcome = self.state.publish(now, 0, 0, message);
        if let (Some(PublishOutcome::Stored { seq }), Some(m)) = (outcome, copy) {
            let _kept = self.append(now, vec![(seq, m)], None);
        }
        self.apply_effects(now);
    }

    /// Appends stored messages to the log (disk queues) — the only place that does — and makes
    /// the request in `slot` wait for their durability. On an append error the messages are
    /// taken back out of the queue and their outcomes become `Rejected` with the storage error.
    /// Returns whether the messages are kept (appended, or a memory queue).
    fn append(&mut self, now: u64, stored: Vec<(u64, Message)>, slot: Option<u64>) -> bool {
        let Some(disk) = &mut self.disk else {
            return true; // a memory queue
        };
        let Some(&(last, _)) = stored.last() else {
            return true;
        };
        let result = match &disk.log {
            Some(log) => {
                let records: Vec<NewMessage> = stored
                    .iter()
                    .map(|(_, m)| to_record(now, m, self.state.config()))
                    .collect();
                log.append_batch(&records)
            }
            // Being reopened after a failure.
            None => Err(StoreError::Closed),
        };
        match result {
            Ok(appended) => {
                if appended.first_seq != stored[0].0 {
                    // A bug: the confirms would name the wrong sequence numbers.
                    tracing::error!(queue = %self.name, log = appended.first_seq,
                        state = stored[0].0, "log and state machine disagree on sequence numbers");
                    debug_assert!(false, "log and state agree");
                }
                if disk.fsync_waits {
                    disk.syncing
                        .push_back((appended.last_seq + 1, appended.durability));
                    // Its fsync covers the settlements written before it.
                    disk.settle_sync_at = None;
                    if let Some(slot) = slot {
                        self.confirms.wait_for(slot, last + 1);
                    }
                } else {
                    self.durable = appended.last_seq + 1;
                    self.state.set_durable(self.durable);
                }
                true
            }
            Err(e) => {
                if matches!(e, StoreError::Failed { .. }) {
                    self.log_failure(now, &e);
                } else {
                    tracing::error!(queue = %self.name, error = %e, "append failed");
                }
                let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
                self.state.abort_publish(&seqs);
                let code = storage_code(&e);
                if let Some(outcomes) = slot.and_then(|s| self.confirms.outcomes_mut(s)) {
                    for o in outcomes.iter_mut() {
                        if let Some(
                            PublishOutcome::Stored { seq } | PublishOutcome::Duplicate { seq },
                        ) = o
                            && seqs.contains(seq)
                        {
                            *o = Some(PublishOutcome::Rejected {
                                code,
                                reason: format!("queue {}: storage error: {e}", self.name),
                            });
                        }
                    }
                }
                false
            }
        }
    }

    /// The append ending below `seq` is durable (`Ok`) or will never be (`Err`).
    pub fn on_durable(&mut self, now: u64, seq: u64, result: Result<(), StoreError>) {
        if let Some(d) = &mut self.disk {
            d.syncing.pop_front();
        }
        match result {
            Ok(()) => {
                self.durable = self.durable.max(seq);
                self.state.set_durable(self.durable);
            }
            Err(e) => {
                // Fail the confirms, keep the messages from consumers (the watermark stays)
                // until they are written again into a reopened log and that is durable.
                self.confirms.fail_waiting_up_to(
                    seq,
                    storage_code(&e),
                    &format!("storage error: {e}"),
                );
                self.log_failure(now, &e);
            }
        }
        self.release_confirms();
    }

    /// The log failed: schedule reopening it (once per failure).
    fn log_failure(&mut self, now: u64, e: &StoreError) {
        let Some(d) = &mut self.disk else { return };
        if d.failed {
            return;
        }
        tracing::error!(queue = %self.name, error = %e,
            "queue log failed: messages not yet durable are held back and will be written again");
        d.failed = true;
        d.reopen_at = Some(now);
    }

    // ---- consumers and producers ------------------------------------------------------------

    /// Registers a producer (a `block` queue grants it credit).
    pub fn add_producer(&mut self, now: u64, producer: ProducerId) {
        self.state.add_producer(producer);
        self.apply_effects(now);
    }

    /// A producer's connection closed (or it stopped publishing here).
    pub fn remove_producer(&mut self, now: u64, producer: ProducerId) {
        self.state.remove_producer(now, producer);
        self.apply_effects(now);
    }

    /// A new consumer with `credit`.
    pub fn subscribe(&mut self, consumer: ConsumerId, auto_ack: bool, credit: u32) {
        self.state.subscribe(consumer, auto_ack);
        self.state.track_writes(consumer);
        self.state.add_credit(consumer, credit);
    }

    /// A consumer's priority (see [`QueueState::set_priority`]).
    pub fn set_priority(&mut self, consumer: ConsumerId, priority: i32) {
        self.state.set_priority(consumer, priority);
    }

    /// A use that is not a consumer: the queue's start or a redeclare (restarts the
    /// `expires_ms` clock).
    pub fn touch(&mut self, now: u64) {
        self.state.touch(now);
    }

    /// A consumer left (its unacked messages return).
    pub fn unsubscribe(&mut self, now: u64, consumer: ConsumerId) {
        self.state.unsubscribe(now, consumer);
        self.apply_effects(now);
    }

    /// `request(n)`.
    pub fn credit(&mut self, consumer: ConsumerId, n: u32) {
        self.state.add_credit(consumer, n);
    }

    /// Deliveries up to `tag` were written to the consumer's connection.
    pub fn written(&mut self, now: u64, consumer: ConsumerId, tag: u64) {
        self.state.written(now, consumer, tag);
    }

    /// Acks.
    pub fn ack(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) {
        let errors = self.state.ack(now, consumer, tags);
        self.report(consumer, errors);
        self.apply_effects(now);
    }

    /// Nacks (requeue now or after `delay_ms`).
    pub fn nack(&mut self, now: u64, consumer: ConsumerId, tags: &[u64], delay_ms: u64) {
        let errors = self.state.nack(now, consumer, tags, delay_ms);
        self.report(consumer, errors);
        self.apply_effects(now);
    }

    /// Rejects (to the dead-letter queue).
    pub fn reject(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) {
        let errors = self.state.reject(now, consumer, tags);
        self.report(consumer, errors);
        self.apply_effects(now);
    }

    /// Renews leases ([`QueueState::extend`]).
    pub fn extend(&mut self, now: u64, consumer: ConsumerId, tags: &[u64], extend_ms: u64) {
        let errors = self.state.extend(now, consumer, tags, extend_ms);
        self.report(consumer, errors);
    }

    /// Sets a consumer's credit ([`QueueState::set_credit`]).
    pub fn set_credit(&mut self, consumer: ConsumerId, n: u64) {
        self.state.set_credit(consumer, n);
    }

    /// Deliveries that never reached their receiver go back unchanged ([`QueueState::unsent`]).
    pub fn unsent(&mut self, now: u64, consumer: ConsumerId, tags: &[u64]) {
        self.state.unsent(now, consumer, tags);
        self.apply_effects(now);
    }

    /// Settles (or extends) and answers which tags were not outstanding, instead of reporting
    /// them to the consumer's connection: the HTTP API answers per receipt.
    pub fn settle_checked(
        &mut self,
        now: u64,
        consumer: ConsumerId,
        how: SettleKind,
        tags: &[u64],
    ) -> Vec<u64> {
        let errors = match how {
            SettleKind::Ack => self.state.ack(now, consumer, tags),
            SettleKind::Nack { delay_ms } => self.state.nack(now, consumer, tags, delay_ms),
            SettleKind::Reject => self.state.reject(now, consumer, tags),
            SettleKind::Extend { extend_ms } => self.state.extend(now, consumer, tags, extend_ms),
        };
        self.apply_effects(now);
        errors
            .into_iter()
            .map(|SettleError::UnknownTag(t)| t)
            .collect()
    }

    /// The next `n` ready messages, read back from the log when their body is not in memory
    /// (a message that cannot be read is left out). Nothing is consumed or counted.
    pub fn peek(&self, n: usize) -> Vec<Delivery> {
        self.state
            .peek(n)
            .into_iter()
            .filter_map(|(seq, deliveries, ts, message)| {
                let (message, timestamp_ms) = match message {
                    Some(m) => (m, ts),
                    None => self.read(seq)?,
                };
                Some(Delivery {
                    subscription: 0,
                    tag: 0,
                    seq,
                    delivery_count: deliveries,
                    timestamp_ms,
                    message,
                })
            })
            .collect()
    }

    /// Changes the queue's configuration ([`QueueState::reconfigure`]).
    pub fn reconfigure(
        &mut self,
        now: u64,
        config: QueueConfig,
    ) -> Result<(), super::reconfigure::ReconfigureError> {
        self.state.reconfigure(now, config)?;
        self.apply_effects(now);
        Ok(())
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self, now: u64) -> u64 {
        let n = self.state.purge(now);
        self.apply_effects(now);
        n
    }

    fn report(&mut self, consumer: ConsumerId, errors: Vec<SettleError>) {
        if errors.is_empty() {
            return;
        }
        let tags = errors.iter().map(|SettleError::UnknownTag(t)| *t).collect();
        self.outputs
            .push_back(Output::UnknownTags { consumer, tags });
    }

    /// Consumers that could be handed deliveries now if their connections have room.
    pub fn consumers_wanting(&self) -> Vec<ConsumerId> {
        self.state.consumers_wanting()
    }

    /// The bytes `consumer`'s connection can take now.
    pub fn set_budget(&mut self, consumer: ConsumerId, bytes: u64) {
        self.state.set_budget(consumer, Some(bytes));
    }

    // ---- time ---------------------------------------------------------------------------------

    /// Advances time: ack deadlines, delays, TTL, settlement retries. Returns a reopen job when
    /// a failed log is due to be reopened.
    pub fn handle_timeout(&mut self, now: u64) -> Option<Reopen> {
        if self
            .disk
            .as_ref()
            .and_then(|d| d.retry_at)
            .is_some_and(|at| at <= now)
        {
            self.retry_settlements(now);
        }
        self.sync_settlements(now);
        self.state.tick(now);
        self.apply_effects(now);
        if self.state.take_expired(now) {
            self.outputs.push_back(Output::Expired);
        }
        let d = self.disk.as_mut()?;
        if d.reopen_at.is_some_and(|at| at <= now) {
            d.reopen_at = None;
            // Appends still waiting for durability belong to the failed log: they fail.
            let waiting: Vec<u64> = d.syncing.drain(..).map(|(seq, _)| seq).collect();
            d.log = None;
            for seq in waiting {
                self.confirms.fail_waiting_up_to(
                    seq,
                    ErrorCode::Internal,
                    "storage error: the log failed",
                );
            }
            let d = self.disk.as_ref().expect("disk");
            return Some(Reopen {
                backend: d.backend.clone(),
                dir: d.dir.clone(),
                config: d.config.clone(),
            });
        }
        None
    }

    /// The result of a [`Reopen`] job: records past the durability watermark are settled as
    /// untrusted and the messages past it, still in memory, are written again; they are
    /// delivered once that is durable. On failure, retried with back-off.
    pub fn reopened(
        &mut self,
        now: u64,
        opened: Result<(QueueLog, levee_store::Recovered), StoreError>,
    ) {
        let Some(d) = &mut self.disk else { return };
        let (log, _) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(queue = %self.name, error = %e, "reopening the queue log failed; retrying");
                d.reopen_later(now);
                return;
            }
        };
        let watermark = self.durable;
        // Only the records from the watermark on (the broker's logs do not list what they
        // recover: `recover_unsettled: false`).
        let stale: Vec<(u64, levee_store::Settlement)> = log
            .unsettled_page(watermark, usize::MAX)
            .iter()
            .map(|m| {
                (
                    m.seq,
                    levee_store::Settlement::Dropped("rewritten-after-failure".into()),
                )
            })
            .collect();
        let undurable = self.state.take_undurable();
        let config = self.state.config().clone();
        let records: Vec<NewMessage> = undurable
            .iter()
            .filter_map(|(_, q, _)| {
                q.message
                    .as_ref()
                    .map(|m| to_record(q.timestamp_ms, m, &config))
            })
            .collect();
        let rewrite = (|| -> Result<Option<Appended>, StoreError> {
            if !stale.is_empty() {
                // Made durable by the rewrite's own group commit (written before it), or by
                // the sync below when nothing is rewritten.
                let _settled = log.settle_batch(&stale)?;
            }
            if records.is_empty() {
                return Ok(None);
            }
            log.append_batch(&records).map(Some)
        })();
        match rewrite {
            Ok(appended) => {
                let n = undurable.len();
                let mut next = appended.as_ref().map_or(0, |a| a.first_seq);
                for (_, queued, meta) in undurable {
                    if queued.message.is_none() {
                        continue; // past the watermark every message is a fresh publish
                    }
                    self.state.restore_rewritten(next, queued, meta);
                    next += 1;
                }
                self.state.set_next_seq(log.stats().next_seq);
                if appended.is_none() && !stale.is_empty() && d.fsync_waits {
                    d.syncing.push_back((self.durable, log.sync()));
                }
                if let Some(a) = appended {
                    if d.fsync_waits {
                        d.syncing.push_back((a.last_seq + 1, a.durability));
                    } else {
                        self.durable = a.last_seq + 1;
                        self.state.set_durable(self.durable);
                    }
                }
                d.log = Some(Arc::new(log));
                d.failed = false;
                d.reopen_backoff_ms = 100;
                tracing::warn!(queue = %self.name, rewritten = n, untrusted = stale.len(),
                    "queue log reopened after a failure");
                self.retry_settlements(now);
            }
            Err(e) => {
                // Put the messages back as they were (still past the watermark) and retry.
                for (seq, queued, meta) in undurable {
                    self.state.restore_rewritten(seq, queued, meta);
                }
                tracing::error!(queue = %self.name, error = %e, "rewriting after a log failure failed; retrying");
                d.reopen_later(now);
            }
        }
    }

    // ---- dispatch and effects ----------------------------------------------------------------

    /// Dispatches within the budgets set since the last flush, carries out effects and releases
    /// confirms: run after every batch of events.
    pub fn flush(&mut self, now: u64) {
        // While a failed log is being reopened, bodies on disk cannot be read: deliver nothing.
        if self.disk.as_ref().is_none_or(|d| d.log.is_some()) {
            let mut out = Vec::new();
            self.state.dispatch(now, &mut out);
            // Bodies are read before the dispatch's effects are written: an auto-ack delivery
            // settles its message, and a settled message can no longer be read.
            self.deliver(now, out);
        }
        self.apply_effects(now);
        self.release_confirms();
    }

    fn release_confirms(&mut self) {
        for c in self.confirms.take_ready(self.durable) {
            self.outputs.push_back(Output::Confirm(c));
        }
    }

    /// Reads a message back from the log, with its publish time.
    fn read(&self, seq: u64) -> Option<(Message, u64)> {
        let log = self.log()?;
        match log.read(seq) {
            Ok(stored) => {
                let ts = stored.message.timestamp_ms;
                Some((from_record(stored.message), ts))
            }
            Err(e) => {
                tracing::error!(queue = %self.name, seq, error = %e, "reading a message failed");
                None
            }
        }
    }

    fn deliver(&mut self, now: u64, out: Vec<Outgoing>) {
        if out.is_empty() {
            return;
        }
        let mut by_consumer: HashMap<ConsumerId, Vec<Delivery>> = HashMap::new();
        let mut order: Vec<ConsumerId> = Vec::new();
        let mut unreadable: Vec<(ConsumerId, u64)> = Vec::new();
        for o in out {
            let (message, timestamp_ms) = match o.message {
                Some(m) => (m, o.timestamp_ms),
                // Recovered after a restart: the body and its publish time are in the log.
                None => match self.read(o.seq) {
                    Some(x) => x,
                    None => {
                        unreadable.push((o.consumer, o.tag));
                        continue;
                    }
                },
            };
            let list = by_consumer.entry(o.consumer).or_insert_with(|| {
                order.push(o.consumer);
                Vec::new()
            });
            list.push(Delivery {
                subscription: o.consumer,
                tag: o.tag,
                seq: o.seq,
                delivery_count: o.deliveries,
                timestamp_ms,
                message,
            });
        }
        for consumer in order {
            let deliveries = by_consumer.remove(&consumer).expect("listed");
            for (chunk, bytes) in chunk_deliveries(deliveries) {
                self.outputs.push_back(Output::Deliver {
                    consumer,
                    deliveries: chunk,
                    bytes,
                });
            }
        }
        // A message that could not be read never left: it goes back, its count unchanged.
        for (consumer, tag) in unreadable {
            self.state.unsent(now, consumer, &[tag]);
        }
        self.apply_effects(now);
    }

    fn apply_effects(&mut self, now: u64) {
        let effects = self.state.take_effects();
        if effects.is_empty() {
            return;
        }
        let mut settles: Vec<(u64, levee_store::Settlement)> = Vec::new();
        let mut counts: Vec<(u64, u32)> = Vec::new();
        for effect in effects {
            match effect {
                Effect::Settle { seq, how } => {
                    settles.push((seq, to_settlement(how, self.state.config())));
                }
                Effect::DeliveryCount { seq, count } => counts.push((seq, count)),
                Effect::DeadLetter {
                    seq,
                    target,
                    message,
                    reason,
                    deliveries,
                } => {
                    let Some(mut m) = message.or_else(|| self.read(seq).map(|(m, _)| m)) else {
                        continue;
                    };
                    // Replaced, not repeated: a message dead-lettered again keeps fitting
                    // MAX_HEADERS (published messages carry at most MAX_USER_HEADERS others).
                    m.headers
                        .retain(|(n, _)| !DEATH_HEADERS.contains(&n.as_str()));
                    m.headers
                        .push(("x-death-reason".into(), reason.as_str().into()));
                    m.headers
                        .push(("x-death-queue".into(), Bytes::from(self.name.clone())));
                    m.headers.push((
                        "x-delivery-count".into(),
                        Bytes::from(deliveries.to_string()),
                    ));
                    if target == DeadLetterTarget::Queue(self.name.clone()) {
                        tracing::warn!(queue = %self.name, "a queue cannot be its own dead-letter queue: message dropped");
                    } else {
                        self.outputs
                            .push_back(Output::DeadLetter { target, message: m });
                    }
                }
                Effect::Credit { producer, n } => {
                    self.outputs.push_back(Output::Credit { producer, n });
                }
                Effect::Confirm {
                    token,
                    outcome,
                    stored,
                } => {
                    let slot = Confirms::slot_of(token);
                    let mut outcome = outcome;
                    if let PublishOutcome::Duplicate { seq } = &outcome {
                        self.wait_for_original(slot, *seq);
                    }
                    if let (PublishOutcome::Stored { seq }, Some(m)) = (&outcome, stored) {
                        let seq = *seq;
                        // Appended now: nothing published later may reach the log first.
                        if !self.append(now, vec![(seq, m)], Some(slot)) {
                            outcome = PublishOutcome::Rejected {
                                code: ErrorCode::Internal,
                                reason: format!(
                                    "queue {}: storage error: the message could not be written",
                                    self.name
                                ),
                            };
                        }
                    }
                    self.confirms.resolve(token, outcome);
                }
            }
        }
        if self.disk.is_none() {
            return;
        }
        if !counts.is_empty()
            && let Some(log) = self.log()
            && let Err(e) = log.record_deliveries(&counts)
        {
            // A lost delivery count only lowers max-deliveries accounting after a restart.
            tracing::warn!(queue = %self.name, error = %e, "recording delivery counts failed");
        }
        if !settles.is_empty() {
            self.settle(now, settles);
        }
    }

    /// Asks for the fsync of settlements written [`SETTLE_SYNC_MS`] ago, if due: one more entry
    /// of `syncing` (at the watermark the appends before it reach, so it moves nothing by
    /// itself), which the caller awaits like an append's.
    fn sync_settlements(&mut self, now: u64) {
        let Some(d) = &mut self.disk else { return };
        if d.settle_sync_at.is_none_or(|at| at > now) {
            return;
        }
        d.settle_sync_at = None;
        let Some(log) = d.log.clone() else { return };
        let at = d.syncing.back().map_or(self.durable, |(seq, _)| *seq);
        d.syncing.push_back((at, log.sync()));
    }

    /// Writes settlement records; those the log cannot take now (a full disk, a failed log)
    /// are kept and retried, so an acked message does not come back at the next restart. One
    /// log line when retrying starts and one when it is done, not one per message.
    fn settle(&mut self, now: u64, settles: Vec<(u64, levee_store::Settlement)>) {
        let Some(d) = &mut self.disk else { return };
        if !d.retry.is_empty() {
            // Keep order: older failed settlements first.
            d.retry.extend(settles);
            self.retry_settlements(now);
            return;
        }
        let Some(log) = d.log.clone() else {
            self.keep_for_retry(now, settles, None);
            return;
        };
        let Err(e) = log.settle_batch(&settles) else {
            if d.fsync_waits && d.settle_sync_at.is_none() {
                d.settle_sync_at = Some(now + SETTLE_SYNC_MS);
            }
            return;
        };
        if !retriable(&e) {
            // A batch is all-or-nothing: settle one by one so one bad entry (a message whose
            // append failed) does not keep the others unsettled.
            let failed = self.settle_each(&log, settles);
            if !failed.is_empty() {
                self.keep_for_retry(now, failed, None);
            }
            return;
        }
        self.keep_for_retry(now, settles, Some(&e));
    }

    /// Settles one by one; returns those worth retrying. A final failure (already settled, or
    /// gone because its message's append failed) has nothing left to write: it is logged.
    fn settle_each(
        &self,
        log: &QueueLog,
        items: Vec<(u64, levee_store::Settlement)>,
    ) -> Vec<(u64, levee_store::Settlement)> {
        let mut retry = Vec::new();
        for item in items {
            match log.settle(item.0, item.1.clone()) {
                Ok(_) => {}
                Err(e) if retriable(&e) => retry.push(item),
                Err(e) => {
                    tracing::warn!(queue = %self.name, seq = item.0, error = %e, "settlement failed");
                }
            }
        }
        retry
    }

    fn keep_for_retry(
        &mut self,
        now: u64,
        settles: Vec<(u64, levee_store::Settlement)>,
        error: Option<&StoreError>,
    ) {
        if let Some(e) = error
            && matches!(e, StoreError::Failed { .. })
        {
            self.log_failure(now, e);
        }
        let Some(d) = &mut self.disk else { return };
        if d.retry.is_empty() {
            match error {
                Some(e) => tracing::warn!(queue = %self.name, error = %e,
                    "settlements cannot be written now; keeping them and retrying"),
                None => tracing::warn!(queue = %self.name,
                    "settlements cannot be written now (log unavailable); keeping them and retrying"),
            }
        }
        d.retry.extend(settles);
        d.retry_at = Some(now + RETRY_MS);
    }

    /// Retries kept settlements (all at once, else one by one).
    fn retry_settlements(&mut self, now: u64) {
        let Some(d) = &mut self.disk else { return };
        d.retry_at = None;
        if d.retry.is_empty() {
            return;
        }
        let Some(log) = d.log.clone() else {
            d.retry_at = Some(now + RETRY_MS);
            return;
        };
        let items = std::mem::take(&mut d.retry);
        let n = items.len();
        if log.settle_batch(&items).is_ok() {
            tracing::info!(queue = %self.name, settlements = n, "kept settlements written");
            if d.fsync_waits && d.settle_sync_at.is_none() {
                d.settle_sync_at = Some(now + SETTLE_SYNC_MS);
            }
            return;
        }
        let still = self.settle_each(&log, items);
        let Some(d) = &mut self.disk else { return };
        if still.is_empty() {
            tracing::info!(queue = %self.name, settlements = n, "kept settlements written");
        } else {
            d.retry = still;
            d.retry_at = Some(now + RETRY_MS);
        }
    }

    /// Whether the queue's log failed and is not reopened yet (a disk queue only).
    pub fn log_failed(&self) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.failed || d.log.is_none())
    }

    /// Settlements waiting for a retry.
    pub fn kept_settlements(&self) -> usize {
        self.disk.as_ref().map_or(0, |d| d.retry.len())
    }

    /// The queue stops (deleted or shutting down): every pending request is void.
    pub fn stop(&mut self) {
        for (session, req, messages, bytes) in self.confirms.drain() {
            self.outputs.push_back(Output::Void {
                session,
                req,
                messages,
                bytes,
            });
        }
    }
}

/// Splits deliveries into `Deliver` frames of at most [`MAX_BATCH`] messages and about 4 MiB,
/// each with the bytes it is charged to its connection's outbox.
fn chunk_deliveries(deliveries: Vec<Delivery>) -> Vec<(Vec<Delivery>, u64)> {
    const FRAME_BUDGET: u64 = 4 * 1024 * 1024;
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for d in deliveries {
        let len = d.message.wire_len() as u64 + DELIVERY_OVERHEAD;
        if !cur.is_empty() && (cur.len() == MAX_BATCH || size + len > FRAME_BUDGET) {
            chunks.push((std::mem::take(&mut cur), size));
            size = 0;
        }
        size += len;
        cur.push(d);
    }
    if !cur.is_empty() {
        chunks.push((cur, size));
    }
    chunks
}
