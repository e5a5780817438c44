//! Runs one benchmark: prepares the target (fresh queue), starts consumers then producers, warms
//! up, measures, samples the server's RSS, shows progress, stops every worker, cleans up, and
//! hands the [`Summary`] to the report.
//!
//! Invariants: every payload carries two send times in its first [`STAMP_BYTES`] bytes
//! (nanoseconds since [`Ctx::epoch`], little-endian `u64`s): the *scheduled* one, then the
//! *actual* one (taken just before the message is handed to the client), so latency is measured
//! the same way for every target and in two bases. With `--rate`, latency from the scheduled time
//! makes a stalled producer show up as latency rather than as fewer samples (no coordinated
//! omission); latency from the actual time shows what the broker added; their difference is the
//! pacer's send-time error, reported on its own. Workers stop when [`Ctx::stop`] is called;
//! stragglers are aborted after a grace period.
//!
//! The producer pacer is precise ([`Pacer`]): it sleeps on a `timerfd` (a high-resolution
//! kernel timer, not tokio's millisecond wheel) until shortly before each slot, then spins
//! (yielding to the runtime, so I/O keeps flowing) until the slot. How far ahead it wakes adapts
//! to the wake-up lateness it observes, so the spin stays short (a paced producer costs CPU in
//! proportion to that lead, not a whole core).

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;

use super::args::{BenchArgs, PlotFormat, STAMP_BYTES, TargetKind};
use super::stats::{
    self, Calibration, Counts, LatencyRecorder, Sample, SecondPercentiles, Series, Summary,
    Timeline,
};
use super::{plot, report, rss, targets};

/// A boxed worker future.
pub(crate) type BoxFut<T> = Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send + 'static>>;
/// A producer or consumer, started once the run's context exists.
pub(crate) type Worker = Box<dyn FnOnce(Arc<Ctx>) -> BoxFut<Option<LatencyRecorder>> + Send>;

/// What a target prepared for one run.
pub(crate) struct Prepared {
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
pub(crate) struct Ctx {
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

    /// A payload of the run's size stamped with its scheduled send time and the actual one
    /// (now).
    pub(crate) fn payload(&self, scheduled: Instant) -> Vec<u8> {
        self.payload_at(scheduled, Instant::now())
    }

    /// A payload stamped with scheduled send time `scheduled` and actual send time `actual`.
    pub(crate) fn payload_at(&self, scheduled: Instant, actual: Instant) -> Vec<u8> {
        let mut v = vec![0u8; self.size];
        let ns = |t: Instant| t.saturating_duration_since(self.epoch).as_nanos() as u64;
        v[..8].copy_from_slice(&ns(scheduled).to_le_bytes());
        v[8..STAMP_BYTES].copy_from_slice(&ns(actual).to_le_bytes());
        v
    }

    /// Whether the run is over.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Ends the run: every worker's [`Ctx::wait_stop`] completes.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop_notify.notify_waiters();
    }

    /// Completes once the run is over. Cancel-safe.
    pub(crate) async fn wait_stop(&self) {
        let n = self.stop_notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.is_stopped() {
            return;
        }
        n.await;
    }

    /// A precise pacer for one producer (`--rate` split over producers).
    pub(crate) fn producer_pacer(&self) -> Pacer {
        Pacer::new(self.producer_interval, true)
    }

    /// A pacer for one consumer's acks (`--consumer-rate`; tokio's timer is precise enough).
    pub(crate) fn consumer_pacer(&self) -> Pacer {
        Pacer::new(self.consumer_interval, false)
    }

    /// A latency recorder sized for this run.
    pub(crate) fn recorder(&self) -> LatencyRecorder {
        LatencyRecorder::new(self.seconds)
    }

    /// Counts a message handed to the client.
    pub(crate) fn on_published(&self) {
        if self.position(Instant::now()).1 {
            self.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a publisher confirm: `stored` or refused / dropped.
    pub(crate) fn on_confirm(&self, stored: bool) {
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

    /// Records the receipt of `payload` (latencies from its two stamps) into `rec`.
    pub(crate) fn on_received(&self, rec: &mut LatencyRecorder, payload: &[u8]) {
        let now = Instant::now();
        let Some(stamp) = payload.get(..STAMP_BYTES) else {
            return;
        };
        let at = |b: &[u8]| {
            self.epoch + Duration::from_nanos(u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        let (scheduled, actual) = (at(&stamp[..8]), at(&stamp[8..]));
        let (sec, in_window) = self.position(now);
        let sample = Sample {
            scheduled: now.saturating_duration_since(scheduled),
            actual: now.saturating_duration_since(actual),
            send_error: actual.saturating_duration_since(scheduled),
        };
        rec.record(sec, sample, in_window);
    }

    /// Counts an acked message.
    pub(crate) fn on_acked(&self) {
        let (sec, in_window) = self.position(Instant::now());
        self.consumed_per_sec.add(sec);
        self.total_consumed.fetch_add(1, Ordering::Relaxed);
        if in_window {
            self.consumed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Notes a worker error (the first one is reported).
    pub(crate) fn note_error(&self, e: impl std::fmt::Display) {
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
pub(crate) struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
    precise: Option<PreciseSleep>,
}

impl Pacer {
    fn new(interval: Option<Duration>, precise: bool) -> Pacer {
        Pacer {
            interval,
            next: None,
            precise: interval.filter(|_| precise).map(PreciseSleep::new),
        }
    }

    /// Waits for the next slot and returns its scheduled time (now, when unpaced), or `None`
    /// once the run is over. A precise pacer returns within microseconds after the slot (the
    /// caller measures by how much: actual - scheduled). Cancel-safe (a cancelled wait keeps its
    /// slot).
    pub(crate) async fn tick(&mut self, ctx: &Ctx) -> Option<Instant> {
        if ctx.is_stopped() {
            return None;
        }
        let Some(interval) = self.interval else {
            return Some(Instant::now());
        };
        let at = *self.next.get_or_insert_with(Instant::now);
        if at > Instant::now() {
            match &mut self.precise {
                Some(p) => tokio::select! {
                    _ = p.sleep_until(at) => {}
                    _ = ctx.wait_stop() => return None,
                },
                None => tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = ctx.wait_stop() => return None,
                },
            }
        }
        self.next = Some(at + interval);
        Some(at)
    }
}

/// Sleeps until an instant with microsecond precision: a kernel timer (`timerfd`, where there is
/// one; tokio's millisecond timer otherwise) until `lead` before it, then a spin that yields to
/// the runtime on every turn. `lead` adapts to twice the typical (moving average) lateness of
/// the timer's wake-up plus a margin, within bounds: at most a quarter of the interval, so the
/// thread sleeps most of the time. On a busy machine a thread that spins through its whole
/// interval is a CPU hog to the scheduler, which then preempts it for whole time slices (tens of
/// milliseconds late); one that sleeps is woken promptly.
#[derive(Debug)]
struct PreciseSleep {
    #[cfg(target_os = "linux")]
    timer: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    lead: Duration,
    /// Largest lead: a quarter of the pacing interval, at most [`MAX_LEAD`].
    max_lead: Duration,
    /// Moving average of the timer's wake-up lateness.
    late: Duration,
}

/// Bounds and margin of the spin lead (tokio's timer needs the 2 ms: it rounds up to whole
/// milliseconds).
const MIN_LEAD: Duration = Duration::from_micros(20);
const MAX_LEAD: Duration = Duration::from_micros(500);
const TOKIO_LEAD: Duration = Duration::from_millis(2);
const LEAD_MARGIN: Duration = Duration::from_micros(20);

impl PreciseSleep {
    fn new(interval: Duration) -> PreciseSleep {
        let max_lead = (interval / 4).clamp(MIN_LEAD, MAX_LEAD);
        #[cfg(target_os = "linux")]
        {
            let timer = timerfd().ok();
            let lead = if timer.is_some() {
                max_lead
            } else {
                TOKIO_LEAD
            };
            PreciseSleep {
                timer,
                lead,
                max_lead,
                late: Duration::ZERO,
            }
        }
        #[cfg(not(target_os = "linux"))]
        PreciseSleep {
            lead: TOKIO_LEAD,
            max_lead,
            late: Duration::ZERO,
        }
    }

    fn adapts(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.timer.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Completes at `at` or within microseconds after it. Cancel-safe (nothing is consumed).
    async fn sleep_until(&mut self, at: Instant) {
        let now = Instant::now();
        if at > now + self.lead {
            let wake = at - self.lead;
            self.coarse_sleep_until(wake).await;
            if self.adapts() {
                let late = Instant::now().saturating_duration_since(wake);
                self.late = self.late.mul_f64(0.9) + late.mul_f64(0.1);
                self.lead = (self.late * 2 + LEAD_MARGIN).clamp(MIN_LEAD, self.max_lead);
            }
        }
        while Instant::now() < at {
            tokio::task::yield_now().await;
        }
    }

    async fn coarse_sleep_until(&mut self, wake: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.timer
            && arm(fd.get_ref(), wake.saturating_duration_since(Instant::now())).is_ok()
        {
            loop {
                let Ok(mut guard) = fd.readable().await else {
                    break;
                };
                let mut buf = [0u8; 8];
                // SAFETY: read(2) of 8 bytes into a local buffer of 8 bytes.
                let n = unsafe {
                    libc::read(
                        std::os::fd::AsRawFd::as_raw_fd(fd.get_ref()),
                        buf.as_mut_ptr().cast(),
                        8,
                    )
                };
                if n == 8 {
                    return;
                }
                guard.clear_ready();
                if Instant::now() >= wake {
                    return;
                }
            }
        }
        tokio::time::sleep_until(wake.into()).await;
    }
}

/// A non-blocking monotonic `timerfd`, registered with the runtime.
#[cfg(target_os = "linux")]
fn timerfd() -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: timerfd_create(2) has no memory arguments; a valid fd is owned by us alone.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is not owned by anything else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, so it stays open and the same fd for the
    // AsyncFd's whole life.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Arms the one-shot timer `after` from now (at least 1 ns: zero would disarm it). Re-arming
/// resets a pending expiration.
#[cfg(target_os = "linux")]
fn arm(fd: &std::os::fd::OwnedFd, after: Duration) -> std::io::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not requested (null).
    let r = unsafe {
        libc::timerfd_settime(
            std::os::fd::AsRawFd::as_raw_fd(fd),
            0,
            &spec,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs one benchmark as `args` describe (after the calibration run, with `--calibrate`) and
/// prints its report.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let calibration = if args.calibrate {
        let echo = BenchArgs {
            target: TargetKind::Echo,
            calibrate: false,
            plot: None,
            server: None,
            server_pid: None,
            ..args.clone()
        };
        let s = run_once(&echo)
            .await
            .context("the calibration run (echo)")?;
        Some(Calibration {
            target: s.target,
            msgs_per_sec: s.msgs_per_sec,
            latency_us: s.latency_us,
            latency_actual_us: s.latency_actual_us,
            send_error_us: s.send_error_us,
        })
    } else {
        None
    };
    let mut summary = run_once(&args).await?;
    summary.calibration = calibration;
    let mut plot_note = None;
    if let Some(path) = &args.plot {
        let bytes = match PlotFormat::of(path)? {
            PlotFormat::Png => plot::png(&summary)?,
            f => plot::render(&summary, f).into_bytes(),
        };
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        plot_note = Some(format!("plot written to {}", path.display()));
    }
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        if let Some(n) = plot_note {
            eprintln!("levee bench: {n}");
        }
    } else {
        print!("{}", report::table(std::slice::from_ref(&summary)));
        if let Some(n) = plot_note {
            println!("{n}");
        }
    }
    anyhow::ensure!(
        summary.consumed > 0,
        "no message was consumed in the measurement window"
    );
    Ok(())
}

/// One measured run against `args.target`: prepare, measure, clean up, summarize.
async fn run_once(args: &BenchArgs) -> anyhow::Result<Summary> {
    let prepared = targets::prepare(args)
        .await
        .with_context(|| format!("preparing the {} target", args.target.as_str()))?;
    let result = measure(
        args,
        prepared.consumers,
        prepared.producers,
        prepared.server_pid,
    )
    .await;
    let cleanup = prepared.cleanup.await;
    let (ctx, latency, rss_series, cpu) = result?;
    if let Err(e) = cleanup {
        eprintln!("levee bench: cleanup failed: {e:#}");
    }
    let summary = summarize(args, &ctx, &latency, prepared.version, rss_series, cpu);
    if let Some(e) = ctx
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        eprintln!("levee bench: a worker failed: {e}");
    }
    Ok(summary)
}

type Measured = (Arc<Ctx>, LatencyRecorder, Vec<Option<u64>>, CpuUse);

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
    // CPU seconds of the server tree and of this process, at the window's start and end.
    let cpu_now = move || {
        let server = server_pid.and_then(rss::tree_cpu_secs);
        (Instant::now(), server, rss::own_cpu_secs())
    };
    let mut cpu_start = None;
    let mut cpu_end = None;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let elapsed = now - ctx.epoch;
        if cpu_start.is_none() && elapsed >= ctx.warmup {
            cpu_start = Some(tokio::task::spawn_blocking(cpu_now).await?);
        }
        if cpu_end.is_none() && elapsed >= ctx.end {
            cpu_end = Some(tokio::task::spawn_blocking(cpu_now).await?);
        }
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
    let cpu = match (cpu_start, cpu_end) {
        (Some((t0, s0, c0)), Some((t1, s1, c1))) => {
            let secs = (t1 - t0).as_secs_f64();
            let per = |a: Option<f64>, b: Option<f64>| Some((b? - a?).max(0.0) / secs);
            CpuUse {
                server_cores: per(s0, s1),
                client_cores: per(c0, c1),
            }
        }
        _ => CpuUse::default(),
    };
    Ok((ctx, latency, rss_series, cpu))
}

/// Average CPU use over the measurement window, in cores (1.0: one core busy all the time).
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    server_cores: Option<f64>,
    client_cores: Option<f64>,
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
    cpu: CpuUse,
) -> Summary {
    let counts = ctx.counts();
    let (msgs, mb, confirmed, growth) = stats::rates(counts, args.size, args.duration);
    // CPU per consumed message (each was published, confirmed, delivered and acked), in µs.
    let per_msg = |cores: Option<f64>| cores.filter(|_| msgs > 0.0).map(|c| c * 1e6 / msgs);
    let used = ctx.end.as_secs_f64().ceil() as usize;
    let cut = |v: Vec<u64>| v.into_iter().take(used).collect::<Vec<_>>();
    let series = |per: Vec<Option<SecondPercentiles>>, f: fn(SecondPercentiles) -> u64| {
        cut(per.into_iter().map(|p| p.map_or(0, f)).collect())
    };
    let p50 = |p: SecondPercentiles| p.p50;
    let p99 = |p: SecondPercentiles| p.p99;
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
        queues: args.queues,
        linger_us: (args.target == TargetKind::Levee).then(|| args.linger().as_micros() as u64),
        latency_us: latency.window(),
        latency_actual_us: latency.window_actual(),
        send_error_us: latency.window_send_error(),
        calibration: None,
        peak_rss_bytes: rss_series.iter().flatten().copied().max(),
        server_cpu_us_per_msg: per_msg(cpu.server_cores),
        client_cpu_us_per_msg: per_msg(cpu.client_cores),
        timeline: Timeline {
            warmup_s: args.warmup.as_secs_f64(),
            confirmed: cut(ctx.confirmed_per_sec.snapshot()),
            consumed: cut(ctx.consumed_per_sec.snapshot()),
            p50_us: series(latency.per_second(), p50),
            p99_us: series(latency.per_second(), p99),
            actual_p50_us: series(latency.per_second_actual(), p50),
            actual_p99_us: series(latency.per_second_actual(), p99),
            send_error_p99_us: series(latency.per_second_send_error(), p99),
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
        let p = ctx.payload_at(t, t + Duration::from_micros(7));
        assert_eq!(p.len(), 64);
        let ns = u64::from_le_bytes(p[..8].try_into().unwrap());
        assert_eq!(ns, 1_500_000_000);
        let ns = u64::from_le_bytes(p[8..16].try_into().unwrap());
        assert_eq!(ns, 1_500_007_000);
        let mut rec = ctx.recorder();
        // Scheduled at the epoch, sent 10 ms late, received 20 ms after it was sent.
        let sent = ctx.payload_at(ctx.epoch, ctx.epoch + Duration::from_millis(10));
        std::thread::sleep(
            (ctx.epoch + Duration::from_millis(30)).saturating_duration_since(Instant::now()),
        );
        ctx.on_received(&mut rec, &sent);
        let l = rec.window();
        // Received during the warm-up: only in the per-second series.
        assert_eq!(l.count, 0);
        let sched = rec.per_second()[0].unwrap().p50;
        let actual = rec.per_second_actual()[0].unwrap().p50;
        let err = rec.per_second_send_error()[0].unwrap().p50;
        assert!(sched >= 29_000, "{sched}");
        assert!(
            actual >= 19_000 && actual + 9_000 <= sched,
            "{actual} {sched}"
        );
        assert!((9_900..=10_100).contains(&err), "{err}");
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
    async fn precise_pacer_keeps_the_schedule_in_real_time() {
        // 1,000 msg/s: 20 slots, each scheduled 1 ms after the last. Only ordering and a
        // generous bound are asserted (the machine is shared); the error itself is reported by
        // `levee bench` as `send_error_us`.
        let ctx = Ctx::new(&args(&["--rate", "1000"]));
        let mut p = ctx.producer_pacer();
        let first = p.tick(&ctx).await.unwrap();
        let mut prev = first;
        for _ in 0..20 {
            let t = p.tick(&ctx).await.unwrap();
            let now = Instant::now();
            assert_eq!(t - prev, Duration::from_millis(1));
            assert!(now >= t, "a slot is never returned early");
            prev = t;
        }
        assert!(Instant::now() - first < Duration::from_secs(5));
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
