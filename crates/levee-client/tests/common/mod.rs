//! Test helpers: a real broker on a temporary directory, and a TCP proxy between client and
//! broker whose connections can be cut (to exercise reconnection without touching the broker).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use levee_broker::{Broker, BrokerConfig};
use levee_client::{Client, ClientOptions, Durability, Overflow, QueueConfig};
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub(crate) struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
    pub task: JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn broker() -> TestBroker {
    broker_with(|_| {}).await
}

pub(crate) async fn broker_with(tweak: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    tweak(&mut config);
    let broker = Broker::open(config).await.unwrap();
    let (addr, task) = broker.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    TestBroker {
        broker,
        addr,
        task,
        _dir: dir,
    }
}

pub(crate) async fn client(addr: SocketAddr) -> Client {
    Client::connect(addr, ClientOptions::default())
        .await
        .unwrap()
}

/// An in-memory queue with the given overflow policy and message limit.
pub(crate) fn memory(overflow: Overflow, max_messages: u64) -> QueueConfig {
    QueueConfig {
        overflow,
        max_messages,
        durability: Durability::Memory,
        ..QueueConfig::default()
    }
}

/// Polls `f` until it returns true (at most 10 s).
pub(crate) async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP proxy: forwards connections to `target` until [`Proxy::cut`] closes them all.
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    refuse: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Proxy {
        Self::with_latency(target, Duration::ZERO).await
    }

    /// A proxy adding `latency` to everything the broker sends (a longer round trip).
    pub(crate) async fn with_latency(target: SocketAddr, latency: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let refuse = Arc::new(AtomicBool::new(false));
        let (c, r) = (conns.clone(), refuse.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if r.load(Ordering::Acquire) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    if latency.is_zero() {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    } else {
                        delayed(inbound, outbound, latency).await;
                    }
                });
                c.lock().push(task);
            }
        });
        Proxy {
            addr,
            conns,
            refuse,
            accept,
        }
    }

    /// Closes every proxied connection (both sides see the socket close).
    pub(crate) fn cut(&self) {
        for t in self.conns.lock().drain(..) {
            t.abort();
        }
    }

    /// While set, new connections are accepted and closed at once (the broker looks down).
    pub(crate) fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::Release);
    }
}

/// Client -> broker as is; broker -> client delayed by `latency` (pipelined, not throttled).
async fn delayed(inbound: TcpStream, outbound: TcpStream, latency: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut ci, mut co) = inbound.into_split();
    let (mut bi, mut bo) = outbound.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut ci, &mut bo).await;
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let down = tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if co.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match bi.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = tx.send((tokio::time::Instant::now() + latency, buf[..n].to_vec()));
            }
        }
    }
    drop(tx);
    let _ = down.await;
    up.abort();
}

/// A consumer of `queue` with this credit policy (other options default).
pub(crate) async fn consumer(
    client: &Client,
    queue: &str,
    credit: levee_client::Credit,
    auto_ack: bool,
) -> levee_client::Consumer {
    client
        .consumer(
            queue,
            levee_client::ConsumerOptions {
                credit,
                auto_ack,
                ..levee_client::ConsumerOptions::default()
            },
        )
        .await
        .unwrap()
}
