//! The dispatcher pair in a rack (issue "Dispatcher", item 5; DESIGN.md §5,
//! §8). Needs root.
//!
//! ```text
//!  mn ── nat ── inet ── rtr ──rack switch── disp-a 198.18.0.2, disp-b 198.18.0.3 (VRRP for the VIP)
//!                              └─ node-1..3 198.18.0.11-13 (VIP 192.0.2.1 on lo, arp_ignore)
//! ```
//!
//! `rtr` routes the VIP onto the rack segment (it ARPs for it; only the VRRP
//! Master answers), the dispatcher forwards by MAC (l2 DSR) and the nodes
//! answer the mobile nodes directly. Asserted: registrations spread over the
//! three nodes; every reply the mobile nodes received came from
//! 192.0.2.1:434 (mnsim's pcap); after a node is SIGKILLed the dispatcher
//! steers around it within its down interval and a new round registers;
//! after the Master dispatcher is SIGKILLed the Backup takes the VIP within
//! Master_Down_Interval, repeats its gratuitous ARP (3 by default) and
//! registrations continue. The failover times are printed.
//!
//! Node health adverts: each `ha-node` runs its own advertiser (`[dispatch]`,
//! every 100 ms from its rack address to both dispatchers), so a SIGKILLed
//! node falls silent for real.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{DispatchSpec, NodeSpec, RealmSpec, start_node};
use haven_cluster_tests::mnsim::{self, HomeMode, Report, SimConfig};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, metric, scrape, workspace_binary,
};
use haven_cluster_tests::topo::{self, Lab, Topology, in_netns, leftovers};

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DISP: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
const MNS: usize = 60;
const KEY: &[u8] = b"dispatcher-rack-key";
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const METRICS: &str = "http://127.0.0.1:9435/metrics";

fn node_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + i)
}

fn topology() -> Lab {
    let mut t = Topology::builder()
        .host("mn")
        .host("nat")
        .host("inet")
        .host("rtr")
        .host("disp-a")
        .host("disp-b")
        .link(("mn", "198.19.0.2/24"), ("nat", "198.19.0.1/24"))
        .link(("nat", "203.0.113.2/24"), ("inet", "203.0.113.1/24"))
        .link(("inet", "198.18.254.1/24"), ("rtr", "198.18.254.2/24"))
        .route("mn", "default", "198.19.0.1")
        .route("nat", "default", "203.0.113.1")
        .route("inet", "198.18.0.0/16", "198.18.254.2")
        .route("inet", "192.0.2.0/24", "198.18.254.2")
        .route("rtr", "default", "198.18.254.1")
        .route("disp-a", "default", "198.18.0.1")
        .route("disp-b", "default", "198.18.0.1")
        .router("nat")
        .router("inet")
        .router("rtr")
        .router("disp-a")
        .router("disp-b")
        .masquerade("nat", "inet")
        .expire_after(Duration::from_secs(170));
    for i in 1..=3u8 {
        let n = format!("node-{i}");
        t = t
            .host(&n)
            .loopback_addr(&n, "192.0.2.1/32")
            .dsr(&n)
            .route(&n, "default", "198.18.0.1");
    }
    let addrs: Vec<(String, String)> =
        std::iter::once(("rtr".to_owned(), "198.18.0.1/24".to_owned()))
            .chain(
                [("disp-a", DISP[0]), ("disp-b", DISP[1])]
                    .map(|(h, a)| (h.to_owned(), format!("{a}/24"))),
            )
            .chain((1..=3u8).map(|i| (format!("node-{i}"), format!("{}/24", node_addr(i)))))
            .collect();
    t = t.switch("rack", addrs.iter().map(|(h, a)| (h.as_str(), a.as_str())));
    let lab = t.build().expect("build the lab");
    // The VIP is on the segment: rtr ARPs for it and the VRRP Master answers.
    let dev = lab.iface("rtr", "rack").expect("rtr on rack").to_owned();
    let out = lab
        .exec(
            "rtr",
            ["ip", "route", "replace", "192.0.2.1/32", "dev", &dev],
        )
        .expect("route");
    assert!(out.status.success(), "{out:?}");
    lab
}

fn dispatcher_config(lab: &Lab, me: usize) -> String {
    let host = ["disp-a", "disp-b"][me];
    let dev = lab.iface(host, "rack").expect("iface");
    let mut t = format!(
        "[dispatcher]\nvip = \"{VIP}\"\nmode = \"l2\"\ninterface = \"{dev}\"\naddress = \"{}\"\n\n\
         [health]\nrise = 1\n\n[vrrp]\nvrid = 7\npriority = {}\ninterval_cs = 10\npeer = \"{}\"\n\n\
         [metrics]\nlisten = \"127.0.0.1:9435\"\n\n",
        DISP[me],
        [200, 100][me],
        DISP[1 - me]
    );
    for i in 1..=3u8 {
        t.push_str(&format!(
            "[[node]]\nid = {i}\naddress = \"{}\"\n\n",
            node_addr(i)
        ));
    }
    t
}

fn sim(lab: &Lab, pcap: &Path, seed: u64) -> Report {
    let mut sim = SimConfig::new(SocketAddrV4::new(VIP, 434), KEY.to_vec());
    sim.count = MNS;
    sim.rate = 300.0;
    sim.seed = seed;
    sim.home = HomeMode::Static { base: HOME_BASE };
    sim.spi = 1000;
    sim.udp_tunnel = true;
    sim.bind = vec![Ipv4Addr::new(198, 19, 0, 2)];
    sim.initial_timeout = Duration::from_millis(300);
    sim.max_attempts = 6;
    sim.pcap = Some(pcap.to_path_buf());
    // Registration counts on the nodes then equal mnsim's accepted count.
    sim.deregister = false;
    let mn_ns = lab.ns_name("mn").expect("mn").to_owned();
    in_netns(&mn_ns, || mnsim::run(&sim))
        .expect("enter mn")
        .expect("mnsim run")
}

/// Every datagram mnsim received (destination = the mobile node's LAN
/// address) came from VIP:434. Returns how many were checked.
fn replies_from_vip(pcap: &Path) -> usize {
    let b = std::fs::read(pcap).expect("pcap");
    let mut at = 24;
    let mut n = 0;
    while let Some(hdr) = b.get(at..at + 16) {
        let len = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
        let Some(p) = b.get(at + 16..at + 16 + len) else {
            break;
        };
        at += 16 + len;
        if p.len() < 28 || p[16..20] != [198, 19, 0, 2] {
            continue;
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let sport = u16::from_be_bytes([p[20], p[21]]);
        assert_eq!((src, sport), (VIP, 434), "a reply not from the VIP");
        n += 1;
    }
    n
}

fn accepted(lab: &Lab, i: u8) -> f64 {
    let ns = lab
        .ns_name(&format!("node-{i}"))
        .unwrap_or_default()
        .to_owned();
    scrape("http://127.0.0.1:9434/metrics", Some(&ns))
        .ok()
        .and_then(|t| metric(&t, "haven_registrations_total", &[("result", "accepted")]))
        .unwrap_or(0.0)
}

#[test]
fn dispatcher_pair_spreads_fails_over_nodes_and_itself() {
    if topo::skip_without_root() {
        return;
    }
    let lab = topology();
    let prefix = lab.prefix().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("build dispatcher");

    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let ns = lab.ns_name(&format!("node-{i}")).unwrap().to_owned();
        let spec = NodeSpec::new(
            u64::from(i),
            "127.0.0.1:4340".parse().unwrap(),
            "127.0.0.1:9434".parse().unwrap(),
        )
        .realm(
            RealmSpec::new("outer", VIP, "198.51.100.0/24")
                .with_home_address_sas(HOME_BASE, MNS, 1000, KEY),
        )
        .dispatch(DispatchSpec::l2(
            node_addr(i),
            DISP.iter().map(|d| SocketAddrV4::new(*d, 4341)).collect(),
            100,
        ));
        let ndir = dir.path().join(format!("n{i}"));
        std::fs::create_dir_all(&ndir).unwrap();
        nodes.push(start_node(&spec, &ndir, Some(&ns)).expect("start ha-node"));
    }
    let mut disps = Vec::new();
    for (k, host) in ["disp-a", "disp-b"].into_iter().enumerate() {
        let cfg = dir.path().join(format!("{host}.toml"));
        std::fs::write(&cfg, dispatcher_config(&lab, k)).unwrap();
        let ns = lab.ns_name(host).unwrap().to_owned();
        let p = Process::spawn(
            host,
            Spec::new(&bin)
                .arg("--config")
                .arg(&cfg)
                .env("RUST_LOG", "info"),
            Some(&ns),
        )
        .expect("spawn dispatcher");
        disps.push((p, ns));
    }
    let ns_a = disps[0].1.clone();
    let ns_b = disps[1].1.clone();
    await_metric(
        METRICS,
        Some(&ns_a),
        "haven_dispatcher_vrrp_state",
        &[],
        |v| v == 2.0,
        Duration::from_secs(10),
    )
    .expect("disp-a (priority 200) becomes Master");
    await_metric(
        METRICS,
        Some(&ns_b),
        "haven_dispatcher_vrrp_state",
        &[],
        |v| v == 1.0,
        Duration::from_secs(10),
    )
    .expect("disp-b is Backup");
    for i in 1..=3u8 {
        await_metric(
            METRICS,
            Some(&ns_a),
            "haven_dispatcher_node_up",
            &[("node", &i.to_string())],
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .expect("node up on disp-a");
    }

    // Round 1: spread, replies from the VIP.
    let pcap1 = dir.path().join("r1.pcap");
    let r1 = sim(&lab, &pcap1, 1);
    assert_eq!(r1.summary.registered, MNS as u64, "{}", r1.summary.table());
    assert!(replies_from_vip(&pcap1) >= MNS);
    let per_node: Vec<f64> = (1..=3).map(|i| accepted(&lab, i)).collect();
    assert!(per_node.iter().all(|&c| c >= 5.0), "spread: {per_node:?}");
    assert_eq!(
        per_node.iter().sum::<f64>() as usize,
        r1.summary.accepted as usize
    );

    // A node dies: the dispatcher steers around it.
    let t_kill = Instant::now();
    nodes[2].sigkill().expect("kill node-3");
    await_metric(
        METRICS,
        Some(&ns_a),
        "haven_dispatcher_node_up",
        &[("node", "3")],
        |v| v == 0.0,
        Duration::from_secs(5),
    )
    .expect("node-3 leaves the table");
    let node_gap = t_kill.elapsed();
    let before: Vec<f64> = (1..=2).map(|i| accepted(&lab, i)).collect();
    let pcap2 = dir.path().join("r2.pcap");
    let r2 = sim(&lab, &pcap2, 2);
    assert_eq!(r2.summary.registered, MNS as u64, "{}", r2.summary.table());
    let after: f64 = (1..=2).map(|i| accepted(&lab, i)).sum();
    assert_eq!(
        (after - before.iter().sum::<f64>()) as u64,
        r2.summary.accepted,
        "all on the survivors"
    );
    assert!(replies_from_vip(&pcap2) >= MNS);

    // The Master dispatcher dies: the Backup takes the VIP.
    let t_kill = Instant::now();
    disps[0].0.sigkill().expect("kill disp-a");
    await_metric(
        METRICS,
        Some(&ns_b),
        "haven_dispatcher_vrrp_state",
        &[],
        |v| v == 2.0,
        Duration::from_secs(5),
    )
    .expect("disp-b takes over");
    let vrrp_gap = t_kill.elapsed();
    // [RFC 5798 § 6.4.2] gratuitous ARP on takeover, repeated (default 3
    // at 100 ms) from the control loop's timers.
    await_metric(
        METRICS,
        Some(&ns_b),
        "haven_dispatcher_gratuitous_arps_total",
        &[],
        |v| v >= 3.0,
        Duration::from_secs(3),
    )
    .expect("disp-b repeats its gratuitous ARP");
    // Master_Down_Interval for priority 100 at 100 ms: 300 + 60.9 ms; allow
    // the 1 s metrics export and scrape latency on top.
    assert!(
        vrrp_gap < Duration::from_millis(1_500),
        "takeover took {vrrp_gap:?}"
    );
    let pcap3 = dir.path().join("r3.pcap");
    let r3 = sim(&lab, &pcap3, 3);
    assert_eq!(r3.summary.registered, MNS as u64, "{}", r3.summary.table());
    assert!(replies_from_vip(&pcap3) >= MNS);
    println!(
        "node failover: dispatcher steered around node-3 after {node_gap:?}; dispatcher failover: {vrrp_gap:?}"
    );

    drop(disps);
    drop(nodes);
    drop(lab);
    assert!(
        leftovers(&prefix).is_empty(),
        "namespaces left: {:?}",
        leftovers(&prefix)
    );
}
