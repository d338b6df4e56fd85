//! Deterministic simulation of pair-mode replication ([DESIGN.md § 4],
//! "pair"; STYLE.md § 5): two [`PairReplicator`]s on a virtual clock, a
//! seeded SplitMix64, per-message delay (so reordering), lossy phases,
//! partitions, crashes of either node (volatile state dropped) and
//! restarts, proposals at random times (mostly to the primary, as the
//! dispatcher steers them; some to the secondary, which must refuse), and
//! forged, tampered and replayed datagrams.
//!
//! Checked on every schedule:
//! * a proposal is reported applied only by the node and boot that
//!   proposed it, at most once, and a secondary refuses proposals;
//! * every *synchronously* acknowledged registration survives: crashes
//!   only hit a node whose partner holds a complete copy (single failure),
//!   and after healing both final states contain it;
//! * after healing and restarts, one primary, one synced secondary and
//!   byte-identical `StateMachine::snapshot()`s;
//! * two primaries never last longer than one advertisement interval plus
//!   one maximum one-way delay, counted from the later of their meeting and
//!   the last message lost between them (a partition or loss excuses the
//!   overlap: "once messages flow");
//! * a forged, tampered or replayed datagram changes nothing but a
//!   rejection counter.
//!
//! A failing schedule prints its seed; rerun one with `PAIR_SIM_SEED=<n>`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use haven_ha_node::command::{ApplyResult, Command};
use haven_ha_node::config::RealmId;
use haven_ha_node::pair::{
    FLAG_PRIMARY, PairConfig, PairReplicator, PairStats, Replication, Role, centiseconds,
};
use haven_ha_node::replicate::{ProposeError, Replicator, RequestId};
use haven_proto::sync::{self, DataBlock, MAC_LEN, Subtype, SyncRepr, SyncType};
use haven_proto::vrrp::VrrpRepr;

mod common;
use common::sim::{self, Rng, machine};

const KEY: &[u8] = b"haven-pair-sim-key-0123456789";
const INTERVAL_CS: u16 = 10;
const MAX_DELAY_MS: u64 = 20;
const ADDRS: [SocketAddrV4; 2] = [
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 11), 4342),
    SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 12), 4342),
];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn register(n: u32) -> Command {
    sim::register(hoa(n), n)
}

fn hoa(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n)
}

fn config(i: usize, priority: u8, boot: u64, max_datagram: usize) -> PairConfig {
    PairConfig {
        local: ADDRS[i],
        peer: ADDRS[1 - i],
        vrid: 1,
        priority,
        advert_interval_cs: INTERVAL_CS,
        key: KEY.to_vec(),
        vips: vec![VIP],
        retransmit: Duration::from_millis(10),
        forward_timeout: None,
        max_datagram,
        max_log: 256,
        initial_sequence: boot << 40,
    }
}

struct Node {
    rep: Option<PairReplicator>,
    boot: u64,
    priority: u8,
    restart_at: Option<Duration>,
    /// The last authentic datagram delivered (for replay injection).
    last_delivered: Option<Vec<u8>>,
}

struct Msg {
    at: Duration,
    order: u64,
    to: usize,
    bytes: Vec<u8>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Totals {
    schedules: u64,
    events: u64,
    delivered: u64,
    lost: u64,
    crashes: u64,
    primary_crashes: u64,
    partitions: u64,
    proposals: u64,
    refused: u64,
    acked_sync: u64,
    acked_degraded: u64,
    forged: u64,
    takeovers: u64,
    step_downs: u64,
    dumps: u64,
    max_dual: Duration,
    latency_total: Duration,
    latency_count: u64,
}

fn rejections(s: &PairStats) -> u64 {
    s.auth_failures + s.replays + s.malformed + s.ignored
}

/// Everything a rejected datagram must leave alone (the state through its
/// apply counter and size: a full snapshot per injection would dominate the
/// run time; every change to the table goes through `apply` or `restore`,
/// and a restore sets the `take_restored` flag, checked too).
type Print = (
    Role,
    bool,
    bool,
    usize,
    u64,
    Option<Duration>,
    u64,
    usize,
    u64,
);

fn fingerprint(r: &PairReplicator) -> Print {
    (
        r.role(),
        r.is_synced(),
        r.is_degraded(),
        r.pending_transmits(),
        r.uncommitted(),
        r.poll_timeout(),
        r.state().applied_count(),
        r.state().table().len(),
        r.stats().dumps_received,
    )
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: Duration,
    nodes: Vec<Node>,
    net: Vec<Msg>,
    order: u64,
    loss: u64,
    partition_until: Duration,
    last_drop: Duration,
    dual_since: Option<Duration>,
    max_datagram: usize,
    /// n → (node, boot) of the proposer.
    proposed: HashMap<u32, (usize, u64)>,
    acked: HashSet<u32>,
    acked_sync: BTreeMap<u32, ()>,
    next_n: u32,
    totals: Totals,
    last_roles: Vec<Option<(Role, bool, bool)>>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let equal = rng.chance(30);
        let p0 = rng.range(50, 250) as u8;
        let p1 = if equal { p0 } else { rng.range(50, 250) as u8 };
        let max_datagram = if rng.chance(50) { 300 } else { 1400 };
        let nodes = [p0, p1]
            .into_iter()
            .map(|priority| Node {
                rep: None,
                boot: 0,
                priority,
                restart_at: None,
                last_delivered: None,
            })
            .collect();
        let mut s = Self {
            seed,
            rng,
            now: Duration::from_secs(1),
            nodes,
            net: Vec::new(),
            order: 0,
            loss: 0,
            partition_until: Duration::ZERO,
            last_drop: Duration::ZERO,
            dual_since: None,
            max_datagram,
            proposed: HashMap::new(),
            acked: HashSet::new(),
            acked_sync: BTreeMap::new(),
            next_n: 0,
            totals: Totals::default(),
            last_roles: Vec::new(),
        };
        // Boot both, possibly a little apart.
        s.boot(0);
        let gap = s.rng.below(300);
        s.now += Duration::from_millis(gap);
        s.boot(1);
        s
    }

    fn trace(&self, what: &str) {
        if std::env::var_os("PAIR_SIM_TRACE").is_some() {
            let st: Vec<String> = (0..2)
                .map(|i| match self.up(i) {
                    Some(r) => format!(
                        "{:?}/s{}/d{}/a{}",
                        r.role(),
                        r.is_synced() as u8,
                        r.is_degraded() as u8,
                        r.stats().applied_index
                    ),
                    None => "down".into(),
                })
                .collect();
            eprintln!("{:?} {what} [{}]", self.now, st.join(" "));
        }
    }

    fn boot(&mut self, i: usize) {
        self.trace(&format!("boot {i}"));
        let n = &mut self.nodes[i];
        n.boot += 1;
        n.restart_at = None;
        n.last_delivered = None;
        let boot = n.boot;
        let cfg = config(i, n.priority, boot, self.max_datagram);
        cfg.validate().expect("valid config");
        n.rep = Some(PairReplicator::new(cfg, machine(), self.now));
    }

    fn crash(&mut self, i: usize, down: Duration) {
        self.trace(&format!("crash {i} for {down:?}"));
        if let Some(r) = self.nodes[i].rep.take() {
            self.harvest(&r.stats());
            if r.role() == Role::Primary {
                self.totals.primary_crashes += 1;
            }
        }
        self.totals.crashes += 1;
        self.nodes[i].restart_at = Some(self.now + down);
        self.net.retain(|m| m.to != i);
    }

    fn harvest(&mut self, s: &PairStats) {
        self.totals.takeovers += s.takeovers;
        self.totals.step_downs += s.step_downs;
        self.totals.dumps += s.dumps_received;
        self.totals.latency_total += s.forward_latency_total;
        self.totals.latency_count += s.synchronous_applies;
    }

    fn up(&self, i: usize) -> Option<&PairReplicator> {
        self.nodes[i].rep.as_ref()
    }

    fn fail(&self, what: &str) -> ! {
        panic!("seed {}: t={:?}: {what}", self.seed, self.now);
    }

    /// Moves datagrams and applied entries out of the replicators.
    fn pump(&mut self) {
        for i in 0..2 {
            while let Some((to, bytes)) = self.nodes[i].rep.as_mut().and_then(|r| r.poll_transmit())
            {
                assert_eq!(to, ADDRS[1 - i]);
                let dropped = self.now < self.partition_until || self.rng.chance(self.loss);
                if dropped {
                    self.totals.lost += 1;
                    self.last_drop = self.now;
                    continue;
                }
                let at = self.now + Duration::from_millis(self.rng.range(1, MAX_DELAY_MS));
                self.order += 1;
                self.net.push(Msg {
                    at,
                    order: self.order,
                    to: 1 - i,
                    bytes,
                });
            }
            let boot = self.nodes[i].boot;
            while let Some((a, how)) = self.nodes[i]
                .rep
                .as_mut()
                .and_then(|r| r.poll_applied_detail())
            {
                let Some(RequestId(id)) = a.request else {
                    continue;
                };
                let n = u32::try_from(id).expect("ids are u32");
                if self.proposed.get(&n) != Some(&(i, boot)) {
                    self.fail(&format!("node {i} reported request {n} it did not propose"));
                }
                if !self.acked.insert(n) {
                    self.fail(&format!("request {n} reported twice"));
                }
                if !matches!(a.result, ApplyResult::Registered { .. }) {
                    self.fail(&format!("request {n}: {:?}", a.result));
                }
                match how {
                    Replication::Synchronous => {
                        self.trace(&format!("sync ack {n} by {i}"));
                        self.acked_sync.insert(n, ());
                        self.totals.acked_sync += 1;
                    }
                    Replication::Degraded => self.totals.acked_degraded += 1,
                }
            }
        }
    }

    fn deliver_due(&mut self) -> bool {
        let mut due: Vec<Msg> = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.at, m.order));
        let any = !due.is_empty();
        for m in due {
            let now = self.now;
            if let Some(r) = self.nodes[m.to].rep.as_mut() {
                r.handle_datagram(now, ADDRS[1 - m.to], &m.bytes);
                self.totals.delivered += 1;
                self.nodes[m.to].last_delivered = Some(m.bytes);
            }
        }
        any
    }

    fn fire_timers(&mut self) -> bool {
        let mut any = false;
        let now = self.now;
        for n in &mut self.nodes {
            if let Some(r) = n.rep.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                    any = true;
                }
            }
        }
        any
    }

    fn next_event(&self, actions: Duration) -> Duration {
        let mut t = actions;
        for m in &self.net {
            t = t.min(m.at);
        }
        for n in &self.nodes {
            if let Some(r) = &n.rep {
                if let Some(x) = r.poll_timeout() {
                    t = t.min(x);
                }
            }
            if let Some(x) = n.restart_at {
                t = t.min(x);
            }
        }
        t
    }

    fn check_dual(&mut self) {
        let both = (0..2).all(|i| self.up(i).is_some_and(|r| r.role() == Role::Primary));
        if !both {
            self.dual_since = None;
            return;
        }
        let since = *self.dual_since.get_or_insert(self.now);
        let dur = self.now - since.max(self.last_drop);
        let limit = centiseconds(INTERVAL_CS) + Duration::from_millis(MAX_DELAY_MS);
        if self.now >= self.last_drop {
            self.totals.max_dual = self.totals.max_dual.max(dur);
        }
        if dur > limit {
            self.fail(&format!("two primaries for {dur:?} with messages flowing"));
        }
    }

    /// Runs until `end`: events, and (when `active`) proposals and faults.
    fn run(&mut self, end: Duration, active: bool) {
        let mut next_proposal = self.now + Duration::from_millis(self.rng.range(1, 60));
        let mut next_fault = self.now + Duration::from_millis(self.rng.range(200, 1500));
        let mut next_forge = self.now + Duration::from_millis(self.rng.range(50, 500));
        let mut loss_until = Duration::ZERO;
        while self.now < end {
            self.totals.events += 1;
            for i in 0..2 {
                if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) {
                    self.boot(i);
                }
            }
            for _ in 0..1000 {
                let a = self.deliver_due();
                let b = self.fire_timers();
                self.pump();
                self.check_dual();
                let roles: Vec<_> = (0..2)
                    .map(|i| {
                        self.up(i)
                            .map(|r| (r.role(), r.is_synced(), r.is_degraded()))
                    })
                    .collect();
                if roles != self.last_roles {
                    self.last_roles = roles;
                    self.trace("roles");
                }
                if !a && !b {
                    break;
                }
            }
            if active && self.now >= loss_until && self.loss > 0 {
                self.loss = 0;
            }
            if active && self.now >= next_proposal {
                self.propose();
                self.pump();
                next_proposal = self.now + Duration::from_millis(self.rng.range(1, 60));
            }
            if active && self.now >= next_forge {
                self.forge();
                next_forge = self.now + Duration::from_millis(self.rng.range(50, 500));
            }
            if active && self.now >= next_fault {
                match self.rng.below(4) {
                    0 | 1 => self.maybe_crash(),
                    2 => {
                        self.totals.partitions += 1;
                        self.trace("partition");
                        self.partition_until =
                            self.now + Duration::from_millis(self.rng.range(50, 1500));
                    }
                    _ => {
                        self.loss = self.rng.range(5, 40);
                        loss_until = self.now + Duration::from_millis(self.rng.range(100, 2000));
                    }
                }
                next_fault = self.now + Duration::from_millis(self.rng.range(300, 2500));
            }
            let mut actions = end;
            if active {
                actions = actions.min(next_proposal).min(next_fault).min(next_forge);
                if self.loss > 0 && loss_until > self.now {
                    actions = actions.min(loss_until);
                }
            }
            let t = self.next_event(actions);
            self.now = if t > self.now {
                t
            } else {
                // Timers are strictly in the future after handle_timeout;
                // only an action time can be due now.
                self.now + Duration::from_micros(100)
            };
        }
    }

    fn propose(&mut self) {
        let primaries: Vec<usize> = (0..2)
            .filter(|&i| self.up(i).is_some_and(|r| r.role() == Role::Primary))
            .collect();
        let target = if !primaries.is_empty() && self.rng.chance(85) {
            primaries[self.rng.below(primaries.len() as u64) as usize]
        } else {
            self.rng.below(2) as usize
        };
        let n = self.next_n;
        let boot = self.nodes[target].boot;
        let Some(r) = self.nodes[target].rep.as_mut() else {
            return;
        };
        self.next_n += 1;
        self.totals.proposals += 1;
        let role = r.role();
        self.proposed.insert(n, (target, boot));
        match r.propose(RequestId(u64::from(n)), register(n)) {
            Ok(()) => assert_eq!(role, Role::Primary, "seed {}", self.seed),
            Err(ProposeError::Unavailable) => {
                assert_eq!(role, Role::Secondary, "seed {}", self.seed);
                self.totals.refused += 1;
            }
        }
    }

    /// Single failures only: a node goes down when its partner is up and
    /// holds a complete copy (or is the primary).
    fn maybe_crash(&mut self) {
        let i = if self.rng.chance(70) {
            match (0..2).find(|&i| self.up(i).is_some_and(|r| r.role() == Role::Primary)) {
                Some(i) => i,
                None => return,
            }
        } else {
            self.rng.below(2) as usize
        };
        let j = 1 - i;
        let (Some(me), Some(other)) = (self.up(i), self.up(j)) else {
            return;
        };
        let safe = match (me.role(), other.role()) {
            (Role::Secondary, Role::Primary) => true,
            (Role::Primary, Role::Secondary) => other.is_synced(),
            _ => false,
        };
        if safe {
            let down = Duration::from_millis(self.rng.range(100, 3000));
            self.crash(i, down);
        }
    }

    /// Injects one forged, tampered or replayed datagram "from the peer"
    /// into an up node and checks it changed nothing.
    fn forge(&mut self) {
        let i = self.rng.below(2) as usize;
        let (src, dst) = (*ADDRS[1 - i].ip(), *ADDRS[i].ip());
        let wrong = b"not-the-pair-key-at-all!";
        let kind = self.rng.below(6);
        let bytes: Vec<u8> = match kind {
            0 => (0..self.rng.below(120))
                .map(|_| self.rng.next() as u8)
                .collect(),
            1 => {
                // A primary advert at top priority under the wrong key.
                let mut b = VrrpRepr {
                    vrid: 1,
                    priority: 254,
                    max_advert_int_cs: INTERVAL_CS,
                    addresses: vec![VIP],
                }
                .to_bytes(src, dst)
                .expect("advert");
                b.extend_from_slice(&u64::MAX.to_be_bytes());
                b.extend_from_slice(&u64::MAX.to_be_bytes());
                b.extend_from_slice(&[0, 0, FLAG_PRIMARY, 0, 0, 0]);
                b.extend_from_slice(&[0; MAC_LEN]);
                sync::seal(&mut b, src, dst, wrong).expect("seal");
                b
            }
            2 => {
                // A bare RFC 5798 advert (no trailer at all).
                VrrpRepr {
                    vrid: 1,
                    priority: 254,
                    max_advert_int_cs: INTERVAL_CS,
                    addresses: vec![VIP],
                }
                .to_bytes(src, dst)
                .expect("advert")
            }
            3 => {
                // A forward of a new binding under the wrong key.
                let mut rec = 1u64.to_be_bytes().to_vec();
                rec.extend_from_slice(&register(999_999).encode());
                SyncRepr {
                    msg_type: if self.rng.chance(50) {
                        SyncType::DataForward
                    } else {
                        SyncType::DataDump
                    },
                    vrid: 1,
                    priority: 254,
                    max_advert_int_cs: INTERVAL_CS,
                    addresses: vec![VIP],
                    sequence: u64::MAX - 1,
                    ack_sequence: 0,
                    fragment_index: 0,
                    more_fragments: false,
                    blocks: vec![DataBlock {
                        subtype: Subtype::Registration,
                        data: &rec,
                    }],
                }
                .to_bytes(src, dst, wrong)
                .expect("forward")
            }
            4 => {
                // A genuine datagram with one bit flipped, checksum redone
                // (an attacker without the key).
                let Some(mut b) = self.nodes[i].last_delivered.clone() else {
                    return;
                };
                let bit = self.rng.below(b.len() as u64 * 8) as usize;
                if (48..64).contains(&bit) {
                    return; // the checksum itself: just a bad checksum
                }
                b[bit / 8] ^= 1 << (bit % 8);
                haven_proto::vrrp::VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(src, dst);
                b
            }
            _ => {
                // A replay of the last authentic datagram.
                let Some(b) = self.nodes[i].last_delivered.clone() else {
                    return;
                };
                b
            }
        };
        let now = self.now;
        let Some(r) = self.nodes[i].rep.as_mut() else {
            return;
        };
        let before = fingerprint(r);
        let rej = rejections(&r.stats());
        r.handle_datagram(now, ADDRS[1 - i], &bytes);
        self.totals.forged += 1;
        if fingerprint(r) != before {
            self.fail(&format!("forged datagram (kind {kind}) changed node {i}"));
        }
        // A replayed dump fragment is bound to the request, not the window:
        // it is the same fragment again, possibly stored again.
        let dump_replay = kind == 5 && bytes.first() == Some(&0x33);
        if !dump_replay && rejections(&r.stats()) != rej + 1 {
            self.fail(&format!("forged datagram (kind {kind}) not counted once"));
        }
    }

    fn finish(&mut self) {
        // Heal, bring everyone back, let it settle.
        self.loss = 0;
        self.partition_until = Duration::ZERO;
        for i in 0..2 {
            if self.nodes[i].rep.is_none() {
                self.boot(i);
            }
        }
        let end = self.now + Duration::from_secs(5);
        self.run(end, false);
        let (Some(a), Some(b)) = (self.up(0), self.up(1)) else {
            self.fail("a node is down at the end");
        };
        let roles = (a.role(), b.role());
        if !matches!(
            roles,
            (Role::Primary, Role::Secondary) | (Role::Secondary, Role::Primary)
        ) {
            self.fail(&format!("final roles {roles:?}"));
        }
        if !a.is_synced() || !b.is_synced() || a.uncommitted() + b.uncommitted() != 0 {
            self.fail(&format!(
                "not settled: {} {} {:?} {:?}",
                a.uncommitted(),
                b.uncommitted(),
                a.stats(),
                b.stats()
            ));
        }
        let (sa, sb) = (a.state().snapshot(), b.state().snapshot());
        if sa != sb {
            self.fail("final snapshots differ");
        }
        for &n in self.acked_sync.keys() {
            for r in [a, b] {
                if r.state().table().get(RealmId(0), hoa(n)).is_none() {
                    self.fail(&format!("acknowledged registration {n} lost"));
                }
            }
        }
        let (s0, s1) = (a.stats(), b.stats());
        self.harvest(&s0);
        self.harvest(&s1);
    }
}

fn run_schedule(seed: u64, totals: &mut Totals) {
    let mut sim = Sim::new(seed);
    let end = sim.now + Duration::from_secs(8);
    sim.run(end, true);
    sim.finish();
    let t = sim.totals;
    totals.schedules += 1;
    totals.events += t.events;
    totals.delivered += t.delivered;
    totals.lost += t.lost;
    totals.crashes += t.crashes;
    totals.primary_crashes += t.primary_crashes;
    totals.partitions += t.partitions;
    totals.proposals += t.proposals;
    totals.refused += t.refused;
    totals.acked_sync += t.acked_sync;
    totals.acked_degraded += t.acked_degraded;
    totals.forged += t.forged;
    totals.takeovers += t.takeovers;
    totals.step_downs += t.step_downs;
    totals.dumps += t.dumps;
    totals.max_dual = totals.max_dual.max(t.max_dual);
    totals.latency_total += t.latency_total;
    totals.latency_count += t.latency_count;
}

#[test]
fn pair_schedules() {
    let seeds: Vec<u64> = match std::env::var("PAIR_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PAIR_SIM_SEED is a number")],
        Err(_) => (1..=200).collect(),
    };
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in seeds {
        run_schedule(seed, &mut totals);
    }
    let t = totals;
    let mean = t
        .latency_total
        .checked_div(u32::try_from(t.latency_count).unwrap_or(u32::MAX).max(1));
    println!(
        "pair sim: {} schedules in {:?}; {} events, {} delivered, {} lost; \
         {} crashes ({} primaries), {} partitions; {} proposals ({} refused by a secondary), \
         {} acked synchronously, {} degraded; {} takeovers, {} step-downs, {} dumps; \
         {} forged datagrams rejected; longest dual primary with messages flowing {:?}; \
         mean forward latency {:?}",
        t.schedules,
        started.elapsed(),
        t.events,
        t.delivered,
        t.lost,
        t.crashes,
        t.primary_crashes,
        t.partitions,
        t.proposals,
        t.refused,
        t.acked_sync,
        t.acked_degraded,
        t.takeovers,
        t.step_downs,
        t.dumps,
        t.forged,
        t.max_dual,
        mean,
    );
    if t.schedules > 1 {
        // The schedules really exercise what they claim to.
        assert!(t.primary_crashes > t.schedules, "{t:?}");
        assert!(t.acked_sync > 50 * t.schedules, "{t:?}");
        assert!(
            t.takeovers > t.schedules && t.dumps > 2 * t.schedules,
            "{t:?}"
        );
        assert!(t.step_downs > t.schedules / 2, "{t:?}");
        assert!(t.forged > 10 * t.schedules, "{t:?}");
    }
}
