//! The `levee` binary: one command for the broker and its tools.
//!
//! - `levee serve`: runs the broker (zero-config: data in `./levee-data`, wire protocol on
//!   127.0.0.1:5680, HTTP API / metrics / dashboard on 127.0.0.1:5681).
//! - `levee queue declare|list|inspect|purge|delete`, `levee publish`, `levee consume`,
//!   `levee stats`: client commands against `--addr` (or `LEVEE_ADDR`), given before or after
//!   the subcommand. `serve` and `bench` refuse it (`serve` listens on `--listen`).
//! - `levee bench`: end-to-end benchmarks.
//!
//! Exit status: see [`cli::Outcome`] (0 done, 1 error, 2 usage, 3 not every message stored, 4
//! messages unconfirmed after a lost connection, 130 interrupted).

mod bench;
mod cli;
mod serve;
mod units;

use clap::{Parser, Subcommand};

/// Levee: a message broker with backpressure done right.
#[derive(Parser, Debug)]
#[command(
    name = "levee",
    version,
    about,
    after_help = "Examples:\n  \
        levee serve\n  \
        levee queue declare jobs --max-messages 1000\n  \
        levee publish jobs hello\n  \
        levee consume jobs --count 1\n  \
        levee --addr 10.0.0.5:5680 stats --watch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    conn: cli::Conn,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Administer queues.
    Queue(cli::QueueArgs),
    /// Publish messages (from arguments, standard input or generated).
    Publish(cli::PublishArgs),
    /// Consume messages, printing or counting them.
    Consume(cli::ConsumeArgs),
    /// Show queue statistics.
    Stats(cli::StatsArgs),
    /// Benchmark a broker (levee, rabbitmq, nats) end to end: throughput, latency, server RSS.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(outcome) => std::process::ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("levee: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<cli::Outcome> {
    let cli = Cli::parse();
    let client_options_refused = |what: &str| {
        anyhow::ensure!(
            !cli.conn.is_given(),
            "--addr is a client option and `levee {what}` does not take it{}",
            if what == "serve" {
                " (the broker listens on --listen)"
            } else {
                " (bench starts its own broker, or uses --server)"
            }
        );
        Ok(())
    };
    match &cli.command {
        Command::Serve(_) => client_options_refused("serve")?,
        Command::Bench(_) => client_options_refused("bench")?,
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEVEE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|()| cli::Outcome::Done),
            Command::Queue(q) => cli::queue(&cli::Conn::from(&q.conn).or(&cli.conn), q.cmd).await,
            Command::Publish(args) => cli::publish(&args.conn.or(&cli.conn), args).await,
            Command::Consume(args) => cli::consume(&args.conn.or(&cli.conn), args).await,
            Command::Stats(args) => cli::stats(&args.conn.or(&cli.conn), args).await,
            Command::Bench(args) => bench::run(args).await.map(|()| cli::Outcome::Done),
        }
    })
}
