//! `levee cluster status|declare|wait|add-node|remove-node`: talks to the nodes' cluster listeners (not the wire
//! protocol), through levee-cluster's admin requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use levee_cluster::Link;
use levee_cluster::admin::{AdminReply, AdminRequest, Status, request_via};

use crate::cli::Outcome;

/// How long `levee cluster declare` keeps trying the nodes while none of them leads the
/// metadata group.
const DECLARE_RETRY: Duration = Duration::from_secs(10);

/// `levee cluster`.
#[derive(Args, Debug)]
pub(crate) struct ClusterArgs {
    /// The nodes' cluster (Raft) addresses, comma-separated.
    #[arg(
        long,
        env = "LEVEE_CLUSTER_NODES",
        value_delimiter = ',',
        default_value = "127.0.0.1:5801,127.0.0.1:5802,127.0.0.1:5803"
    )]
    nodes: Vec<String>,
    #[command(subcommand)]
    cmd: ClusterCmd,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Members (up or down), the metadata leader, and per replicated queue its leader and each
    /// replica's replication lag (in Raft entries).
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a replicated queue (on every node, through the metadata group), with the flags of
    /// `levee queue declare`; it is always on disk with fsync always (confirms wait for a
    /// majority's commit).
    Declare(Box<crate::cli::DeclareArgs>),
    /// Wait until the metadata group (and, with --queue, that queue) has a leader.
    Wait {
        /// Also wait for this replicated queue to be served by its leader.
        #[arg(long)]
        queue: Option<String>,
        /// Give up after this long: 30s, 500ms, or milliseconds.
        #[arg(long, default_value = "30s", value_parser = crate::units::parse_millis_u32)]
        timeout: u32,
    },
    /// Make a running node (started with `[cluster] join = true`) a member: it catches up on the
    /// metadata group and becomes a replica of every replicated queue.
    AddNode {
        /// Its node id (`[cluster] node_id` in its file).
        #[arg(long)]
        id: u64,
        /// Its cluster (Raft) address, as the members reach it.
        #[arg(long)]
        cluster: String,
        /// Its wire (client) address, as clients reach it.
        #[arg(long)]
        wire: String,
    },
    /// Remove a member from the metadata group and every replicated queue's group; stop the
    /// node afterwards.
    RemoveNode {
        /// Its node id.
        #[arg(long)]
        id: u64,
    },
}

/// Sends a membership change to the nodes in turn (each forwards it to the metadata leader)
/// until one answers; retries while none can (an election), for [`DECLARE_RETRY`].
async fn change_members(link: &Link, nodes: &[String], req: AdminRequest) -> anyhow::Result<()> {
    let mut last = None;
    let deadline = Instant::now() + DECLARE_RETRY;
    loop {
        for addr in nodes {
            match request_via(link, addr, req.clone()).await {
                Ok(AdminReply::Members { voters, pending }) => {
                    let list =
                        |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                    println!("members: {}", list(&voters));
                    if !pending.is_empty() {
                        println!(
                            "queues still changing members (they follow while their leaders are up): {}",
                            pending.join(",")
                        );
                    }
                    return Ok(());
                }
                Ok(AdminReply::Error(e)) => last = Some(format!("{addr}: {e}")),
                Ok(other) => last = Some(format!("{addr}: {other:?}")),
                Err(e) => last = Some(e.to_string()),
            }
        }
        if nodes.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!(
        "the membership did not change: {}",
        last.unwrap_or_else(|| "no nodes given".into())
    )
}

async fn statuses(link: &Link, nodes: &[String]) -> Vec<(String, Option<Status>)> {
    let mut out = Vec::new();
    for addr in nodes {
        let s = match request_via(link, addr, AdminRequest::Status).await {
            Ok(AdminReply::Status(s)) => Some(s),
            _ => None,
        };
        out.push((addr.clone(), s));
    }
    out
}

/// Every node's answers merged into one view.
fn merged(answers: &[(String, Option<Status>)]) -> serde_json::Value {
    let up: BTreeMap<u64, bool> = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().map(|s| (s.node, true)))
        .collect();
    let mut members = BTreeMap::new();
    for s in answers.iter().filter_map(|(_, s)| s.as_ref()) {
        for m in &s.members {
            members.insert(
                m.id,
                serde_json::json!({
                    "id": m.id, "cluster": m.cluster, "wire": m.wire,
                    "up": up.contains_key(&m.id),
                }),
            );
        }
    }
    let meta_leader = answers
        .iter()
        .filter_map(|(_, s)| s.as_ref().and_then(|s| s.meta_leader))
        .find(|l| up.contains_key(l));
    let mut queues: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for s in answers.iter().filter_map(|(_, s)| s.as_ref()) {
        for q in &s.queues {
            let entry = queues.entry(q.name.clone()).or_insert_with(|| {
                serde_json::json!({"name": q.name, "leader": null, "served_by": null, "replicas": {}})
            });
            if q.served_here {
                entry["served_by"] = serde_json::json!(s.node);
            }
            if q.leader == Some(s.node) {
                entry["leader"] = serde_json::json!(s.node);
                entry["term"] = serde_json::json!(q.term);
                entry["voters"] = serde_json::json!(q.voters);
                for (id, lag) in &q.lag {
                    entry["replicas"][id.to_string()]["lag"] = serde_json::json!(lag);
                }
            } else if entry["leader"].is_null() {
                entry["leader"] = serde_json::json!(q.leader);
            }
            entry["replicas"][s.node.to_string()]["applied"] = serde_json::json!(q.applied);
            entry["replicas"][s.node.to_string()]["log_entries"] = serde_json::json!(q.log_entries);
        }
    }
    serde_json::json!({
        "members": members.into_values().collect::<Vec<_>>(),
        "meta_leader": meta_leader,
        "queues": queues.into_values().collect::<Vec<_>>(),
    })
}

/// How the CLI reaches the cluster listeners: the client options' login (`--user`,
/// `--password`, `LEVEE_USER`, `LEVEE_PASSWORD`) and TLS (`--tls-ca`, `--tls-cert/--tls-key`).
fn link(conn: &crate::cli::Conn, nodes: &[String]) -> anyhow::Result<Link> {
    let access = conn.access(nodes.first().map_or("", String::as_str))?;
    let mut link = Link::plain();
    if let Some(tls) = access.tls {
        link = link.with_tls(tls.client_config());
    }
    if let Some(c) = access.credentials {
        link = link.with_credentials(c.user, c.password);
    }
    Ok(link)
}

pub(crate) async fn run(args: ClusterArgs, conn: &crate::cli::Conn) -> anyhow::Result<Outcome> {
    let link = link(conn, &args.nodes)?;
    match args.cmd {
        ClusterCmd::Status { json } => {
            let view = merged(&statuses(&link, &args.nodes).await);
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("metadata leader: {}", view["meta_leader"]);
                for m in view["members"].as_array().into_iter().flatten() {
                    println!(
                        "node {} cluster {} wire {} {}",
                        m["id"],
                        m["cluster"].as_str().unwrap_or(""),
                        m["wire"].as_str().unwrap_or(""),
                        if m["up"] == true { "up" } else { "down" }
                    );
                }
                for q in view["queues"].as_array().into_iter().flatten() {
                    println!(
                        "queue {} leader {} replicas {}",
                        q["name"].as_str().unwrap_or(""),
                        q["leader"],
                        q["replicas"]
                    );
                }
            }
            Ok(Outcome::Done)
        }
        ClusterCmd::Declare(d) => {
            let name = d.name.clone();
            let config = levee_cluster::admin::encode_config(&name, &d.config()?)?;
            let mut last = None;
            // Only the metadata leader declares. While no node is it (an election in
            // progress), try them all again, for a bounded time.
            let deadline = Instant::now() + DECLARE_RETRY;
            loop {
                for addr in &args.nodes {
                    let req = AdminRequest::Declare {
                        name: name.clone(),
                        config: config.clone(),
                    };
                    match request_via(&link, addr, req).await {
                        Ok(AdminReply::Declared(created)) => {
                            println!(
                                "replicated queue {name} {}",
                                if created { "created" } else { "exists" }
                            );
                            return Ok(Outcome::Done);
                        }
                        Ok(other) => last = Some(format!("{addr}: {other:?}")),
                        Err(e) => last = Some(e.to_string()),
                    }
                }
                if args.nodes.is_empty() || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::bail!(
                "no node declared {name}: {}",
                last.unwrap_or_else(|| "no nodes given".into())
            )
        }
        ClusterCmd::AddNode { id, cluster, wire } => {
            let req = AdminRequest::AddNode { id, cluster, wire };
            change_members(&link, &args.nodes, req).await?;
            Ok(Outcome::Done)
        }
        ClusterCmd::RemoveNode { id } => {
            change_members(&link, &args.nodes, AdminRequest::RemoveNode { id }).await?;
            Ok(Outcome::Done)
        }
        ClusterCmd::Wait { queue, timeout } => {
            let deadline = Instant::now() + Duration::from_millis(u64::from(timeout));
            loop {
                let view = merged(&statuses(&link, &args.nodes).await);
                let meta_ok = !view["meta_leader"].is_null();
                let queue_ok = match &queue {
                    None => true,
                    Some(q) => view["queues"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|v| v["name"] == q.as_str() && !v["served_by"].is_null()),
                };
                if meta_ok && queue_ok {
                    println!("{}", serde_json::to_string(&view)?);
                    return Ok(Outcome::Done);
                }
                if Instant::now() > deadline {
                    return Err(anyhow::anyhow!("no leader in time"))
                        .with_context(|| format!("cluster state: {view}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
