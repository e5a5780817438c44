//! Runs one benchmark: prepares the target (fresh queue), starts consumers then producers, warms
//! up, measures, samples the server's RSS, shows progress, stops every worker, cleans up, and
//! hands the [`Summary`] to the report.
//!
//! Invariants: every payload carries its send time in its first [`STAMP_BYTES`] bytes
//! (nanoseconds since [`Ctx::epoch`], little-endian), so latency is measured the same way for every
//! target. With `--rate`, the send time is the message's *scheduled* time, so a stalled producer
//! shows up as latency rather than as fewer samples (no coordinated omission). Workers stop when
//! [`Ctx::stop`] is called; stragglers are aborted after a grace period.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use super::args::{BenchArgs, STAMP_BYTES};
use super::stats::{self, Counts, LatencyRecorder, Series, Summary, Timeline};
use super::{plot, report, rss, targets};

/// A boxed worker future.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'static>>;
/// A producer or consumer, started once the run's context exists.
pub type Worker = Box<dyn FnOnce(Arc<Ctx>) -> BoxFut<Option<LatencyRecorder>> + Send>;

/// What a target prepared for one run.
pub struct Prepared {
    /// Consumer workers (each returns its latency recorder).
    pub consumers: Vec<Worker>,
    /// Producer workers.
    pub producers: Vec<Worker>,
    /// Deletes the queue and stops anything the target started.
    pub cleanup: BoxFut<()>,
    /// Server version string.
    pub version: String,
    /// Server process for RSS sampling.
    pub server_pid: Option<u32>,
}

/// Shared state of a running benchmark.
#[derive(Debug)]
pub struct Ctx {
    /// Time zero of the run; send-time stamps are relative to it.
    pub epoch: Instant,
    warmup: Duration,
    end: Duration,
    size: usize,
    producer_interval: Option<Duration>,
    consumer_interval: Option<Duration>,
    stopped: AtomicBool,
    stop_notify: Notify,
    published: AtomicU64,
    confirmed: AtomicU64,
    rejected: AtomicU64,
    consumed: AtomicU64,
    total_consumed: AtomicU64,
    confirmed_per_sec: Series,
    consumed_per_sec: Series,
    seconds: usize,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    fn new(args: &BenchArgs) -> Ctx {
        let total = args.warmup + args.duration;
        let seconds = total.as_secs_f64().ceil() as usize + 1;
        let per = |rate: Option<u64>, n: usize| {
            rate.map(|r| Duration::from_secs_f64(n as f64 / r as f64))
        };
        Ctx {
            epoch: Instant::now(),
            warmup: args.warmup,
            end: total,
            size: args.size as usize,
            producer_interval: per(args.rate, args.producers),
            consumer_interval: per(args.consumer_rate, 1),
            stopped: AtomicBool::new(false),
            stop_notify: Notify::new(),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            total_consumed: AtomicU64::new(0),
            confirmed_per_sec: Series::new(seconds),
            consumed_per_sec: Series::new(seconds),
            seconds,
            first_error: std::sync::Mutex::new(None),
        }
    }

    fn position(&self, t: Instant) -> (usize, bool) {
        let e = t.saturating_duration_since(self.epoch);
        (e.as_secs() as usize, e >= self.warmup && e < self.end)
    }

    /// A payload of the run's size stamped with send time `t`.
    pub fn payload(&self, t: Instant) -> Vec<u8> {
        let mut v = vec![0u8; self.size];
        let ns = t.saturating_duration_since(self.epoch).as_nanos() as u64;
        v[..STAMP_BYTES].copy_from_slice(&ns.to_le_bytes());
        v
    }

    /// Whether the run is over.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Ends the run: every worker's [`Ctx::wait_stop`] completes.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
    }

    /// Completes once the run is over. Cancel-safe.
    pub async fn wait_stop(&self) {
        let n = self.stop_notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        n.await;
    }

    /// A pacer for one producer (`--rate` split over producers).
    pub fn producer_pacer(&self) -> Pacer {
        Pacer::new(self.producer_interval)
    }

    /// A pacer for one consumer's acks (`--consumer-rate`).
    pub fn consumer_pacer(&self) -> Pacer {
        Pacer::new(self.consumer_interval)
    }

    /// A latency recorder sized for this run.
    pub fn recorder(&self) -> LatencyRecorder {
        LatencyRecorder::new(self.seconds)
    }

    /// Counts a message handed to the client.
    pub fn on_published(&self) {
        if self.position(Instant::now()).1 {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a publisher confirm: `stored` or refused / dropped.
    pub fn on_confirm(&self, stored: bool) {
        let (sec, in_window) = self.position(Instant::now());
        if stored {
            self.confirmed_per_sec.add(sec);
        }
        if in_window {
            if stored {
                self.confirmed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records the receipt of `payload` (latency from its stamp) into `rec`.
    pub fn on_received(&self, rec: &mut LatencyRecorder, payload: &[u8]) {
        let now = Instant::now();
        let Some(stamp) = payload.get(..STAMP_BYTES) else {
            return;
        };
        let ns = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
        let sent = self.epoch + Duration::from_nanos(ns);
        let (sec, in_window) = self.position(now);
        rec.record(sec, now.saturating_duration_since(sent), in_window);
    }

    /// Counts an acked message.
    pub fn on_acked(&self) {
        let (sec, in_window) = self.position(Instant::now());
        self.consumed_per_sec.add(sec);
        self.total_consumed.fetch_add(1, Ordering::Relaxed);
        if in_window {
            self.consumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes a worker error (the first one is reported).
    pub fn note_error(&self, e: impl std::fmt::Display) {
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.to_string());
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            published: self.published.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            consumed: self.consumed.load(Ordering::Relaxed),
        }
    }
}

/// Paces a worker at a fixed interval (or not at all).
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    fn new(interval: Option<Duration>) -> Pacer {
        Pacer {
            interval,
            next: None,
        }
    }

    /// Waits for the next slot and returns its scheduled time (now, when unpaced), or `None`
    /// once the run is over. Cancel-safe (a cancelled wait keeps its slot).
    pub async fn tick(&mut self, ctx: &Ctx) -> Option<Instant> {
        if ctx.is_stopped() {
            return None;
        }
        let Some(interval) = self.interval else {
            return Some(Instant::now());
        };
        let at = *self.next.get_or_insert_with(Instant::now);
        if at > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = ctx.wait_stop() => return None,
            }
        }
        self.next = Some(at + interval);
        Some(at)
    }
}

/// Runs one benchmark as `args` describe and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let prepared = targets::prepare(&args)
        .await
        .with_context(|| format!("preparing the {} target", args.target.as_str()))?;
    let result = measure(
        &args,
        prepared.consumers,
        prepared.producers,
        prepared.server_pid,
    )
    .await;
    let cleanup = prepared.cleanup.await;
    let (ctx, latency, rss_series) = result?;
    if let Err(e) = cleanup {
        eprintln!("levee bench: cleanup failed: {e:#}");
    }
    let summary = summarize(&args, &ctx, &latency, prepared.version, rss_series);
    if let Some(e) = ctx
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        eprintln!("levee bench: a worker failed: {e}");
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::render(&summary, path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", report::table(std::slice::from_ref(&summary)));
    }
    anyhow::ensure!(
        summary.consumed > 0,
        "no message was consumed in the measurement window"
    );
    Ok(())
}

type Measured = (Arc<Ctx>, LatencyRecorder, Vec<Option<u64>>);

async fn measure(
    args: &BenchArgs,
    consumers: Vec<Worker>,
    producers: Vec<Worker>,
    server_pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let ctx = Arc::new(Ctx::new(args));
    let mut handles = Vec::new();
    for w in consumers.into_iter().chain(producers) {
        handles.push(tokio::spawn(w(ctx.clone())));
    }
    let bar = progress(args, &ctx);
    // RSS: sampled every 100 ms, the largest per second kept.
    let mut rss_series: Vec<Option<u64>> = vec![None; ctx.seconds];
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_consumed = 0u64;
    let mut last_at = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now - ctx.epoch;
        if let Some(pid) = server_pid {
            let sec = (elapsed.as_secs() as usize).min(ctx.seconds - 1);
            if let Some(r) = tokio::task::spawn_blocking(move || rss::tree_rss(pid)).await? {
                let slot = &mut rss_series[sec];
                *slot = Some(slot.map_or(r, |s| s.max(r)));
            }
        }
        if let Some(b) = &bar {
            b.set_position(elapsed.as_millis().min(ctx.end.as_millis()) as u64);
            if now - last_at >= Duration::from_secs(1) {
                let c = ctx.total_consumed.load(Ordering::Relaxed);
                let rate = (c - last_consumed) as f64 / (now - last_at).as_secs_f64();
                let phase = if elapsed < ctx.warmup {
                    "warm-up"
                } else {
                    "measuring"
                };
                b.set_message(format!("{phase}: {rate:.0} msg/s consumed"));
                last_consumed = c;
                last_at = now;
            }
        }
        if elapsed >= ctx.end || handles.iter().all(|h| h.is_finished()) {
            break;
        }
    }
    ctx.stop();
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut latency = ctx.recorder();
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(grace, h).await {
            Ok(Ok(Ok(Some(rec)))) => latency.merge(&rec),
            Ok(Ok(Ok(None))) => {}
            Ok(Ok(Err(e))) => ctx.note_error(format!("{e:#}")),
            Ok(Err(e)) => ctx.note_error(e),
            Err(_) => {
                abort.abort();
                ctx.note_error("a worker did not stop within 5 s and was aborted");
            }
        }
    }
    Ok((ctx, latency, rss_series))
}

fn progress(args: &BenchArgs, ctx: &Ctx) -> Option<indicatif::ProgressBar> {
    if args.json || !std::io::stdout().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(ctx.end.as_millis() as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed:>4} / {len_s} {msg}")
            .map(|s| {
                s.with_key(
                    "len_s",
                    |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}s", st.len().unwrap_or(0) / 1000);
                    },
                )
            })
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

fn summarize(
    args: &BenchArgs,
    ctx: &Ctx,
    latency: &LatencyRecorder,
    version: String,
    rss_series: Vec<Option<u64>>,
) -> Summary {
    let counts = ctx.counts();
    let (msgs, mb, confirmed, growth) = stats::rates(counts, args.size, args.duration);
    let per = latency.per_second();
    let used = ctx.end.as_secs_f64().ceil() as usize;
    let cut = |v: Vec<u64>| v.into_iter().take(used).collect::<Vec<_>>();
    Summary {
        target: args.target.as_str(),
        variant: args.variant(),
        label: args.label.clone(),
        server_version: version,
        producers: args.producers,
        consumers: args.consumers,
        size: args.size,
        rate: args.rate,
        consumer_rate: args.consumer_rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        published: counts.published,
        confirmed: counts.confirmed,
        rejected: counts.rejected,
        consumed: counts.consumed,
        msgs_per_sec: msgs,
        mb_per_sec: mb,
        confirmed_per_sec: confirmed,
        backlog_growth_per_sec: growth,
        latency_us: latency.window(),
        peak_rss_bytes: rss_series.iter().flatten().copied().max(),
        timeline: Timeline {
            warmup_s: args.warmup.as_secs_f64(),
            confirmed: cut(ctx.confirmed_per_sec.snapshot()),
            consumed: cut(ctx.consumed_per_sec.snapshot()),
            p50_us: cut(per.iter().map(|p| p.map_or(0, |p| p.0)).collect()),
            p99_us: cut(per.iter().map(|p| p.map_or(0, |p| p.1)).collect()),
            rss_bytes: cut(rss_series.iter().map(|r| r.unwrap_or(0)).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Wrap::try_parse_from(std::iter::once("bench").chain(extra.iter().copied()))
            .unwrap()
            .b
    }

    #[test]
    fn payload_carries_its_send_time() {
        let ctx = Ctx::new(&args(&["--size", "64"]));
        let t = ctx.epoch + Duration::from_millis(1500);
        let p = ctx.payload(t);
        assert_eq!(p.len(), 64);
        let ns = u64::from_le_bytes(p[..8].try_into().unwrap());
        assert_eq!(ns, 1_500_000_000);
        let mut rec = ctx.recorder();
        let sent = ctx.payload(ctx.epoch);
        std::thread::sleep(Duration::from_millis(20));
        ctx.on_received(&mut rec, &sent);
        let l = rec.window();
        // Received during the warm-up: only in the per-second series.
        assert_eq!(l.count, 0);
        assert!(rec.per_second()[0].unwrap().0 >= 19_000);
    }

    #[test]
    fn counts_only_inside_the_window() {
        let ctx = Ctx::new(&args(&["--warmup", "0s", "--duration", "60s"]));
        ctx.on_published();
        ctx.on_confirm(true);
        ctx.on_confirm(false);
        ctx.on_acked();
        let c = ctx.counts();
        assert_eq!(
            (c.published, c.confirmed, c.rejected, c.consumed),
            (1, 1, 1, 1)
        );
        let warm = Ctx::new(&args(&["--warmup", "60s"]));
        warm.on_published();
        warm.on_confirm(true);
        warm.on_acked();
        let c = warm.counts();
        assert_eq!((c.published, c.confirmed, c.consumed), (0, 0, 0));
        assert_eq!(warm.consumed_per_sec.snapshot()[0], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_keeps_the_schedule_and_stops() {
        let ctx = Ctx::new(&args(&["--rate", "100", "--producers", "2"]));
        let mut p = ctx.producer_pacer();
        let t0 = p.tick(&ctx).await.unwrap();
        let t1 = p.tick(&ctx).await.unwrap();
        let t2 = p.tick(&ctx).await.unwrap();
        // 100 msg/s over 2 producers: 50 msg/s each.
        assert_eq!(t1 - t0, Duration::from_millis(20));
        assert_eq!(t2 - t1, Duration::from_millis(20));
        ctx.stop();
        assert!(p.tick(&ctx).await.is_none());
        let mut free = ctx.consumer_pacer();
        assert!(free.tick(&ctx).await.is_none());
    }

    #[tokio::test]
    async fn wait_stop_wakes_every_waiter() {
        let ctx = Arc::new(Ctx::new(&args(&[])));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = ctx.clone();
                tokio::spawn(async move { c.wait_stop().await })
            })
            .collect();
        tokio::task::yield_now().await;
        ctx.stop();
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap();
        }
        // Already stopped: returns at once.
        ctx.wait_stop().await;
    }
}
