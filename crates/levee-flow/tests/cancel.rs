//! Cancel safety of the batch forms: `recv_batch_into` and `send_batch_from` are cancelled at
//! random points (a `select!` against a random short timer, and futures polled a random number
//! of times then dropped), and every message still arrives exactly once, in order.

use std::collections::VecDeque;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use levee_flow::{Config, channel};
use rand::{Rng, SeedableRng, rngs::StdRng};

const N: u64 = 3_000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn random_pause(rng: &mut StdRng) {
    if rng.random_bool(0.5) {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..150))).await;
    }
}

#[test]
fn recv_batch_into_cancelled_at_random_points_loses_nothing() {
    rt().block_on(async {
        let (tx, rx) = channel(Config::<u64>::bounded(16)).unwrap();
        let producer = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(1);
            for v in 0..N {
                tx.send(v).await.unwrap();
                if rng.random_bool(0.05) {
                    random_pause(&mut rng).await;
                }
            }
        });
        let mut rng = StdRng::seed_from_u64(2);
        let mut buf = Vec::new();
        let (mut cancelled, mut completed) = (0u32, 0u32);
        loop {
            let max = rng.random_range(1..40);
            let wait = Duration::from_millis(rng.random_range(1..20));
            let timer = tokio::time::sleep(Duration::from_micros(rng.random_range(0..300)));
            tokio::select! {
                r = rx.recv_batch_into(&mut buf, max, wait) => {
                    completed += 1;
                    if r.is_none() {
                        break;
                    }
                }
                _ = timer => cancelled += 1,
            }
            // Also drop a future after a random number of polls.
            let polls = rng.random_range(0..4);
            let mut fut = pin!(rx.recv_batch_into(&mut buf, max, wait));
            for _ in 0..polls {
                if futures::poll!(fut.as_mut()).is_ready() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        producer.await.unwrap();
        assert_eq!(
            buf,
            (0..N).collect::<Vec<_>>(),
            "every message once, in order"
        );
        assert!(
            cancelled > 0 && completed > 0,
            "{cancelled} cancelled, {completed} completed"
        );
        let s = rx.stats();
        assert!(s.balanced());
        assert_eq!((s.sent, s.received), (N, N));
    });
}

#[test]
fn send_batch_from_cancelled_at_random_points_loses_nothing() {
    rt().block_on(async {
        let (tx, rx) = channel(Config::<u64>::bounded(4)).unwrap();
        let consumer = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(3);
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
                if rng.random_bool(0.1) {
                    random_pause(&mut rng).await;
                }
            }
            got
        });
        let mut rng = StdRng::seed_from_u64(4);
        let mut msgs: VecDeque<u64> = (0..N).collect();
        let (mut cancelled, mut sent) = (0u32, 0usize);
        while !msgs.is_empty() {
            let timer = tokio::time::sleep(Duration::from_micros(rng.random_range(0..200)));
            tokio::select! {
                r = tx.send_batch_from(&mut msgs) => sent += r.unwrap(),
                _ = timer => cancelled += 1,
            }
            let polls = rng.random_range(0..4);
            let mut fut = pin!(tx.send_batch_from(&mut msgs));
            for _ in 0..polls {
                if let Poll::Ready(r) = futures::poll!(fut.as_mut()) {
                    sent += r.unwrap();
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let s = tx.stats();
        assert!(s.balanced());
        assert_eq!(s.sent, N, "each message accepted exactly once");
        drop(tx);
        let got = consumer.await.unwrap();
        assert_eq!(
            got,
            (0..N).collect::<Vec<_>>(),
            "every message once, in order"
        );
        assert!(cancelled > 0, "the test cancelled sends");
        assert!(sent <= N as usize);
    });
}

#[tokio::test]
async fn send_batch_from_hands_back_the_failing_message_and_keeps_the_rest() {
    let (tx, rx) = channel(Config::<u32>::bounded(8)).unwrap();
    drop(rx);
    let mut msgs: VecDeque<u32> = (1..=3).collect();
    let e = tx.send_batch_from(&mut msgs).await.unwrap_err();
    assert_eq!(e.into_inner(), 1);
    assert_eq!(msgs, VecDeque::from([2, 3]));
}
