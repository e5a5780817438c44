//! Pacing with governor (msgs/s, bytes/s, burst) and the concurrency limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use levee_flow::{ConcurrencyLimit, Config, ConfigError, Paced, RateConfig, channel};

#[tokio::test]
async fn message_rate_slows_the_producer_after_the_burst() {
    let (tx, rx) = channel(Config::<u32>::bounded(1000)).unwrap();
    let p = Paced::new(tx, RateConfig::default().msgs(100, 5)).unwrap();
    let t = Instant::now();
    for i in 0..25 {
        p.send(i).await.unwrap();
    }
    // 5 in the burst, then 20 at 100/s = ~200 ms.
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(150), "too fast: {el:?}");
    assert_eq!(rx.stats().sent, 25, "slowed, not failed");
}

#[tokio::test]
async fn byte_rate_paces_by_weight_and_admits_oversized_messages_in_installments() {
    let (tx, rx) = channel(Config::<Vec<u8>>::bounded(1000).max_bytes(1 << 20).weigh()).unwrap();
    let p = Paced::new(tx, RateConfig::default().bytes(10_000, 1_000)).unwrap();
    let t = Instant::now();
    p.send(vec![0; 1_000]).await.unwrap(); // burst
    p.send(vec![0; 2_500]).await.unwrap(); // bigger than the burst: ~250 ms
    let el = t.elapsed();
    assert!(el >= Duration::from_millis(200), "too fast: {el:?}");
    assert_eq!(rx.stats().sent, 2);
}

#[tokio::test]
async fn concurrency_limit_caps_in_flight_work() {
    let lim = ConcurrencyLimit::new(3).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..20)
        .map(|_| {
            let (lim, live, peak) = (lim.clone(), live.clone(), peak.clone());
            tokio::spawn(async move {
                lim.run(async {
                    let n = live.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    live.fetch_sub(1, Ordering::SeqCst);
                })
                .await;
            })
        })
        .collect();
    for h in hs {
        h.await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    assert_eq!(lim.in_flight(), 0);
}

#[tokio::test]
async fn zero_rates_are_config_errors() {
    let (tx, _rx) = channel(Config::<u32>::bounded(10)).unwrap();
    assert_eq!(
        Paced::new(tx.clone(), RateConfig::default().msgs(0, 1))
            .err()
            .map(|e| e.to_string()),
        Some(ConfigError::Zero("msgs_per_sec").to_string())
    );
    assert!(Paced::new(tx, RateConfig::default().in_flight(0)).is_err());
}
