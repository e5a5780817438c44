//! The [`ReplicatedLog`] on openraft (0.9, its stable line): the type configuration, one
//! [`Group`] per replicated thing, the storage adapters (`store`) and the TCP network (`net`).
//! Everything openraft-specific is in this module.
//!
//! # Invariants
//! - A [`Group`]'s commands are opaque bytes; what they mean is its [`StateMachine`]'s.
//! - [`Group::propose`] maps openraft's "forward to leader" to [`ClusterError::NotLeader`] and
//!   every other failure to [`ClusterError::NoQuorum`]: the caller never confirms on either.

pub(crate) mod net;
#[cfg(test)]
mod sim;
pub(crate) mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};

use crate::error::ClusterError;
use crate::replicated_log::{Proposal, ReplicatedLog, StateMachine};

/// A command: opaque bytes for the group's state machine.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Cmd(#[serde(with = "crate::raw")] pub Vec<u8>);

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({} bytes)", self.0.len())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({} bytes)", self.0.len())
    }
}

/// A state machine's answer to a command.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Reply(#[serde(with = "crate::raw")] pub Vec<u8>);

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// Levee's openraft type configuration.
    pub TypeConfig:
        D = Cmd,
        R = Reply,
        NodeId = u64,
        Node = BasicNode,
);

/// A node's Raft timing (`[cluster] raft_heartbeat_ms`, `raft_election_timeout_ms`; validated by
/// `ClusterConfig::validate`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) heartbeat_ms: u64,
    pub(crate) election_timeout_ms: u64,
}

/// The Raft settings every group uses: heartbeats every `heartbeat_ms` (150 ms by default; also
/// openraft's deadline for an append's answer), elections after `election_timeout_ms` to twice
/// that of silence (0.6–1.2 s), a snapshot every 5 000 entries (the log before it purged, 500 kept
/// for slow followers).
pub(crate) fn raft_config(t: Timing) -> Arc<openraft::Config> {
    let c = openraft::Config {
        heartbeat_interval: t.heartbeat_ms,
        election_timeout_min: t.election_timeout_ms,
        election_timeout_max: 2 * t.election_timeout_ms,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5000),
        max_in_snapshot_log_to_keep: 500,
        ..Default::default()
    };
    Arc::new(c.validate().unwrap_or_default())
}

/// One Raft group on this node.
pub struct Group {
    name: String,
    id: u64,
    raft: Raft<TypeConfig>,
    log: store::LogAdapter,
    sm: store::SmAdapter,
}

impl Group {
    /// Opens the group `name` with its log and snapshot in `dir` and its state in `sm`.
    pub(crate) async fn open(
        name: &str,
        id: u64,
        dir: &Path,
        sm: Arc<dyn StateMachine>,
        addrs: Arc<BTreeMap<u64, String>>,
        link: Arc<crate::link::Link>,
        timing: Timing,
    ) -> Result<Group, ClusterError> {
        let sma = store::SmAdapter::open(&dir.join("snapshot"), sm)
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let log = store::LogAdapter::open(&dir.join("log"), sma.durable())
            .map_err(|e| ClusterError::io(format!("opening the raft log of {name}"), e))?;
        let network = net::Network {
            group: name.to_string(),
            addrs,
            link,
        };
        let raft = Raft::new(id, raft_config(timing), network, log.clone(), sma.clone())
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        Ok(Group {
            name: name.to_string(),
            id,
            raft,
            log,
            sm: sma,
        })
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The openraft handle (RPCs from peers, metrics).
    pub(crate) fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Makes `members` (id → cluster address) the group's first membership, if it has none.
    pub(crate) async fn initialize(&self, members: &BTreeMap<u64, String>) {
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        // An already initialised group refuses: that is the normal case after a restart.
        let _ = self.raft.initialize(nodes).await;
    }

    /// The group's voters as this node knows them (its latest membership entry, committed or
    /// not), or `None` while a change is half done (a joint membership).
    pub(crate) fn voters(&self) -> Option<BTreeSet<u64>> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let joint = m.membership().get_joint_config();
        match joint.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// Every voter of the group's latest membership (both sides of a joint one).
    pub(crate) fn voter_ids(&self) -> BTreeSet<u64> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().voter_ids().collect()
    }

    /// Whether this node leads the group now.
    pub(crate) fn leading(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Makes `target` (id → cluster address) the group's voters, as its leader: each new one
    /// is added as a learner first and waited for until it has caught up (at most
    /// `catch_up`), then the voters are replaced in one (joint) change; a removed voter leaves
    /// the group (a leader removing itself steps down once that is committed). A group left in
    /// a joint membership (a change whose leader died half-way) is taken on to `target`.
    pub(crate) async fn change_voters(
        &self,
        target: &BTreeMap<u64, String>,
        catch_up: std::time::Duration,
    ) -> Result<(), ClusterError> {
        let fail = |reason: String| ClusterError::NoQuorum {
            group: self.name.clone(),
            reason,
        };
        let current = self.voter_ids();
        for (id, addr) in target.iter().filter(|(id, _)| !current.contains(id)) {
            // openraft's own "blocking" wait counts a learner within 5000 entries as caught
            // up; this waits until it holds the entry that made it a learner.
            let added = self
                .raft
                .add_learner(*id, BasicNode::new(addr), false)
                .await
                .map_err(|e| fail(format!("adding node {id} as a learner: {e}")))?;
            let need = added.log_id.index;
            let mut metrics = self.raft.metrics();
            let caught_up = async {
                loop {
                    let matched = {
                        let m = metrics.borrow_and_update();
                        match &m.replication {
                            None => return Err(fail("no longer the leader".into())),
                            Some(r) => r.get(id).copied().flatten().map(|l| l.index),
                        }
                    };
                    if matched >= Some(need) {
                        return Ok(());
                    }
                    if metrics.changed().await.is_err() {
                        return Err(fail("the group stopped".into()));
                    }
                }
            };
            match tokio::time::timeout(catch_up, caught_up).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // It stays a learner (no vote) until a later attempt makes it a voter.
                    return Err(fail(format!(
                        "node {id} did not catch up within {} s (is it running, with [cluster] join = true?)",
                        catch_up.as_secs()
                    )));
                }
            }
        }
        let voters: BTreeSet<u64> = target.keys().copied().collect();
        self.raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(|e| fail(format!("changing the voters: {e}")))
    }

    /// Waits until this node, as leader, has applied everything committed before its term.
    pub(crate) async fn caught_up(&self) -> Result<(), ClusterError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::NoQuorum {
                group: self.name.clone(),
                reason: e.to_string(),
            })
    }

    /// Entries in the local log and the last applied index (for status).
    pub(crate) fn log_state(&self) -> (usize, u64) {
        (self.log.len(), self.sm.last_applied())
    }

    /// Sends a heartbeat now (it carries the commit index: followers apply what was just
    /// committed without waiting for the next heartbeat).
    pub(crate) async fn nudge(&self) {
        let _ = self.raft.trigger().heartbeat().await;
    }

    /// Stops the group's Raft tasks.
    pub(crate) async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

impl ReplicatedLog for Group {
    fn propose(&self, command: Vec<u8>) -> Proposal<'_> {
        Box::pin(async move {
            match self.raft.client_write(Cmd(command)).await {
                Ok(resp) => Ok(resp.data.0),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(ClusterError::NotLeader {
                        group: self.name.clone(),
                        leader: f.leader_id,
                    })
                }
                Err(e) => Err(ClusterError::NoQuorum {
                    group: self.name.clone(),
                    reason: e.to_string(),
                }),
            }
        })
    }

    fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    fn id(&self) -> u64 {
        self.id
    }
}
