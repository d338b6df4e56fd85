//! `bench-registration`: registration throughput and latency, one node
//! without replication against three Raft nodes with the durable log, in
//! one run (DESIGN.md § 9; issue "Benchmarks", item 1).
//!
//! ```text
//! cargo run --release -p haven-cluster-tests --bin bench-registration -- [--mobile-nodes N] [--window W] [--sockets S] [--nodes 1,3]
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

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::bench::{Recorder, quantile, release_binary, rss_bytes};
use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::{Process, Spec, await_metric, free_port, metric, scrape};

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
                .env("RUST_LOG", "warn"),
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

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    wall: Duration,
    latencies: Vec<Duration>,
    denied: usize,
    gave_up: usize,
    retransmits: usize,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The load generator: mobile-node cores over a few shared sockets,
/// closed-loop with `window` requests in flight. Replies are matched to
/// their mobile node by the home address field (RFC 5944 § 3.4: octets
/// 4..8 of a Registration Reply).
struct Load {
    mns: Vec<MobileNode>,
    socks: Vec<UdpSocket>,
    window: usize,
}

impl Load {
    fn new(targets: &[SocketAddrV4], count: usize, sockets: usize) -> anyhow::Result<Self> {
        let mns = (0..count)
            .map(|i| {
                let t = targets[i % targets.len()];
                let mut c = MnConfig::new(
                    Ipv4Addr::from(HOME_BASE + i as u32),
                    *t.ip(),
                    CARE_OF,
                    SPI,
                    KEY,
                );
                c.home_agent_port = t.port();
                c.lifetime = 1800;
                c.max_attempts = 8;
                MobileNode::new(c)
            })
            .collect();
        let socks = (0..sockets.max(1))
            .map(|_| {
                let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            mns,
            socks,
            window: 256,
        })
    }

    fn flush(&mut self, i: usize, ph: &mut Phase, inflight: &mut usize) {
        let Some(mn) = self.mns.get_mut(i) else {
            return;
        };
        while let Some((to, bytes)) = mn.poll_transmit() {
            if let Some(s) = self.socks.get(i % self.socks.len()) {
                // A full socket buffer is a loss the retransmission covers.
                let _ = s.send_to(&bytes, to);
            }
        }
        while let Some(ev) = mn.poll_event() {
            match ev {
                Event::Sent { attempt, .. } if attempt > 1 => ph.retransmits += 1,
                Event::Accepted { latency, .. } => {
                    ph.latencies.push(latency);
                    *inflight -= 1;
                }
                Event::Denied { .. } => {
                    ph.denied += 1;
                    *inflight -= 1;
                }
                Event::GaveUp => {
                    ph.gave_up += 1;
                    *inflight -= 1;
                }
                _ => {}
            }
        }
    }

    /// Every mobile node (re-)registers once; returns what was seen.
    fn phase(&mut self) -> Phase {
        let mut ph = Phase::default();
        let total = self.mns.len();
        let (mut next, mut inflight) = (0usize, 0usize);
        let mut waiting: Vec<usize> = Vec::with_capacity(self.window);
        let mut buf = vec![0u8; 2048];
        let mut fds: Vec<libc::pollfd> = self
            .socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let started = Instant::now();
        let mut last_scan = Instant::now();
        while next < total || inflight > 0 {
            while inflight < self.window && next < total {
                if let Some(mn) = self.mns.get_mut(next) {
                    mn.register(unix_now());
                }
                inflight += 1;
                waiting.push(next);
                self.flush(next, &mut ph, &mut inflight);
                next += 1;
            }
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
            if n > 0 {
                for k in 0..self.socks.len() {
                    if fds.get(k).is_none_or(|f| f.revents == 0) {
                        continue;
                    }
                    while let Some(Ok((len, from))) =
                        self.socks.get(k).map(|s| s.recv_from(&mut buf))
                    {
                        let (Some(hoa), SocketAddr::V4(from)) = (buf.get(4..8), from) else {
                            continue;
                        };
                        let hoa = u32::from_be_bytes([hoa[0], hoa[1], hoa[2], hoa[3]]);
                        let i = hoa.wrapping_sub(HOME_BASE) as usize;
                        let Some(mn) = self.mns.get_mut(i) else {
                            continue;
                        };
                        let _ = mn.handle(unix_now(), from, buf.get(..len).unwrap_or_default());
                        self.flush(i, &mut ph, &mut inflight);
                    }
                }
            }
            if last_scan.elapsed() >= Duration::from_millis(50) {
                last_scan = Instant::now();
                let now = unix_now();
                let mut still = Vec::with_capacity(waiting.len());
                for i in waiting.drain(..) {
                    let Some(mn) = self.mns.get_mut(i) else {
                        continue;
                    };
                    if mn.poll_timeout().is_some_and(|t| t <= now) {
                        mn.handle_timeout(now);
                    }
                    let before = inflight;
                    self.flush(i, &mut ph, &mut inflight);
                    if inflight == before
                        && self.mns.get(i).is_some_and(|m| {
                            m.state() == haven_cluster_tests::mn::State::Registering
                        })
                    {
                        still.push(i);
                    }
                }
                waiting = still;
            }
            // Completed ones leave `waiting` at the next scan.
        }
        ph.wall = started.elapsed();
        ph
    }
}

/// Waits until every node reports `want` bindings; returns how long it took.
fn await_replicated(nodes: &[Node], want: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    for n in nodes {
        await_metric(
            &n.spec.metrics_url(),
            None,
            "haven_bindings",
            &[("realm", "bench")],
            |v| v as usize == want,
            Duration::from_secs(120),
        )
        .with_context(|| format!("node {} never reached {want} bindings", n.spec.id))?;
    }
    Ok(t.elapsed())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=MAX_MNS).contains(&args.mobile_nodes),
        "--mobile-nodes must be 1..={MAX_MNS} (home addresses come from 198.18.0.0/15)"
    );
    let bin = release_binary("haven-ha-node", "ha-node")?;
    let mut rec = Recorder::open("registration")?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for &count in &args.nodes {
        let nodes = start_cluster(&bin, count, args.mobile_nodes, dir.path())?;
        let targets: Vec<SocketAddrV4> = nodes.iter().map(|n| n.target).collect();
        let rss0: Vec<u64> = nodes
            .iter()
            .map(|n| n.proc.pid().and_then(rss_bytes).unwrap_or(0))
            .collect();
        let mut load = Load::new(&targets, args.mobile_nodes, args.sockets)?;
        load.window = args.window.max(1);
        for phase in ["register", "refresh"] {
            let mut ph = load.phase();
            ph.latencies.sort_unstable();
            rows.push((count, phase, ph));
        }
        let sync = await_replicated(&nodes, args.mobile_nodes)?;
        let rss1: Vec<u64> = nodes
            .iter()
            .map(|n| n.proc.pid().and_then(rss_bytes).unwrap_or(0))
            .collect();
        let per_binding = rss1
            .iter()
            .zip(&rss0)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / args.mobile_nodes as f64)
            .fold(0.0f64, f64::max);
        let leader = nodes
            .iter()
            .filter_map(|n| scrape(&n.spec.metrics_url(), None).ok())
            .filter_map(|t| metric(&t, "haven_raft_leader_id", &[]))
            .next();
        println!(
            "{count} node(s): all {} bindings on every node {:.2} s after the last reply; \
             max RSS growth {per_binding:.0} B/binding{}",
            args.mobile_nodes,
            sync.as_secs_f64(),
            leader.map_or(String::new(), |l| format!("; raft leader {l}"))
        );
        rec.figure(
            &format!("rss_growth_per_binding_{count}_nodes"),
            per_binding,
            "bytes",
            serde_json::json!({ "mobile_nodes": args.mobile_nodes, "nodes": count }),
        )?;
        for mut n in nodes {
            let _ = n.proc.sigkill();
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
        "{:>5} {:>8} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8}",
        "nodes", "phase", "reg/s", "p50 ms", "p99 ms", "p99.9 ms", "denied", "gaveup", "retrans"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (count, phase, ph) in &rows {
        let (p50, p99, p999) = (
            quantile(&ph.latencies, 0.5),
            quantile(&ph.latencies, 0.99),
            quantile(&ph.latencies, 0.999),
        );
        println!(
            "{count:>5} {phase:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>7} {:>8}",
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
            "mobile_nodes": args.mobile_nodes,
            "window": args.window,
            "sockets": args.sockets,
            "denied": ph.denied,
            "gave_up": ph.gave_up,
            "retransmits": ph.retransmits,
        });
        rec.figure(
            &format!("registrations_per_second_{count}_nodes_{phase}"),
            ph.rate(),
            "registrations/s",
            extra.clone(),
        )?;
        for (q, v) in [("p50", p50), ("p99", p99), ("p999", p999)] {
            rec.figure(
                &format!("registration_latency_{q}_{count}_nodes_{phase}"),
                ms(v),
                "ms",
                extra.clone(),
            )?;
        }
    }
    let pairs: Vec<_> = rows.iter().filter(|r| r.1 == "register").collect();
    if let (Some(one), Some(three)) = (
        pairs.iter().find(|r| r.0 == 1),
        pairs.iter().find(|r| r.0 > 1),
    ) {
        let ratio = three.2.rate() / one.2.rate().max(1e-9);
        println!(
            "replicated ({} nodes) / single node throughput: {ratio:.3}",
            three.0
        );
        rec.figure(
            "replicated_to_single_throughput_ratio",
            ratio,
            "ratio",
            serde_json::json!({ "nodes": three.0 }),
        )?;
    }
    println!("results appended to {}", rec.path().display());
    Ok(())
}
