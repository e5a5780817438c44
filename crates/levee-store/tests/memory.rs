//! Memory does not grow with payload bytes: the index keeps positions and small metadata per
//! unsettled message, payloads stay on disk. Measured with a counting global allocator (this test
//! binary only), which also gives the per-message figure documented in `docs/design.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use levee_store::{FsBackend, FsyncPolicy, LogConfig, NewMessage, QueueLog, Settlement};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so this allocator upholds `GlobalAlloc`'s contract exactly as `System` does.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The counter is global: the tests measuring it take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A log without fsyncs, with segments large enough that the counts are not segment churn.
fn open_log(dir: &std::path::Path) -> QueueLog {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        segment_bytes: 8 << 20,
        max_record_bytes: 64 << 10,
        ..levee_store::LogConfig::default()
    };
    QueueLog::open(FsBackend::shared(), dir, config).unwrap().0
}

/// Warms up the encode buffer and the first segments.
fn warm_up(log: &QueueLog, msg: &NewMessage) {
    for _ in 0..100 {
        let a = log.append(msg).unwrap();
        drop(log.settle(a.first_seq, Settlement::Acked).unwrap());
    }
}

#[test]
fn index_memory_per_message_is_small_and_independent_of_payload_size() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = open_log(tmp.path());
    let payload = bytes::Bytes::from(vec![7u8; 4096]);
    let msg = NewMessage {
        payload,
        key: Some("some-key".into()),
        ttl_ms: Some(60_000),
        ..Default::default()
    };
    warm_up(&log, &msg);
    let n = 20_000isize;
    let before = LIVE.load(Ordering::Relaxed);
    let mut seqs = Vec::with_capacity(n as usize);
    let seqs_bytes = (n as usize * 8) as isize;
    for _ in 0..n {
        let a = log.append(&msg).unwrap();
        seqs.push(a.first_seq);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before - seqs_bytes;
    let per_message = grown / n;
    println!("index memory per unsettled message: {per_message} bytes (payload 4096 bytes)");
    // 48 bytes of entry plus its chunk's share of the B-tree (docs/design.md, "Memory per
    // queued message").
    assert!(
        per_message < 64,
        "{per_message} bytes per message: payloads are being kept in memory?"
    );
    assert_eq!(log.stats().unsettled, n as u64);
    assert_eq!(log.stats().unsettled_bytes, n as u64 * 4096);
    // Settling everything gives the memory back.
    for chunk in seqs.chunks(1000) {
        let items: Vec<_> = chunk.iter().map(|&s| (s, Settlement::Acked)).collect();
        drop(log.settle_batch(&items).unwrap());
    }
    drop(seqs);
    let after = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        after < 64 * 1024,
        "{after} bytes still held after settling everything"
    );
    log.close().unwrap();
}

/// Out-of-order settlement leaving one survivor in every 32 consecutive messages (one per index
/// chunk): the chunks go sparse, so a survivor does not keep a whole chunk's array alive.
#[test]
fn scattered_survivors_do_not_pin_whole_index_chunks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let log = open_log(tmp.path());
    let msg = NewMessage {
        payload: bytes::Bytes::from(vec![7u8; 100]),
        ..Default::default()
    };
    warm_up(&log, &msg);
    let n = 64_000u64;
    let before = LIVE.load(Ordering::Relaxed);
    let mut settle = Vec::new();
    for i in 0..n {
        let a = log.append(&msg).unwrap();
        if i % 32 != 5 {
            settle.push((a.first_seq, Settlement::Acked));
        }
        if settle.len() == 1000 {
            drop(log.settle_batch(&settle).unwrap());
            settle.clear();
        }
    }
    if !settle.is_empty() {
        drop(log.settle_batch(&settle).unwrap());
    }
    drop(settle);
    let live = (n / 32) as isize;
    assert_eq!(log.stats().unsettled, live as u64);
    let per_live = (LIVE.load(Ordering::Relaxed) - before) / live;
    println!("index memory per scattered survivor: {per_live} bytes");
    // A dense chunk would be ~1.5 KiB per survivor.
    assert!(per_live < 200, "{per_live} bytes per survivor");
    log.close().unwrap();
}
