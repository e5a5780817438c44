//! No allocation per message on any policy's hot path, counted by a global allocator that
//! counts the allocations made on the measuring thread (this file is its own test binary, so
//! the counting allocator affects no other test).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use levee_flow::{Config, Order, Overflow, channel};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged,
// so this allocator upholds `GlobalAlloc`'s contract exactly as `System` does.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's arguments, forwarded unchanged to the system allocator.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(|n| n.get())
}

const POLICIES: [Overflow; 6] = [
    Overflow::Block,
    Overflow::Reject,
    Overflow::DropNewest,
    Overflow::DropOldest,
    Overflow::Conflate,
    Overflow::ShedPriority,
];
const CAP: usize = 64;

fn config(policy: Overflow, order: Order) -> Config<u64> {
    let cfg = Config::<u64>::bounded(CAP)
        .overflow(policy)
        .order(order)
        .priority_by(|v| (*v % 4) as u8)
        // A hook is installed, as in real use: every drop goes through it.
        .on_drop(|v, _| {
            std::hint::black_box(v);
        });
    if policy == Overflow::Conflate {
        // 96 keys for 64 slots: both in-place replacement and new keys evicting the oldest.
        cfg.conflate_by(|v: &u64| (*v / 4) % 96)
    } else {
        cfg
    }
}

/// Overload pattern: three sends per receive, so the policy decides on most sends.
fn pattern(tx: &levee_flow::Sender<u64>, rx: &levee_flow::Receiver<u64>, from: u64, n: u64) {
    for v in from..from + n {
        let _ = std::hint::black_box(tx.try_send(v));
        if v % 3 == 0 {
            let _ = std::hint::black_box(rx.try_recv());
        }
    }
}

#[test]
fn no_policy_allocates_per_message_on_try_send_and_try_recv() {
    for policy in POLICIES {
        for order in [Order::Fifo, Order::Priority] {
            let (tx, rx) = channel(config(policy, order)).unwrap();
            // Warm-up: grow every deque (each priority level alone up to the capacity), the
            // key map, and run the pattern once.
            for p in 0..4u64 {
                for i in 0..CAP as u64 {
                    let _ = tx.try_send(i * 4 + p);
                }
                while rx.try_recv().is_ok() {}
            }
            pattern(&tx, &rx, 0, 20_000);
            let n = allocations(|| pattern(&tx, &rx, 20_000, 50_000));
            assert_eq!(
                n, 0,
                "{policy:?}/{order:?}: {n} allocations for 50,000 sends"
            );
            let s = rx.stats();
            assert!(s.balanced(), "{s:?}");
            assert!(s.received > 0);
            if policy != Overflow::Block && policy != Overflow::Reject {
                assert!(
                    s.dropped > 0,
                    "{policy:?}: the pattern overloads the channel"
                );
            }
        }
    }
}

#[test]
fn no_policy_allocates_per_message_on_async_send_and_recv() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    for policy in POLICIES {
        let (tx, rx) = channel(config(policy, Order::Fifo)).unwrap();
        // The same run twice, 1,000 then 21,000 messages: any allocation per message shows as a
        // difference (the runtime's own fixed costs are the same in both).
        let run = |from: u64, n: u64| {
            allocations(|| {
                rt.block_on(async {
                    let done = Cell::new(false);
                    let producer = async {
                        for v in from..from + n {
                            let _ = tx.send(v).await;
                        }
                        done.set(true);
                    };
                    let consumer = async {
                        let mut got = 0u64;
                        loop {
                            match rx.recv_timeout(Duration::from_millis(1)).await {
                                Ok(v) => {
                                    std::hint::black_box(v);
                                    got += 1;
                                }
                                Err(_) if done.get() => break,
                                Err(_) => {}
                            }
                            if got.is_multiple_of(2) {
                                tokio::task::yield_now().await;
                            }
                        }
                    };
                    futures::join!(producer, consumer);
                });
            })
        };
        run(0, 21_000); // warm-up
        let small = run(100_000, 1_000);
        let large = run(200_000, 21_000);
        assert!(
            large <= small,
            "{policy:?}: {small} allocations for 1,000 messages but {large} for 21,000"
        );
    }
}
