//! The `levee` binary: one command for the broker and its tools.
//!
//! - `levee serve`: runs the broker (zero-config: data in `./levee-data`, wire protocol on
//!   127.0.0.1:5680, HTTP API / metrics / dashboard on 127.0.0.1:5681).

mod serve;

use clap::{Parser, Subcommand};

/// Levee: a message broker with backpressure done right.
#[derive(Parser, Debug)]
#[command(name = "levee", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
}

fn main() -> anyhow::Result<()> {
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
        }
    })
}
