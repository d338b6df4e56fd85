//! Dispatcher health follows readiness (DESIGN.md § 5, § 9;
//! `ha-node/src/raft/node.rs`, "Readiness"), with the real daemon on
//! loopback and a fake dispatcher socket:
//!
//! * `a_node_without_a_leader_does_not_advertise_up` (no root): node 1 of a
//!   three-voter Raft group starts alone. It can elect no leader, so every
//!   health advert it sends — the very first one included, before its
//!   driver ran once — carries priority 0, which the dispatcher's health
//!   tracker treats as "not in the table" (`dispatcher/src/health.rs`:
//!   Draining), and `haven_ready` is 0. Once node 2 starts, the two elect a
//!   leader, node 1 catches up and only then advertises its capacity and
//!   reports `haven_ready 1`. (Before, a restarted node advertised its
//!   capacity from its first advert, while it could not answer: the
//!   failover benchmark's 5 047 unanswered transmissions after leader
//!   kills, BENCHMARKS.md.)

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Instant;

use haven_cluster_tests::fleet::{ClusterSpec, DispatchSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::supervisor::{await_metric, free_port};
use haven_proto::vrrp::{VrrpPacket, VrrpRepr};

mod common;
use common::node::{self, BOUND, loopback, scrape_metric};

const KEY: &[u8] = b"readiness-advert-key";
/// Capacity the node advertises when it can serve.
const CAPACITY: u8 = 100;
/// Adverts seen without a leader before the second node starts: 20 × 50 ms
/// is longer than the largest election timeout (20 ticks × 50 ms) the lone
/// node runs through meanwhile.
const LONELY_ADVERTS: usize = 20;

/// The next advert's priority, `None` when none came within the socket's
/// read timeout.
fn next_priority(disp: &UdpSocket) -> Option<u8> {
    let mut buf = [0u8; 128];
    let (n, from) = disp.recv_from(&mut buf).ok()?;
    let SocketAddr::V4(from) = from else {
        return None;
    };
    let p = VrrpPacket::new_checked(&buf[..n]).expect("a VRRP advert");
    let a = VrrpRepr::parse(&p, *from.ip(), Ipv4Addr::LOCALHOST).expect("valid advert");
    Some(a.priority)
}

#[test]
fn a_node_without_a_leader_does_not_advertise_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disp, disp_addr) = node::fake_dispatcher();
    let listen: Vec<SocketAddr> = (0..3).map(|_| loopback(free_port())).collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(listen.iter().copied()).collect();
    let spec = |id: u64| {
        let vip = Ipv4Addr::new(127, 0, 0, 150 + id as u8);
        let data_dir: PathBuf = dir.path().join(format!("raft-{id}"));
        let mut s = NodeSpec::new(id, loopback(free_port()), loopback(free_port()))
            .realm(
                RealmSpec {
                    port: free_port(),
                    ..RealmSpec::new("lab", vip, "198.18.0.0/16")
                }
                .with_home_address_sas(Ipv4Addr::new(198, 18, 2, 0), 4, 256, KEY),
            )
            .cluster(ClusterSpec::raft(
                "lab",
                listen[(id - 1) as usize],
                &data_dir,
                peers.clone(),
            ));
        if id == 1 {
            s = s.dispatch(DispatchSpec::l2(Ipv4Addr::LOCALHOST, vec![disp_addr], 50));
        }
        s
    };
    let (one, two) = (spec(1), spec(2));
    let dir1 = dir.path().join("n1");
    let dir2 = dir.path().join("n2");
    std::fs::create_dir_all(&dir1).expect("dir");
    std::fs::create_dir_all(&dir2).expect("dir");

    // Node 1 alone: never up.
    let config = one.write(&dir1).expect("write");
    let _n1 = node::spawn("ha-node-ready-1", &config, "info,raft=warn", None);
    let deadline = Instant::now() + BOUND;
    let mut seen = Vec::new();
    while seen.len() < LONELY_ADVERTS && Instant::now() < deadline {
        if let Some(p) = next_priority(&disp) {
            seen.push(p);
        }
    }
    assert_eq!(seen.len(), LONELY_ADVERTS, "node 1 advertised");
    assert!(
        seen.iter().all(|p| *p == 0),
        "no leader: every advert must be priority 0, got {seen:?}"
    );
    node::await_ready(&one, None).expect("node 1 runs");
    assert_eq!(scrape_metric(&one, "haven_raft_leader_id", &[]), 0.0);
    assert_eq!(scrape_metric(&one, "haven_ready", &[]), 0.0);

    // Node 2 joins it: a leader, node 1 catches up, then it is up.
    let _n2 = node::start(&two, &dir2, "info,raft=warn");
    let deadline = Instant::now() + BOUND;
    let mut up = false;
    while !up && Instant::now() < deadline {
        up = next_priority(&disp) == Some(CAPACITY);
    }
    assert!(up, "node 1 advertises its capacity once it can serve");
    await_metric(
        &one.metrics_url(),
        None,
        "haven_ready",
        &[],
        |v| v == 1.0,
        BOUND,
    )
    .expect("haven_ready 1 once up");
    assert_ne!(scrape_metric(&one, "haven_raft_leader_id", &[]), 0.0);
}
