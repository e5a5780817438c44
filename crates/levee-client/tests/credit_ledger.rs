//! Property: whatever the order of deliveries, takes, settlements and target changes, a consumer
//! never holds more than the largest target it had, and right after a grant it holds at most the
//! current target.

use levee_client::credit::{AdaptiveCredit, Ledger};
use proptest::prelude::*;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Op {
    Deliver,
    Take(bool),
    Settle,
    Refill(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Deliver),
        any::<bool>().prop_map(Op::Take),
        Just(Op::Settle),
        (1u32..64).prop_map(Op::Refill),
    ]
}

proptest! {
    #[test]
    fn held_never_exceeds_the_largest_target(ops in proptest::collection::vec(op(), 1..400)) {
        let mut l = Ledger::default();
        let mut max_target = 0u64;
        for op in ops {
            match op {
                // The broker only delivers within the credit granted.
                Op::Deliver if l.outstanding > 0 => l.on_delivery(),
                Op::Take(auto_ack) if l.buffered > 0 => l.on_take(auto_ack),
                Op::Settle if l.in_flight > 0 => l.on_settle(),
                Op::Refill(t) => {
                    max_target = max_target.max(u64::from(t));
                    let before = l.held();
                    match l.refill(t) {
                        Some(n) => {
                            prop_assert!(n > 0);
                            prop_assert_eq!(l.held(), before + u64::from(n));
                            prop_assert!(l.held() <= u64::from(t));
                        }
                        None => prop_assert_eq!(l.held(), before),
                    }
                }
                _ => {}
            }
            prop_assert!(l.held() <= max_target);
        }
    }

    #[test]
    fn adaptive_target_stays_in_bounds(
        min in 1u32..16,
        extra in 0u32..512,
        samples in proptest::collection::vec((1u64..1_000_000, 1u64..1_000_000, 1u64..16), 1..100),
    ) {
        let max = min + extra;
        let mut a = AdaptiveCredit::new(min, max);
        let t0 = Instant::now();
        for (i, (rtt_us, proc_us, conc)) in samples.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            a.on_rtt(now, Duration::from_micros(rtt_us));
            a.on_processed(now, Duration::from_micros(proc_us), conc);
            prop_assert!((min..=max).contains(&a.target()));
        }
    }
}
