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

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig};
use haven_cluster_tests::supervisor::{Process, Spec, await_metric, free_port, scrape, wait_for};
use haven_cluster_tests::topo::{self, Topology, leftovers, racks};
use haven_proto::grpc;

mod common;
use common::load::{Load, LoadConfig, MnEnd, assert_acknowledged_present, await_identical};
use common::node::{
    self, BOUND, Table, Timeouts, admin, bindings, bindings_in, loopback, scrape_metric, status_in,
};

const KEY: &[u8] = b"raft-cluster-key";
const SPI: u32 = 256;
const LOG: &str = "info,raft=warn";
/// Home addresses of the continuous load's mobile nodes.
const LOAD_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 0);
/// Home addresses of the throughput burst.
const BURST_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 16, 0);
const BURST: usize = 1000;
/// Admin calls: membership changes commit through the log.
const ADMIN: Timeouts = Timeouts {
    connect: Duration::from_millis(500),
    call: Duration::from_secs(15),
};

/// One scenario at a time: each runs several daemons on a small machine.
static SERIAL: Mutex<()> = Mutex::new(());

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
    node::start(spec, dir, LOG)
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
        node::await_ready(&n.spec, None).expect("node restarts");
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

fn status(spec: &NodeSpec) -> Option<grpc::StatusReply> {
    status_in(spec, None, ADMIN)
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

/// `count` mobile nodes registering back to back, each registration to
/// a node of the targets (round robin), with a new care-of address each
/// time. A registration without a reply after 3 tries (0.4 + 0.8 + 0.8 s)
/// is abandoned and retried at the next target.
fn load_of(count: usize) -> LoadConfig {
    LoadConfig {
        count,
        base: LOAD_BASE,
        spi: SPI,
        key: KEY,
        initial_timeout: Duration::from_millis(400),
        max_timeout: Duration::from_millis(800),
        move_outstanding: false,
    }
}

/// Waits until the nodes `ids` hold identical binding tables, then checks
/// that every acknowledged registration is in them.
fn assert_converged(c: &Cluster, ids: &[u64], mns: &[MnEnd]) -> Table {
    let last = await_identical("the live nodes to hold the same bindings", || {
        ids.iter().map(|id| bindings(&c.node(*id).spec)).collect()
    });
    let acked = assert_acknowledged_present(&last, mns);
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

    let load = Load::start(load_of(24), c.targets(&all));
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

    let ab = load.abandoned();
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
    let load = Load::start(load_of(8), c.targets(&[lone]));
    wait_for("the minority node to drop requests", BOUND, || {
        drops(&spec, "commit_timeout") + drops(&spec, "replication_unavailable") >= 8.0
    })
    .expect("drops counted");
    {
        let acks: Vec<_> = load
            .ack_log()
            .iter()
            .map(|(at, n, began)| (*n, *at - stopped, *began - stopped))
            .collect();
        assert!(
            acks.is_empty(),
            "a minority node acknowledged registrations (node, acked, started after the stop): {acks:?}"
        );
    }
    let abandoned = load.abandoned();
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
    let load = Load::start(load_of(16), c.targets(&founders));
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
        let r = admin(&c.node(id).spec, ADMIN, |mut cl| {
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
    let members = admin(&c.node(leader).spec, ADMIN, |mut cl| async move {
        Ok(cl
            .remove_member(grpc::RemoveMemberRequest { node_id: gone })
            .await?
            .into_inner()
            .members)
    })
    .expect("RemoveMember");
    assert!(!members.contains(&gone));
    load.await_more(50, "acknowledgements after the removal");
    let ab = load.abandoned();
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
    let probe = Load::start(load_of(1), c.targets(&[gone]));
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
    node::assert_edits_refused(
        &spec,
        dir.path(),
        &[
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
        ],
    );
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
        let proc = node::spawn(&format!("ha-node-{i}"), &config, LOG, Some(&ns));
        node::await_ready(&spec, Some(&ns)).expect("node starts");
        nodes.insert(u64::from(i), (spec, ns, proc));
    }
    let leader_seen = |ids: &[u64]| -> Vec<u64> {
        ids.iter()
            .map(|id| {
                let (spec, ns, _) = &nodes[id];
                status_in(spec, Some(ns), ADMIN).map_or(0, |s| s.leader_id)
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
    let load = Load::start_in(load_of(8), vec![(leader, vip)], Some(lns.clone()));
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
        status_in(lspec, Some(lns), ADMIN).is_some_and(|s| s.role != "leader")
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
    let last = await_identical("the three nodes to hold the same bindings", || {
        nodes
            .values()
            .map(|(spec, ns, _)| bindings_in(spec, Some(ns)))
            .collect()
    });
    assert_acknowledged_present(&last, &mns);
    drop(nodes);
    drop(lab);
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}
