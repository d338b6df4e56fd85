//! Raft mode for real (issue "Replication", DESIGN.md § 4 and § 9): three
//! (four) `ha-node` processes on loopback with durable `raft-engine` logs in
//! a tempdir, mobile nodes registering continuously while nodes are
//! SIGKILLed, SIGSTOPped (a minority partition), added and removed.
//!
//! Node `i` serves the realm on its own VIP socket `127.0.0.(base+i)`:
//! replication lets any node answer any mobile node, and the load's client
//! picks a live node for each registration (what the dispatcher does by
//! health). The invariant checked after each scenario is DESIGN.md § 9's
//! first line: every registration a client saw acknowledged is in the
//! binding table of every live node (the last acknowledged care-of address,
//! or one the client sent after it, unacknowledged, which may have
//! committed too).
//!
//! All waits are conditions with bounds; every process is SIGKILLed when
//! its [`Process`] drops. The scenarios run one at a time (a mutex), since
//! each starts three or four daemons.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig, unix_now};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for,
};
use haven_cluster_tests::topo::{self, Topology, in_netns, leftovers, racks};
use haven_proto::grpc::{self, admin_client::AdminClient};

const KEY: &[u8] = b"raft-cluster-key";
const SPI: u32 = 256;
/// Home addresses of the continuous load's mobile nodes.
const LOAD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// Home addresses of the throughput burst.
const BURST_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 0);
const BURST: usize = 1000;
const BOUND: Duration = Duration::from_secs(20);

/// One scenario at a time: each runs several daemons on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

// ------------------------------------------------------------- cluster ----

struct Node {
    spec: NodeSpec,
    vip: SocketAddrV4,
    proc: Process,
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    _dir: tempfile::TempDir,
}

/// Specs for nodes `1..=founders` (voters) plus `joiners` more with
/// `join = true`, VIPs `127.0.0.(vip_base + id)`.
fn specs(
    vip_base: u8,
    founders: u64,
    joiners: u64,
    snapshot_every: u64,
    dir: &Path,
) -> Vec<(NodeSpec, SocketAddrV4)> {
    let all = founders + joiners;
    let listen: Vec<SocketAddr> = (0..all).map(|_| loopback(free_port())).collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=founders).zip(listen.iter().copied()).collect();
    (1..=all)
        .map(|id| {
            let vip = Ipv4Addr::new(127, 0, 0, vip_base + id as u8);
            let port = free_port();
            let data_dir: PathBuf = dir.join(format!("raft-{id}"));
            let mut peers = peers.clone();
            let me = listen[(id - 1) as usize];
            if id > founders {
                peers.push((id, me));
            }
            let mut spec = NodeSpec::new(id, loopback(free_port()), loopback(free_port()))
                .realm(
                    RealmSpec {
                        port,
                        ..RealmSpec::new("lab", vip, "198.18.0.0/16")
                    }
                    .with_home_address_sas(LOAD_BASE, 64, SPI, KEY)
                    .with_home_address_sas(BURST_BASE, BURST, SPI, KEY),
                )
                .cluster(ClusterSpec {
                    snapshot_every,
                    join: id > founders,
                    ..ClusterSpec::raft("lab", me, &data_dir, peers)
                });
            spec.max_commit_ms = Some(1000);
            (spec, SocketAddrV4::new(vip, port))
        })
        .collect()
}

fn spawn(spec: &NodeSpec, dir: &Path) -> Process {
    let config = spec.write(dir).expect("write the config");
    let p = Process::spawn(
        &format!("ha-node-{}", spec.id),
        Spec::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,raft=warn"),
        None,
    )
    .expect("spawn ha-node");
    await_metric(
        &spec.metrics_url(),
        None,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("node starts");
    p
}

impl Cluster {
    fn start(vip_base: u8, founders: u64, joiners: u64, snapshot_every: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        for (spec, vip) in specs(vip_base, founders, joiners, snapshot_every, dir.path()) {
            if spec.id > founders {
                // Joiners are started by the scenario.
                let proc = Process::spawn("not-started", Spec::new("true"), None).expect("true");
                nodes.insert(spec.id, Node { spec, vip, proc });
                continue;
            }
            let proc = spawn(&spec, dir.path());
            nodes.insert(spec.id, Node { spec, vip, proc });
        }
        Cluster { nodes, _dir: dir }
    }

    fn node(&self, id: u64) -> &Node {
        self.nodes.get(&id).expect("node id")
    }

    fn restart(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("node id");
        n.proc.restart().expect("restart");
        await_metric(
            &n.spec.metrics_url(),
            None,
            "haven_build_info",
            &[],
            |v| v == 1.0,
            BOUND,
        )
        .expect("node restarts");
    }

    fn launch_joiner(&mut self, id: u64) {
        let dir = self._dir.path().to_owned();
        let n = self.nodes.get_mut(&id).expect("node id");
        n.proc = spawn(&n.spec, &dir);
    }

    /// The leader every node in `ids` agrees on.
    fn await_leader(&self, ids: &[u64]) -> u64 {
        let mut leader = 0;
        wait_for("a leader all nodes agree on", BOUND, || {
            let seen: Vec<u64> = ids
                .iter()
                .map(|id| status(&self.node(*id).spec).map_or(0, |s| s.leader_id))
                .collect();
            leader = seen.first().copied().unwrap_or(0);
            leader != 0 && seen.iter().all(|l| *l == leader) && ids.contains(&leader)
        })
        .expect("leader elected");
        leader
    }

    fn targets(&self, ids: &[u64]) -> Vec<(u64, SocketAddrV4)> {
        ids.iter().map(|id| (*id, self.node(*id).vip)).collect()
    }
}

// ------------------------------------------------------------ admin API ---

fn admin<T, F>(
    spec: &NodeSpec,
    f: impl FnOnce(AdminClient<tonic::transport::Channel>) -> F,
) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", spec.admin))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        f(AdminClient::new(ch))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
}

fn status(spec: &NodeSpec) -> Option<grpc::StatusReply> {
    status_in(spec, None)
}

/// Status of a node whose admin API listens inside namespace `ns`.
fn status_in(spec: &NodeSpec, ns: Option<&str>) -> Option<grpc::StatusReply> {
    let call = || {
        admin(spec, |mut c| async move {
            Ok(c.status(grpc::StatusRequest {}).await?.into_inner())
        })
        .ok()
    };
    match ns {
        Some(ns) => in_netns(ns, call).ok().flatten(),
        None => call(),
    }
}

/// `havenctl bindings list --json`: home address → care-of address.
/// (`None` when havenctl fails: callers poll within a bound.)
fn bindings(spec: &NodeSpec) -> Option<HashMap<Ipv4Addr, Ipv4Addr>> {
    bindings_in(spec, None)
}

fn bindings_in(spec: &NodeSpec, ns: Option<&str>) -> Option<HashMap<Ipv4Addr, Ipv4Addr>> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_havenctl")]);
            c
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_havenctl")),
    };
    let out = cmd
        .arg("--admin")
        .arg(spec.admin.to_string())
        .args(["--json", "bindings", "list"])
        .output()
        .expect("run havenctl");
    if !out.status.success() {
        eprintln!("havenctl: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rows = v
        .as_array()?
        .iter()
        .filter_map(|b| {
            let hoa = b["home_address"].as_str()?.parse().ok()?;
            let coa = b["care_of"][0]["care_of_address"].as_str()?.parse().ok()?;
            Some((hoa, coa))
        })
        .collect();
    Some(rows)
}

fn scrape_metric(spec: &NodeSpec, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape(&spec.metrics_url(), None)
        .ok()
        .and_then(|t| metric(&t, name, labels))
        .unwrap_or(0.0)
}

/// Drops counted for `reason` on a node (summed over realm labels).
fn drops(spec: &NodeSpec, reason: &str) -> f64 {
    drops_in(spec, None, reason)
}

fn drops_in(spec: &NodeSpec, ns: Option<&str>, reason: &str) -> f64 {
    let Ok(text) = scrape(&spec.metrics_url(), ns) else {
        return 0.0;
    };
    text.lines()
        .filter(|l| {
            l.starts_with("haven_registration_drops_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The state letter of `/proc/<pid>/stat` (`T` = stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may contain spaces.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

// ---------------------------------------------------------------- load ----

/// What the load saw, shared while it runs.
#[derive(Debug, Default)]
struct Seen {
    /// Acknowledgements: when, by which node, and when the client started
    /// that registration.
    acks: Vec<(Instant, u64, Instant)>,
    /// Transactions abandoned (no reply after every try to one node).
    abandoned: u64,
}

/// One mobile node of the load at the end.
#[derive(Debug, Clone)]
struct MnEnd {
    hoa: Ipv4Addr,
    /// The care-of address last acknowledged.
    acked: Option<Ipv4Addr>,
    /// Care-of addresses sent after it, unacknowledged.
    later: Vec<Ipv4Addr>,
    /// Longest time between two acknowledgements (or start and the first).
    worst_gap: Duration,
}

struct Load {
    stop: Arc<AtomicBool>,
    targets: Arc<Mutex<Vec<(u64, SocketAddrV4)>>>,
    seen: Arc<Mutex<Seen>>,
    handle: Option<JoinHandle<Vec<MnEnd>>>,
}

struct LoadMn {
    hoa: Ipv4Addr,
    sock: UdpSocket,
    core: Option<(MobileNode, u64, Instant)>,
    seq: u32,
    acked: Option<Ipv4Addr>,
    later: Vec<Ipv4Addr>,
    last_ack: Instant,
    worst_gap: Duration,
}

impl Load {
    /// `count` mobile nodes registering back to back, each registration to
    /// a node of `targets` (round robin), with a new care-of address each
    /// time. A registration without a reply after 3 tries (0.4 + 0.8 +
    /// 0.8 s) is abandoned and retried at the next target.
    fn start(count: usize, targets: Vec<(u64, SocketAddrV4)>) -> Load {
        Self::start_in(count, targets, None)
    }

    /// [`Load::start`] with the mobile nodes' sockets inside namespace `ns`.
    fn start_in(count: usize, targets: Vec<(u64, SocketAddrV4)>, ns: Option<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let targets = Arc::new(Mutex::new(targets));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, t, v) = (stop.clone(), targets.clone(), seen.clone());
        let handle = std::thread::spawn(move || match ns {
            Some(ns) => in_netns(&ns, || run_load(count, &s, &t, &v)).expect("enter the namespace"),
            None => run_load(count, &s, &t, &v),
        });
        Load {
            stop,
            targets,
            seen,
            handle: Some(handle),
        }
    }

    fn set_targets(&self, t: Vec<(u64, SocketAddrV4)>) {
        *self.targets.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    fn acks(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acks
            .len()
    }

    fn acks_by(&self, node: u64) -> usize {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acks.iter().filter(|(_, n, _)| *n == node).count()
    }

    /// The first acknowledgement of a registration started after `t`.
    fn first_ack_started_after(&self, t: Instant) -> Option<Instant> {
        let s = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.acks
            .iter()
            .filter(|(_, _, started)| *started > t)
            .map(|(at, _, _)| *at)
            .min()
    }

    /// Waits for `n` more acknowledgements than now.
    fn await_more(&self, n: usize, what: &str) {
        let from = self.acks();
        wait_for(what, BOUND, || self.acks() >= from + n).expect(what);
    }

    fn finish(mut self) -> Vec<MnEnd> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run_load(
    count: usize,
    stop: &AtomicBool,
    targets: &Mutex<Vec<(u64, SocketAddrV4)>>,
    seen: &Mutex<Seen>,
) -> Vec<MnEnd> {
    let started = Instant::now();
    let mut mns: Vec<LoadMn> = (0..count)
        .map(|i| {
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.set_nonblocking(true).expect("nonblocking");
            LoadMn {
                hoa: Ipv4Addr::from(u32::from(LOAD_BASE) + i as u32),
                sock,
                core: None,
                seq: 0,
                acked: None,
                later: Vec::new(),
                last_ack: started,
                worst_gap: Duration::ZERO,
            }
        })
        .collect();
    let mut buf = [0u8; 2048];
    let mut rr = 0usize;
    // After `stop`, outstanding registrations may still finish (bounded).
    let mut drain_until: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping && drain_until.is_none() {
            drain_until = Some(Instant::now() + Duration::from_secs(3));
        }
        if drain_until.is_some_and(|d| Instant::now() >= d)
            || (stopping && mns.iter().all(|m| m.core.is_none()))
        {
            break;
        }
        let now = unix_now();
        let mut busy = false;
        for (i, m) in mns.iter_mut().enumerate() {
            if m.core.is_none() && !stopping {
                let t = targets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                if t.is_empty() {
                    continue;
                }
                rr += 1;
                let (node, vip) = t[(rr + i) % t.len()];
                m.seq += 1;
                let coa = Ipv4Addr::new(198, 19, i as u8, (m.seq % 250 + 1) as u8);
                let mut c = MnConfig::new(m.hoa, *vip.ip(), coa, SPI, KEY);
                c.home_agent_port = vip.port();
                c.initial_timeout = Duration::from_millis(400);
                c.max_timeout = Duration::from_millis(800);
                c.max_attempts = 3;
                let mut core = MobileNode::new(c);
                core.register(now);
                m.later.push(coa);
                m.core = Some((core, node, Instant::now()));
            }
            let Some((core, node, began)) = m.core.as_mut() else {
                continue;
            };
            loop {
                match m.sock.recv_from(&mut buf) {
                    Ok((n, SocketAddr::V4(from))) => {
                        busy = true;
                        let _ = core.handle(now, from, &buf[..n]);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some((dst, bytes)) = core.poll_transmit() {
                let _ = m.sock.send_to(&bytes, dst);
            }
            let mut done = false;
            while let Some(ev) = core.poll_event() {
                match ev {
                    Event::Accepted { .. } => {
                        let at = Instant::now();
                        m.worst_gap = m.worst_gap.max(at - m.last_ack);
                        m.last_ack = at;
                        m.acked = Some(core.care_of_address());
                        m.later.clear();
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .acks
                            .push((at, *node, *began));
                        done = true;
                    }
                    Event::GaveUp | Event::Denied { .. } => {
                        seen.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .abandoned += 1;
                        done = true;
                    }
                    _ => {}
                }
            }
            if done {
                m.core = None;
            }
        }
        if !busy {
            // Pacing of the generator's own poll loop, not a wait for a
            // condition of the system under test.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    mns.into_iter()
        .map(|m| MnEnd {
            hoa: m.hoa,
            acked: m.acked,
            later: m.later,
            worst_gap: m.worst_gap,
        })
        .collect()
}

/// Waits until the nodes `ids` hold identical binding tables, then checks
/// that every acknowledged registration is in them.
fn assert_converged(c: &Cluster, ids: &[u64], mns: &[MnEnd]) -> HashMap<Ipv4Addr, Ipv4Addr> {
    let mut last = HashMap::new();
    wait_for("the live nodes to hold the same bindings", BOUND, || {
        let views: Option<Vec<_>> = ids.iter().map(|id| bindings(&c.node(*id).spec)).collect();
        let Some(views) = views else { return false };
        let same = views.windows(2).all(|w| w[0] == w[1]);
        last = views.into_iter().next().unwrap_or_default();
        same
    })
    .expect("converged");
    let mut acked = 0;
    for m in mns {
        let Some(a) = m.acked else { continue };
        acked += 1;
        let got = last.get(&m.hoa).copied();
        assert!(
            got == Some(a) || got.is_some_and(|g| m.later.contains(&g)),
            "acknowledged {} -> {a} lost: nodes hold {got:?} (later attempts {:?})",
            m.hoa,
            m.later
        );
    }
    assert!(acked > 0, "the load registered nothing");
    last
}

// ----------------------------------------------------------- scenarios ----

#[test]
fn sigkill_follower_then_leader_loses_no_acknowledged_binding() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut c = Cluster::start(10, 3, 0, 64);
    let all = [1, 2, 3];
    let leader = c.await_leader(&all);

    // Throughput: a burst through one node, every commit on a durable log.
    let mut sim = SimConfig::new(c.node(leader).vip, KEY.to_vec());
    sim.count = BURST;
    sim.rate = 0.0;
    sim.home = HomeMode::Static { base: BURST_BASE };
    sim.spi = SPI;
    sim.deregister = false;
    let report = mnsim::run(&sim).expect("burst");
    let s = &report.summary;
    assert_eq!(s.registered, BURST as u64, "{}", s.table());
    println!(
        "raft 3 nodes, durable log: {BURST} registrations through node {leader}: {:.0} reg/s, latency p50 {:.2} ms p99 {:.2} ms",
        s.reg_per_sec, s.latency_ms.p50, s.latency_ms.p99
    );

    let load = Load::start(24, c.targets(&all));
    load.await_more(100, "acknowledgements from the 3-node cluster");

    // A follower dies; the log moves on and is compacted (snapshot_every
    // 64) while it is down, so it comes back through a snapshot.
    let follower = *all.iter().find(|id| **id != leader).expect("a follower");
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != follower).collect();
    load.set_targets(c.targets(&rest));
    c.nodes
        .get_mut(&follower)
        .expect("f")
        .proc
        .sigkill()
        .expect("kill follower");
    load.await_more(300, "acknowledgements with a follower down");
    c.restart(follower);
    let f = c.node(follower).spec.metrics_url();
    await_metric(
        &f,
        None,
        "haven_raft_snapshots_received_total",
        &[],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("the restarted follower caught up from a snapshot");
    // The install was timed, and the follower's streams to its peers are up.
    await_metric(
        &f,
        None,
        "haven_raft_snapshot_install_seconds_count",
        &[],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("the snapshot install is timed");
    let peer = leader.to_string();
    await_metric(
        &f,
        None,
        "haven_raft_peer_connected",
        &[("peer", peer.as_str())],
        |v| v == 1.0,
        BOUND,
    )
    .expect("the restarted follower is connected to the leader");
    load.set_targets(c.targets(&all));
    load.await_more(50, "acknowledgements with the follower back");

    // The leader dies: the first acknowledgement after it is the MN's gap.
    let rest: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    load.set_targets(c.targets(&rest));
    let killed = Instant::now();
    c.nodes
        .get_mut(&leader)
        .expect("l")
        .proc
        .sigkill()
        .expect("kill leader");
    wait_for("an acknowledgement after the leader died", BOUND, || {
        load.first_ack_started_after(killed).is_some()
    })
    .expect("the cluster serves after losing its leader");
    let gap = load.first_ack_started_after(killed).expect("ack") - killed;
    let new_leader = c.await_leader(&rest);
    assert_ne!(new_leader, leader);
    println!(
        "leader {leader} SIGKILLed: first registration sent after it acknowledged {:.0} ms later (new leader {new_leader})",
        gap.as_secs_f64() * 1000.0
    );
    load.await_more(100, "acknowledgements under the new leader");
    c.restart(leader);
    load.set_targets(c.targets(&all));
    load.await_more(50, "acknowledgements with every node back");

    let ab = load
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .abandoned;
    let mns = load.finish();
    let table = assert_converged(&c, &all, &mns);
    // The burst's bindings survived both crashes too.
    for i in 0..BURST as u32 {
        let hoa = Ipv4Addr::from(u32::from(BURST_BASE) + i);
        assert!(table.contains_key(&hoa), "burst binding {hoa} lost");
    }
    for id in all {
        let st = status(&c.node(id).spec).expect("status");
        assert_eq!(st.mode, grpc::ReplicationMode::Raft as i32);
        assert_eq!(st.members, vec![1, 2, 3]);
        assert_eq!(st.leader_id, new_leader, "node {id}");
    }
    println!("abandoned single-node attempts during the run: {ab}");
}

#[test]
fn minority_node_acknowledges_nothing_then_converges() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut c = Cluster::start(20, 3, 0, 10_000);
    let all = [1, 2, 3];
    let leader = c.await_leader(&all);
    // Isolate the leader by stopping the two others: it is now a minority
    // of one that still believes it leads until check-quorum demotes it
    // [Raft thesis § 6.2], the riskiest moment to acknowledge anything.
    let lone = leader;
    for id in all.iter().filter(|id| **id != lone) {
        c.nodes
            .get_mut(id)
            .expect("n")
            .proc
            .signal(libc::SIGSTOP)
            .expect("SIGSTOP");
    }
    // kill(2) only queues SIGSTOP: wait until both are really stopped, or
    // they could still acknowledge an append for a moment.
    for id in all.iter().filter(|id| **id != lone) {
        let pid = c.node(*id).proc.pid().expect("pid");
        wait_for("the node to be stopped", BOUND, || {
            proc_state(pid) == Some('T')
        })
        .expect("stopped");
    }
    let stopped = Instant::now();
    let spec = c.node(lone).spec.clone();
    let load = Load::start(8, c.targets(&[lone]));
    wait_for("the minority node to drop requests", BOUND, || {
        drops(&spec, "commit_timeout") + drops(&spec, "replication_unavailable") >= 8.0
    })
    .expect("drops counted");
    {
        let seen = load.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let acks: Vec<_> = seen
            .acks
            .iter()
            .map(|(at, n, began)| (*n, *at - stopped, *began - stopped))
            .collect();
        assert!(
            acks.is_empty(),
            "a minority node acknowledged registrations (node, acked, started after the stop): {acks:?}"
        );
    }
    let abandoned = load
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .abandoned;
    println!(
        "minority node {lone}: 0 acknowledged, {abandoned} registrations abandoned by clients, {} dropped",
        drops(&spec, "commit_timeout") + drops(&spec, "replication_unavailable")
    );
    for id in all.iter().filter(|id| **id != lone) {
        c.nodes
            .get_mut(id)
            .expect("n")
            .proc
            .signal(libc::SIGCONT)
            .expect("SIGCONT");
    }
    load.await_more(30, "the healed node to serve again");
    assert!(load.acks_by(lone) > 0);
    let mns = load.finish();
    assert_converged(&c, &all, &mns);
    assert!(
        scrape_metric(&spec, "haven_raft_term", &[]) >= 2.0,
        "an election happened"
    );
    // SIGTERM stops a raft node cleanly while its peers keep streams open.
    let n = &mut c.nodes.get_mut(&lone).expect("n").proc;
    n.signal(libc::SIGTERM).expect("SIGTERM");
    let st = n.wait_exit(Duration::from_secs(10)).expect("stops");
    assert!(st.success(), "{}", Process::describe_exit(st));
}

#[test]
fn fourth_node_joins_and_one_leaves_while_serving() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut c = Cluster::start(30, 3, 1, 64);
    let founders = [1, 2, 3];
    let leader = c.await_leader(&founders);
    let load = Load::start(16, c.targets(&founders));
    load.await_more(100, "acknowledgements before the join");

    c.launch_joiner(4);
    let four = c.node(4).spec.clone();
    assert_eq!(status(&four).expect("status").role, "joining");
    let addr = four.cluster.as_ref().expect("raft").listen.to_string();
    // Followers record the address, the leader proposes (leader last).
    let mut order: Vec<u64> = founders
        .iter()
        .copied()
        .filter(|id| *id != leader)
        .collect();
    order.push(leader);
    for id in order {
        let r = admin(&c.node(id).spec, |mut cl| {
            let address = addr.clone();
            async move {
                Ok(cl
                    .add_member(grpc::AddMemberRequest {
                        node_id: 4,
                        address,
                    })
                    .await?
                    .into_inner()
                    .members)
            }
        });
        if id == leader {
            assert_eq!(r.expect("AddMember on the leader"), vec![1, 2, 3, 4]);
        } else {
            assert!(r.is_err_and(|e| e.contains("not the leader")));
        }
    }
    wait_for("node 4 to become a voter", BOUND, || {
        status(&four).is_some_and(|s| s.role == "follower" && s.members == vec![1, 2, 3, 4])
    })
    .expect("node 4 joined");
    let mut serving = founders.to_vec();
    serving.push(4);
    load.set_targets(c.targets(&serving));
    load.await_more(50, "acknowledgements with four nodes");
    assert!(load.acks_by(4) > 0, "node 4 serves");

    // Remove a follower that is not the new node; steer clients off it
    // first, as the dispatcher does on its health.
    let gone = *founders
        .iter()
        .find(|id| **id != leader)
        .expect("a follower");
    let remaining: Vec<u64> = serving.iter().copied().filter(|id| *id != gone).collect();
    load.set_targets(c.targets(&remaining));
    let members = admin(&c.node(leader).spec, |mut cl| async move {
        Ok(cl
            .remove_member(grpc::RemoveMemberRequest { node_id: gone })
            .await?
            .into_inner()
            .members)
    })
    .expect("RemoveMember");
    assert!(!members.contains(&gone));
    load.await_more(50, "acknowledgements after the removal");
    let ab = load
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .abandoned;
    let mns = load.finish();
    assert_converged(&c, &remaining, &mns);
    assert_eq!(ab, 0, "a registration went unanswered by a serving node");
    let worst = mns.iter().map(|m| m.worst_gap).max().unwrap_or_default();
    assert!(worst < Duration::from_secs(3), "a client waited {worst:?}");
    println!(
        "membership change under load: longest wait of a client {:.0} ms",
        worst.as_secs_f64() * 1000.0
    );

    // The removed node answers nothing and says so.
    let gone_spec = c.node(gone).spec.clone();
    // It learns its removal when the commit reaches it; otherwise it is
    // left without a leader. Either way it reports that it cannot serve.
    let mut st = None;
    wait_for("the removed node to report itself out", BOUND, || {
        st = status(&gone_spec);
        st.as_ref()
            .is_some_and(|s| s.role == "removed" || s.leader_id == 0)
    })
    .expect("removed node reports it");
    let st = st.expect("status");
    println!(
        "removed node {gone}: role {:?}, members {:?}, haven_raft_member {}",
        st.role,
        st.members,
        scrape_metric(&gone_spec, "haven_raft_member", &[])
    );
    let probe = Load::start(1, c.targets(&[gone]));
    wait_for("the removed node to drop a request", BOUND, || {
        drops(&gone_spec, "not_member")
            + drops(&gone_spec, "commit_timeout")
            + drops(&gone_spec, "replication_unavailable")
            >= 1.0
    })
    .expect("the removed node drops requests");
    assert_eq!(
        probe.acks(),
        0,
        "a removed node acknowledged a registration"
    );
}

/// `ha-node --check-config` on raft settings: precise errors, exit 64.
#[test]
fn bad_cluster_config_exits_64_and_unusable_log_fails_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spec, _) = specs(40, 3, 0, 64, dir.path()).remove(0);
    let good = spec.write(dir.path()).expect("write");
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_ha-node"))
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .expect("run");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = std::fs::read_to_string(&good).expect("read");
    for (from, to, needle) in [
        (
            "cluster_id = \"lab\"",
            "cluster_id = \"\"",
            "needs a cluster_id",
        ),
        (
            "heartbeat_ticks = 2",
            "heartbeat_ticks = 10",
            "less than election_ticks",
        ),
        (
            "[[cluster.peer]]\nid = 1\n",
            "[[cluster.peer]]\nid = 9\n",
            "must list this node",
        ),
        (
            "snapshot_every = 64",
            "snapshot_every = 0",
            "snapshot_every must be at least 1",
        ),
    ] {
        assert!(text.contains(from), "{from:?} in {text}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ha-node"))
            .arg("--config")
            .arg(&bad)
            .arg("--check-config")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{to}: {err}");
        assert!(err.contains(needle), "{to}: {err}");
    }
    // A data_dir that cannot be a directory: the node refuses to start
    // (exit 1) rather than run without a durable log.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let mut spec = spec;
    if let Some(c) = spec.cluster.as_mut() {
        c.data_dir = file.join("raft");
    }
    let cfg = spec.write(dir.path()).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ha-node"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-a-dir"));
}

/// The netns variant of the minority test: three nodes on a rack segment in
/// their own namespaces, the leader cut off by nftables drop rules
/// (`Lab::partition`); its mobile nodes live in its namespace and reach it
/// over `lo`, which the partition leaves open. Nothing registered with the
/// minority after the cut is acknowledged; the majority elects a leader;
/// after the heal (the transport reconnects) everything converges. Needs
/// root.
#[test]
fn nftables_partition_of_the_leader_acknowledges_nothing() {
    if topo::skip_without_root() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut t = Topology::builder().expire_after(Duration::from_secs(90));
    for i in 1..=3u8 {
        let n = racks::node_name(i);
        t = t.host(&n).loopback_addr(&n, "192.0.2.1/32");
    }
    let names: Vec<String> = (1..=3u8).map(racks::node_name).collect();
    let addrs: Vec<String> = (1..=3u8)
        .map(|i| format!("{}/24", racks::node_addr(i)))
        .collect();
    let lab = t
        .switch(
            "rack",
            names
                .iter()
                .map(String::as_str)
                .zip(addrs.iter().map(String::as_str)),
        )
        .build()
        .expect("build the lab");
    let prefix = lab.prefix().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = |i: u8| SocketAddr::from((racks::node_addr(i), 7400));
    let peers: Vec<(u64, SocketAddr)> = (1..=3u8).map(|i| (u64::from(i), raft(i))).collect();
    let vip = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 434);
    let mut nodes = BTreeMap::new();
    for i in 1..=3u8 {
        let ns = lab.ns_name(&racks::node_name(i)).expect("ns").to_owned();
        let mut spec = NodeSpec::new(u64::from(i), loopback(4340), loopback(9434))
            .realm(
                RealmSpec::new("lab", *vip.ip(), "198.18.0.0/16")
                    .with_home_address_sas(LOAD_BASE, 64, SPI, KEY),
            )
            .cluster(ClusterSpec::raft(
                "lab",
                raft(i),
                &dir.path().join(format!("raft-{i}")),
                peers.clone(),
            ));
        spec.max_commit_ms = Some(1000);
        let sub = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let config = spec.write(&sub).expect("config");
        let proc = Process::spawn(
            &format!("ha-node-{i}"),
            Spec::new(env!("CARGO_BIN_EXE_ha-node"))
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info,raft=warn"),
            Some(&ns),
        )
        .expect("spawn");
        await_metric(
            &spec.metrics_url(),
            Some(&ns),
            "haven_build_info",
            &[],
            |v| v == 1.0,
            BOUND,
        )
        .expect("node starts");
        nodes.insert(u64::from(i), (spec, ns, proc));
    }
    let leader_seen = |ids: &[u64]| -> Vec<u64> {
        ids.iter()
            .map(|id| {
                let (spec, ns, _) = &nodes[id];
                status_in(spec, Some(ns)).map_or(0, |s| s.leader_id)
            })
            .collect()
    };
    let mut leader = 0;
    wait_for("a leader", BOUND, || {
        let v = leader_seen(&[1, 2, 3]);
        leader = v[0];
        leader != 0 && v.iter().all(|l| *l == leader)
    })
    .expect("leader");
    let (lspec, lns, _) = &nodes[&leader];
    let load = Load::start_in(8, vec![(leader, vip)], Some(lns.clone()));
    load.await_more(50, "acknowledgements before the partition");

    lab.partition(&racks::node_name(leader as u8))
        .expect("partition");
    let cut = Instant::now();
    let majority: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    wait_for("the majority to elect a new leader", BOUND, || {
        let v = leader_seen(&majority);
        v[0] != 0 && v[0] != leader && v.iter().all(|l| *l == v[0])
    })
    .expect("new leader on the majority side");
    wait_for("the cut-off node to drop requests", BOUND, || {
        drops_in(lspec, Some(lns), "commit_timeout")
            + drops_in(lspec, Some(lns), "replication_unavailable")
            >= 8.0
    })
    .expect("drops counted");
    assert_eq!(
        load.first_ack_started_after(cut),
        None,
        "the partitioned node acknowledged a registration"
    );
    // Check-quorum demotes the cut-off leader [Raft thesis § 6.2].
    wait_for("the cut-off leader to step down", BOUND, || {
        status_in(lspec, Some(lns)).is_some_and(|s| s.role != "leader")
    })
    .expect("demoted");

    lab.heal(&racks::node_name(leader as u8)).expect("heal");
    let healed = Instant::now();
    wait_for("the healed node to serve again", BOUND, || {
        load.first_ack_started_after(healed).is_some()
    })
    .expect("serves after the heal");
    println!(
        "nftables partition: 0 acknowledged by the cut-off leader {leader}; serving again {:.0} ms after the heal",
        (load.first_ack_started_after(healed).expect("ack") - healed).as_secs_f64() * 1000.0
    );
    let mns = load.finish();
    let mut last = HashMap::new();
    wait_for("the three nodes to hold the same bindings", BOUND, || {
        let views: Option<Vec<_>> = nodes
            .values()
            .map(|(spec, ns, _)| bindings_in(spec, Some(ns)))
            .collect();
        let Some(views) = views else { return false };
        let same = views.windows(2).all(|w| w[0] == w[1]);
        last = views.into_iter().next().unwrap_or_default();
        same
    })
    .expect("converged");
    for m in &mns {
        if let Some(a) = m.acked {
            let got = last.get(&m.hoa).copied();
            assert!(
                got == Some(a) || got.is_some_and(|g| m.later.contains(&g)),
                "acknowledged {} -> {a} lost: {got:?}",
                m.hoa
            );
        }
    }
    drop(nodes);
    drop(lab);
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}
