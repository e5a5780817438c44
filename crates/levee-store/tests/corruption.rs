//! Corruption on a real disk: flip bytes and truncate at random offsets in segment files. Recovery
//! either restores a consistent prefix (damage in the unsealed tail segment: cut off and reported) or
//! returns `StoreError::Corruption` naming the damaged file and an offset at or before the damage
//! (damage in a sealed segment), and never panics or returns a wrong payload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use levee_store::{
    FsBackend, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement, StoreError,
};
use proptest::prelude::*;

fn config() -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 4096,
        max_record_bytes: 2048,
        ..LogConfig::default()
    }
}

fn payload(seq: u64) -> Bytes {
    Bytes::from(format!("message {seq} ").repeat(1 + (seq as usize % 40)))
}

/// What was written, in log order: `Ok(seq)` = message appended, `Err(seq)` = message settled.
type Events = Vec<Result<u64, u64>>;

/// Builds a log of several sealed segments plus an unsealed tail; returns the expected unsettled
/// messages and the event history.
fn build_events(dir: &Path) -> (BTreeMap<u64, Bytes>, Events) {
    let (log, _) = QueueLog::open(FsBackend::shared(), dir, config()).unwrap();
    let mut expect = BTreeMap::new();
    let mut events = Vec::new();
    for i in 0..60u64 {
        let a = log
            .append(&NewMessage {
                payload: payload(i),
                ..Default::default()
            })
            .unwrap();
        expect.insert(a.first_seq, payload(a.first_seq));
        events.push(Ok(a.first_seq));
        if i % 4 == 1 {
            drop(log.settle(a.first_seq - 1, Settlement::Acked).unwrap());
            expect.remove(&(a.first_seq - 1));
            events.push(Err(a.first_seq - 1));
        }
    }
    log.close().unwrap();
    (expect, events)
}

fn build(dir: &Path) -> BTreeMap<u64, Bytes> {
    build_events(dir).0
}

/// The unsettled sets after each prefix of the history.
fn prefix_states(events: &Events) -> Vec<Vec<u64>> {
    let mut cur = std::collections::BTreeSet::new();
    let mut out = vec![Vec::new()];
    for e in events {
        match e {
            Ok(s) => cur.insert(*s),
            Err(s) => cur.remove(s),
        };
        out.push(cur.iter().copied().collect());
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("seg" | "open")))
        .collect();
    v.sort();
    v
}

fn check(dir: &Path, damaged: &Path, at: u64, events: &Events) -> Result<(), TestCaseError> {
    let sealed = damaged.extension().unwrap() == "seg";
    match QueueLog::open(FsBackend::shared(), dir, config()) {
        Ok((log, rec)) => {
            prop_assert!(
                !sealed,
                "damage at {} in sealed {} went unnoticed",
                at,
                damaged.display()
            );
            // A consistent prefix: the recovered set is the state after some prefix of the history,
            // and every payload reads back intact.
            let got: Vec<u64> = rec.unsettled.iter().map(|m| m.seq).collect();
            prop_assert!(
                prefix_states(events).contains(&got),
                "not a prefix state: {:?}",
                got
            );
            for s in got {
                prop_assert_eq!(log.read(s).unwrap().message.payload, payload(s));
            }
            if let Some(t) = &rec.report.truncated {
                prop_assert_eq!(&t.path, damaged);
                prop_assert!(t.offset <= at);
            }
        }
        Err(StoreError::Corruption { path, offset, .. }) => {
            prop_assert!(
                sealed,
                "unsealed tail damage at {} was refused instead of cut",
                at
            );
            prop_assert_eq!(&path, damaged);
            prop_assert!(
                offset <= at,
                "error offset {} is past the damage at {}",
                offset,
                at
            );
        }
        Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn flipped_byte_is_cut_in_the_tail_or_named_elsewhere(file in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let tmp = tempfile::tempdir().unwrap();
        let (_, events) = build_events(tmp.path());
        let segs = segments(tmp.path());
        prop_assert!(segs.len() >= 3);
        let victim = file.get(&segs).clone();
        let mut bytes = std::fs::read(&victim).unwrap();
        let at = pos.index(bytes.len());
        bytes[at] ^= mask;
        std::fs::write(&victim, &bytes).unwrap();
        check(tmp.path(), &victim, at as u64, &events)?;
    }

    #[test]
    fn truncation_is_cut_in_the_tail_or_named_elsewhere(file in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>()) {
        let tmp = tempfile::tempdir().unwrap();
        let (_, events) = build_events(tmp.path());
        let segs = segments(tmp.path());
        let victim = file.get(&segs).clone();
        let len = std::fs::metadata(&victim).unwrap().len();
        let at = pos.index(len as usize) as u64; // strictly shorter
        std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(at).unwrap();
        check(tmp.path(), &victim, at, &events)?;
    }
}

#[test]
fn tail_damage_is_cut_and_the_log_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let expect = build(tmp.path());
    let tail = segments(tmp.path()).pop().unwrap();
    let len = std::fs::metadata(&tail).unwrap().len();
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes[len as usize - 3] ^= 0xFF; // inside the last record
    std::fs::write(&tail, &bytes).unwrap();
    let (log, rec) = QueueLog::open(FsBackend::shared(), tmp.path(), config()).unwrap();
    let t = rec.report.truncated.clone().expect("tail was cut");
    assert_eq!(t.path, tail);
    assert!(t.bytes > 0);
    assert_eq!(rec.unsettled.len(), expect.len() - 1);
    let a = log.append(&NewMessage::default()).unwrap();
    a.durability.wait().unwrap();
    log.close().unwrap();
    let (_log, rec) = QueueLog::open(FsBackend::shared(), tmp.path(), config()).unwrap();
    assert!(rec.report.truncated.is_none());
    assert_eq!(rec.unsettled.len(), expect.len());
}

#[test]
fn missing_middle_segment_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let segs = segments(tmp.path());
    std::fs::remove_file(&segs[1]).unwrap();
    match QueueLog::open(FsBackend::shared(), tmp.path(), config()) {
        Err(StoreError::Corruption { path, reason, .. }) => {
            assert_eq!(path.file_stem(), segs[1].file_stem());
            assert!(reason.contains("missing"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn corruption_is_reported_without_changing_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let segs = segments(tmp.path());
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&segs[0], &bytes).unwrap();
    let before: Vec<Vec<u8>> = segs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(QueueLog::open(FsBackend::shared(), tmp.path(), config()).is_err());
    let after: Vec<Vec<u8>> = segs.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(before, after);
    assert_eq!(segments(tmp.path()), segs);
}
