//! [`RaftReplicator`]: a raft-rs `RawNode` driving the [`StateMachine`],
//! behind the engine's [`Replicator`] seam.
//!
//! Sans-IO like the rest of the core: no clock, no socket. The daemon's
//! driver task owns it and calls, in a loop:
//!
//! 1. [`tick`](RaftReplicator::tick) every [`RaftConfig::TICK`] (50 ms);
//! 2. [`step`](RaftReplicator::step) for every message from the transport;
//! 3. [`propose`](Replicator::propose) for the engine's commands;
//! 4. [`handle_ready`](RaftReplicator::handle_ready) after any of those;
//! 5. [`poll_messages`](RaftReplicator::poll_messages) and hands each
//!    `(to, message)` to the transport; the transport's failures come back
//!    as [`report_unreachable`](RaftReplicator::report_unreachable) and
//!    [`report_snapshot`](RaftReplicator::report_snapshot);
//! 6. [`poll_applied`](Replicator::poll_applied) until `None`, sending the
//!    replies whose `request` is `Some`.
//!
//! # Ready handling (raft-rs 0.7 contract)
//!
//! `messages` (a leader's appends and heartbeats) are queued for sending at
//! once — a leader may send in parallel with its own disk write [Raft
//! thesis § 10.2.1]; with [`handle_ready_sending`](RaftReplicator::handle_ready_sending)
//! they leave before that write starts. A received snapshot, new entries
//! and the hard state are persisted in one synced batch; only then are
//! `persisted_messages` (votes, append responses) released, and committed
//! entries applied. A Ready that only moves the commit index is written
//! without an fsync (the commit index is volatile in Raft [Raft § 5,
//! figure 2]: a lost one is relearnt from the leader); every snapshot
//! records it again in its synced batch, so a restart never sees
//! `applied` (the snapshot's index) beyond `commit`.
//!
//! Throughput comes from batching, not from the fsync: the driver steps
//! every queued message and proposes every queued command before one
//! `handle_ready`, so one synced write covers the whole burst.
//!
//! # Request ids
//!
//! Each proposal's entry context is `proposer:u64 boot:u64 request:u64`
//! (big-endian). Only the node whose id *and* current boot nonce (a counter
//! persisted in the store, see [`RaftStore::next_boot`]) match reports
//! `request: Some(id)`; every other replica, and this node after a restart,
//! reports `None`. Nothing is matched by FIFO order, so a lost proposal
//! never shifts the replies of later ones.
//!
//! # Proposals lost with a leader
//!
//! A proposal that reached a leader which then died (or lost its term) may
//! never commit. The replicator remembers every proposal of this boot that
//! is not applied yet, with the (term, leader) it was proposed under; when
//! this node sees another term or leader, those are reported through
//! [`poll_lost`](Replicator::poll_lost) and the engine frees their mobile
//! nodes at once instead of after `[registration] max_commit_ms` (the
//! failover benchmark's leader kills: a lost proposal kept its MN "busy"
//! for 2 s and, with the MN's backoff, wasted every other retransmission).
//! Such an entry may still commit under the new leader; its late apply is
//! not answered (the engine never answers an id it no longer waits for),
//! and the retransmission carries a newer Identification [RFC 5944 § 5.7].
//!
//! # Readiness
//!
//! [`ready_to_serve`](RaftReplicator::ready_to_serve) tells the dispatch
//! advertiser whether this node can answer now: a leader is known, and
//! since it last knew none the node caught up with the cluster's commit
//! index — as leader, it committed an entry of its term and applied it; as
//! follower, it applied the commit index the leader sent in an append
//! (the leader's own), or, when no append comes (an idle cluster), the one
//! a ReadIndex query [Raft thesis § 6.4] returned. A restarted node (or
//! one back from a partition) learns a leader from the first heartbeat
//! long before it has replayed what it missed; a heartbeat's commit index
//! is only `min(match, commit)` of the leader's view, so it cannot tell.
//! Only a follower that heard no append for [`PROBE_AFTER_TICKS`] sends
//! the query, so a busy cluster carries no extra message.
//!
//! # Leader death
//!
//! A SIGKILLed leader is otherwise replaced only after the followers'
//! election timeouts (10–20 ticks, 0.5–1 s), and with `check_quorum` a
//! follower still inside the dead leader's lease ignores an early vote
//! request. The transport knows sooner: a peer whose established stream
//! ended and whose reconnect is refused has no process any more
//! ([`crate::raft::PeerRefused`]). When that peer is the leader this
//! follower knows *now*, in the term it knows now,
//! [`leader_refused`](RaftReplicator::leader_refused) lets the voter with
//! the lowest id among the voters other than the dead leader — computed
//! from the configuration every follower holds, so exactly one of them —
//! start a transfer-style election at once: raft-rs's
//! `campaign(CAMPAIGN_TRANSFER)`, reached by stepping a `MsgTimeoutNow`
//! "from" the leader (the path of a leadership transfer [Raft thesis
//! § 3.10], with raft's own checks: promotable, no unapplied
//! configuration change). Its vote requests carry the force context that
//! voters honour inside the lease. Every other follower only votes —
//! unless it had the same report and its log is more up to date than the
//! candidate's (under load the survivors' logs differ by a few entries):
//! it refuses the vote [Raft § 5.4.1] and campaigns the same way at once,
//! instead of after its election timeout (in a 3-voter group it is the
//! only other survivor; with 5, two such voters may split the vote, which
//! the timeout resolves). Each at most once per (term, leader), counted in
//! `fast_elections` (`haven_raft_fast_elections_total`). If no voter hears
//! the refusal (no stream to the leader), the election timeout still
//! elects.
//!
//! Safety: Raft's safety never depends on who campaigns or when [Raft
//! § 5.2, § 5.4]: a candidate still needs a majority of votes, each voter
//! votes once per term and only for a log at least as up to date as its
//! own, so Election Safety and Leader Completeness hold for any campaign.
//! The lease (`check_quorum`) only protects *liveness* against a
//! disruptive node; the force context bypasses it exactly as a
//! leadership transfer does. A false report (the leader alive, e.g. a
//! firewall `reject` on its port) costs one election (two when a voter
//! with a longer log takes over): the live leader steps down on the
//! higher term and the cluster elects again. The "once per (term,
//! leader)" rules bound that per report storm.
//!
//! # Snapshots and restarts
//!
//! Every [`RaftConfig::snapshot_every`] applied entries the node stores
//! `StateMachine::snapshot()` as the Raft snapshot and compacts the log. The
//! state machine is volatile: on start it is restored from the stored
//! snapshot and raft's `applied` is that snapshot's index, so raft replays
//! the committed entries after it (with `request: None`).

use std::collections::{HashMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message,
    MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole, Storage as _};

use super::storage::{RaftStore, StoreError};
use crate::command::{Command, StateMachine};
use crate::replicate::{Applied, ProposeError, Replicator, RequestId};

/// Raft timing and limits. Defaults: 50 ms ticks, election after 10 ticks
/// (randomised by raft in [10, 20)), heartbeat every 2 — a dead leader is
/// noticed in 0.5–1 s [DESIGN.md § 9], or within a round trip when the
/// transport reports its process gone (module docs, "Leader death").
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's Raft id (non-zero, unique in the cluster).
    pub id: u64,
    /// The voters of a brand-new cluster; empty for a node that joins an
    /// existing cluster (it waits for the leader's snapshot). Ignored when
    /// the store already holds state.
    pub initial_voters: Vec<u64>,
    /// Ticks without a leader before an election.
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Bounds of the randomised election timeout, `[min, max)` ticks; 0 =
    /// raft's default (`election_tick`, `2 × election_tick`). A simulation
    /// sets `max = min + 1` per node so that no thread-local randomness
    /// inside raft breaks its determinism.
    pub min_election_tick: usize,
    /// See `min_election_tick`.
    pub max_election_tick: usize,
    /// Applied entries between state-machine snapshots (log compaction).
    pub snapshot_every: u64,
    /// Largest append message (bytes).
    pub max_size_per_msg: u64,
    /// Appends in flight per follower.
    pub max_inflight_msgs: usize,
}

impl RaftConfig {
    /// Defaults for node `id`.
    pub fn new(id: u64, initial_voters: Vec<u64>) -> Self {
        Self {
            id,
            initial_voters,
            election_tick: 10,
            heartbeat_tick: 2,
            min_election_tick: 0,
            max_election_tick: 0,
            snapshot_every: 10_000,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
        }
    }

    /// The real-time length of one tick the defaults assume.
    pub const TICK: std::time::Duration = std::time::Duration::from_millis(50);

    fn to_raft(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            min_election_tick: self.min_election_tick,
            max_election_tick: self.max_election_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            // A partitioned leader steps down, and a rejoining node does not
            // disrupt the cluster with a higher term [Raft thesis § 9.6].
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            ..Default::default()
        }
    }
}

/// Errors from the Raft node. Storage errors are fatal for the node.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// raft-rs refused (invalid config, storage failure inside raft).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored snapshot does not restore into this state machine.
    #[error("stored snapshot does not restore: {0}")]
    Snapshot(#[from] crate::command::CommandError),
    /// A message from the wire did not decode.
    #[error("undecodable raft message: {0}")]
    Decode(#[from] protobuf::ProtobufError),
}

/// The node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follower.
    Follower,
    /// Candidate.
    Candidate,
    /// Pre-vote candidate.
    PreCandidate,
    /// Leader.
    Leader,
}

impl From<StateRole> for Role {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }
}

/// A point-in-time view for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Known leader, 0 = none.
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Role.
    pub role: Role,
    /// Voters (sorted).
    pub voters: Vec<u64>,
    /// Learners (sorted).
    pub learners: Vec<u64>,
}

/// Counters for the daemon's metrics (`haven_raft_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RaftStats {
    /// Current term.
    pub term: u64,
    /// Known leader (0 = none).
    pub leader: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Proposals accepted by raft.
    pub proposals: u64,
    /// Proposals refused (no leader, transfer in progress).
    pub proposal_drops: u64,
    /// Snapshot messages sent.
    pub snapshots_sent: u64,
    /// Snapshots received and restored.
    pub snapshots_received: u64,
    /// State-machine snapshots taken locally (log compactions).
    pub snapshots_taken: u64,
    /// Times the known leader changed to a new one.
    pub leader_changes: u64,
    /// Committed entries that did not decode (should stay 0).
    pub bad_entries: u64,
    /// Elections this node started at once because its leader was
    /// refused (module docs, "Leader death").
    pub fast_elections: u64,
}

const CONTEXT_LEN: usize = 24;

/// Ticks a follower that knows a leader but has not caught up waits for an
/// append before it asks with ReadIndex (readiness, module docs): a
/// restarted follower that lags gets appends one round trip after the
/// leader's next heartbeat; one that lags nothing gets none.
const PROBE_AFTER_TICKS: u64 = 4;

/// Ticks between ReadIndex queries while unanswered: the leader drops one
/// until it committed an entry of its term [Raft thesis § 6.4], and the
/// transport may lose one.
const PROBE_RETRY_TICKS: u64 = 10;

/// Ticks an unapplied proposal is remembered for [`Replicator::poll_lost`]
/// (10 s at 50 ms ticks): far beyond the engine's commit timeout, after
/// which the engine has given up on it anyway; bounds the map when a
/// proposal is dropped silently (a forwarded one lost on the wire).
const IN_FLIGHT_KEEP_TICKS: u64 = 200;

/// A proposal of this boot not applied yet.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The (term, leader) this node knew when proposing.
    under: (u64, u64),
    /// The tick it was proposed at.
    at: u64,
}

/// An outstanding ReadIndex probe (readiness, module docs).
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The first probe number of this round: an answer to any of them,
    /// even a late one, is a commit index of the cluster.
    first: u64,
    /// The tick the last one left.
    at: u64,
}

/// Raft replication (see the module docs for the driver contract).
pub struct RaftReplicator {
    raw: RawNode<RaftStore>,
    state: StateMachine,
    applied: VecDeque<Applied>,
    outbox: Vec<Message>,
    boot: u64,
    snapshot_every: u64,
    since_snapshot: u64,
    last_applied: u64,
    stats: RaftStats,
    /// Ticks since start (the replicator's only clock).
    ticks: u64,
    /// Own proposals not applied yet (module docs).
    in_flight: HashMap<RequestId, InFlight>,
    /// Proposals lost with a leader or term, for `poll_lost`.
    lost: VecDeque<RequestId>,
    /// The (term, leader) `in_flight` was last checked against.
    seen: (u64, u64),
    /// Caught up with the cluster since a leader was last unknown.
    caught_up: bool,
    /// The highest leader commit index learnt since then (appends, ReadIndex).
    commit_seen: Option<u64>,
    /// The tick the current leader became known.
    leader_since: u64,
    probe: Option<Probe>,
    probes: u64,
    /// The (term, leader) a leader-refused report was last accepted for
    /// (module docs, "Leader death"): acted on at most once each.
    fast_election_for: Option<(u64, u64)>,
    /// The (term, leader) of a dead leader after whose successor's
    /// refused vote this node campaigned itself (module docs, "Leader
    /// death"): at most once each.
    fast_retry_for: Option<(u64, u64)>,
}

impl std::fmt::Debug for RaftReplicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftReplicator")
            .field("status", &self.status())
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

impl RaftReplicator {
    /// Starts a node on `store` (fresh or from a previous run). `state` is
    /// an empty state machine for this node's realms; it is restored from
    /// the store's snapshot.
    pub fn new(
        cfg: &RaftConfig,
        mut store: RaftStore,
        mut state: StateMachine,
    ) -> Result<Self, RaftError> {
        store.bootstrap(&cfg.initial_voters)?;
        let boot = store.next_boot()?;
        let applied = store.snapshot_ref().get_metadata().index;
        if applied > 0 {
            state.restore(&store.snapshot_ref().data)?;
        }
        // The durable store reads the bytes from their file whenever raft
        // sends a snapshot: keeping the copy `open` loaded would cost 34 B
        // per binding until the next snapshot (storage.rs, module docs).
        store.release_snapshot_data();
        let rc = cfg.to_raft(applied);
        rc.validate()?;
        let raw = RawNode::new(&rc, store, &logger())?;
        let mut me = Self {
            raw,
            state,
            applied: VecDeque::new(),
            outbox: Vec::new(),
            boot,
            snapshot_every: cfg.snapshot_every.max(1),
            since_snapshot: 0,
            last_applied: applied,
            stats: RaftStats::default(),
            ticks: 0,
            in_flight: HashMap::new(),
            lost: VecDeque::new(),
            seen: (0, raft::INVALID_ID),
            caught_up: false,
            commit_seen: None,
            leader_since: u64::MAX,
            probe: None,
            probes: 0,
            fast_election_for: None,
            fast_retry_for: None,
        };
        me.refresh_stats();
        Ok(me)
    }

    /// Stops the node and returns its store (the simulation's crash: the
    /// volatile state is gone, what was persisted stays).
    pub fn into_store(self) -> RaftStore {
        self.raw.raft.r.raft_log.store
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The per-boot nonce carried in this node's proposals.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Advances raft's logical clock by one tick.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        if self.ticks % IN_FLIGHT_KEEP_TICKS == 0 {
            let now = self.ticks;
            self.in_flight
                .retain(|_, f| now.saturating_sub(f.at) < IN_FLIGHT_KEEP_TICKS);
        }
    }

    /// Whether this node can serve registrations now: a leader is known
    /// and this node has caught up with the commit index since it last
    /// knew none (module docs, "Readiness"). The dispatch advertiser
    /// advertises priority 0 otherwise.
    pub fn ready_to_serve(&self) -> bool {
        self.caught_up && self.leader_id() != raft::INVALID_ID
    }

    /// Feeds one message from a peer. Messages for another node or from a
    /// removed one are refused by raft; the daemon logs and drops them.
    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        if msg.to != self.id() {
            return Err(raft::Error::StepPeerNotFound.into());
        }
        if is_local(msg.get_msg_type()) {
            // Local message types never travel the wire.
            return Err(raft::Error::StepLocalMsg.into());
        }
        // An append carries the leader's own commit index (readiness).
        let append = (msg.get_msg_type() == MessageType::MsgAppend)
            .then_some((msg.from, msg.term, msg.commit));
        let retry = self.fast_retry_due(&msg);
        self.raw.step(msg)?;
        if let Some(dead) = retry {
            self.fast_retry(dead);
        }
        if let Some((from, term, commit)) = append {
            let r = &self.raw.raft;
            if r.leader_id == from && r.term == term {
                self.learn_commit(commit);
            }
        }
        Ok(())
    }

    /// Decodes and feeds a message received as bytes.
    pub fn step_bytes(&mut self, bytes: &[u8]) -> Result<(), RaftError> {
        let msg = Message::parse_from_bytes(bytes)?;
        self.step(msg)
    }

    /// Whether this node is the leader (only the leader proposes expiries,
    /// so replicas never race each other with `Expire` commands).
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The known leader, 0 = none.
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// Whether `handle_ready` has work.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Runs the Ready loop once (see the module docs). Call after `tick`,
    /// `step` and `propose`. Outbound messages wait for
    /// [`poll_messages`](Self::poll_messages).
    pub fn handle_ready(&mut self) -> Result<(), RaftError> {
        self.ready(None)
    }

    /// As [`handle_ready`](Self::handle_ready), handing every outbound
    /// message to `send` as soon as raft releases it: a leader's appends
    /// leave before its own synced write, so the followers' fsyncs overlap
    /// it instead of following it. `send` must not block (the transport
    /// queues).
    pub fn handle_ready_sending(
        &mut self,
        send: &mut dyn FnMut(u64, Message),
    ) -> Result<(), RaftError> {
        self.ready(Some(send))
    }

    fn ready(&mut self, mut send: Option<&mut dyn FnMut(u64, Message)>) -> Result<(), RaftError> {
        if self.raw.store().take_snapshot_wanted() {
            self.since_snapshot = self.snapshot_every;
            self.maybe_snapshot()?;
        }
        // After a tick or a step; lost proposals and readiness are judged
        // at the end, once this Ready's committed entries are applied.
        self.maybe_probe();
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.note_leader(ss.leader_id);
        }
        for rs in rd.take_read_states() {
            if self.probe_answered(&rs.request_ctx) {
                self.learn_commit(rs.index);
            }
        }
        self.outbox.extend(rd.take_messages());
        if let Some(send) = send.as_deref_mut() {
            // Not `persisted_messages`: those wait for the write below.
            for (to, m) in self.poll_messages() {
                send(to, m);
            }
        }
        let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
        // Installing a snapshot (persist + restore) is the "data dump" of a
        // joining or lagging node: its duration is worth watching.
        let install_started = snapshot.as_ref().map(|_| std::time::Instant::now());
        self.raw
            .mut_store()
            .persist(snapshot.as_ref(), rd.entries(), rd.hs())?;
        if let Some(s) = snapshot {
            // The snapshot's state replaces ours; entries after it follow
            // as committed entries [Raft § 7].
            self.state.restore(&s.data)?;
            self.last_applied = s.get_metadata().index;
            self.since_snapshot = 0;
            self.stats.snapshots_received += 1;
            if let Some(t) = install_started {
                metrics::histogram!(crate::telemetry::RAFT_SNAPSHOT_INSTALL)
                    .record(t.elapsed().as_secs_f64());
                metrics::histogram!(crate::telemetry::RAFT_SNAPSHOT_BYTES)
                    .record(s.data.len() as f64);
            }
        }
        self.outbox.extend(rd.take_persisted_messages());
        let committed = rd.take_committed_entries();
        self.apply_entries(committed)?;
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        self.outbox.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;
        self.raw.advance_apply();
        self.maybe_snapshot()?;
        self.refresh_stats();
        self.follow_leader();
        if let Some(send) = send {
            for (to, m) in self.poll_messages() {
                send(to, m);
            }
        }
        Ok(())
    }

    /// Outbound messages, in order, each with its destination.
    pub fn poll_messages(&mut self) -> Vec<(u64, Message)> {
        let out: Vec<_> = self.outbox.drain(..).map(|m| (m.to, m)).collect();
        self.stats.snapshots_sent += out
            .iter()
            .filter(|(_, m)| m.get_msg_type() == MessageType::MsgSnapshot)
            .count() as u64;
        out
    }

    /// The transport could not reach `id` (raft then probes it gently).
    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    /// The transport delivered (`true`) or lost (`false`) a snapshot to `id`.
    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(id, status);
    }

    /// Proposes adding `id` as a voter [Raft thesis § 4.1]. The leader must
    /// already reach it (the daemon adds its address to the transport
    /// first); it catches up from a snapshot.
    pub fn add_member(&mut self, id: u64) -> Result<(), ProposeError> {
        self.conf_change(ConfChangeType::AddNode, id)
    }

    /// Proposes adding `id` as a non-voting learner.
    pub fn add_learner(&mut self, id: u64) -> Result<(), ProposeError> {
        self.conf_change(ConfChangeType::AddLearnerNode, id)
    }

    /// Proposes removing `id`.
    pub fn remove_member(&mut self, id: u64) -> Result<(), ProposeError> {
        self.conf_change(ConfChangeType::RemoveNode, id)
    }

    fn conf_change(
        &mut self,
        change_type: ConfChangeType,
        node_id: u64,
    ) -> Result<(), ProposeError> {
        if self.leader_id() == raft::INVALID_ID {
            self.stats.proposal_drops += 1;
            return Err(ProposeError::Unavailable);
        }
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node_id;
        cc.mut_changes().push(single);
        self.raw.propose_conf_change(Vec::new(), cc).map_err(|_| {
            self.stats.proposal_drops += 1;
            ProposeError::Unavailable
        })
    }

    /// Asks the leader (this node) to hand leadership to `to`.
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// Starts an election now (tests, operator tooling).
    pub fn campaign(&mut self) -> Result<(), RaftError> {
        self.raw.campaign()?;
        Ok(())
    }

    /// The transport reports `peer` refused after its stream ended (its
    /// process is gone), seen while this node was in `term` (the driver
    /// passes the term it knew when the report arrived). When `peer` is
    /// the leader of `term` — still this follower's current term and
    /// leader — and this node is the lowest-id voter other than `peer`,
    /// it starts a transfer-style election at once, which the other
    /// voters honour inside the dead leader's lease (module docs, "Leader
    /// death"). Anything else (another peer, a stale term, a candidate, a
    /// (term, leader) already acted on, not the lowest id) does nothing.
    /// Returns whether it campaigned. Call `handle_ready` afterwards.
    pub fn leader_refused(&mut self, peer: u64, term: u64) -> bool {
        let r = &self.raw.raft;
        if peer == raft::INVALID_ID
            || peer == r.id
            || r.state != StateRole::Follower
            || r.term != term
            || r.leader_id != peer
            || self.fast_election_for == Some((term, peer))
        {
            return false;
        }
        self.fast_election_for = Some((term, peer));
        let voters = self.status().voters;
        let lowest = voters.iter().copied().filter(|&v| v != peer).min();
        if lowest != Some(self.id()) || !voters.contains(&peer) {
            return false;
        }
        // The leadership-transfer path [Raft thesis § 3.10]: raft checks
        // that this node is promotable and has no unapplied configuration
        // change, then campaigns with CAMPAIGN_TRANSFER (no pre-vote; the
        // vote requests carry the context voters honour in lease).
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgTimeoutNow);
        m.from = peer;
        m.to = self.id();
        m.term = term;
        if let Err(e) = self.raw.raft.step(m) {
            tracing::debug!(error = %e, "fast election refused by raft");
            return false;
        }
        let campaigned = self.raw.raft.state != StateRole::Follower;
        if campaigned {
            self.stats.fast_elections += 1;
        }
        campaigned
    }

    /// Whether `msg` is the fast candidate's forced vote request for the
    /// term after a leader this node accepted as dead, which this node is
    /// about to refuse because its own log is more up to date [Raft
    /// § 5.4.1]: the dead leader it names, if so (module docs, "Leader
    /// death").
    fn fast_retry_due(&self, msg: &Message) -> Option<(u64, u64)> {
        let dead = self.fast_election_for?;
        let r = &self.raw.raft;
        let log = &r.raft_log;
        let forced = msg.get_msg_type() == MessageType::MsgRequestVote
            && msg.context.as_ref() == raft::CAMPAIGN_TRANSFER;
        (forced
            && msg.term == dead.0 + 1
            && msg.from != dead.1
            && r.term <= msg.term
            && r.state == StateRole::Follower
            && self.fast_retry_for != Some(dead)
            && (log.last_term(), log.last_index()) > (msg.log_term, msg.index))
            .then_some(dead)
    }

    /// After refusing the fast candidate's vote (its log is behind this
    /// node's), campaign the same way: the candidate and the others vote
    /// for the more complete log.
    fn fast_retry(&mut self, dead: (u64, u64)) {
        self.fast_retry_for = Some(dead);
        let r = &self.raw.raft;
        if r.state != StateRole::Follower || r.leader_id != raft::INVALID_ID {
            return;
        }
        let term = r.term;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgTimeoutNow);
        m.from = dead.1;
        m.to = self.id();
        m.term = term;
        if let Err(e) = self.raw.raft.step(m) {
            tracing::debug!(error = %e, "fast election retry refused by raft");
            return;
        }
        if self.raw.raft.state != StateRole::Follower {
            self.stats.fast_elections += 1;
            tracing::info!(
                dead_leader = dead.1,
                term,
                "refused the fast candidate's vote (its log is behind this one): campaigning at once"
            );
        }
    }

    /// Term, leader, indexes, role and membership.
    pub fn status(&self) -> RaftStatus {
        let r = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let mut voters = cs.voters.clone();
        voters.extend(cs.voters_outgoing.iter().copied());
        voters.sort_unstable();
        voters.dedup();
        let mut learners = cs.learners.clone();
        learners.sort_unstable();
        RaftStatus {
            id: r.id,
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.last_applied,
            role: r.state.into(),
            voters,
            learners,
        }
    }

    /// Replication progress of each peer as the leader sees it:
    /// `(id, matched index, state)` (empty on a follower).
    pub fn progress(&self) -> Vec<(u64, u64, String)> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut v: Vec<_> = self
            .raw
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched, format!("{:?}", p.state)))
            .collect();
        v.sort();
        v
    }

    /// The counters.
    pub fn stats(&self) -> RaftStats {
        self.stats
    }

    /// The store (inspection, tests).
    pub fn store(&self) -> &RaftStore {
        self.raw.store()
    }

    fn note_leader(&mut self, leader: u64) {
        if leader != raft::INVALID_ID && leader != self.stats.leader {
            self.stats.leader_changes += 1;
        }
        self.stats.leader = leader;
    }

    fn refresh_stats(&mut self) {
        let r = &self.raw.raft;
        self.stats.term = r.term;
        self.stats.commit = r.raft_log.committed;
        self.stats.applied = self.last_applied;
        let leader = r.leader_id;
        self.note_leader(leader);
    }

    /// Reports the proposals made under another (term, leader) as lost,
    /// and updates readiness (module docs).
    fn follow_leader(&mut self) {
        let r = &self.raw.raft;
        let now = (r.term, r.leader_id);
        if now != self.seen {
            self.seen = now;
            let lost = &mut self.lost;
            self.in_flight.retain(|id, f| {
                let keep = f.under == now;
                if !keep {
                    lost.push_back(*id);
                }
                keep
            });
        }
        if now.1 == raft::INVALID_ID {
            // Whatever happens meanwhile, catch up again before serving.
            self.caught_up = false;
            self.commit_seen = None;
            self.probe = None;
            self.leader_since = u64::MAX;
            return;
        }
        if self.leader_since == u64::MAX {
            self.leader_since = self.ticks;
        }
        if self.caught_up {
            return;
        }
        let caught_up = if r.state == StateRole::Leader {
            r.commit_to_current_term() && self.last_applied >= r.raft_log.committed
        } else {
            self.commit_seen.is_some_and(|c| self.last_applied >= c)
        };
        if caught_up {
            self.caught_up = true;
            self.probe = None;
        }
    }

    /// A commit index of the current leader, from an append or ReadIndex.
    fn learn_commit(&mut self, commit: u64) {
        if self.leader_id() != raft::INVALID_ID {
            self.commit_seen = Some(self.commit_seen.map_or(commit, |c| c.max(commit)));
        }
    }

    /// Whether a ReadIndex answer is for one of this round's probes.
    fn probe_answered(&self, ctx: &[u8]) -> bool {
        let (Some(p), Some((boot, n))) = (self.probe, ctx.split_at_checked(8)) else {
            return false;
        };
        let n = <[u8; 8]>::try_from(n).map(u64::from_be_bytes);
        boot == self.boot.to_be_bytes() && n.is_ok_and(|n| n >= p.first)
    }

    /// A follower that has not caught up and heard no append for
    /// [`PROBE_AFTER_TICKS`] asks the leader for its commit index
    /// (ReadIndex [Raft thesis § 6.4]), again every [`PROBE_RETRY_TICKS`]
    /// until it caught up.
    fn maybe_probe(&mut self) {
        if self.caught_up
            || self.commit_seen.is_some()
            || self.leader_id() == raft::INVALID_ID
            || self.is_leader()
            || self.leader_since == u64::MAX
            || self.ticks.saturating_sub(self.leader_since) < PROBE_AFTER_TICKS
        {
            return;
        }
        let due = self
            .probe
            .is_none_or(|p| self.ticks.saturating_sub(p.at) >= PROBE_RETRY_TICKS);
        if !due {
            return;
        }
        self.probes += 1;
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.boot.to_be_bytes());
        ctx.extend_from_slice(&self.probes.to_be_bytes());
        self.raw.read_index(ctx);
        let first = self.probe.map_or(self.probes, |p| p.first);
        self.probe = Some(Probe {
            first,
            at: self.ticks,
        });
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for e in entries {
            if e.index <= self.last_applied {
                // Already in the restored snapshot.
                continue;
            }
            self.last_applied = e.index;
            self.since_snapshot += 1;
            match e.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(&e),
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(cs)?;
                }
            }
        }
        Ok(())
    }

    fn apply_normal(&mut self, e: &Entry) {
        if e.data.is_empty() {
            // A new leader's empty entry [Raft § 8].
            return;
        }
        let cmd = match Command::decode(&e.data) {
            Ok(c) => c,
            Err(err) => {
                // Every replica skips it alike, so they still agree.
                tracing::error!(index = e.index, error = %err, "undecodable committed entry");
                self.stats.bad_entries += 1;
                return;
            }
        };
        let result = self.state.apply(&cmd);
        let request = self.own_request(&e.context);
        if let Some(id) = request {
            self.in_flight.remove(&id);
        }
        self.applied.push_back(Applied {
            request,
            command: cmd,
            result,
        });
    }

    fn own_request(&self, ctx: &[u8]) -> Option<RequestId> {
        let ctx: &[u8; CONTEXT_LEN] = ctx.try_into().ok()?;
        let (node, rest) = ctx.split_at(8);
        let (boot, req) = rest.split_at(8);
        let node = u64::from_be_bytes(node.try_into().ok()?);
        let boot = u64::from_be_bytes(boot.try_into().ok()?);
        (node == self.id() && boot == self.boot)
            .then(|| {
                req.try_into()
                    .ok()
                    .map(|b| RequestId(u64::from_be_bytes(b)))
            })
            .flatten()
    }

    fn maybe_snapshot(&mut self) -> Result<(), RaftError> {
        if self.since_snapshot < self.snapshot_every {
            return Ok(());
        }
        let index = self.last_applied;
        // Only entries still in the log can anchor a snapshot (a restored
        // snapshot is already one).
        if self.raw.store().term(index).is_err() || index == 0 {
            self.since_snapshot = 0;
            return Ok(());
        }
        let data = self.state.snapshot();
        self.raw.mut_store().compact_to_snapshot(index, data)?;
        self.since_snapshot = 0;
        self.stats.snapshots_taken += 1;
        Ok(())
    }
}

impl Replicator for RaftReplicator {
    fn propose(&mut self, id: RequestId, cmd: Command) -> Result<(), ProposeError> {
        if self.leader_id() == raft::INVALID_ID {
            // No leader known: nobody could commit it [DESIGN.md § 4].
            self.stats.proposal_drops += 1;
            return Err(ProposeError::Unavailable);
        }
        let mut ctx = Vec::with_capacity(CONTEXT_LEN);
        ctx.extend_from_slice(&self.id().to_be_bytes());
        ctx.extend_from_slice(&self.boot.to_be_bytes());
        ctx.extend_from_slice(&id.0.to_be_bytes());
        match self.raw.propose(ctx, cmd.encode()) {
            Ok(()) => {
                self.stats.proposals += 1;
                let r = &self.raw.raft;
                self.in_flight.insert(
                    id,
                    InFlight {
                        under: (r.term, r.leader_id),
                        at: self.ticks,
                    },
                );
                Ok(())
            }
            Err(_) => {
                self.stats.proposal_drops += 1;
                Err(ProposeError::Unavailable)
            }
        }
    }

    fn poll_applied(&mut self) -> Option<Applied> {
        self.applied.pop_front()
    }

    fn poll_lost(&mut self) -> Option<RequestId> {
        self.lost.pop_front()
    }

    fn state(&self) -> &StateMachine {
        &self.state
    }
}

fn is_local(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

/// raft-rs logs through `slog`; this drain forwards to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg());
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", record.msg()),
            slog::Level::Debug => tracing::debug!(target: "raft", "{}", record.msg()),
            slog::Level::Trace => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::RealmParams;

    fn single() -> RaftReplicator {
        let sm = StateMachine::new(vec![RealmParams {
            pool: None,
            max_bindings: 1,
        }]);
        let mut r = RaftReplicator::new(&RaftConfig::new(1, vec![1]), RaftStore::in_memory(), sm)
            .expect("start");
        r.campaign().expect("campaign");
        r.handle_ready().expect("ready");
        r
    }

    fn ctx(node: u64, boot: u64, req: u64) -> Vec<u8> {
        [node, boot, req]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect()
    }

    #[test]
    fn driver_can_move_it_to_a_task() {
        fn send<T: Send + 'static>() {}
        send::<RaftReplicator>();
    }

    #[test]
    fn request_matches_only_this_node_and_boot() {
        let r = single();
        assert_eq!(r.own_request(&ctx(1, r.boot(), 42)), Some(RequestId(42)));
        assert_eq!(
            r.own_request(&ctx(2, r.boot(), 42)),
            None,
            "another proposer"
        );
        assert_eq!(
            r.own_request(&ctx(1, r.boot() + 1, 42)),
            None,
            "another boot"
        );
        assert_eq!(
            r.own_request(&ctx(1, r.boot(), 42)[..23]),
            None,
            "short context"
        );
        assert_eq!(r.own_request(&[]), None);
    }

    #[test]
    fn ready_sending_hands_over_every_message() {
        let sm = StateMachine::new(vec![RealmParams {
            pool: None,
            max_bindings: 1,
        }]);
        let mut r = RaftReplicator::new(
            &RaftConfig::new(1, vec![1, 2, 3]),
            RaftStore::in_memory(),
            sm,
        )
        .expect("start");
        r.campaign().expect("campaign");
        let mut sent = Vec::new();
        r.handle_ready_sending(&mut |to, m| sent.push((to, m.get_msg_type())))
            .expect("ready");
        sent.sort_by_key(|(to, _)| *to);
        assert_eq!(
            sent,
            vec![
                (2, MessageType::MsgRequestPreVote),
                (3, MessageType::MsgRequestPreVote)
            ]
        );
        assert!(r.poll_messages().is_empty(), "nothing left behind");
    }

    #[test]
    fn no_leader_refuses_and_leader_applies() {
        let sm = StateMachine::new(vec![RealmParams {
            pool: None,
            max_bindings: 1,
        }]);
        let mut r = RaftReplicator::new(
            &RaftConfig::new(1, vec![1, 2, 3]),
            RaftStore::in_memory(),
            sm,
        )
        .expect("start");
        let cmd = Command::AdminRemove {
            realm: crate::config::RealmId(0),
            home_address: std::net::Ipv4Addr::new(198, 51, 100, 5),
        };
        assert_eq!(
            r.propose(RequestId(1), cmd.clone()),
            Err(ProposeError::Unavailable)
        );
        assert_eq!(r.stats().proposal_drops, 1);
        let mut r = single();
        assert!(r.is_leader());
        r.propose(RequestId(2), cmd.clone())
            .expect("leader accepts");
        r.handle_ready().expect("ready");
        let a = r.poll_applied().expect("applied");
        assert_eq!((a.request, a.command), (Some(RequestId(2)), cmd));
        assert_eq!(r.status().role, Role::Leader);
        assert_eq!(r.status().commit, r.status().applied);
    }

    /// Three in-memory replicas and a switchboard: `deliver` decides per
    /// message whether it arrives (a dead node, a filtered link).
    struct Net {
        nodes: Vec<RaftReplicator>,
    }

    impl Net {
        fn new() -> Self {
            let nodes = (1..=3)
                .map(|id| Self::boot(id, RaftStore::in_memory()))
                .collect();
            Self { nodes }
        }

        fn boot(id: u64, store: RaftStore) -> RaftReplicator {
            let sm = StateMachine::new(vec![RealmParams {
                pool: None,
                max_bindings: 1,
            }]);
            let mut cfg = RaftConfig::new(id, vec![1, 2, 3]);
            // Distinct fixed timeouts: no randomness in the test.
            cfg.min_election_tick = 10 + 3 * id as usize;
            cfg.max_election_tick = cfg.min_election_tick + 1;
            RaftReplicator::new(&cfg, store, sm).expect("start")
        }

        /// Crash and restart: what was persisted stays.
        fn restart(&mut self, id: u64) {
            let i = (id - 1) as usize;
            let old = std::mem::replace(&mut self.nodes[i], Self::boot(id, RaftStore::in_memory()));
            self.nodes[i] = Self::boot(id, old.into_store());
        }

        fn node(&mut self, id: u64) -> &mut RaftReplicator {
            &mut self.nodes[(id - 1) as usize]
        }

        /// Ready loops and message delivery until nothing moves.
        fn settle(&mut self, deliver: &dyn Fn(u64, u64, MessageType) -> bool) {
            for _ in 0..100 {
                let mut moved = false;
                let mut mail = Vec::new();
                for n in &mut self.nodes {
                    n.handle_ready().expect("ready");
                    mail.extend(n.poll_messages());
                }
                for (to, m) in mail {
                    if deliver(m.from, to, m.get_msg_type()) {
                        moved = true;
                        let _ = self.node(to).step(m);
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("the cluster did not settle");
        }

        /// Ticks every node `ticks` times, settling after each.
        fn run(&mut self, ticks: usize, deliver: &dyn Fn(u64, u64, MessageType) -> bool) {
            for _ in 0..ticks {
                for n in &mut self.nodes {
                    n.tick();
                }
                self.settle(deliver);
            }
        }
    }

    fn all(_: u64, _: u64, _: MessageType) -> bool {
        true
    }

    fn remove(hoa: u8) -> Command {
        Command::AdminRemove {
            realm: crate::config::RealmId(0),
            home_address: std::net::Ipv4Addr::new(198, 51, 100, hoa),
        }
    }

    fn lost(r: &mut RaftReplicator) -> Vec<RequestId> {
        std::iter::from_fn(|| r.poll_lost()).collect()
    }

    fn applied_ids(r: &mut RaftReplicator) -> Vec<RequestId> {
        std::iter::from_fn(|| r.poll_applied())
            .filter_map(|a| a.request)
            .collect()
    }

    #[test]
    fn a_leader_change_fails_the_in_flight_ids() {
        let mut net = Net::new();
        net.node(1).campaign().expect("campaign");
        net.settle(&all);
        assert!(net.node(1).is_leader());
        assert_eq!(net.node(2).leader_id(), 1);
        // Applied before the failure: never reported lost.
        net.node(2)
            .propose(RequestId(5), remove(5))
            .expect("leader known");
        net.settle(&all);
        assert_eq!(applied_ids(net.node(2)), vec![RequestId(5)]);

        // Node 1 dies with node 2's forwarded proposal 7.
        let dead = |from: u64, to: u64, _| from != 1 && to != 1;
        net.node(2)
            .propose(RequestId(7), remove(7))
            .expect("leader known");
        net.settle(&dead);
        assert!(lost(net.node(2)).is_empty(), "nothing lost while 1 leads");
        let mut elected = false;
        for _ in 0..60 {
            net.run(1, &dead);
            if net.node(2).is_leader() || net.node(3).is_leader() {
                elected = true;
                break;
            }
        }
        assert!(elected, "2 and 3 elect a new leader");
        assert_eq!(
            lost(net.node(2)),
            vec![RequestId(7)],
            "reported once, at the change"
        );
        assert!(lost(net.node(3)).is_empty(), "not 3's proposal");

        // A proposal under the new leader is not failed by the old change.
        net.node(2)
            .propose(RequestId(8), remove(8))
            .expect("leader known");
        net.settle(&dead);
        assert!(lost(net.node(2)).is_empty());
        assert!(applied_ids(net.node(2)).contains(&RequestId(8)));
    }

    #[test]
    fn a_follower_is_ready_only_once_caught_up() {
        let mut net = Net::new();
        let cut3 = |from: u64, to: u64, _| from != 3 && to != 3;
        net.node(1).campaign().expect("campaign");
        net.settle(&cut3);
        for i in 0..20 {
            net.node(1)
                .propose(RequestId(i), remove(i as u8))
                .expect("leader");
        }
        net.settle(&cut3);
        net.run(1, &cut3);
        assert!(
            net.node(1).ready_to_serve(),
            "the leader committed in its term"
        );
        assert!(
            net.node(2).ready_to_serve(),
            "2 applied the appends' commit"
        );
        assert!(!net.node(3).ready_to_serve(), "3 knows no leader");

        // Node 3 hears heartbeats and the ReadIndex answer, but no append:
        // it knows the leader yet lags, so it must not claim readiness.
        assert_eq!(net.node(3).probes, 0);
        let no_append = |_from: u64, to: u64, t: MessageType| {
            !(to == 3 && matches!(t, MessageType::MsgAppend | MessageType::MsgSnapshot))
        };
        net.run(2 * PROBE_AFTER_TICKS as usize, &no_append);
        assert!(net.node(3).probes > 0, "no append: 3 asked by ReadIndex");
        assert!(net.node(3).commit_seen.is_some(), "and was answered");
        let s3 = net.node(3).status();
        assert_eq!(s3.leader, 1);
        assert!(s3.applied < net.node(1).status().commit, "{s3:?}");
        assert!(!net.node(3).ready_to_serve(), "lagging: not ready");

        net.run(4, &all);
        assert_eq!(net.node(3).status().applied, net.node(1).status().commit);
        assert!(net.node(3).ready_to_serve(), "caught up: ready");

        // A restart of a follower that missed nothing (an idle cluster: no
        // append comes): not ready until ReadIndex says it is caught up.
        net.restart(2);
        assert!(!net.node(2).ready_to_serve());
        let mut ticks = 0;
        while !net.node(2).ready_to_serve() && ticks < 40 {
            net.run(1, &all);
            ticks += 1;
        }
        assert!(
            net.node(2).ready_to_serve(),
            "ready again after {ticks} ticks"
        );
        assert!(net.node(2).probes > 0, "through ReadIndex");
        assert!(net.node(1).is_leader(), "without disturbing the leader");
    }
}
