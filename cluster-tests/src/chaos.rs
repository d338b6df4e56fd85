//! # Chaos under continuous load (issue 8 item 4; DESIGN.md § 4, § 9)
//!
//! Faults are fired at a running rack ([`crate::rack`]) one at a time while
//! its mnsim fleets register, move and re-register with short lifetimes
//! and its stream mobile nodes send data through their RFC 3519 tunnels.
//! After each fault the scenario waits for the heal (conditions, never
//! sleeps), then stops the fleets and checks the invariants:
//!
//! * no acknowledged registration lost: every binding an mnsim mobile node
//!   was last acknowledged (its last accepted reply) is on every live node,
//!   with that care-of address or the later one it moved to (DESIGN.md § 4:
//!   "losing an acknowledged binding is a bug");
//! * every mobile node still registered (the fleets' reports);
//! * exactly one VIP owner per realm (the dispatchers' VRRP metrics);
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::mn::SplitMix64;
use crate::mnsim::unix_now;
use crate::rack::{CnSnapshot, FleetRun, Monitor, Rack, RackError, RackOptions, Sample};
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

/// The timeline time of each mobile node's last acceptance (`count` mobile
/// nodes).
pub fn last_accepts(lines: &[TimelineLine], count: usize) -> Vec<Option<f64>> {
    let mut out = vec![None; count];
    for l in lines.iter().filter(|l| l.event == "accepted") {
        if let Some(slot) = out.get_mut(l.mn) {
            *slot = Some(l.t);
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
    let flows: Vec<Ipv4Addr> = snap
        .flows
        .iter()
        .filter(|f| f.last >= recent)
        .map(|f| f.source)
        .collect();
    let mut worst: HashMap<Ipv4Addr, Duration> = HashMap::new();
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
        .filter(|f| flows.contains(&f.source) && f.last < from)
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
    /// Unix time when its lifetime runs out, from the timeline's last
    /// acceptance (a little early: the timeline's clock starts a few ms
    /// after [`FleetRun::started`]); `None` without a timeline.
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

/// One line about the rack's state, for a timeout's message.
fn describe(s: &Sample, m: &Monitor, rack: &Rack) -> String {
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
    let flows = rack
        .correspondent
        .as_ref()
        .map_or(0, |c| c.snapshot().flows.len());
    format!(
        "{} | {} | accepted_total={} denied_total={} cn_flows={flows} live={:?}",
        nodes.join(" "),
        disps.join(" "),
        m.accepted_total,
        m.denied_total,
        rack.live_nodes()
    )
}

// ----------------------------------------------------------- scenario ----

/// A fault, or the undoing of one.
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
    /// SIGKILL both dispatcher processes on the host that holds the VIPs.
    KillDispatcher,
    /// Restart every process killed.
    RestartKilled,
}

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

/// What one event showed.
#[derive(Debug, Clone)]
pub struct EventResult {
    /// The event.
    pub event: ChaosEvent,
    /// Its target (`node-2`, `disp-a`, …).
    pub target: String,
    /// From the fault to the heal.
    pub heal: Duration,
    /// Per fleet.
    pub reg_gaps: Vec<(String, RegGap)>,
    /// At the correspondent.
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
}

impl EventResult {
    /// The largest registration gap over the fleets, ms.
    pub fn reg_gap_ms(&self) -> f64 {
        self.reg_gaps
            .iter()
            .map(|(_, g)| g.max_ms)
            .fold(0.0, f64::max)
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
            "chaos event={} target={} heal={:.2}s reg_gap={:.0}ms{target} data_gap[{}] \
             acked_checked={} ({} per node on {:?}; {} skipped as expiring) vip={}",
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

/// A rack under chaos: see the module docs.
pub struct Chaos {
    /// The rack.
    pub rack: Rack,
    opts: RackOptions,
    rng: SplitMix64,
    monitor: Monitor,
    partitioned: Option<u64>,
    /// Each event's figures, in order.
    pub results: Vec<EventResult>,
    bound: Duration,
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("rack", &self.rack)
            .field("results", &self.results)
            .finish_non_exhaustive()
    }
}

impl Chaos {
    /// Starts the rack of `opts` (namespaces; timelines on) with `seed`
    /// for the choice of victims.
    ///
    /// # Errors
    /// The rack does not start.
    pub fn start(opts: &RackOptions, seed: u64) -> Result<Chaos, ChaosError> {
        let opts = RackOptions {
            timelines: true,
            ..opts.clone()
        };
        let rack = Rack::start(&opts)?;
        let monitor = Monitor::new(rack.expected);
        let mut chaos = Chaos {
            rack,
            opts,
            rng: SplitMix64::new(seed),
            monitor,
            partitioned: None,
            results: Vec::new(),
            bound: Duration::from_secs(15),
        };
        // The monitor counts acceptances between samples: a first one now.
        chaos.sample();
        Ok(chaos)
    }

    fn sample(&mut self) -> Sample {
        let s = self.rack.sample();
        let _ = self.monitor.observe(&s);
        s
    }

    fn fail(&self, event: ChaosEvent, what: impl Into<String>) -> ChaosError {
        ChaosError::Invariant {
            event: event.name().to_owned(),
            what: what.into(),
        }
    }

    /// Waits until `cond` holds on a fresh sample (bounded); returns when.
    fn until(
        &mut self,
        what: &str,
        mut cond: impl FnMut(&Sample, &Monitor, &Rack) -> bool,
    ) -> Result<Instant, ChaosError> {
        let bound = self.bound;
        let mut at = Instant::now();
        let mut last: Option<Sample> = None;
        let r = wait_for(what, bound, || {
            let s = self.sample();
            at = Instant::now();
            let ok = cond(&s, &self.monitor, &self.rack);
            last = Some(s);
            ok
        });
        if let Err(e) = r {
            return Err(ChaosError::Parse(format!(
                "{e}; last seen: {}",
                last.map_or_else(String::new, |s| describe(&s, &self.monitor, &self.rack))
            )));
        }
        Ok(at)
    }

    /// One event under load: fleets started, load steady, the fault, the
    /// heal, more load, fleets stopped, invariants checked. Returns (and
    /// keeps) the figures.
    ///
    /// # Errors
    /// A wait that timed out or a broken invariant.
    pub fn run(&mut self, event: ChaosEvent) -> Result<EventResult, ChaosError> {
        let expected = self.rack.expected as u64;
        let realms: Vec<String> = self
            .rack
            .fleet_sizes
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        let floor = self
            .rack
            .correspondent
            .as_ref()
            .map_or(Duration::from_secs(1), |c| c.gap_floor);
        let mns = self.rack.expected as f64;
        let base = self.monitor.accepted_total;
        self.rack.start_fleets(&self.opts)?;
        // Load steady: about every mobile node of this run registered (one
        // acceptance each, on whichever node got it), every live node holds
        // every binding, and every stream sends.
        let streams = 2 * self.opts.streams;
        let t_fleets = Instant::now();
        self.until("the fleets registered and streaming", |s, m, r| {
            let live = r.live_nodes();
            let snap = r.correspondent.as_ref().map(|c| c.snapshot());
            let sending = snap.map_or(0, |c| c.flows.iter().filter(|f| f.last > t_fleets).count());
            m.accepted_total >= base + mns
                && live_leader(s, &live).is_some()
                && s.nodes
                    .iter()
                    .filter(|n| live.contains(&n.id))
                    .all(|n| n.total_bindings() == expected)
                && sending >= streams
        })?;
        let before = self.sample();
        let live_before = self.rack.live_nodes();
        let leader = live_leader(&before, &live_before)
            .ok_or_else(|| self.fail(event, "no leader before the event"))?;
        let t_event = Instant::now();
        let u_event = unix_now();
        let acc_event = self.monitor.accepted_total;
        // The fault.
        let mut restored_dispatcher = false;
        let (target, restored): (String, Vec<u64>) = match event {
            ChaosEvent::KillFollower | ChaosEvent::Partition => {
                let followers: Vec<u64> = live_before
                    .iter()
                    .copied()
                    .filter(|id| *id != leader)
                    .collect();
                if followers.is_empty() {
                    return Err(self.fail(event, "no follower to hit"));
                }
                let k = (self.rng.next_u64() % followers.len() as u64) as usize;
                let id = followers[k];
                let name = if event == ChaosEvent::KillFollower {
                    self.rack.kill_node(id)?
                } else {
                    self.partitioned = Some(id);
                    self.rack.partition_node(id)?
                };
                (name, Vec::new())
            }
            ChaosEvent::KillLeader => (self.rack.kill_node(leader)?, Vec::new()),
            ChaosEvent::HealPartition => {
                let id = self
                    .partitioned
                    .take()
                    .ok_or_else(|| self.fail(event, "nothing partitioned"))?;
                (self.rack.heal_node(id)?, vec![id])
            }
            ChaosEvent::KillDispatcher => (self.rack.kill_active_dispatcher(&before)?, Vec::new()),
            ChaosEvent::RestartKilled => {
                restored_dispatcher = self.rack.dispatchers.iter().any(|d| d.killed);
                let nodes: Vec<u64> = self
                    .rack
                    .nodes
                    .iter()
                    .filter(|n| n.killed)
                    .map(|n| n.id)
                    .collect();
                let names = self.rack.restart_killed()?;
                if names.is_empty() {
                    return Err(self.fail(event, "nothing to restart"));
                }
                (names.join(","), nodes)
            }
        };
        // The heal.
        let victim: Option<u64> = match event {
            ChaosEvent::KillFollower | ChaosEvent::KillLeader | ChaosEvent::Partition => self
                .rack
                .nodes
                .iter()
                .find(|n| n.name() == target)
                .map(|n| n.id),
            _ => None,
        };
        let killed_host = (event == ChaosEvent::KillDispatcher).then(|| target.clone());
        // A restarted dispatcher pair settles with the preferred host
        // (highest VRRP priority, preempting) holding every VIP again.
        let preferred = (event == ChaosEvent::RestartKilled && restored_dispatcher)
            .then(|| self.rack.vip_preferred())
            .flatten();
        let need = (mns / 20.0).max(10.0);
        let realms2 = realms.clone();
        let t_mark = self.until(&format!("the heal after {}", event.name()), |s, m, r| {
            let live = r.live_nodes();
            let Some(l) = live_leader(s, &live) else {
                return false;
            };
            let full = s
                .nodes
                .iter()
                .filter(|n| live.contains(&n.id))
                .all(|n| n.up && n.total_bindings() == expected);
            let steered = victim.is_none_or(|v| dispatchers_see(s, v, false));
            let back = restored.iter().all(|id| {
                dispatchers_see(s, *id, true)
                    && s.nodes.iter().any(|n| {
                        n.id == *id
                            && n.up
                            && n.applied + 2
                                >= s.nodes
                                    .iter()
                                    .find(|x| x.id == l)
                                    .map_or(u64::MAX, |x| x.commit)
                    })
            });
            let disp_ok = realms2.iter().all(|realm| {
                let owners = s.vip_owners(realm);
                owners.len() == 1
                    && killed_host.as_ref().is_none_or(|h| owners[0] != *h)
                    && preferred.as_ref().is_none_or(|p| owners[0] == *p)
            }) && s
                .dispatchers
                .iter()
                .filter(|d| d.running)
                .all(|d| d.up && matches!(d.vrrp, Some(1) | Some(2)));
            full && steered && back && disp_ok && m.accepted_total >= acc_event + need
        })?;
        // Data resumed: every flow that was sending before the event has an
        // arrival after the heal's conditions held.
        let recent = t_event.checked_sub(floor * 3).unwrap_or(t_event);
        let watched: Vec<Ipv4Addr> = self
            .rack
            .correspondent
            .as_ref()
            .map(|c| {
                c.snapshot()
                    .flows
                    .iter()
                    .filter(|f| f.last >= recent)
                    .map(|f| f.source)
                    .collect()
            })
            .unwrap_or_default();
        let t_heal = self.until("every stream resumed", |_, _, r| {
            let Some(c) = &r.correspondent else {
                return true;
            };
            let snap = c.snapshot();
            watched
                .iter()
                .all(|w| snap.flows.iter().any(|f| f.source == *w && f.last > t_mark))
        })?;
        let u_heal = unix_now();
        // More load after the heal: registrations the survivors acknowledge.
        let acc_heal = self.monitor.accepted_total;
        self.until("registrations after the heal", |_, m, _| {
            m.accepted_total >= acc_heal + need
        })?;
        let snap = self
            .rack
            .correspondent
            .as_ref()
            .map(|c| c.snapshot())
            .unwrap_or_default();
        let data_gap = data_gap(&snap, floor, t_event, t_heal);
        let runs = self.rack.stop_fleet_runs();
        // Every acknowledged registration is committed (the reply leaves
        // after the entry is applied on the node that got the request), but
        // another node may apply it a moment later: wait until every live
        // node has applied what the leader had committed once the fleets
        // stopped, then look.
        let live = self.rack.live_nodes();
        let stopped = self.sample();
        let commit = live_leader(&stopped, &live)
            .and_then(|l| stopped.nodes.iter().find(|n| n.id == l))
            .map(|n| n.commit)
            .ok_or_else(|| self.fail(event, "no leader once the fleets stopped"))?;
        let live2 = live.clone();
        self.until(
            "every live node applied the leader's commit index",
            |s, _, _| {
                s.nodes
                    .iter()
                    .filter(|n| live2.contains(&n.id))
                    .all(|n| n.up && n.applied >= commit)
            },
        )?;
        // Invariants. Every mobile node registered, none gave up.
        let mut acked = Vec::new();
        let mut reg_gaps = Vec::new();
        let first_ms = self.opts.initial_timeout.as_secs_f64() * 1e3;
        for run in &runs {
            let report = run
                .report
                .as_ref()
                .map_err(|e| self.fail(event, format!("fleet {}: {e}", run.name)))?;
            let never = report
                .mns
                .iter()
                .filter(|m| m.acknowledged.is_none())
                .count();
            if never > 0 || report.summary.gave_up > 0 {
                return Err(self.fail(
                    event,
                    format!(
                        "fleet {}: {never} mobile nodes never registered, {} gave up",
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
        // Every acknowledged binding on every live node.
        let mut checked = 0;
        let mut per_node = 0;
        let mut expiring = 0;
        // The nodes are listed in parallel, and a binding counts as due
        // only if its lifetime outlasts the end of its node's listing (one
        // that ran out meanwhile may be gone, rightly).
        let rack = &self.rack;
        let lists: Vec<(u64, Result<serde_json::Value, RackError>, Duration)> =
            std::thread::scope(|sc| {
                let handles: Vec<_> = live
                    .iter()
                    .map(|id| {
                        let id = *id;
                        sc.spawn(move || {
                            let list = rack.havenctl(id, &["bindings", "list"]);
                            (id, list, unix_now())
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).collect()
            });
        if lists.len() != live.len() {
            return Err(self.fail(event, "a binding listing thread panicked"));
        }
        for (id, list, listed_at) in lists {
            let id = &id;
            let bindings = parse_bindings(&list?)?;
            let c = check_acknowledged(&acked, &bindings, listed_at, Duration::from_millis(200));
            if !c.missing.is_empty() {
                let n = c.missing.len();
                let some: Vec<&String> = c.missing.iter().take(5).collect();
                return Err(self.fail(
                    event,
                    format!(
                        "node-{id} lacks {n} of {} acknowledged bindings, e.g. {some:?}",
                        c.checked
                    ),
                ));
            }
            checked += c.checked;
            per_node = per_node.max(c.checked);
            expiring = expiring.max(c.expiring);
        }
        // Exactly one VIP owner per realm.
        let after = self.sample();
        let vip_owners = vip_owners_ok(&after, &realms).map_err(|e| self.fail(event, e))?;
        let result = EventResult {
            event,
            target,
            heal: t_heal.saturating_duration_since(t_event),
            reg_gaps,
            data_gap,
            acked_checked: checked,
            acked_per_node: per_node,
            acked_expiring: expiring,
            nodes_checked: live,
            vip_owners,
        };
        self.results.push(result.clone());
        Ok(result)
    }

    /// A table of every event's figures.
    pub fn table(&self) -> String {
        let mut by: BTreeMap<usize, String> = BTreeMap::new();
        for (i, r) in self.results.iter().enumerate() {
            by.insert(i, r.to_string());
        }
        by.into_values().collect::<Vec<_>>().join("\n")
    }
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
        assert_eq!(last_accepts(&lines, 5)[1], Some(2.2));
        assert_eq!(last_accepts(&lines, 5)[4], None);
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
        let (f1, f2, f3) = (
            Ipv4Addr::new(198, 18, 16, 1),
            Ipv4Addr::new(198, 18, 16, 2),
            Ipv4Addr::new(198, 18, 16, 3),
        );
        let snap = CnSnapshot {
            flows: vec![
                CnFlow {
                    source: f1,
                    received: 10,
                    last: at(3000),
                },
                CnFlow {
                    source: f2,
                    received: 10,
                    last: at(3000),
                },
                // Stopped long before the fault: not watched.
                CnFlow {
                    source: f3,
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
