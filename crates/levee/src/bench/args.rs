//! The flags of `levee bench` and their parsing: sizes (`1KiB`, `256`, `64MiB`), durations
//! (`10s`, `500ms`, `2`), fsync policies, and the queue config every target is given.
//!
//! Invariant: a [`BenchArgs`] that passed [`BenchArgs::validate`] describes a run every target can
//! carry out (payload large enough for the send-time stamp, windows and credit > 0, peer-only
//! options only where the peer supports them).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Args, ValueEnum};
use levee_client::{Durability, Fsync, Overflow, QueueConfig};
use serde::Serialize;

pub(crate) use crate::units::{parse_duration, parse_size};

/// Bytes at the start of every payload holding its send times: the scheduled one, then the
/// actual one (each nanoseconds since the run's epoch, little-endian `u64`).
pub(crate) const STAMP_BYTES: usize = 16;

/// The system under test.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TargetKind {
    /// The Levee broker (started by the tool on a temporary data dir unless `--server` is given).
    Levee,
    /// RabbitMQ over AMQP 0-9-1 (`lapin`), quorum or classic queue (`--rabbit-queue`).
    Rabbitmq,
    /// NATS JetStream (`async-nats`): file storage, work-queue retention, explicit acks.
    Nats,
    /// No broker: an in-process echo (a bounded channel per queue from producer tasks to
    /// consumer tasks), measuring the harness's own floor (pacer, task wake-ups, recording).
    Echo,
}

impl TargetKind {
    /// Lower-case name, as on the command line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TargetKind::Levee => "levee",
            TargetKind::Rabbitmq => "rabbitmq",
            TargetKind::Nats => "nats",
            TargetKind::Echo => "echo",
        }
    }
}

/// RabbitMQ queue type.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RabbitQueue {
    /// Raft-replicated queue; fsyncs before confirming.
    Quorum,
    /// Classic durable queue (persistent messages).
    Classic,
}

/// Flags of `levee bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// System under test.
    #[arg(long, value_enum, default_value_t = TargetKind::Levee)]
    pub target: TargetKind,
    /// Address of the system under test. levee: HOST:PORT (default: start a broker on a temporary
    /// data dir); rabbitmq: AMQP URI (default amqp://127.0.0.1:5672/%2f); nats: HOST:PORT (default
    /// 127.0.0.1:4222).
    #[arg(long)]
    pub server: Option<String>,
    /// Login and TLS for the Levee target (the top-level `--user`, `--password`, `--tls-ca`,
    /// ... options, given before `bench`).
    #[arg(skip)]
    pub access: crate::cli::Access,
    /// PID of the server process, for RSS sampling (its descendants are included). Automatic
    /// for a Levee broker the tool started.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Payload size (bytes, or with a unit: 256, 1KiB, 1MiB, 1kB); at least 16 (the scheduled and actual send times).
    #[arg(long, default_value = "1KiB", value_parser = parse_size)]
    pub size: u64,
    /// Measured time, after the warm-up (10s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring (not counted).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Queues (streams for nats): producer i publishes to queue i mod N, consumer j consumes
    /// from queue j mod N, so each queue needs at least one of each.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Fixed aggregate publish rate in messages/s (split evenly over producers); unthrottled if
    /// absent. A precise pacer (a timerfd wake-up shortly before each slot, then a spin) sends
    /// each message at its scheduled time; latency is reported both from the scheduled time
    /// (`latency_us`: no coordinated omission) and from the actual send time
    /// (`latency_actual_us`), with the pacer's error (`send_error_us`: actual - scheduled).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Each consumer acks at most this many messages/s (a slow consumer; overload runs).
    #[arg(long)]
    pub consumer_rate: Option<u64>,
    /// Most messages in one publish frame (levee; the peers' clients pipeline on their own).
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// How long the levee client holds an open batch before sending it (the producer's
    /// `linger`). Default: 0 with `--rate` (each paced message is sent at once, as the peers'
    /// clients do), the client's default of 1ms otherwise.
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,
    /// Unconfirmed publishes per producer (the publisher-confirm window, all targets).
    #[arg(long, default_value_t = 1000)]
    pub inflight: u32,
    /// Consumer credit / prefetch per consumer (levee `Credit::Fixed`, RabbitMQ basic.qos, NATS
    /// pull batch and max_ack_pending).
    #[arg(long, default_value_t = 1000)]
    pub credit: u32,
    /// Queue storage: disk | memory (levee; peers are always on disk).
    #[arg(long, default_value = "disk")]
    pub durability: String,
    /// Fsync policy of a levee disk queue: always | never | interval:MS.
    #[arg(long, default_value = "always", value_parser = parse_fsync)]
    pub fsync: Fsync,
    /// Overflow policy: block | reject | drop-newest | drop-oldest (peers: block and reject map to
    /// reject-publish / discard-new, drop-oldest to drop-head / discard-old).
    #[arg(long, default_value = "block")]
    pub overflow: Overflow,
    /// Queue limit on messages (levee default 100 000; peers unlimited unless given).
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Queue limit on payload bytes (levee default 64 MiB; peers unlimited unless given).
    #[arg(long, value_parser = parse_size)]
    pub max_bytes: Option<u64>,
    /// RabbitMQ queue type.
    #[arg(long, value_enum, default_value_t = RabbitQueue::Quorum)]
    pub rabbit_queue: RabbitQueue,
    /// levee on a cluster: declare the bench's queues replicated with this many copies (the
    /// cluster's node count; disk, fsync always). `--server` then takes the nodes
    /// comma-separated, and every client follows its queue to the node serving it. The queues
    /// are left in place after the run (deleting a replicated queue is not replicated yet).
    #[arg(long, default_value_t = 1)]
    pub replicas: u8,
    /// Queue / stream name (default: a fresh `bench-<pid>-<millis>`); deleted after the run.
    #[arg(long)]
    pub queue: Option<String>,
    /// Free-text label copied into the JSON line and table (e.g. a matrix case name).
    #[arg(long)]
    pub label: Option<String>,
    /// Print one JSON line per run instead of the table (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Before the run, measure the harness's own floor: the same flags against `--target echo`
    /// (no broker); reported as `calibration` in the JSON line and under the table.
    #[arg(long)]
    pub calibrate: bool,
    /// Write a chart of throughput, latency and server RSS over time: .svg, .png, or .html for
    /// a self-contained page.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Chart formats `--plot` writes, by file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlotFormat {
    /// SVG.
    Svg,
    /// PNG (the SVG rasterised).
    Png,
    /// A self-contained HTML page around the SVG.
    Html,
}

impl PlotFormat {
    /// The format for `path`'s extension (case-insensitive), or a clear error.
    pub(crate) fn of(path: &std::path::Path) -> anyhow::Result<PlotFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(PlotFormat::Svg),
            Some("png") => Ok(PlotFormat::Png),
            Some("html" | "htm") => Ok(PlotFormat::Html),
            other => bail!(
                "--plot {}: unsupported file type {}; use .svg, .png or .html",
                path.display(),
                other.map_or("(no extension)".to_string(), |e| format!(".{e}"))
            ),
        }
    }
}

impl BenchArgs {
    /// Checks the flags together; a clear error for anything no target can run.
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.producers >= 1, "--producers must be at least 1");
        ensure!(self.consumers >= 1, "--consumers must be at least 1");
        ensure!(
            self.size >= STAMP_BYTES as u64,
            "--size must be at least {STAMP_BYTES} bytes (the scheduled and actual send times), got {}",
            self.size
        );
        ensure!(
            self.size <= 16 << 20,
            "--size must be at most 16 MiB, got {}",
            self.size
        );
        ensure!(!self.duration.is_zero(), "--duration must be > 0");
        ensure!(
            self.duration + self.warmup <= Duration::from_secs(24 * 3600),
            "--duration plus --warmup must be at most 24 h"
        );
        ensure!(
            (1..=levee_proto::MAX_BATCH).contains(&self.batch),
            "--batch must be in 1..={}",
            levee_proto::MAX_BATCH
        );
        ensure!(self.inflight >= 1, "--inflight must be at least 1");
        ensure!(self.queues >= 1, "--queues must be at least 1");
        ensure!(
            self.producers >= self.queues && self.consumers >= self.queues,
            "--queues {} needs at least as many producers and consumers (got {} / {}): \
             every queue gets one of each",
            self.queues,
            self.producers,
            self.consumers
        );
        ensure!(
            !(self.calibrate && self.target == TargetKind::Echo),
            "--calibrate runs --target echo before the target; --target echo is itself the calibration"
        );
        if let Some(p) = &self.plot {
            PlotFormat::of(p)?;
        }
        ensure!(self.credit >= 1, "--credit must be at least 1");
        if let Some(r) = self.rate {
            ensure!(r >= 1, "--rate must be at least 1 msg/s");
        }
        if let Some(r) = self.consumer_rate {
            ensure!(r >= 1, "--consumer-rate must be at least 1 msg/s");
        }
        if matches!(self.target, TargetKind::Rabbitmq | TargetKind::Nats) {
            ensure!(
                self.durability == "disk",
                "--durability memory is a levee option; {} queues are always on disk here",
                self.target.as_str()
            );
            ensure!(
                matches!(
                    self.overflow,
                    Overflow::Block | Overflow::Reject | Overflow::DropOldest
                ),
                "--overflow {} has no {} equivalent (use block, reject or drop-oldest)",
                self.overflow,
                self.target.as_str()
            );
        }
        if self.target == TargetKind::Rabbitmq {
            ensure!(
                self.credit <= u32::from(u16::MAX),
                "--credit must be at most 65535 for rabbitmq (basic.qos prefetch is 16 bits)"
            );
        }
        self.levee_config().map(drop)
    }

    /// The Levee queue config these flags describe.
    pub(crate) fn levee_config(&self) -> anyhow::Result<QueueConfig> {
        let mut c = QueueConfig {
            overflow: self.overflow,
            ..QueueConfig::default()
        };
        if let Some(v) = self.max_messages {
            c.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            c.max_bytes = v;
        }
        c.durability = match self.durability.as_str() {
            "disk" => Durability::Disk(self.fsync),
            "memory" => Durability::Memory,
            s => bail!("--durability must be disk or memory, not {s:?}"),
        };
        if self.replicas > 1 {
            ensure!(
                c.durability == Durability::Disk(Fsync::Always),
                "--replicas needs --durability disk --fsync always (a replicated queue's fsync \
                 is its Raft commit)"
            );
            c.replicas = self.replicas;
        }
        // A slow consumer must not see its deliveries requeued while they wait for their turn.
        c.ack_timeout_ms = 600_000;
        c.max_deliveries = None;
        c.validate("bench")
            .context("the queue flags do not form a valid levee queue config")?;
        Ok(c)
    }

    /// Short description of the storage guarantee, for the table (e.g. `fsync=always`).
    pub(crate) fn variant(&self) -> String {
        match self.target {
            TargetKind::Levee if self.replicas > 1 => format!("R{} fsync=always", self.replicas),
            TargetKind::Levee => match (self.durability.as_str(), self.fsync) {
                ("memory", _) => "memory".into(),
                (_, Fsync::Always) => "fsync=always".into(),
                (_, Fsync::Never) => "fsync=never".into(),
                (_, Fsync::Interval(ms)) => format!("fsync={ms}ms"),
                (_, other) => format!("fsync={other:?}"),
            },
            TargetKind::Rabbitmq => match self.rabbit_queue {
                RabbitQueue::Quorum => "quorum".into(),
                RabbitQueue::Classic => "classic".into(),
            },
            TargetKind::Nats => "jetstream-file".into(),
            TargetKind::Echo => "in-process".into(),
        }
    }

    /// The levee producer's linger: `--linger`, else 0 with `--rate`, else the client default.
    pub(crate) fn linger(&self) -> Duration {
        self.linger.unwrap_or(if self.rate.is_some() {
            Duration::ZERO
        } else {
            levee_client::ProducerOptions::default().linger
        })
    }
}

/// Parses an fsync policy: `always`, `never` or `interval:MS`.
pub(crate) fn parse_fsync(s: &str) -> Result<Fsync, String> {
    match s {
        "always" => Ok(Fsync::Always),
        "never" => Ok(Fsync::Never),
        _ => match s.strip_prefix("interval:").map(str::parse::<u32>) {
            Some(Ok(ms)) if ms >= 1 => Ok(Fsync::Interval(ms)),
            _ => Err(format!(
                "--fsync must be always, never or interval:MS (MS >= 1), not {s:?}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        b: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|w| w.b)
    }

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("256"), Ok(256));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("1.3").is_err());
        assert!(parse_size("-1").is_err());
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn fsync_policies() {
        assert_eq!(parse_fsync("always"), Ok(Fsync::Always));
        assert_eq!(parse_fsync("never"), Ok(Fsync::Never));
        assert_eq!(parse_fsync("interval:100"), Ok(Fsync::Interval(100)));
        assert!(parse_fsync("interval:0").is_err());
        assert!(parse_fsync("interval:x").is_err());
        assert!(parse_fsync("sometimes").is_err());
    }

    #[test]
    fn defaults_are_a_valid_levee_run() {
        let a = parse(&[]).unwrap();
        a.validate().unwrap();
        assert_eq!(a.target, TargetKind::Levee);
        assert_eq!(a.size, 1024);
        assert_eq!(a.duration, Duration::from_secs(10));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert_eq!(a.fsync, Fsync::Always);
        let c = a.levee_config().unwrap();
        assert_eq!(c.durability, Durability::Disk(Fsync::Always));
        assert_eq!(c.overflow, Overflow::Block);
        assert_eq!(a.variant(), "fsync=always");
    }

    #[test]
    fn full_command_line() {
        let a = parse(&[
            "--target",
            "rabbitmq",
            "--producers",
            "4",
            "--consumers",
            "4",
            "--size",
            "256",
            "--duration",
            "3s",
            "--rate",
            "5000",
            "--rabbit-queue",
            "classic",
            "--max-bytes",
            "64MiB",
            "--overflow",
            "reject",
            "--json",
        ])
        .unwrap();
        a.validate().unwrap();
        assert_eq!(a.target, TargetKind::Rabbitmq);
        assert_eq!((a.producers, a.consumers, a.size), (4, 4, 256));
        assert_eq!(a.rate, Some(5000));
        assert_eq!(a.max_bytes, Some(64 << 20));
        assert_eq!(a.variant(), "classic");
        assert!(a.json);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        assert!(parse(&["--target", "kafka"]).is_err());
        assert!(parse(&["--fsync", "sometimes"]).is_err());
        assert!(parse(&["--size", "lots"]).is_err());
        let err = |args: &[&str]| parse(args).unwrap().validate().unwrap_err().to_string();
        assert!(err(&["--size", "15"]).contains("at least 16"));
        assert!(err(&["--queues", "2"]).contains("--queues 2 needs"));
        assert!(err(&["--queues", "0"]).contains("at least 1"));
        assert!(err(&["--target", "echo", "--calibrate"]).contains("itself the calibration"));
        assert!(err(&["--plot", "run.jpg"]).contains("unsupported file type .jpg"));
        assert!(err(&["--plot", "run"]).contains("(no extension)"));
        assert!(err(&["--producers", "0"]).contains("--producers"));
        assert!(err(&["--credit", "0"]).contains("--credit"));
        assert!(err(&["--duration", "0s"]).contains("--duration"));
        assert!(err(&["--target", "nats", "--overflow", "conflate-by-key"]).contains("no nats"));
        assert!(err(&["--target", "rabbitmq", "--credit", "70000"]).contains("65535"));
        assert!(err(&["--target", "nats", "--durability", "memory"]).contains("levee option"));
        assert!(err(&["--durability", "tape"]).contains("disk or memory"));
        assert!(err(&["--fsync", "interval:99999999"]).contains("valid levee queue config"));
    }

    #[test]
    fn variants_name_the_durability() {
        let v = |args: &[&str]| parse(args).unwrap().variant();
        assert_eq!(v(&["--fsync", "interval:200"]), "fsync=200ms");
        assert_eq!(v(&["--durability", "memory"]), "memory");
        assert_eq!(v(&["--target", "rabbitmq"]), "quorum");
        assert_eq!(v(&["--target", "nats"]), "jetstream-file");
        assert_eq!(v(&["--target", "echo"]), "in-process");
    }

    #[test]
    fn paced_runs_send_at_once_unless_told_otherwise() {
        let l = |args: &[&str]| parse(args).unwrap().linger();
        assert_eq!(l(&["--rate", "5000"]), Duration::ZERO);
        assert_eq!(l(&[]), Duration::from_millis(1));
        assert_eq!(
            l(&["--rate", "5000", "--linger", "2ms"]),
            Duration::from_millis(2)
        );
    }

    #[test]
    fn plot_formats_by_extension() {
        use std::path::Path;
        assert_eq!(PlotFormat::of(Path::new("a.SVG")).unwrap(), PlotFormat::Svg);
        assert_eq!(PlotFormat::of(Path::new("a.png")).unwrap(), PlotFormat::Png);
        assert_eq!(
            PlotFormat::of(Path::new("a.htm")).unwrap(),
            PlotFormat::Html
        );
        assert!(PlotFormat::of(Path::new("a.pdf")).is_err());
    }
}
