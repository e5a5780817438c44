//! Property test: random sequences of appends, settlements, delivery counts, syncs, full disks, clean
//! reopens and simulated power losses (fault-injecting backend, both "lose every unsynced byte" and
//! "torn" crashes). After every crash: every message reported fsynced is recovered with its payload
//! unless it was settled, every settlement reported fsynced stays settled, the recovered messages are
//! in order and form a prefix of what was appended (no holes), and nothing is invented.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use levee_store::backend::fault::{CrashMode, FaultyBackend};
use levee_store::{
    Durability, DurabilityLevel, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { count: usize, size: usize },
    Settle { pick: usize, kind: u8 },
    Deliver { pick: usize },
    WaitAppends,
    Sync,
    DiskFull { budget: u64, size: usize },
    Crash { torn: bool, seed: u64 },
    Reopen,
    Pause,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..4, 0usize..700).prop_map(|(count, size)| Op::Append { count, size }),
        5 => (any::<usize>(), 0u8..4).prop_map(|(pick, kind)| Op::Settle { pick, kind }),
        2 => any::<usize>().prop_map(|pick| Op::Deliver { pick }),
        2 => Just(Op::WaitAppends),
        1 => Just(Op::Sync),
        1 => (0u64..600, 100usize..700).prop_map(|(budget, size)| Op::DiskFull { budget, size }),
        2 => (any::<bool>(), any::<u64>()).prop_map(|(torn, seed)| Op::Crash { torn, seed }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Pause),
    ]
}

fn payload(seq_hint: u64, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| (seq_hint as usize * 31 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[derive(Default)]
struct Model {
    /// Messages that exist (unsettled as far as the model knows): payload and "fsync reported".
    live: BTreeMap<u64, (Bytes, bool)>,
    /// Settled messages whose settlement may still be lost: seq -> payload.
    settled_maybe: BTreeMap<u64, Bytes>,
    /// Settlements reported fsynced.
    settled_sure: BTreeSet<u64>,
    /// Delivery counts: seq -> (count reported fsynced, highest written).
    deliveries: BTreeMap<u64, (u32, u32)>,
    appends: Vec<(u64, u64, Durability)>,
    settles: Vec<(u64, Durability)>,
    delivers: Vec<(u64, u32, Durability)>,
}

impl Model {
    fn confirm_appends(&mut self, range: (u64, u64)) {
        for s in range.0..=range.1 {
            if let Some(e) = self.live.get_mut(&s) {
                e.1 = true;
            }
        }
    }
    /// Everything written before a successful explicit sync (or close) is durable.
    fn confirm_everything(&mut self) {
        for e in self.live.values_mut() {
            e.1 = true;
        }
        for (s, _) in std::mem::take(&mut self.settles) {
            self.settled_sure.insert(s);
        }
        self.appends.clear();
        for (s, n, _) in std::mem::take(&mut self.delivers) {
            if let Some(d) = self.deliveries.get_mut(&s) {
                d.0 = d.0.max(n);
            }
        }
    }
}

fn config(policy: FsyncPolicy) -> LogConfig {
    LogConfig {
        fsync: policy,
        segment_bytes: 4096,
        max_record_bytes: 1024,
        ..LogConfig::default()
    }
}

const DIR: &str = "/disk/queues/q";

fn check_recovery(
    model: &mut Model,
    log: &QueueLog,
    rec: &levee_store::Recovered,
) -> Result<(), TestCaseError> {
    let seqs: Vec<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
    prop_assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not in order: {:?}",
        seqs
    );
    let got: BTreeSet<u64> = seqs.iter().copied().collect();
    for meta in &rec.unsettled {
        let s = meta.seq;
        let expected = model
            .live
            .get(&s)
            .map(|(p, _)| p.clone())
            .or_else(|| model.settled_maybe.get(&s).cloned());
        prop_assert!(expected.is_some(), "invented message {}", s);
        prop_assert!(
            !model.settled_sure.contains(&s),
            "fsynced settlement of {} lost",
            s
        );
        let back = log
            .read(s)
            .map_err(|e| TestCaseError::fail(format!("read {s}: {e}")))?;
        prop_assert_eq!(
            &back.message.payload,
            expected.as_ref().unwrap(),
            "payload of {}",
            s
        );
        if let Some(&(sure, max)) = model.deliveries.get(&s) {
            prop_assert!(
                meta.delivery_count >= sure && meta.delivery_count <= max,
                "delivery count of {} is {}, expected {}..={}",
                s,
                meta.delivery_count,
                sure,
                max
            );
        } else {
            prop_assert_eq!(meta.delivery_count, 0);
        }
    }
    // Fsync-reported messages survive; the lost ones are a suffix of the live ones (no holes).
    let mut lost_seen = false;
    for (&s, (_, sure)) in &model.live {
        let present = got.contains(&s);
        if *sure {
            prop_assert!(present, "message {} was reported fsynced but is gone", s);
        }
        if present {
            prop_assert!(!lost_seen, "hole: {} recovered after a lost message", s);
        } else {
            lost_seen = true;
        }
    }
    // The recovered state is now the truth, and it is on disk.
    let mut live = BTreeMap::new();
    for s in &got {
        let p = model
            .live
            .get(s)
            .map(|(p, _)| p.clone())
            .or_else(|| model.settled_maybe.get(s).cloned())
            .expect("checked above");
        live.insert(*s, (p, true));
    }
    model.live = live;
    model.settled_maybe.clear();
    model.settled_sure.clear();
    model.appends.clear();
    model.settles.clear();
    model.delivers.clear();
    model.deliveries = rec
        .unsettled
        .iter()
        .filter(|m| m.delivery_count > 0)
        .map(|m| (m.seq, (m.delivery_count, m.delivery_count)))
        .collect();
    Ok(())
}

fn run(policy: FsyncPolicy, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let backend = FaultyBackend::new();
    let (mut log, rec) = QueueLog::open(backend.shared(), DIR, config(policy)).unwrap();
    prop_assert!(rec.unsettled.is_empty());
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Append { count, size } => {
                let next = log.stats().next_seq;
                let batch: Vec<NewMessage> = (0..count)
                    .map(|i| NewMessage {
                        timestamp_ms: 5,
                        payload: payload(next + i as u64, size),
                        ..Default::default()
                    })
                    .collect();
                match log.append_batch(&batch) {
                    Ok(a) => {
                        for (i, msg) in batch.into_iter().enumerate() {
                            m.live.insert(a.first_seq + i as u64, (msg.payload, false));
                        }
                        m.appends.push((a.first_seq, a.last_seq, a.durability));
                    }
                    Err(e) => prop_assert!(
                        matches!(e, levee_store::StoreError::RecordTooLarge { .. }),
                        "unexpected {:?}",
                        e
                    ),
                }
            }
            Op::Settle { pick, kind } => {
                if m.live.is_empty() {
                    continue;
                }
                let s = *m.live.keys().nth(pick % m.live.len()).unwrap();
                let settlement = match kind {
                    0 => Settlement::Acked,
                    1 => Settlement::Dropped("overflow".into()),
                    2 => Settlement::Expired,
                    _ => Settlement::DeadLettered("dlq".into()),
                };
                let d = log.settle(s, settlement).unwrap();
                let (p, _) = m.live.remove(&s).unwrap();
                m.settled_maybe.insert(s, p);
                m.settles.push((s, d));
            }
            Op::Deliver { pick } => {
                if m.live.is_empty() {
                    continue;
                }
                let s = *m.live.keys().nth(pick % m.live.len()).unwrap();
                let (n, d) = log.increment_delivery(s).unwrap();
                let e = m.deliveries.entry(s).or_insert((0, 0));
                e.1 = e.1.max(n);
                m.delivers.push((s, n, d));
            }
            Op::WaitAppends => {
                for (a, b, d) in std::mem::take(&mut m.appends) {
                    if d.wait().unwrap().level() == DurabilityLevel::Fsynced {
                        m.confirm_appends((a, b));
                    }
                }
            }
            Op::Sync => {
                log.sync().wait().unwrap();
                m.confirm_everything();
            }
            Op::DiskFull { budget, size } => {
                backend.set_write_budget(Some(budget));
                let next = log.stats().next_seq;
                let msg = NewMessage {
                    payload: payload(next, size),
                    ..Default::default()
                };
                match log.append(&msg) {
                    Ok(a) => {
                        m.live.insert(a.first_seq, (msg.payload, false));
                        m.appends.push((a.first_seq, a.last_seq, a.durability));
                    }
                    Err(e) => prop_assert!(e.is_disk_full(), "unexpected {:?}", e),
                }
                backend.set_write_budget(None);
            }
            Op::Pause => std::thread::sleep(Duration::from_millis(2)),
            Op::Crash { torn, seed } => {
                backend.crash(if torn {
                    CrashMode::Torn { seed }
                } else {
                    CrashMode::LoseUnsynced
                });
                // Whatever reported fsynced before (or during) the crash must be on disk.
                for (a, b, d) in std::mem::take(&mut m.appends) {
                    if let Ok(p) = d.wait()
                        && p.level() == DurabilityLevel::Fsynced
                    {
                        m.confirm_appends((a, b));
                    }
                }
                for (s, mut d) in std::mem::take(&mut m.settles) {
                    if let Some(Ok(p)) = d.try_now()
                        && p.level() == DurabilityLevel::Fsynced
                    {
                        m.settled_sure.insert(s);
                    }
                }
                for (s, n, mut d) in std::mem::take(&mut m.delivers) {
                    if let Some(Ok(p)) = d.try_now()
                        && p.level() == DurabilityLevel::Fsynced
                        && let Some(e) = m.deliveries.get_mut(&s)
                    {
                        e.0 = e.0.max(n);
                    }
                }
                drop(log);
                let (l, rec) = QueueLog::open(backend.shared(), DIR, config(policy))
                    .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
                log = l;
                check_recovery(&mut m, &log, &rec)?;
            }
            Op::Reopen => {
                log.close().unwrap();
                m.confirm_everything();
                let (l, rec) = QueueLog::open(backend.shared(), DIR, config(policy)).unwrap();
                log = l;
                prop_assert!(
                    rec.report.truncated.is_none(),
                    "clean reopen truncated: {:?}",
                    rec.report
                );
                let got: Vec<u64> = rec.unsettled.iter().map(|x| x.seq).collect();
                let want: Vec<u64> = m.live.keys().copied().collect();
                prop_assert_eq!(got, want);
                check_recovery(&mut m, &log, &rec)?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 80, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn crashes_never_lose_fsynced_records_always(ops in proptest::collection::vec(op(), 1..60)) {
        run(FsyncPolicy::Always, ops)?;
    }

    #[test]
    fn crashes_never_lose_fsynced_records_never_policy(ops in proptest::collection::vec(op(), 1..60)) {
        run(FsyncPolicy::Never, ops)?;
    }
}
