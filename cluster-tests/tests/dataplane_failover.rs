//! The data plane behind the dispatcher (issue "Dispatcher", item 1 and
//! done-when; issue "Data plane", item 1 and done-when; DESIGN.md §5, §6).
//! Needs root.
//!
//! ```text
//!  mn 198.19.0.2 ── nat ── inet ── rtr ──rack── disp 198.18.0.2 (VIP 192.0.2.1; gateway for 198.51.100.0/24)
//!  mn2 198.18.2.2 ──┘        cn ──┘      └─ node-1..3 198.18.0.11-13 (VIP on lo, raft, [dataplane])
//! ```
//!
//! `rtr` routes the VIP onto the rack (the dispatcher answers its ARP) and
//! the home prefix 198.51.100.0/24 *via the VIP*, so correspondent traffic
//! reaches the dispatcher's MAC; the dispatcher hands it to the node chosen
//! by Maglev on the home address. The three nodes replicate bindings with
//! Raft, so any of them forwards for any mobile node.
//!
//! * `registrations_data_and_ip_in_ip_follow_the_dispatcher`: for each of
//!   four mobile nodes behind the NAT, the node whose registration counter
//!   rose is the node whose RFC 3519 reverse-data counter rises for the
//!   data from the same source port (issue "Dispatcher", done-when); a
//!   mobile node without NAT sends IP in IP to the VIP: exactly one node
//!   gets it (the dispatcher's per-node `ipip` counter and that node's
//!   reverse counter agree) and the inner packets reach `cn` from the home
//!   address; `cn` → home address goes through the dispatcher's gateway
//!   path and arrives at the mobile node inside IP in IP.
//! * `node_killed_under_bidirectional_stream`: three mobile nodes behind
//!   the NAT stream to and from `cn` over the UDP tunnel; the node carrying
//!   the most of it is SIGKILLed; every flow in both directions resumes on
//!   the survivors; the largest gap is printed and bounded.
//! * `gateway_refuses_a_forwarding_kernel`: with IP forwarding on the rack
//!   interface the dispatcher exits 69 naming the sysctl to set.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_cluster_tests::datapath::{
    self, flow, inner_udp, raw_ipip, raw_recv, raw_send, received, spawn_dataplane_node, stream,
    tunnel_data, tunnel_reader, udp_in,
};
use haven_cluster_tests::fleet::{ClusterSpec, DispatchSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{MnConfig, MobileNode};
use haven_cluster_tests::mnsim::{DATA_SRC_PORT, DataSink, data_payload, unix_now};
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, metric, scrape, wait_for, workspace_binary,
};
use haven_cluster_tests::topo::{self, Lab, Topology, in_netns, leftovers, racks};
use haven_proto::ip::{self, Ipv4Packet};

const VIP: Ipv4Addr = racks::plan::VIP;
const HA: SocketAddrV4 = SocketAddrV4::new(VIP, 434);
const DISP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const KEY: &[u8] = b"dataplane-failover-key";
const SPI: u32 = 1000;
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const MN: Ipv4Addr = racks::plan::MN;
const CN: Ipv4Addr = racks::plan::CN;
const MN2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const SINK_PORT: u16 = 9000;
const MN_PORT: u16 = 7000;
const BOUND: Duration = Duration::from_secs(10);
const DISP_METRICS: &str = "http://127.0.0.1:9435/metrics";

fn hoa(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + k)
}

struct Rig {
    lab: Lab,
    nodes: Vec<Option<Process>>,
    node_ns: Vec<String>,
    disp: Option<Process>,
    disp_ns: String,
    _dir: tempfile::TempDir,
}

fn sh(lab: &Lab, host: &str, args: &[&str]) {
    let out = lab.exec(host, args.iter().copied()).expect("exec");
    assert!(out.status.success(), "{host}: {args:?}: {out:?}");
}

/// The lab, three raft nodes with the data plane on, one dispatcher (no
/// VRRP: active at once) that is the home prefix's gateway.
fn rig() -> Rig {
    let mut t = Topology::builder()
        .host("mn")
        .host("nat")
        .host("inet")
        .host("rtr")
        .host("cn")
        .host("mn2")
        .host("disp")
        .link(("mn", "198.19.0.2/24"), ("nat", "198.19.0.1/24"))
        .link(("nat", "203.0.113.2/24"), ("inet", "203.0.113.1/24"))
        .link(("inet", "198.18.254.1/24"), ("rtr", "198.18.254.2/24"))
        .link(("rtr", "198.18.1.1/24"), ("cn", "198.18.1.2/24"))
        .link(("inet", "198.18.2.1/24"), ("mn2", "198.18.2.2/24"))
        .route("mn", "default", "198.19.0.1")
        .route("nat", "default", "203.0.113.1")
        .route("inet", "198.18.0.0/16", "198.18.254.2")
        .route("inet", "192.0.2.0/24", "198.18.254.2")
        .route("inet", "198.51.100.0/24", "198.18.254.2")
        .route("rtr", "default", "198.18.254.1")
        .route("cn", "default", "198.18.1.1")
        .route("mn2", "default", "198.18.2.1")
        .route("disp", "default", "198.18.0.1")
        .router("nat")
        .router("inet")
        .router("rtr")
        .masquerade("nat", "inet")
        .expire_after(Duration::from_secs(120));
    for i in 1..=3u8 {
        let n = racks::node_name(i);
        t = t
            .host(&n)
            .loopback_addr(&n, "192.0.2.1/32")
            .dsr(&n)
            // The node routes the home prefix into its TUN device.
            .router(&n)
            .route(&n, "default", "198.18.0.1");
    }
    let members: Vec<(String, String)> = [
        ("rtr".to_owned(), "198.18.0.1/24".to_owned()),
        ("disp".to_owned(), format!("{DISP}/24")),
    ]
    .into_iter()
    .chain((1..=3u8).map(|i| (racks::node_name(i), format!("{}/24", racks::node_addr(i)))))
    .collect();
    t = t.switch(
        "rack",
        members.iter().map(|(h, a)| (h.as_str(), a.as_str())),
    );
    let lab = t.build().expect("build the lab");
    let rtr_if = lab.iface("rtr", "rack").expect("rtr on rack").to_owned();
    // The VIP is on the segment (the dispatcher answers its ARP) and the
    // home prefix goes via the VIP: the dispatcher is its gateway.
    sh(
        &lab,
        "rtr",
        &["ip", "route", "replace", "192.0.2.1/32", "dev", &rtr_if],
    );
    sh(
        &lab,
        "rtr",
        &[
            "ip",
            "route",
            "replace",
            "198.51.100.0/24",
            "via",
            "192.0.2.1",
        ],
    );
    let disp_if = lab.iface("disp", "rack").expect("disp on rack").to_owned();
    // The dispatcher refuses to start as a gateway while its kernel would
    // forward the same packets (a namespace may inherit forwarding=1).
    sh(
        &lab,
        "disp",
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{disp_if}.forwarding=0"),
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let raft = |i: u8| SocketAddr::from((racks::node_addr(i), 7400));
    let peers: Vec<(u64, SocketAddr)> = (1..=3u8).map(|i| (u64::from(i), raft(i))).collect();
    let mut nodes = Vec::new();
    let mut node_ns = Vec::new();
    let mut specs = Vec::new();
    for i in 1..=3u8 {
        let ns = lab.ns_name(&racks::node_name(i)).unwrap().to_owned();
        let data: PathBuf = dir.path().join(format!("raft-{i}"));
        let spec = NodeSpec::new(
            u64::from(i),
            "127.0.0.1:4340".parse().unwrap(),
            "127.0.0.1:9434".parse().unwrap(),
        )
        .realm(
            RealmSpec::new("home", VIP, "198.51.100.0/24")
                .with_home_address_sas(HOME_BASE, 16, SPI, KEY),
        )
        .dispatch(DispatchSpec::l2(
            racks::node_addr(i),
            vec![SocketAddrV4::new(DISP, 4341)],
            100,
        ))
        .cluster(ClusterSpec::raft("dp", raft(i), &data, peers.clone()));
        let p =
            spawn_dataplane_node(&spec, dir.path(), &ns, "info,raft=warn").expect("start ha-node");
        nodes.push(Some(p));
        node_ns.push(ns);
        specs.push(spec);
    }
    for (spec, ns) in specs.iter().zip(&node_ns) {
        datapath::await_ready(spec, ns).expect("ha-node up");
    }

    let mut cfg = format!(
        "[dispatcher]\nvip = \"{VIP}\"\nmode = \"l2\"\ninterface = \"{disp_if}\"\n\
         address = \"{DISP}\"\nhome_prefixes = [\"198.51.100.0/24\"]\n\n\
         [health]\nrise = 1\n\n[metrics]\nlisten = \"127.0.0.1:9435\"\n\n"
    );
    for i in 1..=3u8 {
        cfg.push_str(&format!(
            "[[node]]\nid = {i}\naddress = \"{}\"\n\n",
            racks::node_addr(i)
        ));
    }
    let cfg_path = dir.path().join("disp.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let disp_ns = lab.ns_name("disp").unwrap().to_owned();
    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("dispatcher binary");
    let disp = Process::spawn(
        "dispatcher",
        Spec::new(bin)
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "info"),
        Some(&disp_ns),
    )
    .expect("spawn dispatcher");
    for i in 1..=3u8 {
        await_metric(
            DISP_METRICS,
            Some(&disp_ns),
            "haven_dispatcher_node_up",
            &[("node", &i.to_string())],
            |v| v == 1.0,
            BOUND,
        )
        .expect("node up on the dispatcher");
    }
    Rig {
        lab,
        nodes,
        node_ns,
        disp: Some(disp),
        disp_ns,
        _dir: dir,
    }
}

impl Rig {
    fn ns(&self, host: &str) -> String {
        self.lab.ns_name(host).expect("host").to_owned()
    }

    /// `name{labels}` on node `i` (1-based); 0 when absent or down.
    fn node_metric(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape("http://127.0.0.1:9434/metrics", Some(&self.node_ns[i - 1]))
            .ok()
            .and_then(|t| metric(&t, name, labels))
            .unwrap_or(0.0)
    }

    fn per_node(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        (1..=3).map(|i| self.node_metric(i, name, labels)).collect()
    }

    fn registrations(&self) -> Vec<f64> {
        self.per_node("haven_registrations_total", &[("result", "accepted")])
    }

    fn reverse(&self, encap: &str) -> Vec<f64> {
        self.per_node(
            "haven_dataplane_packets_total",
            &[("direction", "reverse"), ("encap", encap)],
        )
    }

    /// The dispatcher's per-node packet counters on `path`.
    fn dispatched(&self, path: &str) -> Vec<f64> {
        let text = scrape(DISP_METRICS, Some(&self.disp_ns)).unwrap_or_default();
        (1..=3)
            .map(|i| {
                metric(
                    &text,
                    "haven_dispatcher_packets_total",
                    &[("node", &i.to_string()), ("path", path)],
                )
                .unwrap_or(0.0)
            })
            .collect()
    }

    /// The dispatcher's and the nodes' data-path metrics, for a failure.
    fn dump(&self) {
        let pick = |t: String| -> String {
            t.lines()
                .filter(|l| l.starts_with("haven_dispatcher_") || l.starts_with("haven_dataplane_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let d = scrape(DISP_METRICS, Some(&self.disp_ns)).unwrap_or_default();
        eprintln!("dispatcher:\n{}", pick(d));
        for (i, ns) in self.node_ns.iter().enumerate() {
            let t = scrape("http://127.0.0.1:9434/metrics", Some(ns)).unwrap_or_default();
            eprintln!("node-{}:\n{}", i + 1, pick(t));
        }
    }

    fn finish(mut self) {
        let prefix = self.lab.prefix().to_owned();
        drop(self.disp.take());
        self.nodes.clear();
        drop(self.lab);
        assert!(
            leftovers(&prefix).is_empty(),
            "namespaces left: {:?}",
            leftovers(&prefix)
        );
    }
}

/// The one index (0-based) whose value grew from `before` to `after`.
fn the_one_that_grew(before: &[f64], after: &[f64]) -> Option<usize> {
    let grew: Vec<usize> = (0..before.len())
        .filter(|&i| after[i] > before[i])
        .collect();
    match grew.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Registers `core` over `sock`; returns the accepted home address.
fn register(core: &mut MobileNode, sock: &UdpSocket) -> Result<Ipv4Addr, String> {
    datapath::register(core, sock, None, BOUND)
}

/// Plain UDP datagrams on `sock` (cn's sink) into `sink` until `stop`.
fn plain_reader(
    sock: UdpSocket,
    sink: Arc<Mutex<DataSink>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, SocketAddr::V4(src))) = sock.recv_from(&mut buf) {
                sink.lock().unwrap().record(unix_now(), src, &buf[..n]);
            }
        }
    })
}

/// IP-in-IP packets from the VIP on `fd` into `sink` (inner UDP) until
/// `stop`.
fn ipip_reader(
    fd: OwnedFd,
    sink: Arc<Mutex<DataSink>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Some(n) = raw_recv(&fd, &mut buf) else {
                continue;
            };
            let Ok(outer) = Ipv4Packet::new_checked(&buf[..n]) else {
                continue;
            };
            if outer.protocol() != ip::protocol::IPIP || outer.src_addr() != VIP {
                continue;
            }
            if let Some((src, payload)) = inner_udp(outer.payload()) {
                sink.lock().unwrap().record(unix_now(), src, &payload);
            }
        }
    })
}

#[test]
fn registrations_data_and_ip_in_ip_follow_the_dispatcher() {
    if topo::skip_without_root() {
        return;
    }
    let rig = rig();
    let (mn_ns, mn2_ns, cn_ns) = (rig.ns("mn"), rig.ns("mn2"), rig.ns("cn"));
    let cn = SocketAddrV4::new(CN, SINK_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let at_cn = Arc::new(Mutex::new(DataSink::new()));
    let cn_reader = plain_reader(udp_in(&cn_ns, cn), at_cn.clone(), stop.clone());

    // (a) Registration and RFC 3519 data from one source port: one node.
    let mut served = Vec::new();
    for k in 0..4u8 {
        let sock = udp_in(&mn_ns, SocketAddrV4::new(MN, 0));
        let mut cfg = MnConfig::new(hoa(k), VIP, MN, SPI, KEY);
        cfg.udp_tunnel = true;
        cfg.reverse_tunnel = true;
        let mut core = MobileNode::new(cfg);
        let regs = rig.registrations();
        assert_eq!(register(&mut core, &sock), Ok(hoa(k)));
        let mut reg_node = None;
        wait_for("one node counts the registration", BOUND, || {
            reg_node = the_one_that_grew(&regs, &rig.registrations());
            reg_node.is_some()
        })
        .expect("registration counted on exactly one node");
        let rev = rig.reverse("udp");
        let from = SocketAddrV4::new(hoa(k), DATA_SRC_PORT);
        for seq in 0..20u64 {
            let m = tunnel_data(from, cn, &data_payload(u32::from(k), seq, unix_now(), 64));
            sock.send_to(&m, HA).unwrap();
        }
        let mut data_node = None;
        wait_for("one node decapsulates the data", BOUND, || {
            let now = rig.reverse("udp");
            data_node = the_one_that_grew(&rev, &now).filter(|&i| now[i] - rev[i] >= 20.0);
            data_node.is_some()
        })
        .expect("reverse data counted on exactly one node");
        assert_eq!(
            reg_node, data_node,
            "mobile node {k}: registration and tunnel data on different nodes"
        );
        wait_for("reverse data at cn", BOUND, || {
            received(&at_cn, u32::from(k)) >= 20
        })
        .expect("reverse data reaches cn");
        served.push(reg_node.unwrap_or(0) + 1);
    }

    // (c) IP in IP from a care-of address without NAT.
    let reg_sock = udp_in(&mn2_ns, SocketAddrV4::new(MN2, 0));
    let mut cfg = MnConfig::new(hoa(5), VIP, MN2, SPI, KEY);
    cfg.reverse_tunnel = true;
    let mut core = MobileNode::new(cfg);
    assert_eq!(register(&mut core, &reg_sock), Ok(hoa(5)));
    let raw = in_netns(&mn2_ns, raw_ipip)
        .expect("mn2 namespace")
        .expect("raw socket");
    let (d0, r0) = (rig.dispatched("ipip"), rig.reverse("ipip"));
    let mut inner = vec![0u8; ip::ipv4_udp_len(64)];
    for seq in 0..50u64 {
        let p = data_payload(50, seq, unix_now(), 64);
        ip::write_ipv4_udp(&mut inner, SocketAddrV4::new(hoa(5), DATA_SRC_PORT), cn, &p);
        raw_send(&raw, VIP, &inner).unwrap();
    }
    let mut ipip_node = None;
    wait_for(
        "IP in IP steered to one node and decapsulated",
        BOUND,
        || {
            let (d, r) = (rig.dispatched("ipip"), rig.reverse("ipip"));
            ipip_node = the_one_that_grew(&d0, &d)
                .filter(|&i| d[i] - d0[i] >= 50.0 && r[i] - r0[i] >= 50.0);
            ipip_node.is_some()
        },
    )
    .expect("IP in IP on exactly one node");
    wait_for("IP-in-IP inner packets at cn", BOUND, || {
        received(&at_cn, 50) >= 50
    })
    .expect("inner packets reach cn");
    assert_eq!(
        flow(&at_cn, 50).and_then(|f| f.source),
        Some(hoa(5)),
        "from the home address"
    );
    let i = ipip_node.unwrap_or(0);
    assert_eq!(
        rig.reverse("ipip")
            .iter()
            .enumerate()
            .filter(|(j, v)| *j != i && **v > r0[*j])
            .count(),
        0,
        "IP in IP decapsulated elsewhere too"
    );

    // cn → the home address through the dispatcher's gateway path: the
    // node forwards it into IP in IP to mn2.
    let at_mn2 = Arc::new(Mutex::new(DataSink::new()));
    let rx = in_netns(&mn2_ns, raw_ipip)
        .expect("mn2 namespace")
        .expect("raw socket");
    let mn2_reader = ipip_reader(rx, at_mn2.clone(), stop.clone());
    let h0 = rig.dispatched("home");
    let fwd = stream(
        udp_in(&cn_ns, SocketAddrV4::new(CN, 0)),
        SocketAddrV4::new(hoa(5), MN_PORT),
        200,
        stop.clone(),
        |seq| data_payload(51, seq, unix_now(), 64),
    );
    if wait_for("cn → home address at mn2", BOUND, || {
        received(&at_mn2, 51) >= 50
    })
    .is_err()
    {
        rig.dump();
        panic!("cn → home address did not reach mn2 through the gateway");
    }
    let mut home_node = None;
    wait_for("the gateway path counted on one node", BOUND, || {
        let h = rig.dispatched("home");
        home_node = the_one_that_grew(&h0, &h).filter(|&i| h[i] - h0[i] >= 50.0);
        home_node.is_some()
    })
    .expect("one node for one home address");
    assert_eq!(flow(&at_mn2, 51).and_then(|f| f.source), Some(CN));

    stop.store(true, Ordering::Relaxed);
    let sent = fwd.join().unwrap();
    cn_reader.join().unwrap();
    mn2_reader.join().unwrap();
    let text = scrape(DISP_METRICS, Some(&rig.disp_ns)).unwrap_or_default();
    for reason in [
        "malformed",
        "no_healthy_node",
        "unresolved_mac",
        "too_big",
        "not_active",
    ] {
        let v = metric(&text, "haven_dispatcher_drops_total", &[("reason", reason)]);
        assert!(v.unwrap_or(0.0) <= 0.0, "dispatcher drops {reason}: {v:?}");
    }
    eprintln!(
        "dataplane_failover: registration+data nodes {served:?}; IP in IP on node {}; \
         home address on node {}; cn sent {sent}, mn2 got {}",
        i + 1,
        home_node.unwrap_or(0) + 1,
        received(&at_mn2, 51)
    );
    rig.finish();
}

#[test]
fn node_killed_under_bidirectional_stream() {
    if topo::skip_without_root() {
        return;
    }
    let mut rig = rig();
    let (mn_ns, cn_ns) = (rig.ns("mn"), rig.ns("cn"));
    let cn = SocketAddrV4::new(CN, SINK_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let at_cn = Arc::new(Mutex::new(DataSink::new()));
    let at_mn = Arc::new(Mutex::new(DataSink::new()));
    let mut threads = Vec::new();
    let mut senders = Vec::new();
    let cn_reader = plain_reader(udp_in(&cn_ns, cn), at_cn.clone(), stop.clone());
    const MNS: u8 = 3;
    for k in 0..MNS {
        let sock = udp_in(&mn_ns, SocketAddrV4::new(MN, 0));
        let mut cfg = MnConfig::new(hoa(k), VIP, MN, SPI, KEY);
        cfg.udp_tunnel = true;
        cfg.reverse_tunnel = true;
        let mut core = MobileNode::new(cfg);
        assert_eq!(register(&mut core, &sock), Ok(hoa(k)));
        threads.push(tunnel_reader(
            sock.try_clone().unwrap(),
            at_mn.clone(),
            stop.clone(),
        ));
        // MN → cn, reverse-tunnelled (flow 100 + k) …
        let from = SocketAddrV4::new(hoa(k), DATA_SRC_PORT);
        let flow_id = 100 + u32::from(k);
        senders.push(stream(sock, HA, 200, stop.clone(), move |seq| {
            tunnel_data(from, cn, &data_payload(flow_id, seq, unix_now(), 64))
        }));
        // … and cn → MN through the gateway (flow 200 + k).
        let flow_id = 200 + u32::from(k);
        senders.push(stream(
            udp_in(&cn_ns, SocketAddrV4::new(CN, 0)),
            SocketAddrV4::new(hoa(k), MN_PORT),
            200,
            stop.clone(),
            move |seq| data_payload(flow_id, seq, unix_now(), 64),
        ));
    }
    let flows: Vec<(u32, &Arc<Mutex<DataSink>>)> = (0..u32::from(MNS))
        .flat_map(|k| [(100 + k, &at_cn), (200 + k, &at_mn)])
        .collect();
    wait_for("every flow both ways", BOUND, || {
        flows.iter().all(|(id, s)| received(s, *id) >= 100)
    })
    .expect("streams flowing");

    // The node carrying the most of it (both paths, over one export).
    let load = |r: &Rig| -> Vec<f64> {
        let (u, h) = (r.dispatched("udp"), r.dispatched("home"));
        u.iter().zip(&h).map(|(a, b)| a + b).collect()
    };
    let l0 = load(&rig);
    let mut l1 = l0.clone();
    wait_for("a metrics export with the streams", BOUND, || {
        l1 = load(&rig);
        l1.iter().zip(&l0).filter(|(a, b)| a > b).count() > 0
    })
    .expect("dispatcher counters move");
    let victim = (0..3)
        .max_by(|&a, &b| (l1[a] - l0[a]).total_cmp(&(l1[b] - l0[b])))
        .unwrap_or(0);
    let before: Vec<u64> = flows.iter().map(|(id, s)| received(s, *id)).collect();
    let t_kill = Instant::now();
    rig.nodes[victim]
        .as_mut()
        .expect("node")
        .sigkill()
        .expect("SIGKILL the node");
    wait_for(
        "every flow both ways resumes on the survivors",
        BOUND,
        || {
            flows
                .iter()
                .zip(&before)
                .all(|((id, s), b)| received(s, *id) >= b + 200)
        },
    )
    .expect("both directions resume after the node died");
    let resumed = t_kill.elapsed();
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    cn_reader.join().unwrap();
    let gaps: Vec<(u32, Duration)> = flows
        .iter()
        .map(|(id, s)| (*id, flow(s, *id).map_or(Duration::ZERO, |f| f.max_gap)))
        .collect();
    let worst = gaps.iter().map(|(_, g)| *g).max().unwrap_or_default();
    eprintln!(
        "dataplane_failover: SIGKILLed node-{} (load {:?}); all {} flows resumed, \
         both ways, within {resumed:?}; max gap per flow (100+ = MN→cn, 200+ = cn→MN): {gaps:?}",
        victim + 1,
        l1.iter().zip(&l0).map(|(a, b)| a - b).collect::<Vec<_>>(),
        flows.len()
    );
    // Out of the table within milliseconds when its Raft peers withdraw it
    // (a refused reconnect), else after 3 × 100 ms + skew (361 ms) of
    // silence; anything past 2 s is a failover that did not happen.
    assert!(worst < Duration::from_secs(2), "gap {worst:?}");
    // The victim carried part of the streams (so the failover was real,
    // however short the gap it left).
    assert!(
        l1[victim] > l0[victim],
        "the killed node carried nothing: load {l0:?} → {l1:?}"
    );
    let text = scrape(DISP_METRICS, Some(&rig.disp_ns)).unwrap_or_default();
    assert_eq!(
        metric(
            &text,
            "haven_dispatcher_node_up",
            &[("node", &(victim + 1).to_string())]
        ),
        Some(0.0)
    );
    rig.finish();
}

/// The gateway refuses to start while its kernel forwards on the rack
/// interface (it would duplicate every correspondent packet), with an
/// error that says what to set.
#[test]
fn gateway_refuses_a_forwarding_kernel() {
    if topo::skip_without_root() {
        return;
    }
    let lab = Topology::builder()
        .host("disp")
        .host("peer")
        .link(("disp", "198.18.0.2/24"), ("peer", "198.18.0.1/24"))
        .router("disp")
        .expire_after(Duration::from_secs(60))
        .build()
        .expect("build the lab");
    let dev = lab.iface("disp", "peer").expect("iface").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("disp.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dispatcher]\nvip = \"{VIP}\"\ninterface = \"{dev}\"\naddress = \"{DISP}\"\n\
             home_prefixes = [\"198.51.100.0/24\"]\n[metrics]\nenabled = false\n\
             [[node]]\nid = 1\naddress = \"198.18.0.11\"\n"
        ),
    )
    .unwrap();
    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("dispatcher binary");
    let bin = bin.display().to_string();
    let cfg = cfg.display().to_string();
    // `timeout`: a dispatcher that wrongly starts would run forever.
    let out = lab
        .exec("disp", ["timeout", "10", &bin, "--config", &cfg])
        .expect("exec");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains(&format!("net.ipv4.conf.{dev}.forwarding=0")),
        "{err}"
    );
    let prefix = lab.prefix().to_owned();
    drop(lab);
    assert!(leftovers(&prefix).is_empty());
}
