//! Alert webhooks: each fire and clear of a rule with a `webhook` is POSTed there as JSON (the
//! transition: rule, queue, firing, at, value, detail), by one task, over plain HTTP/1.1.
//!
//! # Invariants
//! - Bounded: at most [`QUEUE`] deliveries wait (more are dropped and counted); each is tried at
//!   most [`ATTEMPTS`] times, [`TIMEOUT`] per attempt, with 1 s then 2 s between attempts; a 2xx
//!   answer is success. The broker never waits for a webhook.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::alerts::Transition;

/// Deliveries waiting at most.
pub(crate) const QUEUE: usize = 256;
/// Attempts per delivery.
pub(crate) const ATTEMPTS: u32 = 3;
/// Connect + write + read of the status line, per attempt.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Job {
    url: String,
    body: String,
}

/// The broker's end of the webhook channel.
pub(crate) struct Sender {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    dropped: AtomicU64,
}

impl Default for Sender {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Sender {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Sender {
    pub(crate) fn send(&self, url: String, t: &Transition) {
        let body = serde_json::to_string(t).unwrap_or_default();
        if self.tx.try_send(Job { url, body }).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<Job>> {
        self.rx.lock().take()
    }
}

/// Delivers jobs until the broker is gone.
pub(crate) async fn run(mut rx: mpsc::Receiver<Job>, ops: Weak<super::Ops>) {
    while let Some(job) = rx.recv().await {
        let mut ok = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
            match tokio::time::timeout(TIMEOUT, post(&job.url, &job.body)).await {
                Ok(Ok(())) => {
                    ok = true;
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(url = %job.url, error = %e, attempt, "webhook failed");
                }
                Err(_) => tracing::debug!(url = %job.url, attempt, "webhook timed out"),
            }
        }
        let Some(ops) = ops.upgrade() else { break };
        if ok {
            ops.webhooks_sent.fetch_add(1, Ordering::Relaxed);
        } else {
            ops.webhooks_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(url = %job.url, attempts = ATTEMPTS, "alert webhook not delivered");
        }
    }
}

/// Checks a webhook URL: `http://host[:port][/path]`.
pub(crate) fn parse(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook {url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(format!("webhook {url:?}: expected http://host[:port]/path"));
    }
    let authority = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_string()))
}

async fn post(url: &str, body: &str) -> std::io::Result<()> {
    let (authority, path) = parse(url).map_err(std::io::Error::other)?;
    let mut s = tokio::net::TcpStream::connect(&authority).await?;
    let host = authority.trim_end_matches(":80");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: levee\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut head[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        other => Err(std::io::Error::other(format!("answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_http_urls() {
        assert_eq!(
            super::parse("http://127.0.0.1:9/hook").unwrap(),
            ("127.0.0.1:9".into(), "/hook".into())
        );
        assert_eq!(super::parse("http://example").unwrap().0, "example:80");
        assert!(super::parse("https://x/").is_err());
    }
}
