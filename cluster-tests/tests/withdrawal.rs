//! Peer-death withdrawals end to end (docs/dispatcher.md, "Withdrawals"):
//! a three-node Raft cluster on loopback advertises to a dispatcher (encap
//! mode, no privileges needed); a follower is SIGKILLed, the survivors'
//! transports see its stream end and the reconnect refused, their
//! advertisers send withdrawals, and the dispatcher takes the node Down by
//! withdrawal — before its Master_Down_Interval (360 ms at 100 ms adverts)
//! would have, or the withdrawal would count as `ignored`, not `accepted`.
//! The survivors stay Up: a withdrawal names only the dead node.
//!
//! Two layouts: each node's Raft listener and advert source share its
//! unique loopback address (127.0.0.16x), so the advertiser names the peer
//! by its Raft host (`[[cluster.peer]] address` host = `[[node]] address`);
//! or the Raft network is apart (127.0.1.16x) and each `[[cluster.peer]]`
//! names its `dispatch_source`. Without that key the second layout's
//! withdrawals would name addresses the dispatcher does not know and count
//! `ignored`, and the test would fail on `accepted`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use haven_cluster_tests::fleet::{ClusterSpec, DispatchSpec, NodeSpec, RealmSpec, start_node};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for, workspace_binary,
};

const BOUND: Duration = Duration::from_secs(15);

fn lo(p: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, p))
}

fn spawn_dispatcher(dir: &Path, health: u16, metrics: u16, nodes: &[Ipv4Addr]) -> Process {
    let mut t = format!(
        "[dispatcher]\nvip = \"127.0.0.160\"\nport = {}\nmode = \"encap\"\nmanage_vip = false\n\
         address = \"127.0.0.1\"\nencap_port = {}\n\n[health]\nlisten_port = {health}\nrise = 1\n\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\n",
        free_port(),
        free_port(),
    );
    for (i, n) in nodes.iter().enumerate() {
        t.push_str(&format!(
            "[[node]]\nid = {}\naddress = \"{n}\"\nencap_port = {}\n\n",
            i + 1,
            free_port()
        ));
    }
    let path = dir.join("dispatcher.toml");
    std::fs::write(&path, t).expect("write the dispatcher config");
    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");
    Process::spawn(
        "dispatcher",
        Spec::new(bin)
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info"),
        None,
    )
    .expect("spawn dispatcher")
}

#[test]
fn a_killed_follower_is_withdrawn_by_its_peers() {
    killed_follower_is_withdrawn(false);
}

#[test]
fn a_killed_follower_on_a_separate_raft_network_is_withdrawn_by_its_dispatch_source() {
    killed_follower_is_withdrawn(true);
}

fn killed_follower_is_withdrawn(separate_raft_network: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs: Vec<Ipv4Addr> = (161..=163).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let health = free_port();
    let d_metrics = free_port();
    let disp = spawn_dispatcher(dir.path(), health, d_metrics, &addrs);
    let d_url = format!("http://127.0.0.1:{d_metrics}/metrics");

    let raft_net = if separate_raft_network { 1 } else { 0 };
    let raft: Vec<SocketAddr> = (161..=163)
        .map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, raft_net, i), free_port())))
        .collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(raft.iter().copied()).collect();
    let dispatch_sources: Vec<(u64, Ipv4Addr)> = if separate_raft_network {
        (1..=3).zip(addrs.iter().copied()).collect()
    } else {
        Vec::new()
    };
    let specs: Vec<NodeSpec> = (1..=3u64)
        .map(|id| {
            let me = addrs[id as usize - 1];
            let data = dir.path().join(format!("raft-{id}"));
            NodeSpec::new(id, lo(free_port()), lo(free_port()))
                .realm(RealmSpec {
                    port: free_port(),
                    ..RealmSpec::new("outer", me, "198.51.100.0/24")
                })
                .cluster(ClusterSpec {
                    dispatch_sources: dispatch_sources.clone(),
                    ..ClusterSpec::raft("withdrawal", raft[id as usize - 1], &data, peers.clone())
                })
                .dispatch(DispatchSpec::l2(
                    me,
                    // The dispatcher's own address: the checksum covers it.
                    vec![SocketAddrV4::new(Ipv4Addr::LOCALHOST, health)],
                    100,
                ))
        })
        .collect();
    let mut nodes: Vec<Process> = specs
        .iter()
        .map(|s| start_node(s, dir.path(), None).expect("start ha-node"))
        .collect();

    // All three serving (a leader, every node ready): Up at the dispatcher.
    for node in ["1", "2", "3"] {
        await_metric(
            &d_url,
            None,
            "haven_dispatcher_node_up",
            &[("node", node)],
            |v| v == 1.0,
            BOUND,
        )
        .unwrap_or_else(|e| panic!("node {node} Up: {e}\n{}", disp.log_tail(30)));
    }
    // The control loop's scheduling delay is exported (docs/operations.md);
    // on this idle loopback set-up it is far below a down interval.
    await_metric(
        &d_url,
        None,
        "haven_dispatcher_control_lag_seconds",
        &[],
        |v| (0.0..0.36).contains(&v),
        BOUND,
    )
    .expect("the control loop's lag is exported, below the down interval");
    let mut follower = None;
    wait_for("a follower", BOUND, || {
        follower = specs.iter().position(|s| {
            scrape(&s.metrics_url(), None)
                .ok()
                .and_then(|t| metric(&t, "haven_raft_is_leader", &[]))
                == Some(0.0)
        });
        follower.is_some()
    })
    .expect("a follower");
    let k = follower.expect("follower");
    let victim = (k + 1).to_string();
    assert_eq!(
        scrape(&d_url, None).ok().and_then(|t| metric(
            &t,
            "haven_dispatcher_withdrawals_total",
            &[]
        )),
        None,
        "no withdrawal while every node lives"
    );

    nodes[k].sigkill().expect("SIGKILL the follower");

    await_metric(
        &d_url,
        None,
        "haven_dispatcher_withdrawals_total",
        &[("result", "accepted")],
        |v| v >= 1.0,
        BOUND,
    )
    .unwrap_or_else(|e| {
        panic!(
            "the dispatcher accepts a withdrawal: {e}\n{}",
            disp.log_tail(30)
        )
    });
    await_metric(
        &d_url,
        None,
        "haven_dispatcher_node_up",
        &[("node", &victim)],
        |v| v == 0.0,
        BOUND,
    )
    .expect("the killed node is out of the table");
    let log = disp.log();
    assert!(
        log.contains(&format!("node{victim}")) && log.contains("Withdrawn"),
        "the dispatcher logs the Withdrawn reason:\n{}",
        disp.log_tail(30)
    );
    // The repeats, from two reporters, find it Down already: ignored.
    await_metric(
        &d_url,
        None,
        "haven_dispatcher_withdrawals_total",
        &[("result", "ignored")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("later withdrawals are ignored");
    for (i, s) in specs.iter().enumerate().filter(|(i, _)| *i != k) {
        let t = scrape(&s.metrics_url(), None).expect("scrape a survivor");
        assert!(
            metric(
                &t,
                "haven_raft_peer_connect_refused_total",
                &[("peer", &victim)]
            )
            .is_some_and(|v| v >= 1.0),
            "survivor {} saw the reconnect refused",
            i + 1
        );
        let up = scrape(&d_url, None).ok().and_then(|t| {
            metric(
                &t,
                "haven_dispatcher_node_up",
                &[("node", &(i + 1).to_string())],
            )
        });
        assert_eq!(up, Some(1.0), "survivor {} stays Up", i + 1);
    }
    assert_eq!(
        scrape(&d_url, None).ok().and_then(|t| metric(
            &t,
            "haven_dispatcher_withdrawals_total",
            &[("result", "refused")]
        )),
        None,
        "nothing refused: every withdrawal came from a configured node"
    );
}
