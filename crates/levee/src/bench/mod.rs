//! `levee bench`: a load generator measuring a message broker end to end, the same way for
//! Levee, RabbitMQ (quorum / classic queues, via `lapin`) and NATS JetStream (via `async-nats`),
//! in the spirit of `nats bench` and RabbitMQ's PerfTest.
//!
//! Every run uses the same semantics on every target: a fresh durable queue, persistent
//! messages, publisher confirms with a bounded in-flight window (`--inflight` per producer),
//! manual acks with a prefetch / credit (`--credit` per consumer). Each payload carries its
//! scheduled and its actual send time, so end-to-end latency lands in HDR histograms from both,
//! next to the pacer's send-time error. Output: a table, or one JSON line per run with `--json`;
//! `--plot FILE` draws throughput, latency and server RSS over time; `--calibrate` (or
//! `--target echo`) measures the harness's own floor without a broker.
//!
//! Modules: [`args`] (flags and their parsing), [`driver`] (the run: warm-up, window, stop,
//! progress, the precise pacer), [`stats`] (histograms, counters, the summary), [`report`]
//! (table), [`plot`] (SVG / PNG / HTML), [`rss`] (server memory from `/proc`), [`targets`] (one
//! module per system under test, plus the in-process echo; the peers' client crates are behind
//! the `peers` cargo feature).

pub(crate) mod args;
pub(crate) mod driver;
pub(crate) mod plot;
pub(crate) mod report;
pub(crate) mod rss;
pub(crate) mod stats;
pub(crate) mod targets;

pub(crate) use args::BenchArgs;

/// Runs `levee bench` with these flags.
pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    driver::run(args).await
}
