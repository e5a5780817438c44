//! A seeded simulation of a whole disk queue: the [`QueueCore`] (state machine, confirm ledger,
//! log) on levee-store's fault-injecting backend, driven by random producers (with headers, some
//! too many), consumers (credit, ack, nack, reject, disconnect, slow connections that take only
//! part of what they could), time jumps (ack deadlines, delays), failed fsyncs, a full disk, power
//! loss (clean or torn) and clean restarts; after every step and every recovery it checks the
//! invariants the broker promises:
//!
//! - every confirmed message, and every message ever delivered, is still there after power loss
//!   unless it was settled (acked or rejected); nothing comes back twice, nothing comes back
//!   that was never published;
//! - an acked message does not come back after a clean restart once its settlement was written;
//! - a publish held for room whose publisher went away is never stored;
//! - no consumer is sent more than its credit, nor more bytes than its connection's room (plus
//!   one message), and every delivery encodes;
//! - accounting is exact and the queue's limits hold after every step;
//! - deliveries after a restart carry their publish time.
//!
//! A failing seed reproduces exactly: `LEVEE_SIM_SEED=N cargo test -p levee-broker sim`. The
//! suite runs `LEVEE_SIM_SEEDS` seeds (default 64, a few seconds); a long run:
//! `LEVEE_SIM_SEEDS=100000 cargo test -p levee-broker --release sim -- --nocapture`
//! (`LEVEE_SIM_PROGRESS=1` names each seed as it starts, to find one that hangs).
//! (The log's fsyncs run on its own thread, but the simulation waits for each durability handle
//! it needs before going on and injects faults only between steps, so a seed replays the same
//! history.)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use levee_proto::{Durability, Fsync, Message, Overflow, PublishOutcome, QueueConfig, ServerFrame};
use levee_store::backend::fault::{CrashMode, FaultyBackend};
use levee_store::{Backend, QueueLog};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::core::{Output, QueueCore};
use super::{DropReason, MAX_USER_HEADERS};
use crate::storage;

const SESSIONS: u64 = 3;
const MAX_MESSAGES: u64 = 400;
const MAX_BYTES: u64 = 64 * 1024;

fn config() -> QueueConfig {
    QueueConfig {
        overflow: Overflow::Block,
        max_messages: MAX_MESSAGES,
        max_bytes: MAX_BYTES,
        ack_timeout_ms: 1_000,
        durability: Durability::Disk(Fsync::Always),
        ..QueueConfig::default()
    }
}

fn id_of(m: &Message) -> u32 {
    u32::from_le_bytes(m.payload[..4].try_into().expect("4-byte id"))
}

#[derive(Default)]
struct ConsumerModel {
    credit: u64,
    /// Unacked deliveries: tag -> id.
    unacked: BTreeMap<u64, u32>,
    max_tag: u64,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    disk: FaultyBackend,
    dir: PathBuf,
    core: QueueCore,
    /// The shared WAL of the running "process": closed (its threads joined) before the next
    /// process opens the same directory, as a process's threads end with it.
    wal: Option<levee_store::Wal>,
    /// `WalConfig::write_behind_bytes` of this seed: odd seeds write their records behind the
    /// WAL (small bound, so it fills), even seeds write them at once.
    write_behind: usize,
    now: u64,
    next_id: u32,
    next_req: u64,
    /// Request -> its message ids.
    requests: HashMap<(u64, u64), Vec<u32>>,
    confirmed: HashSet<u32>,
    /// Ids ever delivered (so durable at that time).
    delivered: HashSet<u32>,
    /// Ids acked or rejected by a consumer (their settlement may be lost in a crash: they may come
    /// back, but need not).
    settled: HashMap<u32, u32>,
    /// Ids sent to auto-ack consumers (settled as sent).
    auto_settled: HashSet<u32>,
    /// The last settle request: (consumer, tag) -> id, to undo for tags the queue refuses.
    settling: HashMap<(u64, u64), u32>,
    /// Held ids of publishers that went away: must never be stored.
    orphans: HashSet<u32>,
    /// Ids a recovery may bring back: published and not known to be gone.
    published: HashSet<u32>,
    producers: BTreeSet<u64>,
    consumers: BTreeMap<u64, ConsumerModel>,
    next_consumer: u64,
    syncs_failing: bool,
    disk_full: bool,
    restarted: bool,
    /// Messages and bytes recovery brought back last.
    recovered_load: (u64, u64),
    steps: usize,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let disk = FaultyBackend::new();
        let dir = PathBuf::from("/sim/log");
        let write_behind = if seed % 2 == 1 { 8 * 1024 } else { 0 };
        let (core, wal) = Self::open(&disk, &dir, write_behind);
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            disk,
            dir,
            core,
            wal: Some(wal),
            write_behind,
            now: 1_000_000,
            next_id: 0,
            next_req: 1,
            requests: HashMap::new(),
            confirmed: HashSet::new(),
            delivered: HashSet::new(),
            settled: HashMap::new(),
            settling: HashMap::new(),
            auto_settled: HashSet::new(),
            orphans: HashSet::new(),
            published: HashSet::new(),
            producers: BTreeSet::new(),
            consumers: BTreeMap::new(),
            next_consumer: 100,
            syncs_failing: false,
            disk_full: false,
            restarted: false,
            recovered_load: (0, 0),
            steps: 0,
        }
    }

    fn open(
        disk: &FaultyBackend,
        dir: &std::path::Path,
        write_behind: usize,
    ) -> (QueueCore, levee_store::Wal) {
        let backend: Arc<dyn Backend> = disk.shared();
        // The broker's shared write-ahead log (small files: rotation and checkpoints happen).
        let (wal, _) = levee_store::Wal::open(
            backend.clone(),
            "/sim/wal",
            levee_store::WalConfig {
                file_bytes: 128 * 1024,
                write_behind_bytes: write_behind,
                ..levee_store::WalConfig::default()
            },
        )
        .expect("WAL recovery");
        let (mut state, log) = storage::recover(
            backend.clone(),
            dir,
            levee_store::LogConfig {
                max_record_bytes: 32 * 1024,
                wal: Some(wal.clone()),
                ..storage::log_config(Fsync::Always, 64 * 1024)
            },
            config(),
        )
        .inspect_err(|_| dump_segments(&backend, dir))
        .expect("recovery");
        // Few bodies in memory: most deliveries read their message back from the log.
        state.set_memory_bodies(8);
        (
            QueueCore::disk("sim".into(), state, Arc::new(log), backend),
            wal,
        )
    }

    /// The running process ends: its queue core goes, and with it its log (dropping the last
    /// handle closes it, syncing what was written; after a crash its handles are dead, so that
    /// fails), then its WAL's threads are joined. Without the join, a maintenance thread of the
    /// old process could delete a WAL file the next process is recovering, or its commit thread
    /// create the file the next one starts. The faults end with the process: the next one starts
    /// on a repaired disk.
    fn stop_process(&mut self) {
        let old = std::mem::replace(
            &mut self.core,
            QueueCore::memory("gone".into(), super::QueueState::new(config(), 1)),
        );
        drop(old);
        if let Some(wal) = self.wal.take() {
            let _ = wal.close();
        }
        self.disk.fail_syncs(None);
        self.disk.set_write_budget(None);
        self.syncs_failing = false;
        self.disk_full = false;
    }

    fn fail(&self, what: String) -> ! {
        panic!(
            "simulation seed {} step {}: {what}\nreproduce: LEVEE_SIM_SEED={} cargo test -p levee-broker sim",
            self.seed, self.steps, self.seed
        );
    }

    fn run(&mut self, steps: usize) {
        for _ in 0..steps {
            self.steps += 1;
            self.step();
            self.flush();
            self.check_state();
        }
        // The end: faults off, everything settles, and a power loss loses nothing promised.
        self.disk.fail_syncs(None);
        self.disk.set_write_budget(None);
        self.syncs_failing = false;
        self.disk_full = false;
        for _ in 0..20 {
            self.time(2_000);
            self.wait_durable();
            self.flush();
        }
        self.crash(CrashMode::LoseUnsynced);
    }

    fn step(&mut self) {
        let pick = self.rng.random_range(0..100);
        if tracing_on() {
            eprintln!(
                "step {} pick {pick} now {} stats {:?}",
                self.steps,
                self.now,
                self.core.stats()
            );
        }
        match pick {
            0..=24 => self.publish(),
            25..=29 => self.produce(),
            30..=32 => self.stop_producing(),
            33..=36 => self.subscribe(),
            37..=44 => self.credit(),
            45..=56 => self.settle(),
            57..=59 => self.unsubscribe(),
            60..=71 => self.written(),
            72..=77 => {
                let ms = self.rng.random_range(1..1_500);
                self.time(ms);
            }
            78..=85 => self.wait_durable(),
            86..=89 => {
                self.syncs_failing = !self.syncs_failing;
                let kind = self.syncs_failing.then_some(std::io::ErrorKind::Other);
                self.disk.fail_syncs(kind);
            }
            90..=93 => {
                self.disk_full = !self.disk_full;
                let budget = self.disk_full.then_some(self.rng.random_range(0..2_000));
                self.disk.set_write_budget(budget);
            }
            94..=96 => {
                let mode = if self.rng.random_bool(0.5) {
                    CrashMode::LoseUnsynced
                } else {
                    CrashMode::Torn {
                        seed: self.rng.random(),
                    }
                };
                self.crash(mode);
            }
            _ => self.clean_restart(),
        }
    }

    fn publish(&mut self) {
        let session = self.rng.random_range(1..=SESSIONS);
        let n = self.rng.random_range(1..=6);
        let req = self.next_req;
        self.next_req += 1;
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let size = self.rng.random_range(4..6_000);
            let mut body = vec![0u8; size];
            body[..4].copy_from_slice(&id.to_le_bytes());
            let mut m = Message::new(body);
            let headers = if self.rng.random_bool(0.05) {
                MAX_USER_HEADERS + self.rng.random_range(0..4)
            } else {
                self.rng.random_range(0..3)
            };
            for h in 0..headers {
                m = m.with_header(format!("h{h}"), b"v".to_vec());
            }
            ids.push(id);
            messages.push(m);
        }
        self.core.publish(self.now, session, req, messages, true);
        self.published.extend(ids.iter().copied());
        self.requests.insert((session, req), ids);
    }

    fn produce(&mut self) {
        let session = self.rng.random_range(1..=SESSIONS);
        self.producers.insert(session);
        self.core.add_producer(self.now, session);
    }

    fn stop_producing(&mut self) {
        let session = self.rng.random_range(1..=SESSIONS);
        self.producers.remove(&session);
        let held: Vec<u32> = self.core.state().held_of(session).map(id_of).collect();
        self.core.remove_producer(self.now, session);
        self.orphans.extend(held);
    }

    fn subscribe(&mut self) {
        if self.consumers.len() >= 3 {
            return;
        }
        let id = self.next_consumer;
        self.next_consumer += 1;
        let credit = self.rng.random_range(0..50);
        self.core.subscribe(id, self.rng.random_bool(0.2), credit);
        self.consumers.insert(
            id,
            ConsumerModel {
                credit: u64::from(credit),
                ..ConsumerModel::default()
            },
        );
    }

    fn pick_consumer(&mut self) -> Option<u64> {
        if self.consumers.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.consumers.len());
        self.consumers.keys().nth(i).copied()
    }

    fn credit(&mut self) {
        let Some(c) = self.pick_consumer() else {
            return;
        };
        let n = self.rng.random_range(1..40);
        self.core.credit(c, n);
        self.consumers.get_mut(&c).expect("picked").credit += u64::from(n);
    }

    fn settle(&mut self) {
        let Some(c) = self.pick_consumer() else {
            return;
        };
        let model = self.consumers.get_mut(&c).expect("picked");
        let take = self.rng.random_range(0..=model.unacked.len().min(8));
        let tags: Vec<u64> = model.unacked.keys().take(take).copied().collect();
        if tags.is_empty() {
            return;
        }
        let ids: Vec<u32> = tags
            .iter()
            .map(|t| model.unacked.remove(t).expect("listed"))
            .collect();
        self.settling = tags
            .iter()
            .map(|t| (c, *t))
            .zip(ids.iter().copied())
            .collect();
        match self.rng.random_range(0..10) {
            0..=6 => {
                if tracing_on() {
                    eprintln!("  ack {ids:?} tags {tags:?} by {c}");
                }
                self.core.ack(self.now, c, &tags);
                for id in ids {
                    *self.settled.entry(id).or_default() += 1;
                }
            }
            7..=8 => {
                // A refused nack undoes nothing in the model.
                self.settling.clear();
                let delay = self.rng.random_range(0..500);
                self.core.nack(self.now, c, &tags, delay);
            }
            _ => {
                self.core.reject(self.now, c, &tags);
                for id in ids {
                    *self.settled.entry(id).or_default() += 1;
                }
            }
        }
    }

    fn unsubscribe(&mut self) {
        let Some(c) = self.pick_consumer() else {
            return;
        };
        self.consumers.remove(&c);
        self.core.unsubscribe(self.now, c);
    }

    fn written(&mut self) {
        let Some(c) = self.pick_consumer() else {
            return;
        };
        let tag = self.consumers[&c].max_tag;
        self.core.written(self.now, c, tag);
    }

    fn time(&mut self, ms: u64) {
        self.now += ms;
        if let Some(job) = self.core.handle_timeout(self.now) {
            let opened = job.run();
            self.core.reopened(self.now, opened);
        }
    }

    /// Waits for the oldest append's durability and reports it.
    fn wait_durable(&mut self) {
        let Some((seq, d)) = self.core.syncing_front() else {
            return;
        };
        let result = loop {
            if let Some(r) = d.try_now() {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        };
        self.core.on_durable(self.now, seq, result.map(|_| ()));
    }

    fn flush(&mut self) {
        // Each consumer's connection has room for a random number of bytes.
        let mut budgets: HashMap<u64, u64> = HashMap::new();
        for c in self.core.consumers_wanting() {
            let room = self.rng.random_range(0..20_000);
            self.core.set_budget(c, room);
            budgets.insert(c, room);
        }
        self.core.flush(self.now);
        // bytes, largest delivery, what estimates could not know (headers, key)
        let mut used: HashMap<u64, (u64, u64, u64)> = HashMap::new();
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Confirm(c) => {
                    let ids = self
                        .requests
                        .remove(&(c.session, c.req))
                        .unwrap_or_else(|| self.fail(format!("confirm for unknown request {c:?}")));
                    if ids.len() != c.outcomes.len() {
                        self.fail(format!(
                            "confirm with {} outcomes for {ids:?}",
                            c.outcomes.len()
                        ));
                    }
                    for (id, o) in ids.iter().zip(&c.outcomes) {
                        match o {
                            PublishOutcome::Stored { seq } => {
                                if tracing_on() {
                                    eprintln!("  confirmed {id} seq {seq}");
                                }
                                if self.orphans.contains(id) {
                                    self.fail(format!(
                                        "held message {id} of a publisher that went away was stored"
                                    ));
                                }
                                self.confirmed.insert(*id);
                            }
                            PublishOutcome::Dropped { reason } => {
                                if *reason != DropReason::PublisherGone {
                                    self.fail(format!("unexpected drop {reason:?}"));
                                }
                                self.published.remove(id);
                            }
                            _ => {}
                        }
                    }
                }
                Output::Void { .. } => self.fail("void confirm while running".into()),
                Output::Deliver {
                    consumer,
                    deliveries,
                    bytes,
                } => {
                    let mut buf = BytesMut::new();
                    let frame = ServerFrame::Deliver {
                        deliveries: deliveries.clone(),
                    };
                    if let Err(e) = frame.encode(&mut buf) {
                        self.fail(format!("a delivery does not encode: {e}"));
                    }
                    let u = used.entry(consumer).or_default();
                    u.0 += bytes;
                    for d in &deliveries {
                        let cost = d.message.wire_len() as u64 + super::DELIVERY_OVERHEAD;
                        u.1 = u.1.max(cost);
                        // A body read back from the log was estimated by its payload alone.
                        u.2 += cost - (d.message.payload.len() as u64 + super::DELIVERY_OVERHEAD);
                        let id = id_of(&d.message);
                        if tracing_on() {
                            eprintln!(
                                "  delivered {id} to {consumer} tag {} auto {}",
                                d.tag,
                                self.core.state().is_auto_ack(consumer)
                            );
                        }
                        if self.orphans.contains(&id) {
                            self.fail(format!("orphaned held message {id} delivered"));
                        }
                        if self.restarted && d.timestamp_ms == 0 {
                            self.fail(format!("message {id} delivered without its publish time"));
                        }
                        self.delivered.insert(id);
                    }
                    let credit = match self.consumers.get(&consumer) {
                        Some(m) => m.credit,
                        None => self.fail(format!("delivery to unknown consumer {consumer}")),
                    };
                    if deliveries.len() as u64 > credit {
                        self.fail(format!(
                            "consumer {consumer} sent {} with credit {credit}",
                            deliveries.len(),
                        ));
                    }
                    let auto = self.core.state().is_auto_ack(consumer);
                    let model = self.consumers.get_mut(&consumer).expect("checked");
                    model.credit -= deliveries.len() as u64;
                    for d in &deliveries {
                        model.max_tag = model.max_tag.max(d.tag);
                        if auto {
                            // Settled as it is sent (at-most-once).
                            self.auto_settled.insert(id_of(&d.message));
                        } else {
                            model.unacked.insert(d.tag, id_of(&d.message));
                        }
                    }
                }
                Output::Credit { .. } => {}
                Output::DeadLetter { .. } => self.fail("no dead-letter queue is configured".into()),
                Output::Expired => self.fail("the simulated queue has no expires_ms".into()),
                Output::UnknownTags { consumer, tags } => {
                    // Tags that went back on an ack deadline: those messages are not settled
                    // (unless another tag of the same message, a redelivery, was settled too).
                    for t in &tags {
                        let Some(id) = self.settling.get(&(consumer, *t)).copied() else {
                            continue; // a refused nack
                        };
                        if tracing_on() {
                            eprintln!("  refused tag {t} of {consumer}: {id}");
                        }
                        if let Some(n) = self.settled.get_mut(&id) {
                            *n -= 1;
                            if *n == 0 {
                                self.settled.remove(&id);
                            }
                        }
                    }
                }
            }
        }
        for (c, (bytes, largest, unknown)) in used {
            let room = budgets.get(&c).copied().unwrap_or(0);
            if bytes > room + largest + unknown {
                self.fail(format!(
                    "consumer {c} handed {bytes} bytes with room {room}"
                ));
            }
        }
    }

    fn is_settled(&self, id: u32) -> bool {
        self.settled.contains_key(&id) || self.auto_settled.contains(&id)
    }

    fn check_state(&self) {
        let s = self.core.stats();
        if !s.is_balanced() {
            self.fail(format!("accounting does not balance: {s:?}"));
        }
        // A power loss can bring back messages whose acks were lost while newer ones took their
        // room (at-least-once): recovery admits them all, so the limits bound what came after.
        let (max_messages, max_bytes) = self.recovered_load;
        if s.ready + s.unacked > MAX_MESSAGES.max(max_messages)
            || s.bytes > MAX_BYTES.max(max_bytes)
        {
            self.fail(format!("limits exceeded: {s:?}"));
        }
    }

    /// Power loss now; then recovery, and the promises checked against what came back.
    fn crash(&mut self, mode: CrashMode) {
        if tracing_on() {
            eprintln!("  crash {mode:?}");
        }
        self.disk.crash(mode);
        self.stop_process();
        self.recover_and_check(false);
    }

    /// The broker stops cleanly (the log is closed, syncing what was written) and starts again.
    fn clean_restart(&mut self) {
        let kept = self.core.kept_settlements();
        // A log that failed and was not reopened yet cannot make durable at the close the
        // settlements it accepted before the failure (their commit failed): those messages may
        // come back, and are delivered again (at-least-once), so it is not a clean stop.
        let faulty = self.syncs_failing || self.disk_full || self.core.log_failed();
        self.stop_process();
        self.recover_and_check(kept == 0 && !faulty);
    }

    fn recover_and_check(&mut self, acks_final: bool) {
        let (core, wal) = Self::open(&self.disk, &self.dir, self.write_behind);
        self.core = core;
        self.wal = Some(wal);
        self.restarted = true;
        let s = self.core.stats();
        self.recovered_load = (s.ready, s.bytes);
        let log: Arc<QueueLog> = self.core.log().cloned().expect("disk queue");
        let mut back: Vec<u32> = Vec::new();
        for m in log.unsettled() {
            match log.read(m.seq) {
                Ok(stored) => back.push(u32::from_le_bytes(
                    stored.message.payload[..4].try_into().expect("id"),
                )),
                Err(e) => self.fail(format!("recovered message {} unreadable: {e}", m.seq)),
            }
        }
        let set: HashSet<u32> = back.iter().copied().collect();
        if tracing_on() {
            let mut v: Vec<_> = set.iter().copied().collect();
            v.sort();
            eprintln!("  recovered (acks_final {acks_final}) {v:?}");
        }
        if set.len() != back.len() {
            self.fail(format!("a message came back twice: {back:?}"));
        }
        for id in &set {
            if !self.published.contains(id) && !self.is_settled(*id) {
                self.fail(format!(
                    "message {id} came back but was never published (or was dropped)"
                ));
            }
            if self.orphans.contains(id) {
                self.fail(format!("orphaned held message {id} was stored"));
            }
            if acks_final && self.is_settled(*id) {
                self.fail(format!(
                    "message {id} settled before a clean restart came back"
                ));
            }
        }
        for id in self.confirmed.iter().chain(self.delivered.iter()) {
            if !self.is_settled(*id) && !set.contains(id) {
                let why = if self.confirmed.contains(id) {
                    "confirmed"
                } else {
                    "delivered"
                };
                self.fail(format!("{why} message {id} lost in a crash"));
            }
        }
        // The new incarnation: every connection is gone; what came back is all there is.
        self.consumers.clear();
        self.producers.clear();
        self.requests.clear();
        // (`published` keeps every id: a settlement never synced may still be undone by a later
        // power loss, bringing its message back.)
        self.confirmed.retain(|id| set.contains(id));
        self.delivered.retain(|id| set.contains(id));
        // A settled message that came back is ready again.
        self.settled.clear();
        self.auto_settled.clear();
    }
}

/// On a failed recovery: every file of the queue directory, frame by frame (offset, record type,
/// length; a message's seq, a skip record's gap), and where the scan stopped, so a failing seed
/// shows what the disk held.
fn dump_segments(backend: &Arc<dyn Backend>, dir: &std::path::Path) {
    use levee_store::format;
    let mut names = backend.list_dir(dir).unwrap_or_default();
    names.sort();
    for n in names {
        let Ok(f) = backend.open_file(&dir.join(&n), levee_store::OpenMode::Existing) else {
            continue;
        };
        let len = f.len().unwrap_or(0) as usize;
        let mut data = vec![0u8; len];
        if f.read_at(&mut data, 0).is_err() {
            continue;
        }
        eprintln!("{n}: {len} bytes");
        let mut off = format::SEGMENT_HEADER_LEN;
        while off < len {
            let u64_at = |b: &[u8], at: usize| {
                b.get(at..at + 8)
                    .map_or(0, |x| u64::from_le_bytes(x.try_into().expect("8 bytes")))
            };
            match format::decode_frame(&data[off..]) {
                Ok(fr) => {
                    let mut next = off + fr.total_len;
                    let what = match fr.kind {
                        format::TYPE_MESSAGE => format!(" seq {}", u64_at(fr.body, 0)),
                        format::TYPE_SKIP => {
                            let gap = u32::from_le_bytes(fr.body[..4].try_into().expect("4"));
                            next = off + gap as usize;
                            format!(" gap {gap}")
                        }
                        _ => String::new(),
                    };
                    eprintln!("  @{off} type {} len {}{what}", fr.kind, fr.total_len);
                    off = next;
                }
                Err(e) => {
                    let nonzero = data[off..].iter().position(|b| *b != 0).map(|p| p + off);
                    eprintln!("  @{off} stops: {e} (next nonzero byte at {nonzero:?})");
                    break;
                }
            }
        }
    }
}

/// Whether `LEVEE_SIM_TRACE` asks for a step-by-step trace on stderr.
fn tracing_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("LEVEE_SIM_TRACE").is_some())
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("LEVEE_SIM_SEED") {
        return vec![s.parse().expect("LEVEE_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("LEVEE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut seeds: Vec<u64> = (0..n).collect();
    // Seeds that found a loss once (their failure depended on thread timing, so a run catches a
    // regression only some of the time): 1145 a checkpoint deleting WAL files a closing log still
    // needed, 1535 a segment sealed after its log handed its missing bytes to the WAL; 1743
    // found the model wrong (it took a stop while the log was failed for a clean one).
    seeds.extend([1145, 1535, 1743].iter().filter(|s| **s >= n));
    seeds
}

#[test]
fn sim_every_promise_holds_under_random_faults() {
    let seeds = seeds();
    for &seed in &seeds {
        // A panic outside `Sim::fail` (a recovery error, an assertion in the code under test)
        // still names its seed.
        if std::env::var_os("LEVEE_SIM_PROGRESS").is_some() {
            eprintln!("simulation seed {seed}");
        }
        let run = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed);
            sim.run(300);
        });
        if let Err(panic) = run {
            eprintln!(
                "simulation seed {seed} panicked\nreproduce: LEVEE_SIM_SEED={seed} cargo test -p levee-broker sim"
            );
            std::panic::resume_unwind(panic);
        }
    }
    eprintln!("simulation: {} seeds x 300 steps passed", seeds.len());
}
