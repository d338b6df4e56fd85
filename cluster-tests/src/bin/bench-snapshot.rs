//! `bench-snapshot`: snapshot size and transfer time of the binding table
//! to a joining Raft member, and resident memory per binding on the
//! members (DESIGN.md § 4 "Snapshots carry the binding table", § 9 memory;
//! issue "Benchmarks", item 5).
//!
//! ```text
//! cargo run --release -p haven-cluster-tests --bin bench-snapshot -- [--bindings N] [--snapshot-every E]
//! ```
//!
//! Three release `ha-node`s in raft mode (durable raft-engine logs in a
//! temporary directory) start on loopback with one realm (home prefix
//! 198.18.0.0/15, one SA per mobile node). A closed-loop load registers N
//! mobile nodes (lifetime 1800 s), so the table holds N bindings; the
//! members compact their logs every E applied entries, so the joiner cannot
//! be served from the log and gets the table as a snapshot. Then a fourth
//! node starts empty (`join = true`) and is added with
//! `havenctl members add` (followers first, then the leader, as
//! `ha-node/tests/raft_cluster.rs` does). Measured:
//!
//! * snapshot bytes: `haven_raft_snapshot_bytes` (the histogram of
//!   installed snapshots on the joiner) and the raft-engine directory's size
//!   on disk on the leader and the joiner;
//! * transfer time: from `members add` returning on the leader until the
//!   joiner reports N bindings (`haven_bindings`), and the joiner's own
//!   `haven_raft_snapshot_install_seconds`;
//! * resident memory growth per binding on every member (VmRSS after the
//!   load minus before, over N), and the joiner's RSS per binding after the
//!   install (a table built from a snapshot rather than from requests).
//!
//! Home addresses come from 198.18.0.0/15, the largest range this lab may
//! use, so N ≤ 131 070. Realms may share a home prefix, so 8 realms could
//! hold 1 M bindings, but each needs its own 131 070 SAs in every node's
//! configuration (≈ 100 MB of TOML per node), which is the configuration's
//! cost, not the table's; the 1 M in-process figure is
//! `ha-node/tests/binding_memory.rs`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use haven_cluster_tests::bench::{
    ClosedLoop, Recorder, node_log_level, release_binary, rss_anon_bytes, rss_bytes,
};
use haven_cluster_tests::fleet::{ClusterSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::supervisor::{Process, Spec, await_metric, free_port, metric, scrape};

const KEY: &[u8] = b"bench-snapshot-key";
const SPI: u32 = 4100;
/// First home address: 198.18.0.1 (…/15 network address skipped).
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Addresses in 198.18.0.0/15 minus network and broadcast.
const MAX_BINDINGS: usize = (1 << 17) - 2;
const BOUND: Duration = Duration::from_secs(180);

#[derive(Debug, Parser)]
#[command(
    name = "bench-snapshot",
    about = "Snapshot size and transfer time to a joining raft member; RSS per binding"
)]
struct Args {
    /// Bindings to load (at most 131070).
    #[arg(long, default_value_t = MAX_BINDINGS)]
    bindings: usize,
    /// The members' `snapshot_every` (applied entries between snapshots).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Requests in flight while loading.
    #[arg(long, default_value_t = 256)]
    window: usize,
}

struct Node {
    spec: NodeSpec,
    target: SocketAddrV4,
    proc: Process,
    data_dir: std::path::PathBuf,
}

impl Node {
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        scrape(&self.spec.metrics_url(), None)
            .ok()
            .and_then(|t| metric(&t, name, labels))
    }

    fn rss(&self) -> u64 {
        self.proc.pid().and_then(rss_bytes).unwrap_or(0)
    }

    fn anon(&self) -> u64 {
        self.proc.pid().and_then(rss_anon_bytes).unwrap_or(0)
    }
}

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Bytes under `dir` (the raft-engine files).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..=MAX_BINDINGS).contains(&args.bindings),
        "--bindings must be 1..={MAX_BINDINGS} (home addresses come from 198.18.0.0/15)"
    );
    let bin = release_binary("haven-ha-node", "ha-node")?;
    let ctl = release_binary("haven-ha-node", "havenctl")?;
    let mut rec = Recorder::open("snapshot")?;
    let dir = tempfile::tempdir()?;
    let n = args.bindings;

    // Four transport addresses: three founders and the joiner.
    let listen: Vec<SocketAddr> = (0..4).map(|_| lo(free_port())).collect();
    let founders: Vec<(u64, SocketAddr)> = (1..=3u64).zip(listen.iter().copied()).collect();
    let mut nodes = Vec::new();
    for id in 1..=4u64 {
        let vip = Ipv4Addr::new(127, 0, 0, 60 + id as u8);
        let port = free_port();
        let me = listen[(id - 1) as usize];
        let mut peers = founders.clone();
        if id == 4 {
            peers.push((4, me));
        }
        let data_dir = dir.path().join(format!("raft-{id}"));
        let spec = NodeSpec::new(id, lo(free_port()), lo(free_port()))
            .realm(
                RealmSpec {
                    port,
                    ..RealmSpec::new("bench", vip, "198.18.0.0/15")
                }
                .with_home_address_sas(HOME_BASE, n, SPI, KEY),
            )
            .cluster(ClusterSpec {
                snapshot_every: args.snapshot_every,
                join: id == 4,
                ..ClusterSpec::raft("bench", me, &data_dir, peers)
            });
        let config = dir.path().join(format!("node-{id}.toml"));
        std::fs::write(&config, spec.toml())?;
        let spawn = |spec: &NodeSpec| -> anyhow::Result<Process> {
            let p = Process::spawn(
                &format!("ha-node-{}", spec.id),
                Spec::new(&bin)
                    .arg("--config")
                    .arg(&config)
                    .env("RUST_LOG", node_log_level()),
                None,
            )?;
            await_metric(
                &spec.metrics_url(),
                None,
                "haven_build_info",
                &[],
                |v| v == 1.0,
                Duration::from_secs(60),
            )
            .with_context(|| format!("node {} did not start", spec.id))?;
            Ok(p)
        };
        // The joiner starts only after the load (its RSS then measures a
        // table built from the snapshot alone).
        if id == 4 {
            nodes.push((spec, SocketAddrV4::new(vip, port), None, data_dir, config));
        } else {
            let p = spawn(&spec)?;
            nodes.push((
                spec,
                SocketAddrV4::new(vip, port),
                Some(p),
                data_dir,
                config,
            ));
        }
    }
    let mut members: Vec<Node> = Vec::new();
    let mut joiner_parts = None;
    for (spec, target, proc, data_dir, config) in nodes {
        match proc {
            Some(proc) => members.push(Node {
                spec,
                target,
                proc,
                data_dir,
            }),
            None => joiner_parts = Some((spec, target, data_dir, config)),
        }
    }
    let (jspec, jtarget, jdir, jconfig) = joiner_parts.context("joiner spec")?;
    for m in &members {
        await_metric(
            &m.spec.metrics_url(),
            None,
            "haven_raft_leader_id",
            &[],
            |v| v > 0.0,
            Duration::from_secs(30),
        )
        .with_context(|| format!("node {} knows no raft leader", m.spec.id))?;
    }
    let rss0: Vec<u64> = members.iter().map(Node::rss).collect();
    let anon0: Vec<u64> = members.iter().map(Node::anon).collect();

    // Load.
    let targets: Vec<SocketAddrV4> = members.iter().map(|m| m.target).collect();
    let mut load = ClosedLoop::new(
        &targets,
        HOME_BASE,
        n,
        64,
        (SPI, KEY),
        1800,
        Ipv4Addr::LOCALHOST,
    )?;
    load.window = args.window.max(1);
    let ph = load.phase();
    println!(
        "loaded {} bindings in {:.1} s ({:.0} reg/s; {} denied, {} gave up)",
        ph.latencies.len(),
        ph.wall.as_secs_f64(),
        ph.rate(),
        ph.denied,
        ph.gave_up
    );
    anyhow::ensure!(
        ph.latencies.len() == n,
        "only {} of {n} registrations accepted",
        ph.latencies.len()
    );
    for m in &members {
        await_metric(
            &m.spec.metrics_url(),
            None,
            "haven_bindings",
            &[("realm", "bench")],
            |v| v as usize == n,
            BOUND,
        )
        .with_context(|| format!("node {} never reached {n} bindings", m.spec.id))?;
    }
    let rss1: Vec<u64> = members.iter().map(Node::rss).collect();
    let anon1: Vec<u64> = members.iter().map(Node::anon).collect();
    let growth = |after: &[u64], before: &[u64]| -> Vec<f64> {
        after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / n as f64)
            .collect()
    };
    let per_binding = growth(&rss1, &rss0);
    let anon_per_binding = growth(&anon1, &anon0);
    let leader = members
        .iter()
        .find_map(|m| m.metric("haven_raft_leader_id", &[]))
        .map_or(0, |l| l as u64);
    let leader_node = members
        .iter()
        .find(|m| m.spec.id == leader)
        .context("leader not among the members")?;
    let taken = leader_node
        .metric("haven_raft_snapshots_taken_total", &[])
        .unwrap_or(0.0);
    let leader_disk = dir_bytes(&leader_node.data_dir);

    // The joiner.
    let mut joiner = Node {
        proc: Process::spawn(
            "ha-node-4",
            Spec::new(&bin)
                .arg("--config")
                .arg(&jconfig)
                .env("RUST_LOG", node_log_level()),
            None,
        )?,
        spec: jspec,
        target: jtarget,
        data_dir: jdir,
    };
    await_metric(
        &joiner.spec.metrics_url(),
        None,
        "haven_build_info",
        &[],
        |v| v == 1.0,
        Duration::from_secs(60),
    )
    .context("joiner did not start")?;
    let jrss0 = joiner.rss();
    let janon0 = joiner.anon();
    let addr = joiner
        .spec
        .cluster
        .as_ref()
        .map(|c| c.listen.to_string())
        .context("joiner has no cluster section")?;
    // Followers record the address, the leader proposes (leader last).
    let mut order: Vec<&Node> = members.iter().filter(|m| m.spec.id != leader).collect();
    order.push(leader_node);
    let mut added = None;
    for m in order {
        let out = Command::new(&ctl)
            .arg("--admin")
            .arg(m.spec.admin.to_string())
            .args(["members", "add", "4", &addr])
            .output()?;
        if m.spec.id == leader {
            anyhow::ensure!(
                out.status.success(),
                "members add on the leader: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            added = Some(Instant::now());
        }
    }
    let added = added.context("leader not asked")?;
    await_metric(
        &joiner.spec.metrics_url(),
        None,
        "haven_bindings",
        &[("realm", "bench")],
        |v| v as usize == n,
        BOUND,
    )
    .context("the joiner never held every binding")?;
    let transfer = added.elapsed();
    let jtext = scrape(&joiner.spec.metrics_url(), None).unwrap_or_default();
    let snap_sum = metric(&jtext, "haven_raft_snapshot_bytes_sum", &[]).unwrap_or(0.0);
    let snap_count = metric(&jtext, "haven_raft_snapshot_bytes_count", &[]).unwrap_or(0.0);
    let install_sum = metric(&jtext, "haven_raft_snapshot_install_seconds_sum", &[]).unwrap_or(0.0);
    let received = metric(&jtext, "haven_raft_snapshots_received_total", &[]).unwrap_or(0.0);
    let snap_bytes = if snap_count > 0.0 {
        snap_sum / snap_count
    } else {
        0.0
    };
    let install = if snap_count > 0.0 {
        install_sum / snap_count
    } else {
        0.0
    };
    let jrss = joiner.rss();
    let joiner_disk = dir_bytes(&joiner.data_dir);
    let jper = jrss.saturating_sub(jrss0) as f64 / n as f64;
    let janon = joiner.anon().saturating_sub(janon0) as f64 / n as f64;

    println!();
    println!(
        "snapshot benchmark: {n} bindings, 3 raft members + 1 joiner, snapshot_every {}, {} cores",
        args.snapshot_every,
        rec.cores()
    );
    println!(
        "leader {leader}: {taken:.0} snapshots taken, raft-engine dir {:.1} MB",
        leader_disk as f64 / 1e6
    );
    println!(
        "joiner: {received:.0} snapshot(s) received, {:.1} MB each ({:.1} B/binding), install {:.3} s, \
         all {n} bindings {:.2} s after members add; raft-engine dir {:.1} MB",
        snap_bytes / 1e6,
        snap_bytes / n as f64,
        install,
        transfer.as_secs_f64(),
        joiner_disk as f64 / 1e6
    );
    for ((m, b), a) in members.iter().zip(&per_binding).zip(&anon_per_binding) {
        println!(
            "node {}: RSS growth {b:.0} B/binding (anonymous {a:.0}), RSS {:.1} MB",
            m.spec.id,
            rss1.get((m.spec.id - 1) as usize).copied().unwrap_or(0) as f64 / 1e6
        );
    }
    println!(
        "joiner: RSS growth {jper:.0} B/binding after the install (anonymous {janon:.0}), RSS {:.1} MB",
        jrss as f64 / 1e6
    );
    let extra = serde_json::json!({
        "bindings": n,
        "snapshot_every": args.snapshot_every,
        "snapshots_received": received,
    });
    rec.figure("snapshot_bytes", snap_bytes, "bytes", extra.clone())?;
    rec.figure(
        "snapshot_bytes_per_binding",
        snap_bytes / n as f64,
        "bytes",
        extra.clone(),
    )?;
    rec.figure("snapshot_install_seconds", install, "s", extra.clone())?;
    rec.figure(
        "join_until_all_bindings_seconds",
        transfer.as_secs_f64(),
        "s",
        extra.clone(),
    )?;
    rec.figure(
        "leader_raft_dir_bytes",
        leader_disk as f64,
        "bytes",
        extra.clone(),
    )?;
    rec.figure(
        "joiner_raft_dir_bytes",
        joiner_disk as f64,
        "bytes",
        extra.clone(),
    )?;
    for (m, b) in members.iter().zip(&per_binding) {
        rec.figure(
            &format!("rss_growth_per_binding_member_{}", m.spec.id),
            *b,
            "bytes",
            extra.clone(),
        )?;
    }
    for (m, a) in members.iter().zip(&anon_per_binding) {
        rec.figure(
            &format!("rss_anon_growth_per_binding_member_{}", m.spec.id),
            *a,
            "bytes",
            extra.clone(),
        )?;
    }
    rec.figure(
        "rss_anon_growth_per_binding_joiner",
        janon,
        "bytes",
        extra.clone(),
    )?;
    rec.figure("rss_growth_per_binding_joiner", jper, "bytes", extra)?;
    println!("results appended to {}", rec.path().display());
    for mut m in members {
        let _ = m.proc.sigkill();
    }
    let _ = joiner.proc.sigkill();
    Ok(())
}
