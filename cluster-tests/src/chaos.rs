//! # Chaos under continuous load (issue 8 item 4; DESIGN.md § 4, § 9)
//!
//! Faults are fired at a running bed ([`Bed`]: the rack of [`crate::rack`],
//! one cluster serving both realms, or the two-cluster site of
//! [`crate::site`]) one at a time while its mnsim fleets register, move and
//! re-register with short lifetimes and its stream mobile nodes send data
//! through their RFC 3519 tunnels. Each event hits every cluster at the
//! same moment (victims chosen per cluster with the seeded generator).
//! After each fault the scenario waits for the heal in every cluster
//! (conditions, never sleeps), then stops the fleets and checks the
//! invariants per cluster, against that cluster's fleets:
//!
//! * no acknowledged registration lost: every binding an mnsim mobile node
//!   was last acknowledged (its last accepted reply) is on every live node,
//!   with that care-of address or the later one it moved to (DESIGN.md § 4:
//!   "losing an acknowledged binding is a bug");
//! * every mobile node still registered (the fleets' reports);
//! * exactly one VIP owner per realm of each cluster (the dispatchers'
//!   VRRP metrics);
//! * the gaps: the registration gap from the mnsim timelines (first
//!   transmission to acceptance of each registration in flight across the
//!   fault) and the data-plane gap at the correspondent, against the
//!   targets of DESIGN.md § 9 (< 300 ms after a non-leader dies, < 1 s
//!   after the leader dies).
//!
//! Each event is one fleet run (started before the fault, stopped after
//! the heal): mnsim reports its acknowledged bindings when a run ends, and
//! a stop without deregistration leaves them in place to be checked.
//!
//! The pieces that do not depend on the rack — timeline reading and gap
//! extraction ([`read_timeline`], [`registration_gap`], [`data_gap`]),
//! binding lists ([`parse_bindings`]), the acknowledged-binding check
//! ([`acknowledged`], [`check_acknowledged`]) and VIP ownership
//! ([`vip_owners_ok`]) — are free functions, so a two-cluster topology can
//! run them for each of its clusters.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::mn::SplitMix64;
use crate::mnsim::unix_now;
use crate::rack::{
    Bed, Cluster, CnSnapshot, Correspondent, FleetRun, Monitor, Rack, RackError, RackOptions,
    Sample,
};
use crate::site::{Site, SiteOptions};
use crate::supervisor::{SupError, wait_for};

/// What a scenario can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Building or driving the rack.
    #[error(transparent)]
    Rack(#[from] RackError),
    /// A wait that timed out, a process.
    #[error(transparent)]
    Sup(#[from] SupError),
    /// A timeline file.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A binding list or timeline line that does not parse.
    #[error("{0}")]
    Parse(String),
    /// An invariant broke.
    #[error("invariant broken after {event}: {what}")]
    Invariant {
        /// The event.
        event: String,
        /// What was found.
        what: String,
    },
}

// ---------------------------------------------------------- timelines ----

/// One line of an mnsim JSON-lines timeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TimelineLine {
    /// Seconds since the run's start.
    pub t: f64,
    /// The mobile node.
    pub mn: usize,
    /// `sent`, `accepted`, `denied`, `gave_up`, `moved`, `deregistered`.
    pub event: String,
    /// Reply code.
    pub code: Option<u8>,
    /// For `accepted`: from the cycle's first transmission.
    pub latency_ms: Option<f64>,
    /// For `sent`: the transmission's number in its cycle.
    pub attempt: Option<u32>,
}

/// Reads a timeline file.
///
/// # Errors
/// The file cannot be read or a line does not parse.
pub fn read_timeline(path: &Path) -> Result<Vec<TimelineLine>, ChaosError> {
    let text = std::fs::read_to_string(path).map_err(|source| ChaosError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| ChaosError::Parse(format!("{}: {e}: {l}", path.display())))
        })
        .collect()
}

/// The registration gap of one fleet across one fault: the registration
/// cycles accepted at or after `from` that had started by `to` (timeline
/// seconds), i.e. every registration in flight across the fault and its
/// heal, with its time from first transmission to acceptance.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RegGap {
    /// Cycles counted.
    pub cycles: usize,
    /// Of them, retransmitted at least once (slower than the first
    /// retransmission timeout).
    pub retried: usize,
    /// The longest, ms.
    pub max_ms: f64,
    /// The 99th percentile, ms.
    pub p99_ms: f64,
    /// Mobile nodes that gave up in the window.
    pub gave_up: usize,
}

impl fmt::Display for RegGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max={:.0}ms p99={:.0}ms cycles={} retried={} gave_up={}",
            self.max_ms, self.p99_ms, self.cycles, self.retried, self.gave_up
        )
    }
}

/// See [`RegGap`]. `first_timeout_ms` tells a retried cycle.
pub fn registration_gap(
    lines: &[TimelineLine],
    from: f64,
    to: f64,
    first_timeout_ms: f64,
) -> RegGap {
    let mut lat: Vec<f64> = lines
        .iter()
        .filter(|l| l.event == "accepted" && l.t >= from)
        .filter_map(|l| l.latency_ms.map(|ms| (l.t, ms)))
        .filter(|(t, ms)| t - ms / 1e3 <= to)
        .map(|(_, ms)| ms)
        .collect();
    lat.sort_by(f64::total_cmp);
    let gave_up = lines
        .iter()
        .filter(|l| l.event == "gave_up" && l.t >= from && l.t <= to + 60.0)
        .count();
    let p99 = if lat.is_empty() {
        0.0
    } else {
        let i = ((lat.len() as f64 * 0.99).ceil() as usize).clamp(1, lat.len()) - 1;
        lat.get(i).copied().unwrap_or(0.0)
    };
    RegGap {
        cycles: lat.len(),
        retried: lat.iter().filter(|ms| **ms >= first_timeout_ms).count(),
        max_ms: lat.last().copied().unwrap_or(0.0),
        p99_ms: p99,
        gave_up,
    }
}

/// For each of `count` mobile nodes, when the registration cycle of its
/// last acceptance started (timeline seconds): the acceptance's time less
/// its latency from the cycle's first transmission.
///
/// That, not the reply's arrival, is where the lifetime safely counts from:
/// the home agent starts a binding's lifetime when it accepts the request
/// [RFC 5944 § 3.8.3.1], which lies between the first transmission and the
/// reply, and under load or across a fault the reply can come hundreds of
/// ms after the acceptance. Counting from the reply made a binding the
/// home agent had rightly expired look lost.
pub fn last_accepts(lines: &[TimelineLine], count: usize) -> Vec<Option<f64>> {
    let mut out = vec![None; count];
    for l in lines.iter().filter(|l| l.event == "accepted") {
        if let Some(slot) = out.get_mut(l.mn) {
            *slot = Some(l.t - l.latency_ms.unwrap_or(0.0).max(0.0) / 1000.0);
        }
    }
    out
}

// ----------------------------------------------------------- data gap ----

/// The data-plane gap across one fault, at the correspondent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DataGap {
    /// Flows that were sending just before the fault.
    pub flows: usize,
    /// Of them, interrupted for longer than the correspondent's floor in
    /// the window.
    pub interrupted: usize,
    /// The longest interruption (arrival to arrival).
    pub max: Duration,
    /// Flows with no arrival since the fault at `now`.
    pub stalled: usize,
}

impl fmt::Display for DataGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max={:.0}ms interrupted={}/{} stalled={}",
            self.max.as_secs_f64() * 1e3,
            self.interrupted,
            self.flows,
            self.stalled
        )
    }
}

/// Gaps of `snap` overlapping `[from, to]`, over the flows that had an
/// arrival within `floor × 3` before `from`.
pub fn data_gap(snap: &CnSnapshot, floor: Duration, from: Instant, to: Instant) -> DataGap {
    let recent = from.checked_sub(floor * 3).unwrap_or(from);
    let flows: Vec<u32> = snap
        .flows
        .iter()
        .filter(|f| f.last >= recent)
        .map(|f| f.id)
        .collect();
    let mut worst: HashMap<u32, Duration> = HashMap::new();
    for g in &snap.gaps {
        let end = g.from + g.len;
        if g.from <= to && end >= from && flows.contains(&g.flow) {
            let w = worst.entry(g.flow).or_default();
            *w = (*w).max(g.len);
        }
    }
    let stalled = snap
        .flows
        .iter()
        .filter(|f| flows.contains(&f.id) && f.last < from)
        .count();
    DataGap {
        flows: flows.len(),
        interrupted: worst.len(),
        max: worst.values().copied().max().unwrap_or_default(),
        stalled,
    }
}

// ----------------------------------------------------------- bindings ----

/// One binding as a node lists it (`havenctl bindings list --json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBinding {
    /// Realm name.
    pub realm: String,
    /// Home address.
    pub home_address: Ipv4Addr,
    /// NAI, empty when none.
    pub nai: String,
    /// Care-of addresses and the seconds left on each.
    pub care_of: Vec<(Ipv4Addr, u64)>,
}

/// Parses `havenctl bindings list --json`.
///
/// # Errors
/// Not the array of objects havenctl prints.
pub fn parse_bindings(v: &serde_json::Value) -> Result<Vec<NodeBinding>, ChaosError> {
    let bad = |what: &str| ChaosError::Parse(format!("binding list: {what}"));
    let rows = v.as_array().ok_or_else(|| bad("not an array"))?;
    rows.iter()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or_default();
            let home_address = s("home_address").parse().map_err(|_| bad("home_address"))?;
            let care_of = r
                .get("care_of")
                .and_then(|c| c.as_array())
                .ok_or_else(|| bad("care_of"))?
                .iter()
                .map(|c| {
                    let coa = c
                        .get("care_of_address")
                        .and_then(|x| x.as_str())
                        .and_then(|x| x.parse().ok())
                        .ok_or_else(|| bad("care_of_address"))?;
                    let left = c.get("remaining").and_then(|x| x.as_u64()).unwrap_or(0);
                    Ok((coa, left))
                })
                .collect::<Result<Vec<_>, ChaosError>>()?;
            Ok(NodeBinding {
                realm: s("realm").to_owned(),
                home_address,
                nai: s("nai").to_owned(),
                care_of,
            })
        })
        .collect()
}

/// A binding a mobile node was acknowledged, to look for on the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    /// The fleet and mobile node (for messages).
    pub who: String,
    /// Realm.
    pub realm: String,
    /// Home address acknowledged.
    pub home_address: Ipv4Addr,
    /// Care-of address acknowledged.
    pub care_of: Ipv4Addr,
    /// The care-of address the mobile node used last (a later move whose
    /// reply it may not have seen yet).
    pub later_care_of: Ipv4Addr,
    /// Unix time when its lifetime runs out at the earliest, counted from
    /// the start of the last accepted registration cycle ([`last_accepts`];
    /// a little early too: the timeline's clock starts a few ms after
    /// [`FleetRun::started`]); `None` without a timeline.
    pub expires: Option<Duration>,
}

/// The acknowledged bindings of a stopped fleet run.
///
/// # Errors
/// The run failed, or its timeline cannot be read.
pub fn acknowledged(run: &FleetRun) -> Result<Vec<Acked>, ChaosError> {
    let report = run
        .report
        .as_ref()
        .map_err(|e| ChaosError::Parse(format!("fleet {}: {e}", run.name)))?;
    let accepts = match &run.timeline {
        Some(p) => Some(last_accepts(&read_timeline(p)?, report.mns.len())),
        None => None,
    };
    let life = Duration::from_secs(u64::from(run.lifetime));
    Ok(report
        .mns
        .iter()
        .filter_map(|m| {
            let (hoa, coa) = m.acknowledged?;
            let expires = accepts
                .as_ref()
                .and_then(|a| a.get(m.mn).copied().flatten())
                .map(|t| run.started + Duration::from_secs_f64(t.max(0.0)) + life);
            Some(Acked {
                who: format!("{}#{}", run.name, m.mn),
                realm: run.realm.clone(),
                home_address: hoa,
                care_of: coa,
                later_care_of: m.care_of_address,
                expires,
            })
        })
        .collect())
}

/// The outcome of [`check_acknowledged`] on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckCheck {
    /// Acknowledged bindings looked for.
    pub checked: usize,
    /// Not looked for: their lifetime ran out (or nearly) before the
    /// query, with no renewal acknowledged.
    pub expiring: usize,
    /// Missing or with a care-of address the mobile node never used.
    pub missing: Vec<String>,
}

/// Looks for every one of `acked` in a node's `bindings`, listed at unix
/// time `queried_at`; bindings whose lifetime ends within `margin` of it
/// are skipped (counted in [`AckCheck::expiring`]).
pub fn check_acknowledged(
    acked: &[Acked],
    bindings: &[NodeBinding],
    queried_at: Duration,
    margin: Duration,
) -> AckCheck {
    let index: HashMap<(&str, Ipv4Addr), &NodeBinding> = bindings
        .iter()
        .map(|b| ((b.realm.as_str(), b.home_address), b))
        .collect();
    let mut out = AckCheck::default();
    for a in acked {
        if a.expires.is_some_and(|e| e <= queried_at + margin) {
            out.expiring += 1;
            continue;
        }
        out.checked += 1;
        match index.get(&(a.realm.as_str(), a.home_address)) {
            Some(b)
                if b.care_of
                    .iter()
                    .any(|(c, _)| *c == a.care_of || *c == a.later_care_of) => {}
            Some(b) => out.missing.push(format!(
                "{} {}: care-of {:?}, acknowledged {} (later {})",
                a.who, a.home_address, b.care_of, a.care_of, a.later_care_of
            )),
            None => out.missing.push(format!(
                "{} {} (care-of {}): no binding, lifetime left {}",
                a.who,
                a.home_address,
                a.care_of,
                a.expires.map_or_else(
                    || "unknown".to_owned(),
                    |e| format!("{:.2}s", e.as_secs_f64() - queried_at.as_secs_f64())
                )
            )),
        }
    }
    out
}

// ---------------------------------------------------------------- VIP ----

/// Exactly one VIP owner for each of `realms`; returns them
/// (`inner:disp-a,…`) or what is wrong.
///
/// # Errors
/// A realm with no owner or more than one.
pub fn vip_owners_ok(sample: &Sample, realms: &[String]) -> Result<String, String> {
    let mut out = Vec::new();
    for r in realms {
        let owners = sample.vip_owners(r);
        if owners.len() != 1 {
            return Err(format!("realm {r}: VIP owners {owners:?}"));
        }
        out.push(format!("{r}:{}", owners.join("")));
    }
    Ok(out.join(","))
}

/// The leader every node in `live` agrees on, if it is one of them.
pub fn live_leader(sample: &Sample, live: &[u64]) -> Option<u64> {
    let nodes: Vec<_> = sample
        .nodes
        .iter()
        .filter(|n| live.contains(&n.id))
        .collect();
    if nodes.len() != live.len() || nodes.iter().any(|n| !n.up) {
        return None;
    }
    let l = nodes.first()?.leader;
    (l != 0
        && nodes.iter().all(|n| n.leader == l)
        && nodes.iter().any(|n| n.id == l && n.is_leader))
    .then_some(l)
}

/// Whether every active dispatcher's Maglev table holds node `id` (`up`)
/// or has dropped it (`!up`).
pub fn dispatchers_see(sample: &Sample, id: u64, up: bool) -> bool {
    let key = id.to_string();
    let active: Vec<_> = sample.dispatchers.iter().filter(|d| d.active).collect();
    !active.is_empty()
        && active
            .iter()
            .all(|d| d.node_up.get(&key).copied().unwrap_or(false) == up)
}

/// How far behind the leader's commit index a restarted node may be and
/// count as caught up in a heal condition. The nodes are scraped one after
/// the other, so under continuous load (about a thousand commits/s per
/// cluster here) the leader's index is read tens of entries after a
/// follower's on a busy machine; a node still replaying is thousands
/// behind. The exact check comes after the fleets stop: every live node
/// applied the leader's commit index before its bindings are listed.
const CATCH_UP_SLACK: u64 = 256;

/// Whether the live nodes agree on a leader and node `id` (if any) is up
/// with at most [`CATCH_UP_SLACK`] entries less applied than the leader
/// committed.
fn caught_up(s: &Sample, live: &[u64], id: Option<u64>) -> bool {
    let Some(l) = live_leader(s, live) else {
        return false;
    };
    let commit = s
        .nodes
        .iter()
        .find(|x| x.id == l)
        .map_or(u64::MAX, |x| x.commit);
    id.is_none_or(|id| {
        s.nodes
            .iter()
            .any(|x| x.id == id && x.up && x.applied + CATCH_UP_SLACK >= commit)
    })
}

/// One line about a cluster's state, for a timeout's message.
fn describe(s: &Sample, m: &Monitor, c: &Cluster, cn: Option<&Correspondent>) -> String {
    let nodes: Vec<String> = s
        .nodes
        .iter()
        .map(|n| {
            format!(
                "node-{}:{}:leader={}:applied={}/{}:bindings={:?}",
                n.id,
                if n.up { "up" } else { "down" },
                n.leader,
                n.applied,
                n.commit,
                n.bindings
            )
        })
        .collect();
    let disps: Vec<String> = s
        .dispatchers
        .iter()
        .map(|d| format!("{}:vrrp={:?}:active={}", d.name(), d.vrrp, d.active))
        .collect();
    let flows = cn.map_or(0, |c| c.snapshot().flows.len());
    format!(
        "[{}] {} | {} | accepted_total={} denied_total={} cn_flows={flows} live={:?}",
        s.cluster,
        nodes.join(" "),
        disps.join(" "),
        m.accepted_total,
        m.denied_total,
        c.live_nodes()
    )
}

// ----------------------------------------------------------- scenario ----

/// A fault, or the undoing of one. Each is applied to every cluster of the
/// bed at the same moment, the victims chosen per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosEvent {
    /// SIGKILL a follower chosen by the scenario's seeded generator.
    KillFollower,
    /// SIGKILL the Raft leader.
    KillLeader,
    /// Cut a follower off (nftables inside its namespace).
    Partition,
    /// Undo the partition.
    HealPartition,
    /// SIGKILL every dispatcher process on the host that holds the VIPs.
    KillDispatcher,
    /// Restart every process killed.
    RestartKilled,
    /// SIGKILL a random node every few seconds for a bounded period
    /// (issue 8): [`RANDOM_ROUNDS`] rounds [`RANDOM_PERIOD`] apart, each
    /// restarting the previous victim (and waiting until it caught up) and
    /// killing a random live node (the leader or not, maybe the one just
    /// back; at most one dead or behind per cluster, so a quorum holds),
    /// then the last victim restarted.
    RandomKills,
}

/// Rounds of [`ChaosEvent::RandomKills`].
pub const RANDOM_ROUNDS: usize = 3;
/// At least this long between two kills of [`ChaosEvent::RandomKills`]
/// ("every few seconds"): a round also waits until the survivors agree
/// on a leader and the dispatchers dropped the victim, so a slow machine
/// stretches the rounds instead of stacking failures.
pub const RANDOM_PERIOD: Duration = Duration::from_secs(2);

impl ChaosEvent {
    /// A short name.
    pub fn name(self) -> &'static str {
        match self {
            ChaosEvent::KillFollower => "kill-follower",
            ChaosEvent::KillLeader => "kill-leader",
            ChaosEvent::Partition => "partition",
            ChaosEvent::HealPartition => "heal-partition",
            ChaosEvent::KillDispatcher => "kill-dispatcher",
            ChaosEvent::RestartKilled => "restart-killed",
            ChaosEvent::RandomKills => "random-kills",
        }
    }

    /// DESIGN.md § 9's registration-gap target for this event, if any.
    pub fn target(self) -> Option<Duration> {
        match self {
            ChaosEvent::KillFollower | ChaosEvent::Partition => Some(Duration::from_millis(300)),
            ChaosEvent::KillLeader => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// What one event showed in one cluster.
#[derive(Debug, Clone)]
pub struct EventResult {
    /// The cluster ([`Cluster::name`]).
    pub cluster: String,
    /// The event.
    pub event: ChaosEvent,
    /// Its target (`node-2`, `disp-a`, `inode-1>inode-3>inode-2`, …).
    pub target: String,
    /// From the fault to the heal (every stream resumed) in this cluster.
    pub heal: Duration,
    /// Per fleet of this cluster's realms.
    pub reg_gaps: Vec<(String, RegGap)>,
    /// At this cluster's correspondent.
    pub data_gap: DataGap,
    /// Acknowledged bindings checked, summed over the live nodes.
    pub acked_checked: usize,
    /// Acknowledged bindings looked for per node.
    pub acked_per_node: usize,
    /// Skipped: lifetime ran out before the check.
    pub acked_expiring: usize,
    /// The nodes checked.
    pub nodes_checked: Vec<u64>,
    /// The VIP owners after it.
    pub vip_owners: String,
    /// When the fault was applied (to measure other streams across it,
    /// e.g. the dual mobile node's).
    pub at: Instant,
    /// When this cluster healed (its streams resumed).
    pub healed_at: Instant,
}

impl EventResult {
    /// The largest registration gap over the fleets, ms.
    pub fn reg_gap_ms(&self) -> f64 {
        self.reg_gaps
            .iter()
            .map(|(_, g)| g.max_ms)
            .fold(0.0, f64::max)
    }

    /// One row of [`Chaos::table`].
    pub fn row(&self) -> String {
        format!(
            "{:<7} {:<16} {:<28} {:>7.2} {:>8.0} {:>8.0} {:>11} {:>6}",
            self.cluster,
            self.event.name(),
            self.target,
            self.heal.as_secs_f64(),
            self.reg_gap_ms(),
            self.data_gap.max.as_secs_f64() * 1e3,
            format!("{}/{}", self.data_gap.interrupted, self.data_gap.flows),
            self.acked_per_node,
        )
    }
}

impl fmt::Display for EventResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match self.event.target() {
            Some(t) => {
                let ms = t.as_secs_f64() * 1e3;
                let met = if self.reg_gap_ms() < ms {
                    "met"
                } else {
                    "MISSED"
                };
                format!(" target<{ms:.0}ms:{met}")
            }
            None => String::new(),
        };
        write!(
            f,
            "chaos cluster={} event={} target={} heal={:.2}s reg_gap={:.0}ms{target} data_gap[{}] \
             acked_checked={} ({} per node on {:?}; {} skipped as expiring) vip={}",
            self.cluster,
            self.event.name(),
            self.target,
            self.heal.as_secs_f64(),
            self.reg_gap_ms(),
            self.data_gap,
            self.acked_checked,
            self.acked_per_node,
            self.nodes_checked,
            self.acked_expiring,
            self.vip_owners
        )?;
        for (fleet, g) in &self.reg_gaps {
            write!(f, "\n  reg_gap {fleet}: {g}")?;
        }
        Ok(())
    }
}

/// A bed under chaos: see the module docs. One [`Monitor`] per cluster.
pub struct Chaos<B: Bed = Rack> {
    /// The rack or the site.
    pub bed: B,
    opts: RackOptions,
    rng: SplitMix64,
    monitors: Vec<Monitor>,
    partitioned: Vec<Option<u64>>,
    /// Each event's figures, per cluster, in order.
    pub results: Vec<EventResult>,
    bound: Duration,
}

impl<B: Bed> fmt::Debug for Chaos<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("clusters", &self.bed.clusters())
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

impl Chaos<Rack> {
    /// Starts the rack of `opts` (namespaces; timelines on) with `seed`
    /// for the choice of victims.
    ///
    /// # Errors
    /// The rack does not start.
    pub fn start(opts: &RackOptions, seed: u64) -> Result<Chaos<Rack>, ChaosError> {
        let opts = RackOptions {
            timelines: true,
            ..opts.clone()
        };
        let rack = Rack::start(&opts)?;
        Ok(Chaos::new(rack, opts, seed))
    }
}

impl Chaos<Site> {
    /// Starts the site of `opts` (timelines on) with `seed` for the choice
    /// of victims.
    ///
    /// # Errors
    /// The site does not start.
    pub fn start_site(opts: &SiteOptions, seed: u64) -> Result<Chaos<Site>, ChaosError> {
        let mut opts = opts.clone();
        opts.load.timelines = true;
        let site = Site::start(&opts)?;
        Ok(Chaos::new(site, opts.load, seed))
    }
}

impl<B: Bed> Chaos<B> {
    /// Chaos on a started `bed` whose fleets run with `opts` (timelines
    /// on: the registration gaps and expiries come from them).
    pub fn new(bed: B, opts: RackOptions, seed: u64) -> Chaos<B> {
        let n = bed.clusters().len();
        let monitors = bed
            .clusters()
            .iter()
            .map(|c| Monitor::new(c.expected))
            .collect();
        let mut chaos = Chaos {
            bed,
            opts: RackOptions {
                timelines: true,
                ..opts
            },
            rng: SplitMix64::new(seed),
            monitors,
            partitioned: vec![None; n],
            results: Vec::new(),
            bound: Duration::from_secs(15),
        };
        // The monitors count acceptances between samples: a first one now.
        chaos.sample();
        chaos
    }

    fn sample(&mut self) -> Vec<Sample> {
        let n = self.bed.clusters().len();
        (0..n)
            .map(|k| {
                let s = self.bed.cluster_lab(k).0.sample();
                let _ = self.monitors[k].observe(&s);
                s
            })
            .collect()
    }

    fn fail(&self, event: ChaosEvent, what: impl Into<String>) -> ChaosError {
        ChaosError::Invariant {
            event: event.name().to_owned(),
            what: what.into(),
        }
    }

    /// Waits until `cond` holds on fresh samples of every cluster
    /// (bounded); returns when.
    fn until(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&[Sample], &[Monitor], &B) -> bool,
    ) -> Result<Instant, ChaosError> {
        let bound = self.bound;
        let mut at = Instant::now();
        let mut last: Vec<Sample> = Vec::new();
        let r = wait_for(what, bound, || {
            let s = self.sample();
            at = Instant::now();
            let ok = cond(&s, &self.monitors, &self.bed);
            last = s;
            ok
        });
        if let Err(e) = r {
            let seen: Vec<String> = last
                .iter()
                .enumerate()
                .map(|(k, s)| {
                    describe(
                        s,
                        &self.monitors[k],
                        &self.bed.clusters()[k],
                        self.bed.correspondent(k),
                    )
                })
                .collect();
            return Err(ChaosError::Parse(format!(
                "{e}; last seen: {}",
                seen.join(" || ")
            )));
        }
        Ok(at)
    }

    /// Like [`Chaos::until`] with one condition per cluster: returns, per
    /// cluster, the first instant its condition held (once all held in
    /// the same round).
    fn until_each(
        &mut self,
        what: &str,
        mut cond: impl FnMut(usize, &Sample, &Monitor, &B) -> bool,
    ) -> Result<Vec<Instant>, ChaosError> {
        let n = self.bed.clusters().len();
        let mut first: Vec<Option<Instant>> = vec![None; n];
        self.until(what, |ss, ms, b| {
            let now = Instant::now();
            let mut all = true;
            for k in 0..n {
                if cond(k, &ss[k], &ms[k], b) {
                    first[k].get_or_insert(now);
                } else {
                    all = false;
                }
            }
            all
        })?;
        Ok(first
            .into_iter()
            .map(|t| t.unwrap_or_else(Instant::now))
            .collect())
    }

    /// Picks one of `ids` with the scenario's generator.
    fn pick(&mut self, ids: &[u64]) -> Option<u64> {
        if ids.is_empty() {
            return None;
        }
        let k = (self.rng.next_u64() % ids.len() as u64) as usize;
        ids.get(k).copied()
    }

    /// [`ChaosEvent::RandomKills`]'s rounds; returns each cluster's victims
    /// (names) and its last victim (killed, to be restarted).
    fn random_kills(&mut self) -> Result<(Vec<Vec<String>>, Vec<u64>), ChaosError> {
        let event = ChaosEvent::RandomKills;
        let n = self.bed.clusters().len();
        let mut names: Vec<Vec<String>> = vec![Vec::new(); n];
        let mut victims: Vec<Option<u64>> = vec![None; n];
        for round in 0..RANDOM_ROUNDS {
            // The previous victims back and caught up first: at most one
            // node per cluster is dead or behind at any time, so a quorum
            // of up-to-date voters always remains (DESIGN.md § 4).
            let restarted: Vec<Option<u64>> = victims.clone();
            if restarted.iter().any(Option::is_some) {
                for k in 0..n {
                    self.bed.cluster_lab(k).0.restart_killed()?;
                }
                self.until(
                    &format!("random kills round {round}: caught up"),
                    |ss, _, b| {
                        (0..n)
                            .all(|k| caught_up(&ss[k], &b.clusters()[k].live_nodes(), restarted[k]))
                    },
                )?;
            }
            let t_round = Instant::now();
            for k in 0..n {
                let live = self.bed.clusters()[k].live_nodes();
                let id = self
                    .pick(&live)
                    .ok_or_else(|| self.fail(event, "no live node to kill"))?;
                names[k].push(self.bed.cluster_lab(k).0.kill_node(id)?);
                victims[k] = Some(id);
            }
            let v = victims.clone();
            self.until(&format!("random kills round {round}"), |ss, _, b| {
                t_round.elapsed() >= RANDOM_PERIOD
                    && (0..n).all(|k| {
                        let live = b.clusters()[k].live_nodes();
                        live_leader(&ss[k], &live).is_some()
                            && v[k].is_none_or(|id| dispatchers_see(&ss[k], id, false))
                    })
            })?;
        }
        let last = victims
            .into_iter()
            .map(|v| v.ok_or_else(|| self.fail(event, "no victim")))
            .collect::<Result<Vec<u64>, ChaosError>>()?;
        Ok((names, last))
    }

    /// One event under load, in every cluster at once: fleets started,
    /// load steady, the fault (victims per cluster), the heal in every
    /// cluster, more load, fleets stopped, invariants checked per cluster
    /// against that cluster's fleets. Returns (and keeps) the figures, one
    /// per cluster.
    ///
    /// # Errors
    /// A wait that timed out or a broken invariant.
    pub fn run(&mut self, event: ChaosEvent) -> Result<Vec<EventResult>, ChaosError> {
        let n = self.bed.clusters().len();
        let names: Vec<String> = self.bed.clusters().iter().map(|c| c.name.clone()).collect();
        let expected: Vec<u64> = self
            .bed
            .clusters()
            .iter()
            .map(|c| c.expected as u64)
            .collect();
        let realms: Vec<Vec<String>> = self
            .bed
            .clusters()
            .iter()
            .map(|c| c.realms().to_vec())
            .collect();
        let floors: Vec<Duration> = (0..n)
            .map(|k| {
                self.bed
                    .correspondent(k)
                    .map_or(Duration::from_secs(1), |c| c.gap_floor)
            })
            .collect();
        // Stream flows each cluster's correspondent hears: one per stream
        // mobile node of each of its realms.
        let streams: Vec<usize> = (0..n)
            .map(|k| {
                if self.bed.correspondent(k).is_some() {
                    self.opts.streams * realms[k].len()
                } else {
                    0
                }
            })
            .collect();
        let base: Vec<f64> = self.monitors.iter().map(|m| m.accepted_total).collect();
        self.bed.start_fleets(&self.opts)?;
        // Load steady: about every mobile node of this run registered (one
        // acceptance each, on whichever node got it), every live node holds
        // every binding (at least: a dual mobile node may add its own), and
        // every stream sends.
        let t_fleets = Instant::now();
        self.until("the fleets registered and streaming", |ss, ms, b| {
            (0..n).all(|k| {
                let live = b.clusters()[k].live_nodes();
                let sending = b.correspondent(k).map_or(0, |c| {
                    c.snapshot()
                        .flows
                        .iter()
                        .filter(|f| f.last > t_fleets)
                        .count()
                });
                ms[k].accepted_total >= base[k] + expected[k] as f64
                    && live_leader(&ss[k], &live).is_some()
                    && ss[k]
                        .nodes
                        .iter()
                        .filter(|x| live.contains(&x.id))
                        .all(|x| x.total_bindings() >= expected[k])
                    && sending >= streams[k]
            })
        })?;
        let before = self.sample();
        let mut leaders = Vec::new();
        for (k, s) in before.iter().enumerate() {
            let live = self.bed.clusters()[k].live_nodes();
            leaders.push(
                live_leader(s, &live).ok_or_else(|| {
                    self.fail(event, format!("{}: no leader before it", names[k]))
                })?,
            );
        }
        let t_event = Instant::now();
        let u_event = unix_now();
        let acc_event: Vec<f64> = self.monitors.iter().map(|m| m.accepted_total).collect();
        // The fault, in every cluster.
        let mut targets: Vec<String> = vec![String::new(); n];
        let mut restored: Vec<Vec<u64>> = vec![Vec::new(); n];
        let mut victims: Vec<Option<u64>> = vec![None; n];
        let mut killed_host: Vec<Option<String>> = vec![None; n];
        let mut restored_dispatcher = vec![false; n];
        if event == ChaosEvent::RandomKills {
            let (kills, last) = self.random_kills()?;
            for k in 0..n {
                self.bed.cluster_lab(k).0.restart_killed()?;
                targets[k] = kills[k].join(">");
                restored[k] = vec![last[k]];
            }
        }
        for k in 0..n {
            let live = self.bed.clusters()[k].live_nodes();
            let leader = leaders[k];
            match event {
                ChaosEvent::KillFollower | ChaosEvent::Partition => {
                    let followers: Vec<u64> =
                        live.iter().copied().filter(|id| *id != leader).collect();
                    let id = self
                        .pick(&followers)
                        .ok_or_else(|| self.fail(event, "no follower to hit"))?;
                    let (c, lab) = self.bed.cluster_lab(k);
                    targets[k] = if event == ChaosEvent::KillFollower {
                        c.kill_node(id)?
                    } else {
                        let lab = lab.ok_or_else(|| {
                            RackError::Options("partitions need namespaces".into())
                        })?;
                        let name = c.partition_node(lab, id)?;
                        self.partitioned[k] = Some(id);
                        name
                    };
                    victims[k] = Some(id);
                }
                ChaosEvent::KillLeader => {
                    targets[k] = self.bed.cluster_lab(k).0.kill_node(leader)?;
                    victims[k] = Some(leader);
                }
                ChaosEvent::HealPartition => {
                    let id = self.partitioned[k]
                        .take()
                        .ok_or_else(|| self.fail(event, "nothing partitioned"))?;
                    let (c, lab) = self.bed.cluster_lab(k);
                    let lab =
                        lab.ok_or_else(|| RackError::Options("partitions need namespaces".into()))?;
                    targets[k] = c.heal_node(lab, id)?;
                    restored[k] = vec![id];
                }
                ChaosEvent::KillDispatcher => {
                    let host = self
                        .bed
                        .cluster_lab(k)
                        .0
                        .kill_active_dispatcher(&before[k])?;
                    targets[k] = host.clone();
                    killed_host[k] = Some(host);
                }
                ChaosEvent::RestartKilled => {
                    let c = self.bed.cluster_lab(k).0;
                    restored_dispatcher[k] = c.dispatchers.iter().any(|d| d.killed);
                    restored[k] = c.nodes.iter().filter(|x| x.killed).map(|x| x.id).collect();
                    let restarted = c.restart_killed()?;
                    if restarted.is_empty() {
                        return Err(self.fail(event, format!("{}: nothing to restart", names[k])));
                    }
                    targets[k] = restarted.join(",");
                }
                ChaosEvent::RandomKills => {}
            }
        }
        // The heal, in every cluster.
        // A restarted dispatcher pair settles with the preferred host
        // (highest VRRP priority, preempting) holding every VIP again.
        let preferred: Vec<Option<String>> = (0..n)
            .map(|k| {
                restored_dispatcher[k]
                    .then(|| self.bed.clusters()[k].vip_preferred())
                    .flatten()
            })
            .collect();
        let need: Vec<f64> = expected
            .iter()
            .map(|e| (*e as f64 / 20.0).max(10.0))
            .collect();
        // Data resumed: every flow that was sending before the event has an
        // arrival after its cluster's heal conditions held.
        let watched: Vec<Vec<u32>> = (0..n)
            .map(|k| {
                let recent = t_event.checked_sub(floors[k] * 3).unwrap_or(t_event);
                self.bed
                    .correspondent(k)
                    .map(|c| {
                        c.snapshot()
                            .flows
                            .iter()
                            .filter(|f| f.last >= recent)
                            .map(|f| f.id)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        // The heal of each cluster: its conditions held (first at
        // `marks[k]`), then every watched stream arrived after that.
        let mut marks: Vec<Option<Instant>> = vec![None; n];
        let t_heal = self.until_each(
            &format!("the heal after {} and every stream resumed", event.name()),
            |k, s, m, b| {
                if let Some(mark) = marks[k] {
                    let Some(c) = b.correspondent(k) else {
                        return true;
                    };
                    let snap = c.snapshot();
                    return watched[k]
                        .iter()
                        .all(|w| snap.flows.iter().any(|f| f.id == *w && f.last > mark));
                }
                let heal = Heal {
                    expected: expected[k],
                    victim: victims[k],
                    restored: &restored[k],
                    realms: &realms[k],
                    killed_host: killed_host[k].as_deref(),
                    preferred: preferred[k].as_deref(),
                    accepted: acc_event[k] + need[k],
                };
                let healed = heal.holds(s, m, &b.clusters()[k].live_nodes());
                if healed {
                    marks[k] = Some(Instant::now());
                }
                false
            },
        );
        let t_heal = match t_heal {
            Ok(t) => t,
            Err(e) => {
                // Say which part is missing: the heal itself, or which
                // streams never came back (a stream mobile node that lost
                // its binding comes back from another pool address).
                let mut why = Vec::new();
                for k in 0..n {
                    match marks[k] {
                        None => why.push(format!("{}: not healed", names[k])),
                        Some(mark) => {
                            let snap = self
                                .bed
                                .correspondent(k)
                                .map(Correspondent::snapshot)
                                .unwrap_or_default();
                            let silent: Vec<&u32> = watched[k]
                                .iter()
                                .filter(|w| {
                                    !snap.flows.iter().any(|f| f.id == **w && f.last > mark)
                                })
                                .collect();
                            if !silent.is_empty() {
                                why.push(format!(
                                    "{}: streams not resumed (mobile-node data ids) {silent:?}",
                                    names[k]
                                ));
                            }
                        }
                    }
                }
                return Err(ChaosError::Parse(format!("{}; {e}", why.join("; "))));
            }
        };
        let u_heal = unix_now();
        // More load after the heal: registrations the survivors acknowledge.
        let acc_heal: Vec<f64> = self.monitors.iter().map(|m| m.accepted_total).collect();
        self.until("registrations after the heal", |_, ms, _| {
            (0..n).all(|k| ms[k].accepted_total >= acc_heal[k] + need[k])
        })?;
        let gaps: Vec<DataGap> = (0..n)
            .map(|k| {
                let snap = self
                    .bed
                    .correspondent(k)
                    .map(|c| c.snapshot())
                    .unwrap_or_default();
                data_gap(&snap, floors[k], t_event, t_heal[k])
            })
            .collect();
        let runs = self.bed.stop_fleet_runs();
        // Every acknowledged registration is committed (the reply leaves
        // after the entry is applied on the node that got the request), but
        // another node may apply it a moment later: wait until every live
        // node has applied what the leader had committed once the fleets
        // stopped, then look.
        let lives: Vec<Vec<u64>> = self
            .bed
            .clusters()
            .iter()
            .map(Cluster::live_nodes)
            .collect();
        let stopped = self.sample();
        let mut commits = Vec::new();
        for k in 0..n {
            commits.push(
                live_leader(&stopped[k], &lives[k])
                    .and_then(|l| stopped[k].nodes.iter().find(|x| x.id == l))
                    .map(|x| x.commit)
                    .ok_or_else(|| {
                        self.fail(
                            event,
                            format!("{}: no leader once the fleets stopped", names[k]),
                        )
                    })?,
            );
        }
        self.until(
            "every live node applied the leader's commit index",
            |ss, _, _| {
                (0..n).all(|k| {
                    ss[k]
                        .nodes
                        .iter()
                        .filter(|x| lives[k].contains(&x.id))
                        .all(|x| x.up && x.applied >= commits[k])
                })
            },
        )?;
        let mut out = Vec::new();
        for k in 0..n {
            let mine: Vec<&FleetRun> = runs
                .iter()
                .filter(|r| realms[k].contains(&r.realm))
                .collect();
            let r = self.check_cluster(
                event,
                k,
                &mine,
                &lives[k],
                (u_event, u_heal),
                CheckFigures {
                    target: targets[k].clone(),
                    at: t_event,
                    healed_at: t_heal[k],
                    data_gap: gaps[k],
                },
            )?;
            out.push(r);
        }
        // Exactly one VIP owner per realm of every cluster.
        let after = self.sample();
        for (k, r) in out.iter_mut().enumerate() {
            r.vip_owners = vip_owners_ok(&after[k], &realms[k])
                .map_err(|e| self.fail(event, format!("{}: {e}", names[k])))?;
        }
        self.results.extend(out.iter().cloned());
        Ok(out)
    }

    /// The invariants of one cluster after `event`: every mobile node of
    /// its fleets registered and none gave up; every acknowledged binding
    /// on every one of its live nodes.
    fn check_cluster(
        &self,
        event: ChaosEvent,
        k: usize,
        runs: &[&FleetRun],
        live: &[u64],
        (u_event, u_heal): (Duration, Duration),
        fig: CheckFigures,
    ) -> Result<EventResult, ChaosError> {
        let cluster = &self.bed.clusters()[k];
        let name = &cluster.name;
        let mut acked = Vec::new();
        let mut reg_gaps = Vec::new();
        let first_ms = self.opts.initial_timeout.as_secs_f64() * 1e3;
        for run in runs {
            let report = run
                .report
                .as_ref()
                .map_err(|e| self.fail(event, format!("{name}: fleet {}: {e}", run.name)))?;
            let never = report
                .mns
                .iter()
                .filter(|m| m.acknowledged.is_none())
                .count();
            if never > 0 || report.summary.gave_up > 0 {
                return Err(self.fail(
                    event,
                    format!(
                        "{name}: fleet {}: {never} mobile nodes never registered, {} gave up",
                        run.name, report.summary.gave_up
                    ),
                ));
            }
            if let Some(p) = &run.timeline {
                let lines = read_timeline(p)?;
                let t = |u: Duration| u.saturating_sub(run.started).as_secs_f64();
                reg_gaps.push((
                    run.name.clone(),
                    registration_gap(&lines, t(u_event), t(u_heal), first_ms),
                ));
            }
            acked.extend(acknowledged(run)?);
        }
        // The nodes are listed in parallel, and a binding counts as due
        // only if its lifetime outlasts the end of its node's listing (one
        // that ran out meanwhile may be gone, rightly).
        let lists: Vec<(u64, Result<serde_json::Value, RackError>, Duration)> =
            std::thread::scope(|sc| {
                let handles: Vec<_> = live
                    .iter()
                    .map(|id| {
                        let id = *id;
                        sc.spawn(move || {
                            let list = cluster.havenctl(id, &["bindings", "list"]);
                            (id, list, unix_now())
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
        if lists.len() != live.len() {
            return Err(self.fail(event, "a binding listing thread panicked"));
        }
        let (mut checked, mut per_node, mut expiring) = (0, 0, 0);
        for (id, list, listed_at) in lists {
            let bindings = parse_bindings(&list?)?;
            let c = check_acknowledged(&acked, &bindings, listed_at, Duration::from_millis(200));
            if !c.missing.is_empty() {
                let m = c.missing.len();
                let some: Vec<&String> = c.missing.iter().take(5).collect();
                return Err(self.fail(
                    event,
                    format!(
                        "{name}: node-{id} lacks {m} of {} acknowledged bindings, e.g. {some:?}",
                        c.checked
                    ),
                ));
            }
            checked += c.checked;
            per_node = per_node.max(c.checked);
            expiring = expiring.max(c.expiring);
        }
        Ok(EventResult {
            cluster: name.clone(),
            event,
            target: fig.target,
            heal: fig.healed_at.saturating_duration_since(fig.at),
            reg_gaps,
            data_gap: fig.data_gap,
            acked_checked: checked,
            acked_per_node: per_node,
            acked_expiring: expiring,
            nodes_checked: live.to_vec(),
            vip_owners: String::new(),
            at: fig.at,
            healed_at: fig.healed_at,
        })
    }

    /// Every event's figures: a table per cluster (heal, registration gap,
    /// data gap, acknowledged bindings checked per node), then the detail.
    pub fn table(&self) -> String {
        let mut out = vec![format!(
            "{:<7} {:<16} {:<28} {:>7} {:>8} {:>8} {:>11} {:>6}",
            "cluster", "event", "target", "heal_s", "reg_ms", "data_ms", "interrupted", "acked"
        )];
        let mut clusters: Vec<&str> = Vec::new();
        for r in &self.results {
            if !clusters.contains(&r.cluster.as_str()) {
                clusters.push(&r.cluster);
            }
        }
        for c in &clusters {
            out.extend(
                self.results
                    .iter()
                    .filter(|r| r.cluster == *c)
                    .map(EventResult::row),
            );
        }
        out.extend(self.results.iter().map(ToString::to_string));
        out.join("\n")
    }

    /// The last lines of every component's log, for a failure's report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for c in self.bed.clusters() {
            for (name, _) in c.logs() {
                if let Some(t) = c.log_tail(&name, lines) {
                    out.push_str(&format!("--- {}/{name}\n{t}\n", c.name));
                }
            }
        }
        out
    }
}

/// What one cluster must show after a fault to count as healed.
struct Heal<'a> {
    /// Bindings every live node holds (at least).
    expected: u64,
    /// The node killed or cut off: out of every active dispatcher's table.
    victim: Option<u64>,
    /// The nodes restarted or healed: back in the tables, caught up.
    restored: &'a [u64],
    realms: &'a [String],
    /// The dispatcher host killed: not a VIP owner.
    killed_host: Option<&'a str>,
    /// The host that must own every VIP again (a restarted pair).
    preferred: Option<&'a str>,
    /// Registrations accepted (monitor total) it must have reached.
    accepted: f64,
}

impl Heal<'_> {
    /// Every live node agrees on a live leader and holds every binding,
    /// the dispatchers steer around the victim and to the restored nodes,
    /// one VIP owner per realm (not the killed host, the preferred one
    /// after a restart), every running dispatcher in VRRP Backup or
    /// Master, and registrations accepted since the fault.
    fn holds(&self, s: &Sample, m: &Monitor, live: &[u64]) -> bool {
        let Some(l) = live_leader(s, live) else {
            return false;
        };
        let full = s
            .nodes
            .iter()
            .filter(|x| live.contains(&x.id))
            .all(|x| x.up && x.total_bindings() >= self.expected);
        let steered = self.victim.is_none_or(|v| dispatchers_see(s, v, false));
        let commit = s
            .nodes
            .iter()
            .find(|x| x.id == l)
            .map_or(u64::MAX, |x| x.commit);
        let back = self.restored.iter().all(|id| {
            dispatchers_see(s, *id, true)
                && s.nodes
                    .iter()
                    .any(|x| x.id == *id && x.up && x.applied + CATCH_UP_SLACK >= commit)
        });
        let disp_ok = self.realms.iter().all(|realm| {
            let owners = s.vip_owners(realm);
            owners.len() == 1
                && self.killed_host.is_none_or(|h| owners[0] != h)
                && self.preferred.is_none_or(|p| owners[0] == p)
        }) && s
            .dispatchers
            .iter()
            .filter(|d| d.running)
            .all(|d| d.up && matches!(d.vrrp, Some(1) | Some(2)));
        full && steered && back && disp_ok && m.accepted_total >= self.accepted
    }
}

/// What [`Chaos::run`] measured for one cluster before its checks.
struct CheckFigures {
    target: String,
    at: Instant,
    healed_at: Instant,
    data_gap: DataGap,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: f64, mn: usize, event: &str, latency_ms: Option<f64>) -> TimelineLine {
        TimelineLine {
            t,
            mn,
            event: event.into(),
            code: None,
            latency_ms,
            attempt: None,
        }
    }

    #[test]
    fn registration_gap_counts_cycles_across_the_window() {
        let lines = vec![
            line(0.5, 0, "accepted", Some(10.0)),  // before the fault
            line(2.2, 1, "accepted", Some(700.0)), // sent 1.5, across it
            line(2.05, 2, "accepted", Some(20.0)),
            line(9.0, 3, "accepted", Some(15.0)), // started after the heal
            line(2.5, 4, "gave_up", None),
        ];
        let g = registration_gap(&lines, 2.0, 3.0, 400.0);
        assert_eq!((g.cycles, g.retried, g.gave_up), (2, 1, 1));
        assert_eq!(g.max_ms, 700.0);
        // The cycle accepted at 2.2 s started at 1.5 s: its lifetime counts
        // from there at the earliest.
        let starts = last_accepts(&lines, 5);
        assert!(
            starts[1].is_some_and(|t| (t - 1.5).abs() < 1e-9),
            "{starts:?}"
        );
        assert_eq!(starts[4], None);
    }

    #[test]
    fn acknowledged_bindings_are_found_or_reported() {
        let hoa = Ipv4Addr::new(198, 18, 16, 10);
        let (a, b) = (Ipv4Addr::new(198, 19, 0, 2), Ipv4Addr::new(198, 19, 0, 3));
        let acked = |coa, later, expires| Acked {
            who: "inner#0".into(),
            realm: "inner".into(),
            home_address: hoa,
            care_of: coa,
            later_care_of: later,
            expires,
        };
        let v = serde_json::json!([{"realm": "inner", "home_address": hoa.to_string(), "nai": "",
            "care_of": [{"care_of_address": b.to_string(), "remaining": 4}]}]);
        let bindings = parse_bindings(&v).unwrap();
        let now = Duration::from_secs(100);
        let ms = Duration::from_millis(300);
        // Acknowledged at a, moved to b: fine.
        let c = check_acknowledged(&[acked(a, b, None)], &bindings, now, ms);
        assert_eq!((c.checked, c.missing.len()), (1, 0));
        // Acknowledged at a, still at a: b is a care-of it never used.
        let c = check_acknowledged(&[acked(a, a, None)], &bindings, now, ms);
        assert_eq!(c.missing.len(), 1, "{c:?}");
        // Expired before the query: skipped.
        let c = check_acknowledged(&[acked(a, a, Some(now))], &[], now, ms);
        assert_eq!((c.checked, c.expiring), (0, 1));
        let c = check_acknowledged(&[acked(a, a, Some(now * 2))], &[], now, ms);
        assert_eq!(c.missing.len(), 1);
        assert!(parse_bindings(&serde_json::json!({"x": 1})).is_err());
    }

    #[test]
    fn data_gap_is_the_worst_interruption_in_the_window() {
        use crate::rack::{ArrivalGap, CnFlow};
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (f1, f2, f3) = (1u32, 2, 3);
        let source = Ipv4Addr::new(198, 18, 16, 1);
        let snap = CnSnapshot {
            flows: vec![
                CnFlow {
                    id: f1,
                    source,
                    received: 10,
                    last: at(3000),
                },
                CnFlow {
                    id: f2,
                    source,
                    received: 10,
                    last: at(3000),
                },
                // Stopped long before the fault: not watched.
                CnFlow {
                    id: f3,
                    source,
                    received: 1,
                    last: at(10),
                },
            ],
            gaps: vec![
                ArrivalGap {
                    flow: f1,
                    from: at(100),
                    len: Duration::from_millis(900),
                },
                ArrivalGap {
                    flow: f1,
                    from: at(1100),
                    len: Duration::from_millis(400),
                },
                ArrivalGap {
                    flow: f2,
                    from: at(1200),
                    len: Duration::from_millis(200),
                },
            ],
            ..CnSnapshot::default()
        };
        let g = data_gap(&snap, Duration::from_millis(150), at(1000), at(2000));
        assert_eq!((g.flows, g.interrupted, g.stalled), (2, 2, 0));
        assert_eq!(g.max, Duration::from_millis(900));
    }
}
