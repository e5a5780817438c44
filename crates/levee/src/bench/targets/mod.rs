//! The systems under test. Each module turns the flags into a [`Prepared`] run: a fresh queue,
//! consumer and producer workers following the common protocol (see [`crate::bench::driver`]),
//! and a cleanup that deletes the queue (and stops a server the tool started).
//!
//! Producer workers share one shape: publish, then hand the confirm future to a confirm task
//! through a channel of `--inflight` slots, so at most that many publishes are unconfirmed.

pub(crate) mod echo;
pub(crate) mod levee;
#[cfg(feature = "peers")]
pub(crate) mod nats;
#[cfg(feature = "peers")]
pub(crate) mod rabbitmq;

use super::args::{BenchArgs, TargetKind};
use super::driver::Prepared;

/// Prepares the target `args.target`.
pub(crate) async fn prepare(args: &BenchArgs) -> anyhow::Result<Prepared> {
    match args.target {
        TargetKind::Levee => levee::prepare(args).await,
        TargetKind::Echo => echo::prepare(args).await,
        #[cfg(feature = "peers")]
        TargetKind::Rabbitmq => rabbitmq::prepare(args).await,
        #[cfg(feature = "peers")]
        TargetKind::Nats => nats::prepare(args).await,
        #[cfg(not(feature = "peers"))]
        TargetKind::Rabbitmq | TargetKind::Nats => anyhow::bail!(
            "--target {} needs the peer client crates: build with `cargo build --release -p levee --features peers`",
            args.target.as_str()
        ),
    }
}

/// The queue names of this run: [`queue_name`] for one queue, `NAME-0` .. `NAME-{N-1}` for
/// `--queues N`.
pub(crate) fn queue_names(args: &BenchArgs) -> Vec<String> {
    let base = queue_name(args);
    if args.queues <= 1 {
        return vec![base];
    }
    (0..args.queues).map(|i| format!("{base}-{i}")).collect()
}

/// The queue name of this run: `--queue`, or a fresh `bench-<pid>-<millis>`.
pub(crate) fn queue_name(args: &BenchArgs) -> String {
    args.queue.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("bench-{}-{ms}", std::process::id())
    })
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

    #[test]
    fn one_queue_keeps_its_name_and_n_queues_are_numbered() {
        let args = |extra: &[&str]| {
            Wrap::try_parse_from(["bench", "--queue", "q"].iter().chain(extra))
                .unwrap()
                .b
        };
        assert_eq!(queue_names(&args(&[])), vec!["q"]);
        assert_eq!(
            queue_names(&args(&["--queues", "3"])),
            vec!["q-0", "q-1", "q-2"]
        );
        let fresh = queue_names(&Wrap::try_parse_from(["bench"]).unwrap().b);
        assert!(fresh[0].starts_with(&format!("bench-{}-", std::process::id())));
    }
}
