//! The `levee` binary: one command for the broker and its tools.
//!
//! - `levee serve`: runs the broker (zero-config: data in `./levee-data`, wire protocol on
//!   127.0.0.1:5680, HTTP API / metrics / dashboard on 127.0.0.1:5681).
//! - `levee queue declare|list|inspect|purge|delete`, `levee publish`, `levee consume`,
//!   `levee stats`: client commands against `--addr` (or `LEVEE_ADDR`).

mod bench;
mod cli;
mod serve;

use clap::{Parser, Subcommand};

/// Levee: a message broker with backpressure done right.
#[derive(Parser, Debug)]
#[command(name = "levee", version, about)]
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
    #[command(subcommand)]
    Queue(cli::QueueCmd),
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
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("levee: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
            Command::Serve(args) => serve::run(args).await,
            Command::Queue(cmd) => cli::queue(&cli.conn, cmd).await,
            Command::Publish(args) => cli::publish(&cli.conn, args).await,
            Command::Consume(args) => cli::consume(&cli.conn, args).await,
            Command::Stats(args) => cli::stats(&cli.conn, args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    })
}
