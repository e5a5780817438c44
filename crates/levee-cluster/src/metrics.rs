//! The cluster's Prometheus gauges, appended to the node's `/metrics` (installed on the broker
//! by [`crate::Node::start`] through `Broker::set_metrics_source`).
//!
//! Owns only the rendering of a [`Status`] as text; every figure is the one
//! `levee cluster status --json` shows, read at scrape time (nothing is kept between scrapes).
//! Invariant: every family has its `# HELP` and `# TYPE` lines once, even with no replicated
//! queue, so a dashboard's query never hits a missing family on an idle cluster.

use levee_broker::http::Family;

use crate::admin::{QueueStatus, Status};

/// Appends the `levee_cluster_*` families for `status` to `out`.
pub fn render(out: &mut String, status: &Status) {
    let single: [(&str, &str, u64); 3] = [
        (
            "levee_cluster_node_id",
            "This node's id in the cluster.",
            status.node,
        ),
        (
            "levee_cluster_members",
            "Configured members of the cluster (this node included).",
            status.members.len() as u64,
        ),
        (
            "levee_cluster_meta_leader",
            "Node id of the metadata group's leader as known here (0: none known).",
            status.meta_leader.unwrap_or(0),
        ),
    ];
    for (name, help, value) in single {
        Family::new(out, name, "gauge", help).sample(name, &[], value);
    }
    type Getter = fn(&QueueStatus) -> u64;
    let per_queue: [(&str, &str, Getter); 5] = [
        (
            "levee_cluster_queue_leader",
            "Node id of each replicated queue's leader as known here (0: none known).",
            |s| s.leader.unwrap_or(0),
        ),
        (
            "levee_cluster_queue_served_here",
            "1 while this node serves the replicated queue (it leads its group and has loaded it).",
            |s| u64::from(s.served_here),
        ),
        (
            "levee_cluster_queue_term",
            "Raft term of each replicated queue's group on this node.",
            |s| s.term,
        ),
        (
            "levee_cluster_queue_applied_index",
            "Last Raft log index applied by this node for each replicated queue.",
            |s| s.applied,
        ),
        (
            "levee_cluster_queue_log_entries",
            "Entries in this node's Raft log of each replicated queue (bounded by snapshots).",
            |s| s.log_entries as u64,
        ),
    ];
    for (name, help, get) in per_queue {
        let mut f = Family::new(out, name, "gauge", help);
        for s in &status.queues {
            f.sample(name, &[("queue", &s.name)], get(s));
        }
    }
    let name = "levee_cluster_replica_lag_entries";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "On a queue's leader: entries each replica is behind the leader's log (replicas whose \
         position is not known yet are left out).",
    );
    for s in &status.queues {
        for (node, lag) in &s.lag {
            if let Some(lag) = lag {
                f.sample(
                    name,
                    &[("queue", &s.name), ("node", &node.to_string())],
                    lag,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::admin::Member;

    #[test]
    fn every_family_is_rendered_with_one_sample_per_queue_and_replica() {
        let status = Status {
            node: 2,
            members: (1..=3)
                .map(|id| Member {
                    id,
                    cluster: format!("127.0.0.1:{}", 5800 + id),
                    wire: format!("127.0.0.1:{}", 5780 + id),
                })
                .collect(),
            meta_leader: Some(1),
            queues: vec![QueueStatus {
                name: "jobs\"x".into(),
                incarnation: 1,
                leader: Some(2),
                served_here: true,
                term: 4,
                applied: 120,
                log_entries: 30,
                lag: BTreeMap::from([(1, Some(0)), (2, Some(0)), (3, None)]),
                voters: vec![1, 2, 3],
            }],
        };
        let mut out = String::new();
        render(&mut out, &status);
        for line in [
            "levee_cluster_node_id 2",
            "levee_cluster_members 3",
            "levee_cluster_meta_leader 1",
            "levee_cluster_queue_leader{queue=\"jobs\\\"x\"} 2",
            "levee_cluster_queue_served_here{queue=\"jobs\\\"x\"} 1",
            "levee_cluster_queue_term{queue=\"jobs\\\"x\"} 4",
            "levee_cluster_queue_applied_index{queue=\"jobs\\\"x\"} 120",
            "levee_cluster_queue_log_entries{queue=\"jobs\\\"x\"} 30",
            "levee_cluster_replica_lag_entries{queue=\"jobs\\\"x\",node=\"1\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.contains("node=\"3\""),
            "an unknown lag was rendered:\n{out}"
        );
        assert_eq!(out.matches("# TYPE ").count(), 9);
        // With no replicated queue every family is still declared, with no sample.
        let mut idle = String::new();
        render(
            &mut idle,
            &Status {
                queues: Vec::new(),
                ..status
            },
        );
        assert_eq!(idle.matches("# TYPE ").count(), 9);
        assert!(!idle.contains("queue=\""));
    }
}
