//! Raft mode in the daemon ([DESIGN.md § 4]): the glue between the driver
//! task of [`crate::server`], the sans-IO [`RaftReplicator`] and the tonic
//! [`Transport`].
//!
//! The driver owns one [`RaftNode`] and one [`RaftInput`]; it
//!
//! 1. awaits [`RaftInput::next`] next to its datagram, admin and timer
//!    branches and hands the result to [`RaftNode::input`] (a tick every
//!    `[cluster] tick_ms`, or a message, an unreachable peer or a snapshot
//!    status from the transport, or a peer found dead — its stream ended,
//!    the reconnect was refused: when it is the leader, the lowest-id
//!    surviving voter campaigns at once, `raft/node.rs`, "Leader death");
//! 2. proposes the engine's commands through [`RaftNode::replicator`]
//!    (the `Replicator` seam) and, in the same pump, calls
//!    [`RaftNode::ready`] — persist, then apply — before pulling applied
//!    entries; a storage error there is fatal: a node that cannot persist
//!    must not vote or acknowledge, so the daemon exits;
//! 3. calls [`RaftNode::flush`] after every pump: outbound messages go to
//!    the transport, a leader change switches who proposes expiries
//!    ([`Engine::set_propose_expiries`]), metrics follow the counters, and
//!    waiting admin calls are answered (an installed snapshot needs nothing
//!    from the engine: it reads the state machine's expiry schedule).
//!
//! Membership: a node serves registrations only while it is a voter of the
//! group ([`RaftNode::serving`]). A node started with `join = true` is not
//! one until the leader adds it (`AddMember`) and its snapshot arrives; a
//! removed node stops at once, reports `role = "removed"` and
//! `haven_raft_member 0`, so health checks steer mobile nodes away.
//! A new member's address reaches only the nodes `AddMember` was called on
//! (followers record it, the leader proposes): operators call it on every
//! member, leader last, and list it in every node's `[[cluster.peer]]`.

use std::time::Duration;

use anyhow::Context as _;
use haven_proto::grpc::raft_transport_server::RaftTransportServer;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::command::StateMachine;
use crate::config::Config;
use crate::engine::Engine;
use crate::raft::transport::RaftService;
use crate::raft::{
    Inbound, PeerRefused, RaftConfig, RaftError, RaftReplicator, RaftStats, RaftStatus, RaftStore,
    Role, Transport,
};
use crate::replicate::ProposeError;
use crate::telemetry;

/// What the driver's Raft branch produced.
#[derive(Debug)]
pub enum Input {
    /// One tick of raft's logical clock is due.
    Tick,
    /// Something from the transport.
    Inbound(Inbound),
    /// The transport found a peer's process gone (its stream ended, the
    /// reconnect was refused): if it is the leader, the lowest-id
    /// surviving voter campaigns at once (`raft/node.rs`, "Leader death").
    Refused(PeerRefused),
}

/// The Raft inputs the driver awaits: the tick interval, the transport's
/// inbound channel and its refusal reports.
#[derive(Debug)]
pub struct RaftInput {
    inbound: mpsc::Receiver<Inbound>,
    ticker: tokio::time::Interval,
    /// `None` once the transport's sender is gone.
    refusals: Option<broadcast::Receiver<PeerRefused>>,
}

impl RaftInput {
    /// The next tick or inbound message (cancel-safe: usable in `select!`).
    pub async fn next(&mut self) -> Input {
        tokio::select! {
            _ = self.ticker.tick() => Input::Tick,
            r = crate::raft::next_refusal(&mut self.refusals) => Input::Refused(r),
            m = self.inbound.recv() => match m {
                Some(m) => Input::Inbound(m),
                // The transport holds a sender for as long as the node
                // lives; a closed channel only means ticks from now on.
                None => {
                    self.ticker.tick().await;
                    Input::Tick
                }
            },
        }
    }

    /// An inbound message already queued, without waiting: the driver
    /// steps all of them before one pump, so one synced log write covers
    /// the whole burst instead of one fsync per message.
    pub fn try_next(&mut self) -> Option<Input> {
        self.inbound.try_recv().ok().map(Input::Inbound)
    }
}

/// Why an admin membership or leadership call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Only the leader can do this; `leader` is the one this node knows.
    #[error("this node is not the leader (leader: {leader}, 0 = none known)")]
    NotLeader {
        /// The known leader, 0 = none.
        leader: u64,
    },
    /// The request makes no sense for the current membership.
    #[error("{0}")]
    Invalid(String),
    /// Raft refused the proposal (no leader, a change already in flight).
    #[error("raft refused the change (no leader, or another change in flight)")]
    Unavailable,
}

/// An admin call waiting for the group to reach a state.
enum Waiter {
    /// `id` is (or is no longer, `present = false`) a voter.
    Member {
        id: u64,
        present: bool,
        done: oneshot::Sender<Result<Vec<u64>, AdminError>>,
    },
    /// `to` leads.
    Leader {
        to: u64,
        done: oneshot::Sender<Result<u64, AdminError>>,
    },
}

/// This node's Raft replica, transport clients and bookkeeping.
pub struct RaftNode {
    node: RaftReplicator,
    transport: Transport,
    /// Last counters turned into metrics.
    published: Option<RaftStats>,
    snapshots_received: u64,
    was_leader: bool,
    member: bool,
    /// Was a voter at some point in this run (a `join` node before being
    /// added is "joining", after removal "removed").
    was_member: bool,
    waiters: Vec<Waiter>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("node", &self.node)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// A started Raft node: the replica, its inputs, and the transport's gRPC
/// service for the caller to serve on `[cluster] listen`.
pub struct Started {
    /// The replica.
    pub node: RaftNode,
    /// Its inputs.
    pub input: RaftInput,
    /// The `RaftTransport` service.
    pub service: RaftTransportServer<RaftService>,
    /// Peers refused after their stream ended, for the advertiser's
    /// withdrawals ([`crate::advertise`]).
    pub refusals: tokio::sync::broadcast::Receiver<crate::raft::PeerRefused>,
}

/// Opens the durable log under `[cluster] data_dir` (blocking work, on the
/// blocking pool), restores `state` from its snapshot and starts the
/// transport clients. Call inside the runtime.
pub async fn start(config: &Config, state: StateMachine) -> anyhow::Result<Started> {
    let c = &config.cluster;
    let id = config.node.id;
    let dir = c
        .data_dir
        .clone()
        .context("[cluster] data_dir is required in raft mode")?;
    let voters = if c.join {
        Vec::new()
    } else {
        let mut v: Vec<u64> = c.peer.iter().map(|p| p.id).collect();
        v.sort_unstable();
        v
    };
    let mut rc = RaftConfig::new(id, voters);
    rc.election_tick = c.election_ticks;
    rc.heartbeat_tick = c.heartbeat_ticks;
    rc.snapshot_every = c.snapshot_every;
    let shown = dir.display().to_string();
    let node = tokio::task::spawn_blocking(move || -> anyhow::Result<RaftReplicator> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = RaftStore::open(&dir)
            .with_context(|| format!("opening the raft log {}", dir.display()))?;
        RaftReplicator::new(&rc, store, state).context("starting the raft node")
    })
    .await
    .context("raft start-up task")??;
    let status = node.status();
    info!(
        id,
        data_dir = %shown,
        term = status.term,
        applied = status.applied,
        voters = ?status.voters,
        join = c.join,
        "raft node started"
    );
    let tls = match &c.tls {
        Some(t) => {
            let m = t
                .material
                .clone()
                .context("[cluster.tls] files were not loaded")?;
            crate::tls::check_client_material(&m).context("[cluster.tls]")?;
            Some(m)
        }
        None => None,
    };
    if tls.is_none() {
        // Anyone who reaches [cluster] listen can inject raft messages:
        // acceptable only on a trusted backend network (docs/security.md).
        warn!(
            "[cluster.tls] is not set: the raft transport is plaintext and unauthenticated; use it on a trusted backend network only"
        );
    }
    let (transport, inbound) = Transport::with_tls(id, &c.cluster_id, &c.peer_map(), tls);
    let service = transport.server();
    // Two receivers of one broadcast: the advertiser's withdrawals and the
    // driver's fast election (`raft/node.rs`, "Leader death").
    let refusals = transport.refusals();
    let driver_refusals = transport.refusals();
    let mut ticker = tokio::time::interval(c.tick());
    // A stalled driver must not burst ticks afterwards (that would look
    // like a long silence to raft and start elections).
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Ok(Started {
        node: RaftNode::new(node, transport),
        input: RaftInput {
            inbound,
            ticker,
            refusals: Some(driver_refusals),
        },
        service,
        refusals,
    })
}

impl RaftNode {
    fn new(node: RaftReplicator, transport: Transport) -> Self {
        let member = node.status().voters.contains(&node.id());
        Self {
            snapshots_received: node.stats().snapshots_received,
            was_leader: node.is_leader(),
            node,
            transport,
            published: None,
            member,
            was_member: member,
            waiters: Vec::new(),
        }
    }

    /// The replica behind the engine's `Replicator` seam.
    pub fn replicator(&mut self) -> &mut RaftReplicator {
        &mut self.node
    }

    /// The replica, read-only.
    pub fn replica(&self) -> &RaftReplicator {
        &self.node
    }

    /// Feeds one input from [`RaftInput::next`].
    pub fn input(&mut self, input: Input) {
        match input {
            Input::Tick => self.node.tick(),
            Input::Inbound(Inbound::Message(m)) => {
                let from = m.from;
                if let Err(e) = self.node.step(*m) {
                    // Messages from removed nodes, stale terms after a
                    // restart: raft's normal noise.
                    debug!(from, error = %e, "raft message refused");
                }
            }
            Input::Inbound(Inbound::Unreachable(peer)) => {
                metrics::counter!(telemetry::RAFT_UNREACHABLE, "peer" => peer.to_string())
                    .increment(1);
                self.node.report_unreachable(peer);
            }
            Input::Inbound(Inbound::Snapshot { to, delivered }) => {
                self.node.report_snapshot(to, delivered);
            }
            Input::Refused(r) => {
                // The term this node knows as the report arrives: the
                // report is about the leader of this term, or about nobody.
                let status = self.node.status();
                if self.node.leader_refused(r.peer, status.term) {
                    info!(
                        dead_leader = r.peer,
                        term = status.term,
                        "raft leader refused after its stream ended: campaigning at once"
                    );
                } else if r.peer == status.leader {
                    debug!(
                        dead_leader = r.peer,
                        term = status.term,
                        "raft leader refused; another voter campaigns (or already did)"
                    );
                }
            }
        }
    }

    /// Persists and applies what raft has ready. An error means the log
    /// cannot be written: fatal.
    pub fn ready(&mut self) -> Result<(), RaftError> {
        // A leader's appends leave before its own fsync [Raft thesis
        // § 10.2.1]; votes and acknowledgements only after it.
        let transport = &self.transport;
        self.node
            .handle_ready_sending(&mut |to, m| transport.send(to, m))
    }

    /// Whether this node answers registrations: it is a voter.
    pub fn serving(&self) -> bool {
        self.member
    }

    /// The role for the admin API: raft's, or `"joining"` / `"removed"`.
    pub fn role(&self) -> &'static str {
        if !self.member {
            return if self.was_member {
                "removed"
            } else {
                "joining"
            };
        }
        match self.node.status().role {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
        }
    }

    /// Term, leader, indexes, role and voters.
    pub fn status(&self) -> RaftStatus {
        self.node.status()
    }

    /// After every pump: sends raft's messages, follows leader changes and
    /// installed snapshots in the engine, answers admin waiters, and
    /// updates the metrics when the counters moved.
    pub fn flush(&mut self, engine: &mut Engine) {
        for (to, m) in self.node.poll_messages() {
            self.transport.send(to, m);
        }
        let leader = self.node.is_leader();
        if leader != self.was_leader {
            self.was_leader = leader;
            // Only the leader proposes expiries, so replicas never race
            // with `Expire` entries.
            engine.set_propose_expiries(leader);
            info!(
                leader = self.node.leader_id(),
                this_node_leads = leader,
                "raft leadership changed"
            );
        }
        let stats = self.node.stats();
        if stats.snapshots_received != self.snapshots_received {
            self.snapshots_received = stats.snapshots_received;
            info!(applied = stats.applied, "raft snapshot installed");
        }
        let status = self.node.status();
        let member = status.voters.contains(&status.id);
        if member != self.member {
            self.member = member;
            if member {
                self.was_member = true;
                info!(voters = ?status.voters, "this node is a voter now");
            } else {
                warn!(voters = ?status.voters, "this node was removed from the raft group; not serving");
            }
        }
        self.answer_waiters(&status);
        if self.published != Some(stats) {
            self.publish(stats);
        }
    }

    /// Re-publishes every Raft metric (once a second, so gauges stay fresh
    /// for scrapes even when nothing moves).
    pub fn publish_metrics(&mut self) {
        let stats = self.node.stats();
        self.publish(stats);
    }

    fn publish(&mut self, s: RaftStats) {
        metrics::gauge!(telemetry::RAFT_TERM).set(s.term as f64);
        metrics::gauge!(telemetry::RAFT_LEADER_ID).set(s.leader as f64);
        metrics::gauge!(telemetry::RAFT_IS_LEADER).set(if self.node.is_leader() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(telemetry::RAFT_MEMBER).set(if self.member { 1.0 } else { 0.0 });
        metrics::gauge!(telemetry::RAFT_COMMIT_INDEX).set(s.commit as f64);
        metrics::gauge!(telemetry::RAFT_APPLIED_INDEX).set(s.applied as f64);
        metrics::counter!(telemetry::RAFT_PROPOSALS).absolute(s.proposals);
        metrics::counter!(telemetry::RAFT_PROPOSAL_DROPS).absolute(s.proposal_drops);
        metrics::counter!(telemetry::RAFT_LEADER_CHANGES).absolute(s.leader_changes);
        metrics::counter!(telemetry::RAFT_SNAPSHOTS_SENT).absolute(s.snapshots_sent);
        metrics::counter!(telemetry::RAFT_SNAPSHOTS_RECEIVED).absolute(s.snapshots_received);
        metrics::counter!(telemetry::RAFT_SNAPSHOTS_TAKEN).absolute(s.snapshots_taken);
        metrics::counter!(telemetry::RAFT_FAST_ELECTIONS).absolute(s.fast_elections);
        self.published = Some(s);
    }

    fn answer_waiters(&mut self, status: &RaftStatus) {
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            match w {
                Waiter::Member { id, present, done } => {
                    if done.is_closed() {
                        continue;
                    }
                    if status.voters.contains(&id) == present {
                        let _ = done.send(Ok(status.voters.clone()));
                    } else {
                        self.waiters.push(Waiter::Member { id, present, done });
                    }
                }
                Waiter::Leader { to, done } => {
                    if done.is_closed() {
                        continue;
                    }
                    if status.leader == to {
                        let _ = done.send(Ok(to));
                    } else {
                        self.waiters.push(Waiter::Leader { to, done });
                    }
                }
            }
        }
    }

    /// `AddMember`: records `address` for `id` in the transport; on the
    /// leader also proposes the voter and answers `done` once it is applied
    /// here [Raft thesis § 4.1]. On a follower `done` gets `NotLeader`
    /// (the address is kept, so a later leader can reach the new node).
    pub fn add_member(
        &mut self,
        id: u64,
        address: &str,
        done: oneshot::Sender<Result<Vec<u64>, AdminError>>,
    ) {
        if id == 0 {
            let _ = done.send(Err(AdminError::Invalid("node id 0 is reserved".into())));
            return;
        }
        if id != self.node.id() {
            self.transport.add_peer(id, address);
        }
        if !self.node.is_leader() {
            let _ = done.send(Err(AdminError::NotLeader {
                leader: self.node.leader_id(),
            }));
            return;
        }
        if self.node.status().voters.contains(&id) {
            let _ = done.send(Ok(self.node.status().voters));
            return;
        }
        match self.node.add_member(id) {
            Ok(()) => self.waiters.push(Waiter::Member {
                id,
                present: true,
                done,
            }),
            Err(ProposeError::Unavailable) => {
                let _ = done.send(Err(AdminError::Unavailable));
            }
        }
    }

    /// `RemoveMember`: on the leader, proposes removing `id` (not itself:
    /// transfer leadership first) and answers once applied.
    pub fn remove_member(&mut self, id: u64, done: oneshot::Sender<Result<Vec<u64>, AdminError>>) {
        if !self.node.is_leader() {
            let _ = done.send(Err(AdminError::NotLeader {
                leader: self.node.leader_id(),
            }));
            return;
        }
        let voters = self.node.status().voters;
        if id == self.node.id() {
            let _ = done.send(Err(AdminError::Invalid(
                "the leader cannot remove itself; transfer leadership first".into(),
            )));
            return;
        }
        if !voters.contains(&id) {
            let _ = done.send(Ok(voters));
            return;
        }
        match self.node.remove_member(id) {
            Ok(()) => self.waiters.push(Waiter::Member {
                id,
                present: false,
                done,
            }),
            Err(ProposeError::Unavailable) => {
                let _ = done.send(Err(AdminError::Unavailable));
            }
        }
    }

    /// `TransferLeadership`: on the leader, hands leadership to voter `to`
    /// [Raft thesis § 3.10] and answers once `to` leads.
    pub fn transfer_leader(&mut self, to: u64, done: oneshot::Sender<Result<u64, AdminError>>) {
        if !self.node.is_leader() {
            let _ = done.send(Err(AdminError::NotLeader {
                leader: self.node.leader_id(),
            }));
            return;
        }
        if !self.node.status().voters.contains(&to) {
            let _ = done.send(Err(AdminError::Invalid(format!(
                "node {to} is not a voter"
            ))));
            return;
        }
        if to == self.node.id() {
            let _ = done.send(Ok(to));
            return;
        }
        self.node.transfer_leader(to);
        self.waiters.push(Waiter::Leader { to, done });
    }
}

/// The Raft part of the admin Status reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Current term.
    pub term: u64,
    /// Known leader.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters.
    pub members: Vec<u64>,
    /// `leader`, `follower`, ..., `joining`, `removed`.
    pub role: String,
}

impl RaftNode {
    /// What the admin Status call shows.
    pub fn published(&self) -> Published {
        let s = self.node.status();
        Published {
            term: s.term,
            leader: s.leader,
            commit: s.commit,
            applied: s.applied,
            members: s.voters,
            role: self.role().to_owned(),
        }
    }
}

/// How long admin membership calls wait for the change to apply.
pub const ADMIN_WAIT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::raft::PeerMap;
    use crate::subscriber::StaticSubscribers;
    use std::sync::Arc;

    fn config() -> Config {
        Config::from_toml_str(
            "[[realm]]\nname = \"lab\"\nvip = \"192.0.2.1\"\nhome_prefix = \"198.51.100.0/24\"\n",
        )
        .expect("config")
    }

    fn node(voters: Vec<u64>) -> (RaftNode, Engine) {
        let cfg = config();
        let sm = StateMachine::from_config(&cfg);
        let table = sm.reader();
        let r = RaftReplicator::new(&RaftConfig::new(1, voters), RaftStore::in_memory(), sm)
            .expect("raft");
        let (transport, _rx) = Transport::new(1, "lab", &PeerMap::new());
        let engine = Engine::new(
            EngineConfig::from_config(&cfg),
            &cfg.realm,
            Arc::new(StaticSubscribers::from_config(&cfg)),
            table,
        );
        (RaftNode::new(r, transport), engine)
    }

    fn pump(n: &mut RaftNode, e: &mut Engine) {
        n.ready().expect("ready");
        n.flush(e);
    }

    #[tokio::test]
    async fn admin_calls_need_the_leader_and_wait_for_the_change() {
        let (mut n, mut e) = node(vec![1]);
        assert!(n.serving());
        assert_eq!(n.role(), "follower");
        let (tx, rx) = oneshot::channel();
        n.remove_member(2, tx);
        assert_eq!(
            rx.await.expect("answered"),
            Err(AdminError::NotLeader { leader: 0 })
        );
        let (tx, rx) = oneshot::channel();
        n.add_member(2, "127.0.0.1:9", tx);
        assert_eq!(
            rx.await.expect("answered"),
            Err(AdminError::NotLeader { leader: 0 })
        );

        n.replicator().campaign().expect("campaign");
        pump(&mut n, &mut e);
        assert_eq!(n.role(), "leader");
        assert_eq!(n.published().leader, 1);

        let (tx, rx) = oneshot::channel();
        n.transfer_leader(9, tx);
        assert!(matches!(
            rx.await.expect("answered"),
            Err(AdminError::Invalid(_))
        ));
        let (tx, rx) = oneshot::channel();
        n.remove_member(1, tx);
        assert!(
            matches!(rx.await.expect("answered"), Err(AdminError::Invalid(m)) if m.contains("transfer"))
        );
        let (tx, rx) = oneshot::channel();
        n.add_member(0, "127.0.0.1:9", tx);
        assert!(matches!(
            rx.await.expect("answered"),
            Err(AdminError::Invalid(_))
        ));

        // A one-voter group commits the change alone [Raft thesis § 4.1];
        // the answer comes only once it is applied.
        let (tx, mut rx) = oneshot::channel();
        n.add_member(2, "127.0.0.1:9", tx);
        assert!(rx.try_recv().is_err(), "not before it is applied");
        for _ in 0..10 {
            pump(&mut n, &mut e);
        }
        assert_eq!(rx.try_recv().expect("answered"), Ok(vec![1, 2]));
        assert_eq!(n.published().members, vec![1, 2]);
        // Adding a present member answers at once.
        let (tx, rx) = oneshot::channel();
        n.add_member(2, "127.0.0.1:9", tx);
        assert_eq!(rx.await.expect("answered"), Ok(vec![1, 2]));
    }

    #[tokio::test]
    async fn a_joining_node_does_not_serve() {
        let (n, _e) = node(Vec::new());
        assert!(!n.serving());
        assert_eq!(n.role(), "joining");
        assert_eq!(n.published().role, "joining");
        assert!(n.published().members.is_empty());
    }
}
