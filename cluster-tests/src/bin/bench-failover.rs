//! `bench-failover`: the mobile nodes' registration gap and data-plane gap
//! when a Raft follower or the Raft leader is SIGKILLed under load, and the
//! acknowledged registrations lost (DESIGN.md § 9: < 300 ms after a
//! non-leader dies, < 1 s after the leader dies, 0 lost; issue
//! "Benchmarks", item 2). Needs root (network namespaces).
//!
//! ```text
//! cargo run --release -p haven-cluster-tests --bin bench-failover -- [--kills N] [--mobile-nodes M] [--lifetime S]
//! ```
//!
//! The lab (addresses from the test ranges, namespaces `hv-…`):
//!
//! ```text
//!  mn 203.0.113.2 ── rtr ──rack 198.18.0.0/24── disp 198.18.0.2 (l2 DSR, VIP 192.0.2.1)
//!              cn ──┘                        └─ node-1..3 198.18.0.11-13 (VIP on lo, raft, [dataplane])
//! ```
//!
//! Three release `ha-node`s in raft mode (durable raft-engine logs) behind
//! one release dispatcher, which steers by Maglev on the source address and
//! port and by the nodes' health advertisements (every 100 ms). Two mnsim
//! fleets run in `mn` for the whole benchmark:
//!
//! * the registration fleet: M mobile nodes (one socket, one source port
//!   each) with a short lifetime, so they re-register continuously (at 80 %
//!   of it, RFC 5944 § 3.6.1.1 leaves the moment to the mobile node), with
//!   a JSON-lines timeline;
//! * the data fleet: D mobile nodes with RFC 3519 UDP tunnelling (F bit, no
//!   NAT here), each streaming R packets/s of tunnel data to a sink in
//!   `cn`, which records every arrival.
//!
//! Then `--kills` SIGKILLs of a follower (rotating over the followers) and
//! as many of the leader. After each kill: wait (conditions, bounded) until
//! the survivors agree on a leader and accept registrations, restart the
//! node, wait until it is caught up (its applied index reaches the
//! leader's commit index of that moment) and the dispatcher reports it up
//! again; then the next kill.
//!
//! Figures, per kind of kill:
//! * registration gap: for every mobile node, the longest period in the
//!   kill's window (kill to next kill) during which a registration of it was
//!   outstanding (from the kill or its first transmission, whichever is
//!   later, to the accepted reply). A mobile node is *affected* when that
//!   exceeds max(20 ms, 4 × the p99 latency before the first kill);
//!   p50/p99/max over affected mobile nodes, and the distribution of the
//!   per-kill maximum;
//! * data-plane gap: per flow, the longest time between two arrivals at
//!   `cn` in the kill's window; a flow is affected when that exceeds 5 ×
//!   its packet interval; same statistics;
//! * acknowledged registrations lost: after the fleets stop (without
//!   deregistering), every mobile node's last acknowledged (home address,
//!   care-of address) is looked up in every node's binding table
//!   (`havenctl bindings list`), as `ha-node/tests/raft_cluster.rs` does.
//!
//! The mobile nodes' first retransmission timeout (`--retransmit-ms`) is
//! part of the gap: a request lost with the killed node is only repeated
//! when it fires.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::bench::lab::{CN, DispatchedLab, LabOptions, MN, NODE_METRICS, VIP};
use haven_cluster_tests::bench::{Recorder, quantile};
use haven_cluster_tests::datapath::udp_in;
use haven_cluster_tests::mnsim::{
    self, DataConfig, HomeMode, Report, SimConfig, parse_data_payload, unix_now,
};
use haven_cluster_tests::supervisor::{await_metric, wait_for};
use haven_cluster_tests::topo::{self, in_netns};

const HA: SocketAddrV4 = SocketAddrV4::new(VIP, 434);
const SINK_PORT: u16 = 9000;
const KEY: &[u8] = b"bench-failover-key";
const SPI: u32 = 4200;
/// The home prefix: clear of the lab's own 198.18.0.0/24 and 198.18.1.0/24.
const HOME_PREFIX: &str = "198.18.128.0/17";
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 1);
const MAX_HOMES: usize = (1 << 15) - 2;
const BOUND: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "bench-failover",
    about = "Registration and data-plane gap when raft followers and leaders are SIGKILLed under load"
)]
struct Args {
    /// SIGKILLs of a follower, and as many of the leader.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Mobile nodes of the registration fleet.
    #[arg(long, default_value_t = 3000)]
    mobile_nodes: usize,
    /// Requested lifetime (s); they re-register at 80 % of it.
    #[arg(long, default_value_t = 10)]
    lifetime: u16,
    /// Mobile nodes of the data fleet (UDP tunnel streams to cn).
    #[arg(long, default_value_t = 24)]
    data_flows: usize,
    /// Packets per second per data flow.
    #[arg(long, default_value_t = 100.0)]
    data_rate: f64,
    /// The mobile nodes' first retransmission timeout (ms), doubling.
    #[arg(long, default_value_t = 250)]
    retransmit_ms: u64,
    /// Keep the registration fleet's timeline here, with the kills (their
    /// times on the timeline's clock) in `PATH.kills.json`.
    #[arg(long)]
    keep_timeline: Option<PathBuf>,
}

/// A kill: which node, whether it was the leader, when (Unix time).
#[derive(Debug, Clone, Copy)]
struct Kill {
    node: u8,
    leader: bool,
    at: Duration,
    /// The dispatcher took the node out and the survivors accepted
    /// registrations again (from the kill).
    serving_after: Duration,
    /// When the node was restarted (Unix time).
    restarted: Duration,
    /// Restarted node caught up and up on the dispatcher (from the kill).
    healed_after: Duration,
}

/// SIGKILLs node `i`, waits for the survivors to serve and the dispatcher
/// to steer around it, restarts it and waits until it is caught up and up
/// on the dispatcher.
fn kill(lab: &mut DispatchedLab, i: u8, was_leader: bool) -> anyhow::Result<Kill> {
    let idx = usize::from(i) - 1;
    let survivors: Vec<u8> = (1..=3u8).filter(|n| *n != i).collect();
    let before: Vec<f64> = survivors.iter().map(|n| lab.accepted(*n)).collect();
    let at = unix_now();
    let t = Instant::now();
    let p = lab.nodes.get_mut(idx).context("node index")?;
    p.sigkill()?;
    p.wait_exit(Duration::from_secs(5))?;
    let leader = lab.await_leader(&survivors)?;
    wait_for("the survivors to accept registrations", BOUND, || {
        survivors
            .iter()
            .zip(&before)
            .any(|(n, b)| lab.accepted(*n) > *b + 10.0)
    })?;
    // The failover proper ends when the dispatcher has steered around
    // the dead node too; only then restart it (a supervisor restarting
    // it sooner would hide the failover behind the restart).
    lab.await_on_dispatcher(i, false)?;
    let serving_after = t.elapsed();
    let restarted = unix_now();
    lab.nodes.get_mut(idx).context("node index")?.restart()?;
    let ns = lab.node_ns.get(idx).context("ns")?.clone();
    await_metric(
        NODE_METRICS,
        Some(&ns),
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .with_context(|| format!("node {i} did not restart"))?;
    let commit = lab
        .node_metric(leader, "haven_raft_commit_index")
        .unwrap_or(0.0);
    await_metric(
        NODE_METRICS,
        Some(&ns),
        "haven_raft_applied_index",
        &[],
        |v| v >= commit,
        BOUND,
    )
    .with_context(|| format!("node {i} did not catch up to {commit}"))?;
    lab.await_up_on_dispatcher(i)?;
    lab.await_leader(&[1, 2, 3])?;
    // Healed: the restarted node answers registrations again.
    let mine = lab.accepted(i);
    wait_for("the restarted node to accept registrations", BOUND, || {
        lab.accepted(i) > mine + 10.0
    })?;
    Ok(Kill {
        node: i,
        leader: was_leader,
        at,
        serving_after,
        restarted,
        healed_after: t.elapsed(),
    })
}

/// Every arrival at `cn`: (flow, Unix time).
type Arrivals = Arc<Mutex<Vec<(u32, Duration)>>>;

fn sink(ns: &str, stop: Arc<AtomicBool>) -> (Arrivals, JoinHandle<()>) {
    let sock = udp_in(ns, SocketAddrV4::new(CN, SINK_PORT));
    let arrivals: Arrivals = Arc::default();
    let out = arrivals.clone();
    let h = std::thread::spawn(move || {
        let mut buf = vec![0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let now = unix_now();
                if let Some((flow, _, _)) = buf.get(..n).and_then(parse_data_payload) {
                    out.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((flow, now));
                }
            }
        }
    });
    (arrivals, h)
}

/// When a fleet's clock started (Unix time), once it has.
type FleetClock = Arc<Mutex<Option<Duration>>>;

/// Starts an mnsim fleet in `ns`; returns the Unix time just before its
/// clock started (its timeline's `t` is relative to a moment a few
/// milliseconds later, spent building the cores) and the handle.
fn fleet(
    ns: String,
    cfg: SimConfig,
    stop: Arc<AtomicBool>,
) -> (FleetClock, JoinHandle<Result<Report, String>>) {
    let started: FleetClock = Arc::default();
    let s = started.clone();
    let h = std::thread::spawn(move || {
        in_netns(&ns, || {
            *s.lock().unwrap_or_else(PoisonError::into_inner) = Some(unix_now());
            mnsim::run_with_stop(&cfg, &stop)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    });
    (started, h)
}

/// One registration of one mobile node from its timeline: first
/// transmission and accepted reply (relative seconds).
#[derive(Debug, Clone, Copy)]
struct Reg {
    mn: usize,
    start: f64,
    end: Option<f64>,
}

/// What a timeline says: registrations, every transmission that went
/// unanswered (a retransmission followed it, or nothing answered the
/// registration), and each mobile node's last acceptance.
struct Timeline {
    regs: Vec<Reg>,
    failed: Vec<f64>,
    last_accept: HashMap<usize, f64>,
}

fn registrations(timeline: &Path) -> anyhow::Result<Timeline> {
    let text = std::fs::read_to_string(timeline)?;
    let mut open: HashMap<usize, f64> = HashMap::new();
    let mut attempts: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut failed = Vec::new();
    let mut regs = Vec::new();
    let mut last_accept = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(t), Some(mn), Some(ev)) = (
            v["t"].as_f64(),
            v["mn"].as_u64().map(|m| m as usize),
            v["event"].as_str(),
        ) else {
            continue;
        };
        if ev == "sent" {
            let a = attempts.entry(mn).or_default();
            if v["attempt"].as_u64() == Some(1) {
                failed.append(a);
            }
            a.push(t);
        }
        match ev {
            "sent" if v["attempt"].as_u64() == Some(1) => {
                if let Some(s) = open.insert(mn, t) {
                    // Superseded without an answer (a new registration).
                    regs.push(Reg {
                        mn,
                        start: s,
                        end: None,
                    });
                }
            }
            "accepted" => {
                // The last transmission is the one answered (near enough:
                // a late reply to an earlier one counts it as failed).
                if let Some(a) = attempts.get_mut(&mn) {
                    a.pop();
                    failed.append(a);
                }
                if let Some(s) = open.remove(&mn) {
                    regs.push(Reg {
                        mn,
                        start: s,
                        end: Some(t),
                    });
                }
                last_accept.insert(mn, t);
            }
            "denied" | "gave_up" => {
                if let Some(a) = attempts.get_mut(&mn) {
                    failed.append(a);
                }
                if let Some(s) = open.remove(&mn) {
                    regs.push(Reg {
                        mn,
                        start: s,
                        end: None,
                    });
                }
            }
            _ => {}
        }
    }
    regs.extend(open.into_iter().map(|(mn, s)| Reg {
        mn,
        start: s,
        end: None,
    }));
    // Still outstanding at the end: unanswered.
    failed.extend(attempts.into_values().flatten());
    failed.sort_unstable_by(f64::total_cmp);
    Ok(Timeline {
        regs,
        failed,
        last_accept,
    })
}

/// Per-kill and per-mobile-node gap statistics.
#[derive(Debug, Default)]
struct Gaps {
    affected: Vec<Duration>,
    per_kill_max: Vec<Duration>,
    unanswered: usize,
}

/// Per kind of kill: the registration outage the fleet sampled (the last
/// unanswered transmission of the failover phase minus the kill), and
/// unanswered transmissions in the rejoin phase.
#[derive(Debug, Default)]
struct Outage {
    failover: Vec<Duration>,
    rejoin_failed: usize,
    rejoin: Vec<Duration>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        topo::is_root(),
        "bench-failover needs root (network namespaces, the dispatcher's raw sockets)"
    );
    let homes = args.mobile_nodes + args.data_flows;
    anyhow::ensure!(
        (1..=MAX_HOMES).contains(&homes) && args.data_flows > 0,
        "--mobile-nodes + --data-flows must be 2..={MAX_HOMES} with at least one data flow"
    );
    anyhow::ensure!(args.lifetime >= 4, "--lifetime must be at least 4 s");
    let wall = Instant::now();
    let mut rec = Recorder::open("failover")?;
    let mut rig = DispatchedLab::start(&LabOptions {
        nodes: 3,
        home_prefix: HOME_PREFIX.to_owned(),
        home_base: HOME_BASE,
        homes,
        spi: SPI,
        key: KEY.to_vec(),
        dataplane: true,
        max_lifetime_secs: 1800,
        expire: Duration::from_secs(900),
    })?;
    let out = tempfile::tempdir()?;
    let timeline = out.path().join("registration-fleet.jsonl");
    let stop = Arc::new(AtomicBool::new(false));
    let (arrivals, sink_h) = sink(rig.lab.ns_name("cn").context("cn ns")?, stop.clone());
    let mn_ns = rig.lab.ns_name("mn").context("mn ns")?.to_owned();

    let base_cfg = |count: usize, first: u32| {
        let mut c = SimConfig::new(HA, KEY.to_vec());
        c.count = count;
        // Start them spread over one re-registration period (80 % of the
        // lifetime), so the load is steady rather than bursts.
        c.rate = count as f64 / (0.8 * f64::from(args.lifetime));
        c.seed = u64::from(first) + 7;
        c.home = HomeMode::Static {
            base: Ipv4Addr::from(u32::from(HOME_BASE) + first),
        };
        c.spi = SPI;
        c.lifetime = args.lifetime;
        c.bind = vec![MN];
        c.initial_timeout = Duration::from_millis(args.retransmit_ms.max(1));
        c.max_timeout = Duration::from_millis(args.retransmit_ms.max(1) * 8);
        c.max_attempts = 12;
        // A long bound; `stop` ends the run. No deregistration: the
        // bindings are checked afterwards.
        c.duration = Some(Duration::from_secs(3600));
        c.deregister = false;
        c
    };
    let mut reg_cfg = base_cfg(args.mobile_nodes, 0);
    reg_cfg.timeline = Some(timeline.clone());
    let data_timeline = out.path().join("data-fleet.jsonl");
    let mut data_cfg = base_cfg(args.data_flows, args.mobile_nodes as u32);
    data_cfg.timeline = Some(data_timeline.clone());
    data_cfg.udp_tunnel = true;
    data_cfg.force_udp_tunnel = true;
    data_cfg.reverse_tunnel = true;
    data_cfg.data = Some(DataConfig {
        correspondent: SocketAddrV4::new(CN, SINK_PORT),
        rate: args.data_rate,
        payload_len: 64,
        first_id: 0,
    });
    let (reg_t0, reg_h) = fleet(mn_ns.clone(), reg_cfg, stop.clone());
    let (data_t0, data_h) = fleet(mn_ns, data_cfg, stop.clone());

    // Warm-up: one re-registration period of load (every mobile node has
    // started and re-registers from now on at a steady rate) and every
    // data flow arrives at cn.
    let period = Duration::from_secs_f64(0.8 * f64::from(args.lifetime)) + Duration::from_secs(1);
    let warm_from = unix_now();
    wait_for(
        "the fleets to register and stream",
        period + Duration::from_secs(60),
        || {
            let flows: std::collections::HashSet<u32> = arrivals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(f, _)| *f)
                .collect();
            unix_now() >= warm_from + period && flows.len() == args.data_flows
        },
    )?;
    let warm_end = unix_now();

    let mut kills = Vec::new();
    for k in 0..args.kills * 2 {
        let leader = rig.await_leader(&[1, 2, 3])?;
        let as_leader = k >= args.kills;
        let victim = if as_leader {
            leader
        } else {
            // Rotate over the followers.
            let followers: Vec<u8> = (1..=3u8).filter(|n| *n != leader).collect();
            followers
                .get(k % followers.len().max(1))
                .copied()
                .unwrap_or(1)
        };
        let kill = kill(&mut rig, victim, as_leader)?;
        println!(
            "kill {:>2}: node {} ({}), survivors serving after {:.0} ms, healed after {:.2} s",
            k + 1,
            kill.node,
            if kill.leader { "leader" } else { "follower" },
            ms(kill.serving_after),
            kill.healed_after.as_secs_f64()
        );
        kills.push(kill);
    }
    // A last quiet window so the final kill's gaps end inside the run.
    // Long enough for the whole backoff of a registration caught by the
    // last kill (250 + 500 + 1000 + 2000 ms at the default).
    let quiet = Duration::from_millis(args.retransmit_ms * 16) + Duration::from_secs(2);
    let tail = unix_now() + quiet;
    wait_for("the last window", quiet * 2, || unix_now() >= tail)?;
    let end = unix_now();
    stop.store(true, Ordering::Relaxed);
    let reg_report = reg_h
        .join()
        .map_err(|_| anyhow::anyhow!("registration fleet panicked"))?
        .map_err(anyhow::Error::msg)?;
    let data_report = data_h
        .join()
        .map_err(|_| anyhow::anyhow!("data fleet panicked"))?
        .map_err(anyhow::Error::msg)?;
    let _ = sink_h.join();

    // Acknowledged registrations lost: every live node must hold every
    // mobile node's last acknowledged care-of address.
    let t0 = reg_t0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .context("fleet clock")?;
    let Timeline {
        regs,
        failed,
        last_accept,
    } = registrations(&timeline)?;
    if let Some(keep) = &args.keep_timeline {
        std::fs::copy(&timeline, keep)?;
        let rows: Vec<serde_json::Value> = kills
            .iter()
            .map(|k| {
                serde_json::json!({
                    "node": k.node,
                    "leader": k.leader,
                    "at": k.at.as_secs_f64() - t0.as_secs_f64(),
                    "restarted": k.restarted.as_secs_f64() - t0.as_secs_f64(),
                    "healed": k.at.as_secs_f64() - t0.as_secs_f64() + k.healed_after.as_secs_f64(),
                })
            })
            .collect();
        std::fs::write(
            keep.with_extension("kills.json"),
            serde_json::to_string_pretty(&rows)?,
        )?;
    }
    let data_t0 = data_t0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .context("data fleet clock")?;
    let data_accept = registrations(&data_timeline)?.last_accept;
    let mut acked = 0usize;
    let mut lost = 0usize;
    let mut expired = 0usize;
    let tables: Vec<HashMap<Ipv4Addr, Ipv4Addr>> = (1..=3u8)
        .map(|i| rig.bindings(i))
        .collect::<anyhow::Result<_>>()?;
    // After the tables were read: a binding that may have expired before
    // they were is not counted.
    let check_at = unix_now();
    let life = Duration::from_secs(u64::from(args.lifetime));
    let fleets = [
        (&reg_report, &last_accept, t0),
        (&data_report, &data_accept, data_t0),
    ];
    for (report, accepts, clock) in fleets {
        for (m, outcome) in report.mns.iter().enumerate() {
            let Some((hoa, coa)) = outcome.acknowledged else {
                continue;
            };
            // A binding whose lifetime ran out since its last
            // acknowledgement is rightly gone (the home agent's expiry is
            // at most the acknowledgement plus the lifetime; 1 s margin).
            let since = accepts
                .get(&m)
                .map(|t| check_at.saturating_sub(clock + secs(*t)));
            if since.is_none_or(|s| s + Duration::from_secs(1) >= life) {
                expired += 1;
                continue;
            }
            acked += 1;
            let missing: Vec<u8> = (1..=3u8)
                .zip(&tables)
                .filter(|(_, t)| t.get(&hoa) != Some(&coa))
                .map(|(i, _)| i)
                .collect();
            if !missing.is_empty() {
                lost += 1;
                println!(
                    "LOST: {hoa} -> {coa} acknowledged {:.2} s before the check, missing on nodes {missing:?}",
                    since.unwrap_or_default().as_secs_f64()
                );
            }
        }
    }

    // Baseline latency before the first kill.
    let first_kill = kills.first().map_or(end, |k| k.at);
    let rel = |abs: Duration| abs.as_secs_f64() - t0.as_secs_f64();
    let mut base: Vec<Duration> = regs
        .iter()
        .filter(|r| r.start >= rel(warm_end) - 5.0 && r.start < rel(first_kill))
        .filter_map(|r| r.end.map(|e| secs(e - r.start)))
        .collect();
    base.sort_unstable();
    let base_p99 = quantile(&base, 0.99);
    let threshold = (base_p99 * 4).max(Duration::from_millis(20));
    let data_threshold = Duration::from_secs_f64(5.0 / args.data_rate.max(1.0));

    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap_or_else(PoisonError::into_inner));
    let mut by_flow: HashMap<u32, Vec<Duration>> = HashMap::new();
    for (f, at) in arrivals {
        by_flow.entry(f).or_default().push(at);
    }
    for v in by_flow.values_mut() {
        v.sort_unstable();
    }

    let mut reg_gaps = [Gaps::default(), Gaps::default()];
    let mut data_gaps = [Gaps::default(), Gaps::default()];
    let mut rejoin_data = [Gaps::default(), Gaps::default()];
    let mut outages = [Outage::default(), Outage::default()];
    for (k, kill) in kills.iter().enumerate() {
        let from = kill.at;
        let to = kills.get(k + 1).map_or(end, |n| n.at);
        let (kf, kt) = (rel(from), rel(to));
        let mut worst: HashMap<usize, f64> = HashMap::new();
        let mut unanswered = 0;
        for r in regs.iter().filter(|r| r.start < kt) {
            match r.end {
                Some(e) if e > kf => {
                    let g = e - r.start.max(kf);
                    let w = worst.entry(r.mn).or_insert(0.0);
                    *w = w.max(g);
                }
                None if r.start >= kf => unanswered += 1,
                _ => {}
            }
        }
        let slot = usize::from(kill.leader);
        let rs = rel(kill.restarted);
        let in_range = |a: f64, b: f64| {
            let lo = failed.partition_point(|t| *t < a);
            let hi = failed.partition_point(|t| *t < b);
            failed.get(lo..hi).unwrap_or_default()
        };
        let o = &mut outages[slot];
        o.failover.push(
            in_range(kf, rs)
                .last()
                .map_or(Duration::ZERO, |t| secs(t - kf)),
        );
        let rj = in_range(rs, kt);
        o.rejoin_failed += rj.len();
        o.rejoin
            .push(rj.last().map_or(Duration::ZERO, |t| secs(t - rs)));
        let g = &mut reg_gaps[slot];
        let aff: Vec<Duration> = worst
            .values()
            .map(|s| secs(*s))
            .filter(|d| *d > threshold)
            .collect();
        g.per_kill_max
            .push(aff.iter().copied().max().unwrap_or_default());
        g.affected.extend(aff);
        g.unanswered += unanswered;
        // Data: the longest silence per flow in the failover phase (the
        // silence across the kill included: from the last arrival before
        // it) and in the rejoin phase.
        for (d, a, b) in [
            (&mut data_gaps[slot], from, kill.restarted),
            (&mut rejoin_data[slot], kill.restarted, to),
        ] {
            let mut kill_max = Duration::ZERO;
            for times in by_flow.values() {
                let lo = times.partition_point(|t| *t < a).saturating_sub(1);
                let hi = times.partition_point(|t| *t < b);
                let window = times.get(lo..hi).unwrap_or_default();
                let gap = window
                    .windows(2)
                    .map(|w| w[1].saturating_sub(w[0]))
                    .max()
                    .unwrap_or_default();
                if gap > data_threshold {
                    d.affected.push(gap);
                    kill_max = kill_max.max(gap);
                }
            }
            d.per_kill_max.push(kill_max);
        }
    }

    println!();
    println!(
        "failover benchmark: 3 raft nodes behind a dispatcher, {} registering MNs (lifetime {} s), \
         {} data flows at {} pps, {} + {} kills, retransmit {} ms, {} cores, {:.0} s",
        args.mobile_nodes,
        args.lifetime,
        args.data_flows,
        args.data_rate,
        args.kills,
        args.kills,
        args.retransmit_ms,
        rec.cores(),
        wall.elapsed().as_secs_f64()
    );
    println!(
        "baseline registration latency p99 {:.2} ms ({} samples); affected: gap > {:.0} ms (registration), > {:.0} ms (data)",
        ms(base_p99),
        base.len(),
        ms(threshold),
        ms(data_threshold)
    );
    println!(
        "{:>8} {:>5} {:>9} {:>8} {:>8} {:>8} {:>10} {:>10} {:>8}",
        "kill",
        "plane",
        "affected",
        "p50 ms",
        "p99 ms",
        "max ms",
        "kill p50",
        "kill max",
        "unansw."
    );
    for (slot, kind) in ["follower", "leader"].iter().enumerate() {
        for (plane, g) in [
            ("reg", &mut reg_gaps[slot]),
            ("data", &mut data_gaps[slot]),
            ("rejoin_data", &mut rejoin_data[slot]),
        ] {
            g.affected.sort_unstable();
            g.per_kill_max.sort_unstable();
            let (p50, p99, max) = (
                quantile(&g.affected, 0.5),
                quantile(&g.affected, 0.99),
                quantile(&g.affected, 1.0),
            );
            let (k50, kmax) = (
                quantile(&g.per_kill_max, 0.5),
                quantile(&g.per_kill_max, 1.0),
            );
            println!(
                "{kind:>8} {plane:>5} {:>9} {:>8.0} {:>8.0} {:>8.0} {:>10.0} {:>10.0} {:>8}",
                g.affected.len(),
                ms(p50),
                ms(p99),
                ms(max),
                ms(k50),
                ms(kmax),
                g.unanswered
            );
            let extra = serde_json::json!({
                "kill": kind,
                "plane": plane,
                "kills": g.per_kill_max.len(),
                "affected": g.affected.len(),
                "mobile_nodes": args.mobile_nodes,
                "data_flows": args.data_flows,
                "data_rate": args.data_rate,
                "lifetime": args.lifetime,
                "retransmit_ms": args.retransmit_ms,
            });
            for (q, v) in [("p50", p50), ("p99", p99), ("max", max)] {
                rec.figure(
                    &format!("{plane}_gap_{q}_{kind}_kill"),
                    ms(v),
                    "ms",
                    extra.clone(),
                )?;
            }
            rec.figure(
                &format!("{plane}_gap_per_kill_max_p50_{kind}_kill"),
                ms(k50),
                "ms",
                extra.clone(),
            )?;
        }
    }
    println!();
    println!(
        "{:>8} {:>22} {:>8} {:>8} {:>8} {:>22} {:>12}",
        "kill",
        "outage (fleet) p50 ms",
        "p99 ms",
        "max ms",
        "",
        "rejoin outage max ms",
        "rejoin lost tx"
    );
    for (slot, kind) in ["follower", "leader"].iter().enumerate() {
        let o = &mut outages[slot];
        o.failover.sort_unstable();
        o.rejoin.sort_unstable();
        let (p50, p99, max) = (
            quantile(&o.failover, 0.5),
            quantile(&o.failover, 0.99),
            quantile(&o.failover, 1.0),
        );
        let rmax = quantile(&o.rejoin, 1.0);
        println!(
            "{kind:>8} {:>22.0} {:>8.0} {:>8.0} {:>8} {:>22.0} {:>12}",
            ms(p50),
            ms(p99),
            ms(max),
            "",
            ms(rmax),
            o.rejoin_failed
        );
        let extra = serde_json::json!({
            "kill": kind,
            "kills": o.failover.len(),
            "mobile_nodes": args.mobile_nodes,
            "retransmit_ms": args.retransmit_ms,
        });
        for (q, v) in [("p50", p50), ("p99", p99), ("max", max)] {
            rec.figure(
                &format!("registration_outage_{q}_{kind}_kill"),
                ms(v),
                "ms",
                extra.clone(),
            )?;
        }
        rec.figure(
            &format!("rejoin_outage_max_{kind}_kill"),
            ms(rmax),
            "ms",
            extra.clone(),
        )?;
        rec.figure(
            &format!("rejoin_unanswered_transmissions_{kind}_kill"),
            o.rejoin_failed as f64,
            "count",
            extra,
        )?;
    }
    let serving: Vec<Duration> = kills.iter().map(|k| k.serving_after).collect();
    let healed: Vec<Duration> = kills.iter().map(|k| k.healed_after).collect();
    println!(
        "survivors serving again after a kill: max {:.0} ms; restarted node healed: max {:.2} s",
        serving.iter().max().map_or(0.0, |d| ms(*d)),
        healed.iter().max().map_or(0.0, |d| d.as_secs_f64())
    );
    println!(
        "acknowledged registrations lost: {lost} of {acked} checked on 3 nodes ({expired} expired since, not counted); \
         registration fleet: {} accepted, {} denied, {} gave up, {} retransmissions; data fleet: {} sent",
        reg_report.summary.accepted,
        reg_report.summary.denied_total,
        reg_report.summary.gave_up,
        reg_report.summary.retransmissions,
        data_report.summary.data_sent
    );
    let extra = serde_json::json!({
        "checked": acked,
        "expired": expired,
        "kills": kills.len(),
        "mobile_nodes": args.mobile_nodes,
    });
    rec.figure(
        "acknowledged_registrations_lost",
        lost as f64,
        "count",
        extra,
    )?;
    println!("results appended to {}", rec.path().display());
    // SIGKILL every process before the namespaces go (Drop order).
    drop(rig.disp);
    rig.nodes.clear();
    drop(rig.lab);
    anyhow::ensure!(lost == 0, "{lost} acknowledged registrations lost");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_yields_registrations_and_unanswered_transmissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.jsonl");
        let lines = [
            // mn 0: answered at the first try.
            r#"{"t":1.0,"mn":0,"event":"sent","code":null,"latency_ms":null,"attempt":1}"#,
            r#"{"t":1.01,"mn":0,"event":"accepted","code":0,"latency_ms":10.0,"attempt":null}"#,
            // mn 1: two lost transmissions, the third answered.
            r#"{"t":2.0,"mn":1,"event":"sent","code":null,"latency_ms":null,"attempt":1}"#,
            r#"{"t":2.25,"mn":1,"event":"sent","code":null,"latency_ms":null,"attempt":2}"#,
            r#"{"t":2.75,"mn":1,"event":"sent","code":null,"latency_ms":null,"attempt":3}"#,
            r#"{"t":2.76,"mn":1,"event":"accepted","code":0,"latency_ms":760.0,"attempt":null}"#,
            // mn 2: never answered.
            r#"{"t":3.0,"mn":2,"event":"sent","code":null,"latency_ms":null,"attempt":1}"#,
            "not json",
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let tl = registrations(&p).unwrap();
        assert_eq!(tl.failed, vec![2.0, 2.25, 3.0]);
        assert_eq!(tl.regs.len(), 3);
        let r1 = tl.regs.iter().find(|r| r.mn == 1).unwrap();
        assert_eq!((r1.start, r1.end), (2.0, Some(2.76)));
        assert!(tl.regs.iter().any(|r| r.mn == 2 && r.end.is_none()));
        assert_eq!(tl.last_accept.get(&0), Some(&1.01));
        assert!(!tl.last_accept.contains_key(&2));
    }
}
