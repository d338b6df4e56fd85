//! `bench-registration`: registration throughput and latency, one node
//! without replication against three Raft nodes with the durable log, in
//! one run (DESIGN.md § 9; issue "Benchmarks", item 1).
//!
//! ```text
//! cargo run --release -p haven-cluster-tests --bin bench-registration -- [--mobile-nodes N] [--window W] [--sockets S] [--nodes 1,3] [--hop off|on|both]
//! ```
//!
//! For each cluster size the real release `ha-node`s start on loopback
//! (1: local mode; 3: raft, raft-engine log in a temporary directory), with
//! one realm whose home prefix is 198.18.0.0/15 and one security
//! association per mobile node. Then N mobile-node cores (the sans-IO
//! [`MobileNode`] of `cluster-tests`, HMAC-MD5, timestamps) register in two
//! phases, each closed-loop with W requests in flight, spread evenly over
//! the nodes (as the dispatcher spreads them; its own cost is measured by
//! `bench-dispatcher`):
//!
//! * `register`: every mobile node's first registration (a new binding,
//!   a replicated insert);
//! * `refresh`: every mobile node re-registers (an update of an existing
//!   binding, the steady state of a home agent).
//!
//! `--hop on` measures the same behind the dispatcher (issue "Benchmarks",
//! item 1): the nodes in network namespaces behind one l2 (DSR)
//! dispatcher ([`lab::DispatchedLab`]), the load in the `mn` namespace
//! sending to the VIP from `--sockets` source ports, which the dispatcher
//! spreads by Maglev (unevenly for a few ports). Needs root. `--hop both`
//! runs both paths for every cluster size and prints the ratio; the default
//! (`off`) is the loopback run alone.
//!
//! A reply counts when its authenticator verifies. Printed and appended to
//! `target/bench-results/registration.jsonl`: registrations per second,
//! p50/p99/p99.9 latency, denials, retransmissions, and every node's
//! binding count afterwards (replication complete) and resident memory
//! growth per binding.
//!
//! Home addresses come from 198.18.0.0/15, the largest range test hosts may
//! use here, so N is at most 131 070; DESIGN.md's 1 000 000 is measured
//! in-process by `ha-node/tests/binding_memory.rs` (memory) and left for a
//! run with a subscriber backend that does not need one SA per line.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::bench::lab::{self, DispatchedLab, LabOptions};
use haven_cluster_tests::bench::{
    ClosedLoop, LoopPhase, Recorder, node_log_level, quantile, release_binary, rss_anon_bytes,
    rss_bytes,
};
use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for,
};
use haven_cluster_tests::topo::{self, in_netns};

const KEY: &[u8] = b"bench-registration-key";
const SPI: u32 = 4000;
/// First home address: 198.18.0.1 (…/15 network address skipped).
const HOME_BASE: u32 = u32::from_be_bytes([198, 18, 0, 1]);
/// Addresses in 198.18.0.0/15 minus network and broadcast.
const MAX_MNS: usize = (1 << 17) - 2;
/// The care-of address every mobile node reports (co-located, on loopback).
const CARE_OF: Ipv4Addr = Ipv4Addr::LOCALHOST;

#[derive(Debug, Parser)]
#[command(
    name = "bench-registration",
    about = "Registration throughput and latency: 1 node vs 3 raft nodes"
)]
struct Args {
    /// Mobile nodes (at most 131070).
    #[arg(long, default_value_t = 100_000)]
    mobile_nodes: usize,
    /// Requests in flight (closed loop).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Client sockets (source ports) the mobile nodes share.
    #[arg(long, default_value_t = 64)]
    sockets: usize,
    /// Cluster sizes to measure, in order (1 = local mode, else raft).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    nodes: Vec<usize>,
    /// The dispatcher hop: off (loopback, straight to the nodes), on
    /// (through one dispatcher in namespaces; root), or both in one run.
    #[arg(long, value_enum, default_value_t = Hop::Off)]
    hop: Hop,
}

struct Node {
    spec: NodeSpec,
    target: SocketAddrV4,
    proc: Process,
}

/// Starts `count` release nodes on loopback (VIP 127.0.0.(40+id)).
fn start_cluster(bin: &Path, count: usize, mns: usize, dir: &Path) -> anyhow::Result<Vec<Node>> {
    let listen: Vec<SocketAddr> = (0..count)
        .map(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, free_port())))
        .collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=count as u64).zip(listen.iter().copied()).collect();
    let mut nodes = Vec::new();
    for id in 1..=count as u64 {
        let vip = Ipv4Addr::new(127, 0, 0, 40 + id as u8);
        let port = free_port();
        let lo = |p| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let mut spec = NodeSpec::new(id, lo(free_port()), lo(free_port())).realm(
            RealmSpec {
                port,
                max_lifetime_secs: 1800,
                ..RealmSpec::new("bench", vip, "198.18.0.0/15")
            }
            .with_home_address_sas(Ipv4Addr::from(HOME_BASE), mns, SPI, KEY),
        );
        if count > 1 {
            let me = listen[(id - 1) as usize];
            spec = spec.cluster(ClusterSpec::raft(
                "bench",
                me,
                &dir.join(format!("raft-{count}-{id}")),
                peers.clone(),
            ));
        }
        let config = dir.join(format!("node-{count}-{id}.toml"));
        std::fs::write(&config, spec.toml())?;
        let proc = Process::spawn(
            &format!("ha-node-{count}-{id}"),
            Spec::new(bin)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", node_log_level()),
            None,
        )?;
        nodes.push(Node {
            spec,
            target: SocketAddrV4::new(vip, port),
            proc,
        });
    }
    for n in &nodes {
        await_metric(
            &n.spec.metrics_url(),
            None,
            "haven_build_info",
            &[],
            |v| v == 1.0,
            Duration::from_secs(60),
        )
        .with_context(|| format!("node {} did not start", n.spec.id))?;
    }
    if count > 1 {
        // Until every node knows the leader its proposals are refused and
        // the first window only comes back after a 1 s retransmission: the
        // election, not replication, would dominate the register phase.
        for n in &nodes {
            await_metric(
                &n.spec.metrics_url(),
                None,
                "haven_raft_leader_id",
                &[],
                |v| v > 0.0,
                Duration::from_secs(30),
            )
            .with_context(|| format!("node {} knows no raft leader", n.spec.id))?;
        }
    }
    Ok(nodes)
}

/// Where the load enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Hop {
    /// Loopback, straight to each node's socket (the default).
    Off,
    /// Through one dispatcher in network namespaces (root).
    On,
    /// Both, in this run, with the ratio.
    Both,
}

/// One measured cluster: its processes (pids for RSS) and how to read its
/// binding counts and leader.
struct Measured {
    pids: Vec<Option<u32>>,
    bindings: Box<dyn Fn(usize) -> f64>,
    leader: Option<f64>,
}

/// What one (path, cluster size) run measured.
struct Run {
    path: &'static str,
    count: usize,
    phases: Vec<(&'static str, LoopPhase)>,
}

fn measure(
    load: &mut ClosedLoop,
    m: &Measured,
    args: &Args,
    path: &'static str,
    count: usize,
    rec: &mut Recorder,
) -> anyhow::Result<Run> {
    let rss0: Vec<u64> = m
        .pids
        .iter()
        .map(|p| p.and_then(rss_bytes).unwrap_or(0))
        .collect();
    let anon0: Vec<u64> = m
        .pids
        .iter()
        .map(|p| p.and_then(rss_anon_bytes).unwrap_or(0))
        .collect();
    let mut phases = Vec::new();
    for phase in ["register", "refresh"] {
        let mut ph = load.phase();
        ph.latencies.sort_unstable();
        phases.push((phase, ph));
    }
    for (phase, ph) in &phases {
        println!(
            "{count} node(s), {path}, {phase}: {} accepted in {:.1} s, {} denied, {} gave up, {} retransmissions",
            ph.latencies.len(),
            ph.wall.as_secs_f64(),
            ph.denied,
            ph.gave_up,
            ph.retransmits
        );
    }
    // Every mobile node the register phase saw accepted has a binding.
    let want = phases.first().map_or(0, |(_, ph)| ph.latencies.len());
    let t = Instant::now();
    for i in 0..m.pids.len() {
        wait_for(
            &format!("node {} to hold every binding", i + 1),
            Duration::from_secs(120),
            || (m.bindings)(i) as usize >= want,
        )
        .with_context(|| {
            format!(
                "node {} never reached {want} bindings (has {})",
                i + 1,
                (m.bindings)(i)
            )
        })?;
    }
    let sync = t.elapsed();
    let rss1: Vec<u64> = m
        .pids
        .iter()
        .map(|p| p.and_then(rss_bytes).unwrap_or(0))
        .collect();
    let anon1: Vec<u64> = m
        .pids
        .iter()
        .map(|p| p.and_then(rss_anon_bytes).unwrap_or(0))
        .collect();
    let growth = |after: &[u64], before: &[u64]| -> Vec<f64> {
        after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / args.mobile_nodes as f64)
            .collect()
    };
    let (rss_growth, anon_growth) = (growth(&rss1, &rss0), growth(&anon1, &anon0));
    for (i, (r, a)) in rss_growth.iter().zip(&anon_growth).enumerate() {
        println!(
            "{count} node(s), {path}, node {}: RSS growth {r:.0} B/binding (anonymous {a:.0}), RSS {:.1} MB",
            i + 1,
            rss1.get(i).copied().unwrap_or(0) as f64 / 1e6
        );
    }
    let per_binding = rss_growth.iter().copied().fold(0.0f64, f64::max);
    let anon_per_binding = anon_growth.iter().copied().fold(0.0f64, f64::max);
    println!(
        "{count} node(s), {path}: all {want} acknowledged bindings on every node {:.2} s after the last reply; \
         max RSS growth {per_binding:.0} B/binding{}",
        sync.as_secs_f64(),
        m.leader
            .map_or(String::new(), |l| format!("; raft leader {l}"))
    );
    let suffix = if path == "direct" { "" } else { "_dispatcher" };
    rec.figure(
        &format!("rss_growth_per_binding_{count}_nodes{suffix}"),
        per_binding,
        "bytes",
        serde_json::json!({ "mobile_nodes": args.mobile_nodes, "nodes": count, "path": path }),
    )?;
    rec.figure(
        &format!("rss_anon_growth_per_binding_{count}_nodes{suffix}"),
        anon_per_binding,
        "bytes",
        serde_json::json!({ "mobile_nodes": args.mobile_nodes, "nodes": count, "path": path }),
    )?;
    Ok(Run {
        path,
        count,
        phases,
    })
}

fn run_direct(
    bin: &Path,
    count: usize,
    args: &Args,
    dir: &Path,
    rec: &mut Recorder,
) -> anyhow::Result<Run> {
    let nodes = start_cluster(bin, count, args.mobile_nodes, dir)?;
    let targets: Vec<SocketAddrV4> = nodes.iter().map(|n| n.target).collect();
    let mut load = ClosedLoop::new(
        &targets,
        Ipv4Addr::from(HOME_BASE),
        args.mobile_nodes,
        args.sockets,
        (SPI, KEY),
        1800,
        CARE_OF,
    )?;
    load.window = args.window.max(1);
    let urls: Vec<String> = nodes.iter().map(|n| n.spec.metrics_url()).collect();
    let leader = urls
        .iter()
        .filter_map(|u| scrape(u, None).ok())
        .filter_map(|t| metric(&t, "haven_raft_leader_id", &[]))
        .next();
    let m = Measured {
        pids: nodes.iter().map(|n| n.proc.pid()).collect(),
        bindings: Box::new(move |i| {
            urls.get(i)
                .and_then(|u| scrape(u, None).ok())
                .and_then(|t| metric(&t, "haven_bindings", &[("realm", "bench")]))
                .unwrap_or(-1.0)
        }),
        leader,
    };
    let run = measure(&mut load, &m, args, "direct", count, rec)?;
    for mut n in nodes {
        let _ = n.proc.sigkill();
    }
    Ok(run)
}

/// The same load through one dispatcher hop: the nodes behind an l2
/// (DSR) dispatcher in namespaces, the load generator in `mn` sending to
/// the VIP from `--sockets` source ports, which the dispatcher spreads
/// over the nodes by Maglev (unevenly for few ports).
fn run_hop(count: usize, args: &Args, rec: &mut Recorder) -> anyhow::Result<Run> {
    let lab = DispatchedLab::start(&LabOptions {
        nodes: u8::try_from(count).context("at most 255 nodes")?,
        home_prefix: "198.18.0.0/15".to_owned(),
        home_base: Ipv4Addr::from(HOME_BASE),
        homes: args.mobile_nodes,
        spi: SPI,
        key: KEY.to_vec(),
        dataplane: false,
        max_lifetime_secs: 1800,
        expire: Duration::from_secs(900),
    })?;
    let (mobile_nodes, sockets, window) = (args.mobile_nodes, args.sockets, args.window.max(1));
    let mut load = in_netns(&lab.ns("mn")?, move || {
        ClosedLoop::new(
            &[SocketAddrV4::new(lab::VIP, 434)],
            Ipv4Addr::from(HOME_BASE),
            mobile_nodes,
            sockets,
            (SPI, KEY),
            1800,
            lab::MN,
        )
    })??;
    load.window = window;
    let leader = if count > 1 {
        lab.node_metric(1, "haven_raft_leader_id")
    } else {
        None
    };
    let ns = lab.node_ns.clone();
    let m = Measured {
        pids: lab.nodes.iter().map(Process::pid).collect(),
        bindings: Box::new(move |i| {
            ns.get(i)
                .and_then(|ns| scrape(lab::NODE_METRICS, Some(ns)).ok())
                .and_then(|t| metric(&t, "haven_bindings", &[("realm", "bench")]))
                .unwrap_or(-1.0)
        }),
        leader,
    };
    let run = measure(&mut load, &m, args, "dispatcher", count, rec)?;
    drop(lab);
    Ok(run)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=MAX_MNS).contains(&args.mobile_nodes),
        "--mobile-nodes must be 1..={MAX_MNS} (home addresses come from 198.18.0.0/15)"
    );
    anyhow::ensure!(
        args.hop == Hop::Off || topo::is_root(),
        "--hop on/both needs root (network namespaces)"
    );
    let bin = release_binary("haven-ha-node", "ha-node")?;
    let mut rec = Recorder::open("registration")?;
    let dir = tempfile::tempdir()?;
    let mut runs = Vec::new();
    for &count in &args.nodes {
        if args.hop != Hop::On {
            runs.push(run_direct(&bin, count, &args, dir.path(), &mut rec)?);
        }
        if args.hop != Hop::Off {
            runs.push(run_hop(count, &args, &mut rec)?);
        }
    }
    println!();
    println!(
        "registration benchmark: {} mobile nodes, {} in flight, {} sockets, {} cores",
        args.mobile_nodes,
        args.window,
        args.sockets,
        rec.cores()
    );
    println!(
        "{:>5} {:>10} {:>8} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8}",
        "nodes",
        "path",
        "phase",
        "reg/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "denied",
        "gaveup",
        "retrans"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for run in &runs {
        let count = run.count;
        let suffix = if run.path == "direct" {
            ""
        } else {
            "_dispatcher"
        };
        for (phase, ph) in &run.phases {
            let (p50, p99, p999) = (
                quantile(&ph.latencies, 0.5),
                quantile(&ph.latencies, 0.99),
                quantile(&ph.latencies, 0.999),
            );
            println!(
                "{count:>5} {:>10} {phase:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>7} {:>8}",
                run.path,
                ph.rate(),
                ms(p50),
                ms(p99),
                ms(p999),
                ph.denied,
                ph.gave_up,
                ph.retransmits
            );
            let extra = serde_json::json!({
                "nodes": count,
                "phase": phase,
                "path": run.path,
                "mobile_nodes": args.mobile_nodes,
                "window": args.window,
                "sockets": args.sockets,
                "denied": ph.denied,
                "gave_up": ph.gave_up,
                "retransmits": ph.retransmits,
            });
            rec.figure(
                &format!("registrations_per_second_{count}_nodes_{phase}{suffix}"),
                ph.rate(),
                "registrations/s",
                extra.clone(),
            )?;
            for (q, v) in [("p50", p50), ("p99", p99), ("p999", p999)] {
                rec.figure(
                    &format!("registration_latency_{q}_{count}_nodes_{phase}{suffix}"),
                    ms(v),
                    "ms",
                    extra.clone(),
                )?;
            }
        }
    }
    let rate = |path: &str, count: Option<usize>| {
        runs.iter()
            .filter(|r| r.path == path && count.is_none_or(|c| r.count == c))
            .filter(|r| count.is_some() || r.count > 1)
            .find_map(|r| {
                r.phases
                    .iter()
                    .find(|(p, _)| *p == "register")
                    .map(|(_, ph)| (r.count, ph.rate()))
            })
    };
    for path in ["direct", "dispatcher"] {
        if let (Some((_, one)), Some((n, many))) = (rate(path, Some(1)), rate(path, None)) {
            let ratio = many / one.max(1e-9);
            println!("{path}: replicated ({n} nodes) / single node throughput: {ratio:.3}");
            let name = if path == "direct" {
                "replicated_to_single_throughput_ratio".to_owned()
            } else {
                "replicated_to_single_throughput_ratio_dispatcher".to_owned()
            };
            rec.figure(
                &name,
                ratio,
                "ratio",
                serde_json::json!({ "nodes": n, "path": path }),
            )?;
        }
    }
    for &count in &args.nodes {
        if let (Some((_, d)), Some((_, h))) =
            (rate("direct", Some(count)), rate("dispatcher", Some(count)))
        {
            let ratio = h / d.max(1e-9);
            println!("{count} node(s): through the dispatcher / direct throughput: {ratio:.3}");
            rec.figure(
                &format!("dispatcher_to_direct_throughput_ratio_{count}_nodes"),
                ratio,
                "ratio",
                serde_json::json!({ "nodes": count }),
            )?;
        }
    }
    println!("results appended to {}", rec.path().display());
    Ok(())
}
