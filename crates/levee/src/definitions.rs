//! `levee definitions export|import`: the broker's queues, declared exchanges and bindings as one
//! JSON document (the format of `GET|POST /api/definitions`, `levee_broker::definitions`), over
//! the wire protocol. Import declares queues, then exchanges, then bindings, and stops at the
//! first failure (the HTTP import reports each and goes on).

use std::io::Read;

use clap::{Args, Subcommand};
use levee_client::ClientError;
use levee_proto::ErrorCode;

use crate::cli::{Conn, Outcome, QueueConn};

/// `levee definitions …`
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    levee definitions export > levee-definitions.json\n  \
    levee definitions import levee-definitions.json --addr other-host:5680")]
pub(crate) struct DefinitionsArgs {
    #[command(subcommand)]
    pub cmd: DefinitionsCmd,
    #[command(flatten)]
    pub conn: QueueConn,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum DefinitionsCmd {
    /// Print every queue, declared exchange and binding as one JSON document.
    Export,
    /// Declare the queues, exchanges and bindings of a definitions document (FILE, or - for
    /// standard input): missing ones are created, existing queues with another config changed
    /// where allowed.
    Import {
        /// The document.
        file: String,
    },
}

/// Runs `levee definitions …`.
pub(crate) async fn run(conn: &Conn, cmd: DefinitionsCmd) -> anyhow::Result<Outcome> {
    let client = conn.client().await?;
    match cmd {
        DefinitionsCmd::Export => {
            let mut names = client.list_queues().await?;
            names.sort();
            let mut d = levee_broker::definitions::Definitions::default();
            for n in names {
                let info = client.inspect(&n).await?;
                d.queues.push((n, info.config));
            }
            d.exchanges = client
                .list_exchanges()
                .await?
                .into_iter()
                .filter(|x| !x.predeclared)
                .map(|x| (x.name, x.config))
                .collect();
            d.bindings = client.list_bindings(None).await?;
            println!("{}", levee_broker::definitions::to_json(&d));
        }
        DefinitionsCmd::Import { file } => {
            let mut body = Vec::new();
            if file == "-" {
                std::io::stdin().read_to_end(&mut body)?;
            } else {
                body = std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?;
            }
            let d = levee_broker::definitions::from_json(&body)?;
            let (mut created, mut unchanged, mut updated) = (0, 0, 0);
            for (name, config) in d.queues {
                match client.declare(&name, config.clone()).await {
                    Ok(ok) if ok.created => created += 1,
                    Ok(_) => unchanged += 1,
                    Err(ClientError::Server {
                        code: ErrorCode::QueueConfigMismatch,
                        ..
                    }) => {
                        client
                            .update(&name, config)
                            .await
                            .map_err(|e| anyhow::anyhow!("queue {name}: {e}"))?;
                        updated += 1;
                    }
                    Err(e) => return Err(anyhow::anyhow!("queue {name}: {e}")),
                }
            }
            let (mut x_created, mut x_unchanged) = (0, 0);
            for (name, config) in d.exchanges {
                match client.declare_exchange(&name, config).await {
                    Ok(true) => x_created += 1,
                    Ok(false) => x_unchanged += 1,
                    Err(e) => return Err(anyhow::anyhow!("exchange {name}: {e}")),
                }
            }
            let (mut b_created, mut b_unchanged) = (0, 0);
            for b in d.bindings {
                let what = format!("binding {} -> {} ({:?})", b.exchange, b.queue, b.key);
                match client.bind(b).await {
                    Ok(true) => b_created += 1,
                    Ok(false) => b_unchanged += 1,
                    Err(e) => return Err(anyhow::anyhow!("{what}: {e}")),
                }
            }
            println!(
                "imported: {created} created, {unchanged} unchanged, {updated} updated; \
                 exchanges: {x_created} created, {x_unchanged} unchanged; \
                 bindings: {b_created} created, {b_unchanged} unchanged"
            );
        }
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}
