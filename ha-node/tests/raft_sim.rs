//! Deterministic simulation of Raft replication ([DESIGN.md § 4], STYLE.md
//! § 5): 3- and 5-node clusters of [`RaftReplicator`]s on in-memory stores,
//! a virtual clock (ticks), a seeded SplitMix64, per-link loss, delay and
//! partitions, crashes (volatile state dropped, the store kept) and
//! restarts, random `Register` proposals from random nodes.
//!
//! After every schedule, once the network is healed and every node is back:
//! * at most one leader per term, ever [Raft § 5.2, Election Safety];
//! * only the proposer (in the boot that proposed it) reports a request,
//!   at most once;
//! * every acknowledged registration is in every node's final state (an
//!   acknowledged binding is never lost, [DESIGN.md § 4]);
//! * all replicas end with byte-identical `StateMachine::snapshot()`
//!   [Raft § 5.4, State Machine Safety].
//!
//! A failing schedule prints its seed; rerun one with `RAFT_SIM_SEED=<n>`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use haven_ha_node::command::{ApplyResult, Command, Refusal};
use haven_ha_node::config::RealmId;
use haven_ha_node::raft::{RaftConfig, RaftReplicator, RaftStore, Role};
use haven_ha_node::replicate::{ProposeError, Replicator, RequestId};
use raft::eraftpb::{Message, MessageType};

mod common;
use common::sim::{self, Rng, machine};

fn register(n: u32) -> Command {
    // Unique home addresses in 198.18.0.0/15; never removed, never expired.
    sim::register(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + n),
        n,
    )
}

#[derive(Default, Debug, Clone, Copy)]
struct Totals {
    schedules: u64,
    ticks: u64,
    delivered: u64,
    lost: u64,
    crashes: u64,
    leader_changes: u64,
    proposals: u64,
    acknowledged: u64,
    snapshots_sent: u64,
    snapshots_taken: u64,
}

enum Slot {
    Up(Box<RaftReplicator>),
    Down { store: Box<RaftStore>, until: u64 },
}

struct Sim {
    rng: Rng,
    n: u64,
    now: u64,
    slots: Vec<Slot>,
    cfgs: Vec<RaftConfig>,
    /// (due tick, message), FIFO among equal due ticks.
    net: VecDeque<(u64, Message)>,
    /// Partition group of each node (links only inside a group).
    group: Vec<u8>,
    loss_percent: u64,
    /// term → leader seen.
    leaders: HashMap<u64, u64>,
    /// request → (proposer, boot, command).
    proposed: HashMap<u64, (u64, u64, Command)>,
    reported: HashSet<u64>,
    /// Commands applied on their proposer and not refused (the reply
    /// accepts them).
    acknowledged: Vec<Command>,
    /// request → result on its proposer.
    results: HashMap<u64, ApplyResult>,
    next_request: u64,
    next_hoa: u32,
    totals: Totals,
    /// Durable mode: each node's raft-engine directory; a crash drops the
    /// engine, a restart reopens it from disk.
    dirs: Option<(tempfile::TempDir, Vec<std::path::PathBuf>)>,
}

impl Sim {
    fn new(seed: u64, n: u64) -> Self {
        Self::with_voters(seed, n, n)
    }

    /// `n` nodes of which the first `voters` form the initial cluster; the
    /// others start empty, waiting to be added.
    fn with_voters(seed: u64, n: u64, voters: u64) -> Self {
        let voters: Vec<u64> = (1..=voters).collect();
        let cfgs: Vec<RaftConfig> = (1..=n)
            .map(|id| {
                let initial = if voters.contains(&id) {
                    voters.clone()
                } else {
                    Vec::new()
                };
                let mut c = RaftConfig::new(id, initial);
                // Small, so schedules exercise snapshots and compaction.
                c.snapshot_every = 8;
                c
            })
            .collect();
        let slots = cfgs
            .iter()
            .map(|_| Slot::Down {
                store: Box::new(RaftStore::in_memory()),
                until: 0,
            })
            .collect();
        let mut sim = Self {
            rng: Rng(seed),
            n,
            now: 0,
            slots,
            cfgs,
            net: VecDeque::new(),
            group: vec![0; usize::try_from(n).expect("small")],
            loss_percent: 0,
            leaders: HashMap::new(),
            proposed: HashMap::new(),
            reported: HashSet::new(),
            acknowledged: Vec::new(),
            results: HashMap::new(),
            next_request: 1,
            next_hoa: 1,
            totals: Totals::default(),
            dirs: None,
        };
        sim.restart_due(true);
        sim
    }

    /// A node's config for one boot: its election timeout is drawn from
    /// the schedule's RNG (raft's own draw uses a thread-local RNG).
    fn config(&mut self, id: u64) -> RaftConfig {
        let mut c = self.cfgs[Self::idx(id)].clone();
        let min = 10 + usize::try_from(self.rng.below(10)).expect("small");
        c.min_election_tick = min;
        c.max_election_tick = min + 1;
        c
    }

    fn idx(id: u64) -> usize {
        usize::try_from(id - 1).expect("small")
    }

    fn node(&mut self, id: u64) -> Option<&mut RaftReplicator> {
        match self.slots.get_mut(Self::idx(id)) {
            Some(Slot::Up(r)) => Some(r),
            _ => None,
        }
    }

    fn linked(&self, a: u64, b: u64) -> bool {
        self.group[Self::idx(a)] == self.group[Self::idx(b)]
    }

    /// Ready loop, outbound messages and applied entries of one node.
    fn pump(&mut self, id: u64) {
        let Some(r) = self.node(id) else { return };
        r.handle_ready().expect("ready");
        let out = r.poll_messages();
        let mut applied = Vec::new();
        while let Some(a) = r.poll_applied() {
            applied.push(a);
        }
        let boot = r.boot();
        for a in applied {
            if let Some(req) = a.request {
                let (proposer, pboot, cmd) = self.proposed.get(&req.0).expect("known request");
                assert_eq!((*proposer, *pboot), (id, boot), "only the proposer reports");
                assert_eq!(&a.command, cmd, "reported with its own command");
                assert!(self.reported.insert(req.0), "reported once");
                self.results.insert(req.0, a.result);
                if !matches!(a.result, ApplyResult::Refused(_)) {
                    self.acknowledged.push(a.command.clone());
                }
            }
        }
        for (to, m) in out {
            let lost = !self.linked(id, to) || self.rng.chance(self.loss_percent);
            if lost {
                self.totals.lost += 1;
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    if let Some(r) = self.node(id) {
                        r.report_snapshot(to, false);
                    }
                }
                continue;
            }
            let due = self.now + self.rng.below(3);
            // Keep the queue sorted by due tick, stable for equal ones.
            let pos = self
                .net
                .iter()
                .rposition(|(d, _)| *d <= due)
                .map_or(0, |p| p + 1);
            self.net.insert(pos, (due, m));
        }
    }

    fn check_leaders(&mut self) {
        for id in 1..=self.n {
            let Some(r) = self.node(id) else { continue };
            let s = r.status();
            if s.role == Role::Leader {
                let prev = *self.leaders.entry(s.term).or_insert(id);
                assert_eq!(prev, id, "two leaders in term {}", s.term);
            }
        }
    }

    fn step_tick(&mut self) {
        self.now += 1;
        self.totals.ticks += 1;
        for id in 1..=self.n {
            if let Some(r) = self.node(id) {
                r.tick();
            }
            self.pump(id);
        }
        while self.net.front().is_some_and(|(d, _)| *d <= self.now) {
            let Some((_, m)) = self.net.pop_front() else {
                break;
            };
            let (from, to) = (m.from, m.to);
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            // A partition made while the message was in flight drops it
            // too, and so does a crashed receiver; the transport reports a
            // lost snapshot, or raft waits for it forever.
            if !self.linked(from, to) || self.node(to).is_none() {
                self.totals.lost += 1;
                if snapshot {
                    if let Some(s) = self.node(from) {
                        s.report_snapshot(to, false);
                    }
                }
                continue;
            }
            match self.node(to) {
                Some(r) => {
                    // Messages from a previous term, or after a restart,
                    // may be refused; raft tolerates that.
                    let _ = r.step(m);
                    self.totals.delivered += 1;
                    if snapshot {
                        if let Some(s) = self.node(from) {
                            s.report_snapshot(to, true);
                        }
                    }
                }
                None => self.totals.lost += 1,
            }
            self.pump(to);
        }
        self.check_leaders();
    }

    fn propose_random(&mut self) {
        let id = 1 + self.rng.below(self.n);
        let req = self.next_request;
        let cmd = register(self.next_hoa);
        let Some(r) = self.node(id) else { return };
        let boot = r.boot();
        match r.propose(RequestId(req), cmd.clone()) {
            Ok(()) => {
                self.proposed.insert(req, (id, boot, cmd));
                self.next_request += 1;
                self.next_hoa += 1;
                self.totals.proposals += 1;
            }
            Err(ProposeError::Unavailable) => {}
        }
        self.pump(id);
    }

    fn crash(&mut self, id: u64, down_for: u64) {
        let i = Self::idx(id);
        let until = self.now + down_for;
        let slot = std::mem::replace(
            &mut self.slots[i],
            Slot::Down {
                store: Box::new(RaftStore::in_memory()),
                until,
            },
        );
        match slot {
            Slot::Up(r) => {
                self.totals.leader_changes += r.stats().leader_changes;
                self.totals.snapshots_sent += r.stats().snapshots_sent;
                self.totals.snapshots_taken += r.stats().snapshots_taken;
                self.totals.crashes += 1;
                self.slots[i] = Slot::Down {
                    store: Box::new((*r).into_store()),
                    until,
                };
            }
            down => self.slots[i] = down,
        }
    }

    fn restart_due(&mut self, all: bool) {
        for i in 0..self.slots.len() {
            let due = matches!(self.slots[i], Slot::Down { until, .. } if all || until <= self.now);
            if !due {
                continue;
            }
            let slot = std::mem::replace(
                &mut self.slots[i],
                Slot::Down {
                    store: Box::new(RaftStore::in_memory()),
                    until: 0,
                },
            );
            if let Slot::Down { mut store, .. } = slot {
                if let Some((_, dirs)) = &self.dirs {
                    // Whatever the engine synced is all that survives.
                    drop(store);
                    store = Box::new(RaftStore::open(&dirs[i]).expect("reopen"));
                }
                let cfg = self.config(i as u64 + 1);
                let r = RaftReplicator::new(&cfg, *store, machine()).expect("restart never fails");
                self.slots[i] = Slot::Up(Box::new(r));
            }
        }
    }

    fn chaos(&mut self, ticks: u64) {
        for _ in 0..ticks {
            if self.rng.chance(4) {
                // New partition layout: everyone in group 0, some moved to 1.
                for g in &mut self.group {
                    *g = u8::from(self.rng.chance(30));
                }
            }
            if self.rng.chance(3) {
                self.loss_percent = self.rng.below(25);
            }
            if self.rng.chance(2) {
                let id = 1 + self.rng.below(self.n);
                let down = 5 + self.rng.below(60);
                self.crash(id, down);
            }
            self.restart_due(false);
            if self.rng.chance(35) {
                self.propose_random();
            }
            self.step_tick();
        }
    }

    fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
        self.loss_percent = 0;
        self.restart_due(true);
        // A fresh proposal lets a new leader commit earlier terms' entries
        // [Raft § 5.4.2]; the leader's own empty entry does as well.
        for _ in 0..2000 {
            self.step_tick();
            if self.converged() {
                return;
            }
        }
        panic!("no convergence after healing: {:?}", self.statuses());
    }

    fn statuses(&mut self) -> Vec<String> {
        (1..=self.n)
            .map(|id| match self.node(id) {
                Some(r) => format!(
                    "{:?} {:?} {:?} {:?}",
                    r.status(),
                    r.progress(),
                    r.stats(),
                    r.store()
                ),
                None => format!("{id} down"),
            })
            .collect()
    }

    fn converged(&mut self) -> bool {
        let mut leader = None;
        let mut applied = BTreeMap::new();
        for id in 1..=self.n {
            let Some(r) = self.node(id) else { return false };
            let s = r.status();
            if s.role == Role::Leader {
                leader = Some(s.commit);
            }
            applied.insert(id, (s.applied, s.commit));
        }
        let Some(commit) = leader else { return false };
        self.net.is_empty() && applied.values().all(|&(a, c)| a == commit && c == commit)
    }

    fn verify(&mut self) {
        let mut snaps = Vec::new();
        for id in 1..=self.n {
            let Some(Slot::Up(r)) = self.slots.get(Self::idx(id)) else {
                panic!("node {id} down after heal")
            };
            let table = r.state().table();
            for cmd in &self.acknowledged {
                let Command::Register { home_address, .. } = cmd else {
                    continue;
                };
                assert!(
                    table.get(RealmId(0), *home_address).is_some(),
                    "acknowledged {home_address} missing on node {id}"
                );
            }
            snaps.push(r.state().snapshot());
        }
        for (i, s) in snaps.iter().enumerate() {
            assert_eq!(s, &snaps[0], "node {} diverged from node 1", i + 1);
        }
        for id in 1..=self.n {
            let stats = self.node(id).expect("up").stats();
            self.totals.leader_changes += stats.leader_changes;
            self.totals.snapshots_sent += stats.snapshots_sent;
            self.totals.snapshots_taken += stats.snapshots_taken;
        }
        self.totals.acknowledged += self.acknowledged.len() as u64;
        self.totals.schedules += 1;
    }
}

fn run(seed: u64, n: u64) -> Totals {
    run_with(Sim::new(seed, n), 400)
}

fn run_with(mut sim: Sim, chaos_ticks: u64) -> Totals {
    sim.chaos(chaos_ticks);
    sim.heal();
    // One more acknowledged write on a healthy cluster.
    for _ in 0..20 {
        sim.propose_random();
        sim.step_tick();
    }
    sim.heal();
    sim.verify();
    sim.totals
}

fn add(a: &mut Totals, b: Totals) {
    a.schedules += b.schedules;
    a.ticks += b.ticks;
    a.delivered += b.delivered;
    a.lost += b.lost;
    a.crashes += b.crashes;
    a.leader_changes += b.leader_changes;
    a.proposals += b.proposals;
    a.acknowledged += b.acknowledged;
    a.snapshots_sent += b.snapshots_sent;
    a.snapshots_taken += b.snapshots_taken;
}

fn schedules(n: u64, count: u64, base: u64) {
    if let Some(seed) = std::env::var("RAFT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let t = run(seed, n);
        println!("{n} nodes, seed {seed}: {t:?}");
        return;
    }
    let start = Instant::now();
    let mut total = Totals::default();
    for i in 0..count {
        let seed = base + i;
        let t = match std::panic::catch_unwind(|| run(seed, n)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("schedule failed: {n} nodes, RAFT_SIM_SEED={seed}");
                std::panic::resume_unwind(e);
            }
        };
        add(&mut total, t);
    }
    println!("{n} nodes: {total:?} in {:?}", start.elapsed());
    assert_eq!(total.schedules, count);
    assert!(total.acknowledged > count, "schedules acknowledge writes");
    assert!(total.crashes > count / 2, "schedules crash nodes");
    assert!(
        total.lost > 0 && total.snapshots_sent > 0,
        "loss and snapshots exercised"
    );
}

#[test]
fn three_nodes_randomized() {
    schedules(3, 300, 0x5eed_0003_0000_0000);
}

#[test]
fn five_nodes_randomized() {
    schedules(5, 200, 0x5eed_0005_0000_0000);
}

/// A stable cluster: one leader, every proposal acknowledged on its
/// proposer, followers' proposals forwarded [Raft thesis § 6.2].
#[test]
fn healthy_cluster_acknowledges_everything() {
    let mut sim = Sim::new(7, 3);
    for _ in 0..60 {
        sim.step_tick();
    }
    for _ in 0..30 {
        sim.propose_random();
        sim.step_tick();
    }
    sim.heal();
    assert_eq!(sim.totals.proposals, 30);
    assert_eq!(
        sim.acknowledged.len(),
        30,
        "every proposal applied on its proposer"
    );
    sim.verify();
    // Leadership transfer [Raft thesis § 3.10].
    let leader = (1..=3)
        .find(|&id| sim.node(id).is_some_and(|r| r.is_leader()))
        .expect("leader");
    let to = leader % 3 + 1;
    sim.node(leader).expect("up").transfer_leader(to);
    sim.pump(leader);
    for _ in 0..50 {
        sim.step_tick();
        if sim.node(to).is_some_and(|r| r.is_leader()) {
            return;
        }
    }
    panic!("leadership not transferred to {to}");
}

/// A follower's proposal forwarded to the leader is appended after a
/// proposal the leader took meanwhile, both validated against the same
/// state (the MN's request before a failover and its retransmission
/// through another node; nonce identifications, which are unordered): the
/// later entry is refused as stale on every replica and the binding is
/// the one of the entry applied first.
#[test]
fn a_forwarded_proposal_overtaken_by_another_is_stale_everywhere() {
    let mut sim = Sim::new(7, 3);
    for _ in 0..60 {
        sim.step_tick();
    }
    let leader = (1..=3)
        .find(|&id| sim.node(id).is_some_and(|r| r.is_leader()))
        .expect("leader");
    let follower = leader % 3 + 1;
    let hoa = Ipv4Addr::new(198, 19, 255, 1);
    // Both validated against "nothing recorded" (validated_against None).
    let mut forwarded = sim::register(hoa, 0x9999_0001);
    if let Command::Register { care_of, .. } = &mut forwarded {
        care_of.coa = Ipv4Addr::new(203, 0, 113, 7);
    }
    let direct = sim::register(hoa, 2);
    for (id, req, cmd) in [(follower, 9_001, &forwarded), (leader, 9_002, &direct)] {
        let r = sim.node(id).expect("up");
        let boot = r.boot();
        r.propose(RequestId(req), cmd.clone()).expect("proposed");
        sim.proposed.insert(req, (id, boot, cmd.clone()));
        // The follower's proposal is now a message in flight to the
        // leader; the leader appends its own at once, ahead of it.
        sim.pump(id);
    }
    for _ in 0..200 {
        if sim.results.len() == 2 {
            break;
        }
        sim.step_tick();
    }
    assert!(
        matches!(
            sim.results.get(&9_002),
            Some(ApplyResult::Registered { .. })
        ),
        "{:?}",
        sim.results
    );
    assert_eq!(
        sim.results.get(&9_001),
        Some(&ApplyResult::Refused(Refusal::Stale)),
        "the overtaken proposal is stale"
    );
    sim.heal();
    sim.verify();
    let Command::Register { care_of, .. } = &direct else {
        unreachable!()
    };
    for id in 1..=3 {
        let e = sim
            .node(id)
            .expect("up")
            .state()
            .table()
            .get(RealmId(0), hoa)
            .expect("bound");
        assert_eq!(e.care_of[0], *care_of, "node {id}");
        assert_eq!(e.last_identification, 2, "node {id}");
    }
}

/// A node cut off from the majority never acknowledges: its proposals are
/// refused or never applied [DESIGN.md § 4].
#[test]
fn minority_never_acknowledges() {
    let mut sim = Sim::new(11, 3);
    for _ in 0..60 {
        sim.step_tick();
    }
    let leader = (1..=3)
        .find(|&id| sim.node(id).is_some_and(|r| r.is_leader()))
        .expect("leader");
    sim.group[Sim::idx(leader)] = 1;
    let before = sim.acknowledged.len();
    for _ in 0..100 {
        let req = sim.next_request;
        let cmd = register(10_000 + u32::try_from(req).expect("small"));
        let r = sim.node(leader).expect("up");
        let boot = r.boot();
        if r.propose(RequestId(req), cmd.clone()).is_ok() {
            sim.proposed.insert(req, (leader, boot, cmd));
        }
        sim.next_request += 1;
        sim.step_tick();
    }
    assert_eq!(
        sim.acknowledged.len(),
        before,
        "nothing acknowledged in the minority"
    );
    let s = sim.node(leader).expect("up").status();
    assert_ne!(
        s.role,
        Role::Leader,
        "check-quorum deposed the isolated leader"
    );
    sim.heal();
    sim.verify();
}

/// The same schedules on raft-engine stores: a crash drops the engine and
/// a restart reads the log back from disk.
#[test]
fn three_nodes_durable() {
    let mut total = Totals::default();
    for seed in 0..4 {
        let mut sim = Sim::new(0x5eed_d000 + seed, 3);
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs: Vec<_> = (1..=3)
            .map(|i| tmp.path().join(format!("node{i}")))
            .collect();
        // Replace the in-memory stores by durable ones before anything runs.
        for i in 0..3 {
            sim.crash(i as u64 + 1, 0);
        }
        sim.dirs = Some((tmp, dirs));
        sim.totals.crashes = 0;
        sim.restart_due(true);
        add(&mut total, run_with(sim, 200));
    }
    println!("3 durable nodes: {total:?}");
    assert!(total.crashes > 0 && total.acknowledged > 0, "{total:?}");
}

/// Membership: a fourth node joins through a configuration change and
/// catches up from a snapshot; a voter is then removed and the rest keep
/// committing [Raft thesis § 4.1].
#[test]
fn add_and_remove_members() {
    let mut sim = Sim::with_voters(21, 4, 3);
    for _ in 0..60 {
        sim.step_tick();
    }
    for _ in 0..40 {
        sim.propose_random();
        sim.step_tick();
    }
    let leader = (1..=3)
        .find(|&id| sim.node(id).is_some_and(|r| r.is_leader()))
        .expect("leader");
    assert!(
        sim.node(4).expect("up").status().voters.is_empty(),
        "not a member yet"
    );
    sim.node(leader)
        .expect("up")
        .add_member(4)
        .expect("proposed");
    sim.pump(leader);
    sim.heal();
    sim.verify();
    let s4 = sim.node(4).expect("up").status();
    assert_eq!(s4.voters, vec![1, 2, 3, 4]);
    assert!(
        sim.node(4).expect("up").stats().snapshots_received > 0,
        "caught up by snapshot"
    );
    let leader = (1..=4)
        .find(|&id| sim.node(id).is_some_and(|r| r.is_leader()))
        .expect("leader");
    let victim = if leader == 3 { 2 } else { 3 };
    sim.node(leader)
        .expect("up")
        .remove_member(victim)
        .expect("proposed");
    sim.pump(leader);
    for _ in 0..100 {
        sim.step_tick();
    }
    sim.crash(victim, u64::MAX / 2);
    let before = sim.acknowledged.len();
    for _ in 0..40 {
        sim.propose_random();
        sim.step_tick();
    }
    for _ in 0..100 {
        sim.step_tick();
    }
    assert!(
        sim.acknowledged.len() > before,
        "the three left keep committing"
    );
    let s = sim.node(leader).expect("up").status();
    assert!(!s.voters.contains(&victim), "{s:?}");
}

/// The durable store: entries, hard state, snapshot and membership
/// survive a "crash" (drop) and the node restarts without panicking and
/// with the same state.
#[test]
fn durable_restart_keeps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = RaftConfig::new(1, vec![1]);
    cfg.snapshot_every = 5;
    let (snap, applied, boot) = {
        let store = RaftStore::open(dir.path()).expect("open");
        let mut r = RaftReplicator::new(&cfg, store, machine()).expect("start");
        r.campaign().expect("campaign");
        r.handle_ready().expect("ready");
        assert!(r.is_leader(), "a one-node cluster elects itself");
        for i in 0..12u32 {
            r.propose(RequestId(u64::from(i)), register(i))
                .expect("propose");
            r.handle_ready().expect("ready");
        }
        let mut acked = 0;
        while let Some(a) = r.poll_applied() {
            assert!(a.request.is_some());
            acked += 1;
        }
        assert_eq!(acked, 12);
        assert!(r.stats().snapshots_taken >= 2, "{:?}", r.stats());
        (r.state().snapshot(), r.status().applied, r.boot())
    };
    let store = RaftStore::open(dir.path()).expect("reopen");
    assert!(store.log_len() < 12, "log compacted to the snapshot");
    let mut r = RaftReplicator::new(&cfg, store, machine()).expect("restart");
    assert!(r.boot() > boot, "a new boot nonce");
    r.campaign().expect("campaign");
    r.handle_ready().expect("ready");
    while let Some(a) = r.poll_applied() {
        // Replayed entries are nobody's pending request any more.
        assert_eq!(a.request, None);
    }
    assert_eq!(
        r.state().snapshot(),
        snap,
        "state rebuilt from snapshot + log"
    );
    assert!(r.status().applied >= applied);
    r.propose(RequestId(0), register(99))
        .expect("propose after restart");
    r.handle_ready().expect("ready");
    let a = r.poll_applied().expect("applied");
    assert_eq!(a.request, Some(RequestId(0)));
}

/// A small lossless switchboard for the leader-death tests: messages to
/// or from a dead node vanish; `settle` counts message rounds.
struct Board {
    nodes: Vec<RaftReplicator>,
    dead: HashSet<u64>,
    /// Cut links, (from, to).
    cut: HashSet<(u64, u64)>,
}

impl Board {
    fn new(n: u64) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut c = RaftConfig::new(id, voters.clone());
                // Fixed, distinct timeouts: no randomness inside raft.
                c.min_election_tick = 10 + 3 * usize::try_from(id).expect("small");
                c.max_election_tick = c.min_election_tick + 1;
                RaftReplicator::new(&c, RaftStore::in_memory(), machine()).expect("start")
            })
            .collect();
        Self {
            nodes,
            dead: HashSet::new(),
            cut: HashSet::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut RaftReplicator {
        &mut self.nodes[usize::try_from(id - 1).expect("small")]
    }

    fn ids(&self) -> impl Iterator<Item = u64> + use<> {
        1..=u64::try_from(self.nodes.len()).expect("small")
    }

    /// One round: every live node's Ready, then every message delivered.
    /// Whether any message moved.
    fn round(&mut self) -> bool {
        let mut mail = Vec::new();
        for id in self.ids() {
            if self.dead.contains(&id) {
                continue;
            }
            let n = self.node(id);
            n.handle_ready().expect("ready");
            mail.extend(n.poll_messages());
        }
        let live: Vec<_> = mail
            .into_iter()
            .filter(|(to, m)| {
                !self.dead.contains(to)
                    && !self.dead.contains(&m.from)
                    && !self.cut.contains(&(m.from, *to))
            })
            .collect();
        let moved = !live.is_empty();
        for (to, m) in live {
            let _ = self.node(to).step(m);
        }
        moved
    }

    /// Rounds until nothing moves; the rounds that moved something.
    fn settle(&mut self) -> usize {
        for rounds in 0..50 {
            if !self.round() {
                return rounds;
            }
        }
        panic!("the group did not settle");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for id in self.ids() {
                if !self.dead.contains(&id) {
                    self.node(id).tick();
                }
            }
            self.settle();
        }
    }

    /// Terms and leaders of the live nodes.
    fn view(&mut self) -> Vec<(u64, u64, u64)> {
        let dead = self.dead.clone();
        self.ids()
            .filter(|id| !dead.contains(id))
            .map(|id| {
                let s = self.node(id).status();
                (id, s.term, s.leader)
            })
            .collect()
    }
}

/// A killed leader whose death the transport reports (`PeerRefused`) is
/// replaced within a few message rounds and no tick: only the lowest-id
/// surviving voter campaigns, with a transfer-style election the others
/// honour although they are in the dead leader's lease (`raft/node.rs`,
/// "Leader death"). Reports about another peer, an older term, or to any
/// other follower change nothing.
#[test]
fn a_refused_leader_is_replaced_at_once_by_the_lowest_surviving_voter() {
    for (n, leader, successor) in [(3, 1, 2), (5, 3, 1)] {
        let mut b = Board::new(n);
        b.node(leader).campaign().expect("campaign");
        b.settle();
        assert!(b.node(leader).is_leader(), "{n} nodes: {leader} leads");
        // Heartbeats flow, well inside every follower's election timeout
        // (13+ ticks): every follower is in the leader's lease.
        b.tick(4);
        let term = b.node(leader).status().term;
        for id in b.ids() {
            assert_eq!(b.node(id).status().leader, leader, "node {id}");
        }

        b.dead.insert(leader);
        let before = b.view();
        let other = b.ids().find(|&id| id != leader && id != successor);
        let other = other.expect("a third voter");
        // Not about the leader; an older term; the leader itself.
        assert!(!b.node(successor).leader_refused(other, term));
        assert!(!b.node(successor).leader_refused(leader, term - 1));
        assert!(!b.node(successor).leader_refused(successor, term));
        // Every follower but the lowest-id one only waits (and votes).
        for id in b.ids().filter(|&id| id != leader && id != successor) {
            assert!(!b.node(id).leader_refused(leader, term), "node {id}");
            assert_eq!(b.node(id).stats().fast_elections, 0);
        }
        assert_eq!(b.settle(), 0, "{n} nodes: nobody campaigned");
        assert_eq!(b.view(), before, "nothing changed");

        // The lowest-id survivor campaigns; no tick passes.
        assert!(b.node(successor).leader_refused(leader, term));
        let mut rounds = 0;
        while !b.node(successor).is_leader() {
            assert!(b.round(), "{n} nodes: stuck: {:?}", b.view());
            rounds += 1;
        }
        // Vote requests out, votes back: one round trip.
        assert!(rounds <= 2, "{n} nodes: {rounds} rounds");
        b.settle();
        for (id, t, l) in b.view() {
            assert_eq!((t, l), (term + 1, successor), "{n} nodes: node {id}");
        }
        assert_eq!(b.node(successor).stats().fast_elections, 1);
        // Once per (term, leader): a repeated report does nothing.
        assert!(!b.node(successor).leader_refused(leader, term));
        assert!(!b.node(successor).leader_refused(leader, term + 1));

        // The new leader commits with the survivors' majority.
        b.node(other)
            .propose(RequestId(1), register(1))
            .expect("leader known");
        b.settle();
        let applied: Vec<_> = std::iter::from_fn(|| b.node(other).poll_applied())
            .filter_map(|a| a.request)
            .collect();
        assert_eq!(applied, vec![RequestId(1)], "{n} nodes");
    }
}

/// When no report comes (no stream to the leader, a partition), the
/// election timeout still elects; a late report about the replaced leader
/// starts nothing.
#[test]
fn without_a_report_the_election_timeout_still_elects() {
    let mut b = Board::new(3);
    b.node(1).campaign().expect("campaign");
    b.settle();
    b.tick(4);
    b.dead.insert(1);
    let mut ticks = 0;
    while !(b.node(2).is_leader() || b.node(3).is_leader()) {
        assert!(ticks < 100, "no leader after {ticks} ticks: {:?}", b.view());
        b.tick(1);
        ticks += 1;
    }
    assert!(ticks >= 13, "elected only after a timeout ({ticks} ticks)");
    let s = b.node(2).status();
    // A late report about the old leader: no longer the leader.
    assert!(!b.node(2).leader_refused(1, s.term));
    assert!(!b.node(2).leader_refused(1, s.term - 1));
    assert_eq!(b.node(2).stats().fast_elections, 0);
}

/// Under load the survivors' logs differ: when the lowest-id survivor's
/// log is behind, the other survivor (which had the same report) refuses
/// its forced vote [Raft § 5.4.1] and campaigns itself at once, so the
/// more complete log leads, still without an election timeout.
#[test]
fn a_survivor_with_a_longer_log_takes_over_the_fast_election() {
    let mut b = Board::new(3);
    b.node(1).campaign().expect("campaign");
    b.settle();
    b.tick(4);
    // Node 2 misses the last appends; 1 and 3 commit them.
    b.cut.insert((1, 2));
    for i in 0..3 {
        b.node(1)
            .propose(RequestId(100 + i), register(100 + i as u32))
            .expect("leader");
    }
    b.settle();
    let (s2, s3) = (b.node(2).store().log_len(), b.node(3).store().log_len());
    assert!(s3 > s2, "3's log ({s3}) is ahead of 2's ({s2})");
    let term = b.node(1).status().term;
    b.dead.insert(1);
    b.cut.clear();

    // Both survivors hear the transport's report; 3 first (not lowest).
    assert!(!b.node(3).leader_refused(1, term));
    assert!(b.node(2).leader_refused(1, term));
    let mut rounds = 0;
    while !b.node(3).is_leader() {
        assert!(b.round(), "stuck: {:?}", b.view());
        rounds += 1;
    }
    // 2's vote requests, 3's refusal and own requests, 2's vote.
    assert!(rounds <= 4, "{rounds} rounds");
    b.settle();
    for (id, t, l) in b.view() {
        assert_eq!((t, l), (term + 2, 3), "node {id}");
    }
    assert_eq!(b.node(2).stats().fast_elections, 1);
    assert_eq!(b.node(3).stats().fast_elections, 1);
    // The committed entries survived under the new leader [Raft § 5.4].
    b.node(2)
        .propose(RequestId(1), register(1))
        .expect("leader known");
    b.settle();
    assert_eq!(b.node(2).status().commit, b.node(3).status().commit);
    let applied: Vec<_> = std::iter::from_fn(|| b.node(2).poll_applied())
        .filter_map(|a| a.request)
        .collect();
    assert_eq!(applied, vec![RequestId(1)]);
    assert_eq!(
        b.node(2).state().snapshot(),
        b.node(3).state().snapshot(),
        "identical replicas"
    );
}
