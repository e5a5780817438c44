//! Circuit breaker: closed -> open -> half-open (probes) -> closed / open again; thread safety.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use levee_flow::{BreakerConfig, BreakerError, BreakerState, CircuitBreaker, ConfigError};

async fn fail(b: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
    b.call(async { Err::<(), _>("boom") }).await
}
async fn ok(b: &CircuitBreaker) -> Result<u32, BreakerError<&'static str>> {
    b.call(async { Ok::<_, &'static str>(1) }).await
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_then_half_opens_and_closes_on_success() {
    let b = CircuitBreaker::new(BreakerConfig::new(5, Duration::from_secs(5))).unwrap();
    for _ in 0..4 {
        assert_eq!(fail(&b).await, Err(BreakerError::Inner("boom")));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    ok(&b).await.unwrap();
    assert_eq!(
        b.stats().consecutive_failures,
        0,
        "a success resets the run"
    );
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), BreakerState::Open);
    let ran = AtomicU32::new(0);
    let r = b
        .call(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(r, Err(BreakerError::Open));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "an open breaker does not run the call"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    let s = b.stats();
    assert_eq!((s.opened, s.closed_again, s.refused), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens() {
    let b = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(1))).unwrap();
    let _ = fail(&b).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.stats().opened, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_configured_probes_and_needs_all_to_succeed() {
    let b = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(1)).probes(2)).unwrap();
    let _ = fail(&b).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err(), "third probe refused");
    p1.success();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    p2.success();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_permit_frees_its_slot() {
    let b = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(1))).unwrap();
    let _ = fail(&b).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(b.try_acquire().unwrap());
    assert!(b.try_acquire().is_ok());
}

#[tokio::test(start_paused = true)]
async fn late_success_from_before_opening_does_not_close_it() {
    let b = CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(10))).unwrap();
    let slow = b.try_acquire().unwrap();
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    slow.success();
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_window_trips() {
    let b = CircuitBreaker::new(
        BreakerConfig::new(100, Duration::from_secs(1)).failure_rate(0.5, 10, 4),
    )
    .unwrap();
    ok(&b).await.unwrap();
    let _ = fail(&b).await;
    ok(&b).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed, "below min_calls");
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open, "2 of 4 failed = 50 %");
}

#[test]
fn invalid_breaker_configs_are_errors() {
    assert_eq!(
        CircuitBreaker::new(BreakerConfig::new(5, Duration::from_secs(1)).probes(0))
            .err()
            .map(|e| e.to_string()),
        Some(ConfigError::Zero("half_open_probes").to_string())
    );
    assert!(CircuitBreaker::new(BreakerConfig::new(0, Duration::from_secs(1))).is_err());
    assert!(
        CircuitBreaker::new(BreakerConfig::new(1, Duration::from_secs(1)).failure_rate(1.5, 10, 5))
            .is_err()
    );
}

#[test]
fn thread_safe_under_concurrent_calls() {
    let b = Arc::new(
        CircuitBreaker::new(BreakerConfig::new(1_000_000, Duration::from_secs(1))).unwrap(),
    );
    let hs: Vec<_> = (0..4)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    let p = b.try_acquire().unwrap();
                    if (i + t) % 3 == 0 {
                        p.failure();
                    } else {
                        p.success();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let s = b.stats();
    assert_eq!(s.successes + s.failures, 40_000);
    assert_eq!(s.state, BreakerState::Closed);
}
