//! The `levee` binary: one command for the broker and its tools.
//!
//! - `levee serve`: runs the broker (zero-config: data in `./levee-data`, wire protocol on
//!   127.0.0.1:5680, HTTP API / metrics / dashboard on 127.0.0.1:5681).
//! - `levee queue declare|list|inspect|purge|delete`, `levee publish`, `levee consume`,
//!   `levee stats`, `levee exchange declare|list|bindings|delete`, `levee bind`, `levee unbind`:
//!   client commands against `--addr` (or `LEVEE_ADDR`), given before or after
//!   the subcommand. `serve` and `bench` refuse it (`serve` listens on `--listen`).
//! - `levee bench`: end-to-end benchmarks.
//! - `levee passwd`: prints the argon2id hash of a password (for `[[users]] password_hash`).
//!
//! Exit status: see [`cli::Outcome`] (0 done, 1 error, 2 usage, 3 not every message stored, 4
//! messages unconfirmed after a lost connection, 130 interrupted).

mod bench;
mod cli;
mod cli_cluster;
mod cli_follow;
mod cli_routing;
mod definitions;
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
    /// Log format on stderr: text (no colours unless stderr is a terminal) or json (one object
    /// per line). The filter comes from LEVEE_LOG, else RUST_LOG [default: info].
    #[arg(
        long,
        global = true,
        env = "LEVEE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        display_order = 1001
    )]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Installs the log subscriber: filter from `LEVEE_LOG`, else `RUST_LOG`, else `info` (with
/// openraft's own logs off: it logs every unreachable peer as an error; `LEVEE_LOG=openraft=info`
/// shows them); text with colours only on a terminal (and without `NO_COLOR`), or JSON lines.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = ["LEVEE_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|var| {
            let v = std::env::var(var).ok().filter(|v| !v.trim().is_empty())?;
            match tracing_subscriber::EnvFilter::try_new(&v) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("levee: ignoring {var}={v:?}: {e}");
                    None
                }
            }
        })
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info,openraft=off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    #[command(
        after_help = "Settings come from the defaults, then --config FILE (TOML, keys as \
        the flags with underscores), then LEVEE_* environment variables, then flags. Sizes take \
        units (16MiB), durations too (10s). Logs go to stderr: LEVEE_LOG or RUST_LOG set the \
        filter (e.g. info, levee_broker=debug), --log-format json for one JSON object per line.\n\n\
        Examples:\n  \
        levee serve\n  \
        levee serve --listen 0.0.0.0:5680 --http 127.0.0.1:5681 --data-dir /var/lib/levee\n  \
        LEVEE_LOG=debug levee serve --config /etc/levee/levee.toml"
    )]
    Serve(serve::ServeArgs),
    /// Administer queues.
    Queue(cli::QueueArgs),
    /// Publish messages (from arguments, standard input or generated).
    Publish(cli::PublishArgs),
    /// Consume messages, printing or counting them.
    Consume(cli::ConsumeArgs),
    /// Administer exchanges.
    Exchange(cli_routing::ExchangeArgs),
    /// Bind a queue to an exchange.
    Bind(cli_routing::BindArgs),
    /// Remove a binding.
    Unbind(cli_routing::BindArgs),
    /// Show queue statistics.
    Stats(cli::StatsArgs),
    /// Cluster status and replicated queues (against the nodes' cluster listeners).
    Cluster(cli_cluster::ClusterArgs),
    /// Export or import the queues' definitions as JSON.
    Definitions(definitions::DefinitionsArgs),
    /// Benchmark a broker (levee, rabbitmq, nats) end to end: throughput, latency, server RSS.
    #[command(after_help = "Examples:\n  \
        levee bench --size 1KiB --duration 10s\n  \
        levee bench --rate 5000 --fsync interval:10 --json")]
    Bench(bench::BenchArgs),
    /// Print the argon2id hash of a password, for a `[[users]]` entry's `password_hash`.
    #[command(
        after_help = "Reads the password from standard input when it is a pipe (one line), \
        else prompts for it without echo (twice). Examples:\n  \
        levee passwd\n  \
        printf '%s' \"$SECRET\" | levee passwd"
    )]
    Passwd,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Examples:\n  \
        levee completions bash > /etc/bash_completion.d/levee\n  \
        levee completions zsh > \"${fpath[1]}/_levee\"\n  \
        levee completions fish > ~/.config/fish/completions/levee.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one page per command into a directory.
    #[command(after_help = "Examples:\n  \
        levee man | man -l -\n  \
        levee man --dir /usr/local/share/man/man1")]
    Man {
        /// Write levee.1 and a page per subcommand (levee-serve.1, ...) here.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// `levee completions` / `levee man`: generated from the clap definitions, so they never drift
/// from the flags.
fn generate_docs(command: &Command) -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::CommandFactory;
    use std::io::Write;
    let mut cmd = Cli::command();
    // Rendered into memory first: the generators panic on a write error (`| head`).
    let mut text = Vec::new();
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cmd, "levee", &mut text);
        }
        Command::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        Command::Man { dir: None } => clap_mangen::Man::new(cmd).render(&mut text)?,
        _ => {}
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(&text).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `levee passwd`: the password from a pipe (its first line) or a no-echo prompt, its argon2id
/// PHC string on stdout.
fn passwd() -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let hash = levee_broker::security::hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    println!("{hash}");
    Ok(())
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
            !cli.conn.is_given() && (what == "bench" || !cli.conn.access_given()),
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
        Command::Completions { .. } | Command::Man { .. } => {
            generate_docs(&cli.command)?;
            return Ok(cli::Outcome::Done);
        }
        Command::Passwd => {
            passwd()?;
            return Ok(cli::Outcome::Done);
        }
        _ => {}
    }
    init_logging(cli.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await.map(|()| cli::Outcome::Done),
            Command::Queue(q) => cli::queue(&cli::Conn::from(&q.conn).or(&cli.conn), q.cmd).await,
            Command::Publish(args) => cli::publish(&args.conn.or(&cli.conn), args).await,
            Command::Consume(args) => cli::consume(&args.conn.or(&cli.conn), args).await,
            Command::Exchange(x) => {
                cli_routing::exchange(&cli::Conn::from(&x.conn).or(&cli.conn), x.cmd).await
            }
            Command::Bind(args) => cli_routing::bind(&args.conn.or(&cli.conn), args, false).await,
            Command::Unbind(args) => cli_routing::bind(&args.conn.or(&cli.conn), args, true).await,
            Command::Stats(args) => cli::stats(&args.conn.or(&cli.conn), args).await,
            Command::Bench(mut args) => {
                let addr = args.server.clone().unwrap_or_default();
                args.access = cli.conn.access(&addr)?;
                bench::run(args).await.map(|()| cli::Outcome::Done)
            }
            Command::Completions { .. } | Command::Man { .. } | Command::Passwd => {
                Ok(cli::Outcome::Done)
            }
            Command::Cluster(c) => cli_cluster::run(c, &cli.conn).await,
            Command::Definitions(d) => {
                definitions::run(&cli::Conn::from(&d.conn).or(&cli.conn), d.cmd).await
            }
        }
    })
}
