//! `levee definitions export|import`: the broker's queue definitions as one JSON document (the
//! format of `GET|POST /api/definitions`, `levee_broker::definitions`), over the wire protocol.

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
    /// Print every queue's definition as one JSON document.
    Export,
    /// Declare the queues of a definitions document (FILE, or - for standard input): missing
    /// ones are created, existing ones with another config changed where allowed.
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
            let mut queues = Vec::new();
            for n in names {
                let info = client.inspect(&n).await?;
                queues.push((n, info.config));
            }
            println!("{}", levee_broker::definitions::to_json(&queues));
        }
        DefinitionsCmd::Import { file } => {
            let mut body = Vec::new();
            if file == "-" {
                std::io::stdin().read_to_end(&mut body)?;
            } else {
                body = std::fs::read(&file).map_err(|e| anyhow::anyhow!("reading {file}: {e}"))?;
            }
            let queues = levee_broker::definitions::from_json(&body)?;
            let (mut created, mut unchanged, mut updated) = (0, 0, 0);
            for (name, config) in queues {
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
            println!("imported: {created} created, {unchanged} unchanged, {updated} updated");
        }
    }
    client.close().await.ok();
    Ok(Outcome::Done)
}
