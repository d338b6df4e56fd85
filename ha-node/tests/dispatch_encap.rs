//! The dispatcher's encapsulating mode, node side, with the real daemon
//! (DESIGN.md § 5, `ha-node/src/ingress.rs`):
//!
//! * `encap_frames_in_replies_back_through_the_dispatcher` (no root): a
//!   fake dispatcher on loopback wraps a mobile node's Registration Request
//!   in a `ToNode` frame to the node's `[dispatch] encap_listen`; the node
//!   answers with a `ToClient` frame back to that dispatcher (not from its
//!   VIP socket), which the mobile node accepts. The node also advertises
//!   its health to the same socket.
//! * `udp_tunnel_data_through_a_real_encap_dispatcher` (root: the data
//!   plane's TUN device): the real `dispatcher` binary in encap mode and
//!   the node with `[dataplane]` in network namespaces; the node may not
//!   emit anything from VIP:434 itself (an nftables rule drops it, as a
//!   provider's source filter would), so RFC 3519 tunnel data for the mobile
//!   node reaches it from VIP:434 only through the dispatcher; and tunnel
//!   data the mobile node sends to VIP:434 reaches the correspondent
//!   through `ToNode` frames and the data plane.
//! * `two_encap_dispatchers_one_per_realm_share_a_node` (no root): two
//!   real `dispatcher` processes in encap mode on loopback, one per realm
//!   VIP, in front of one node with both realms. The node binds no socket
//!   on either VIP (the test binds both VIP:ports itself after the node
//!   started), mobile nodes of both realms register at once (with junk
//!   for both VIPs in between, so the dispatchers' frames interleave) and
//!   each gets its reply from its own realm's VIP:port; neither dispatcher
//!   ever gets a reply for the other's VIP; and after the node is killed
//!   and restarted under the running dispatchers it serves both realms
//!   again (no "whoever bound VIP:434 last" fight).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use haven_cluster_tests::datapath::{udp_in, write_dataplane_config};
use haven_cluster_tests::fleet::{DispatchSpec, NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::unix_now;
use haven_cluster_tests::supervisor::{
    Process, Spec, await_metric, free_port, metric, scrape, wait_for, workspace_binary,
};
use haven_cluster_tests::topo::{self, Topology, leftovers};
use haven_proto::dispatch::{DispatchPacket, DispatchRepr, Kind};
use haven_proto::ip::{self, Ipv4Packet, UdpPacket};
use haven_proto::udptun::{self, TunnelDataPacket, TunnelDataRepr};

const KEY: &[u8] = b"dispatch-encap-key";
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

mod common;
use common::node::{self, BOUND, loopback};

#[test]
fn encap_frames_in_replies_back_through_the_dispatcher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (disp, disp_addr) = node::fake_dispatcher();
    let vip = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 121), free_port());
    let encap = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 122), free_port());
    let spec = NodeSpec::new(1, loopback(free_port()), loopback(free_port()))
        .realm(
            RealmSpec {
                port: vip.port(),
                ..RealmSpec::new("lab", *vip.ip(), "198.51.100.0/24")
            }
            .with_home_address_sas(HOA, 1, 256, KEY),
        )
        .dispatch(DispatchSpec {
            mode: "encap",
            encap_listen: Some(encap),
            ..DispatchSpec::l2(*encap.ip(), vec![disp_addr], 50)
        });
    let config = spec.write(dir.path()).expect("write");
    let _node = node::spawn("ha-node-encap", &config, "info", None);
    node::await_ready(&spec, None).expect("node starts");

    // The mobile node as the dispatcher sees it (after a NAT).
    let mn_addr: SocketAddrV4 = "203.0.113.2:40000".parse().expect("addr");
    let mut cfg = MnConfig::new(HOA, *vip.ip(), Ipv4Addr::new(203, 0, 113, 2), 256, KEY);
    cfg.home_agent_port = vip.port();
    let mut mn = MobileNode::new(cfg);
    mn.register(unix_now());
    let deadline = Instant::now() + BOUND;
    let mut accepted = false;
    let mut adverts = 0;
    let mut buf = [0u8; 4096];
    while !accepted && Instant::now() < deadline {
        let now = unix_now();
        if mn.poll_timeout().is_some_and(|t| t <= now) {
            mn.handle_timeout(now);
        }
        while let Some((dst, bytes)) = mn.poll_transmit() {
            assert_eq!(dst, vip);
            let frame = DispatchRepr {
                kind: Kind::ToNode,
                src: mn_addr,
                dst,
            }
            .to_bytes(&bytes)
            .expect("frame");
            disp.send_to(&frame, encap).expect("send");
        }
        let Ok((n, SocketAddr::V4(from))) = disp.recv_from(&mut buf) else {
            continue;
        };
        assert_eq!(from.ip(), encap.ip(), "only the node sends here");
        if from != encap {
            // The health advert, from the advertiser's own socket.
            adverts += 1;
            continue;
        }
        let p = DispatchPacket::new_checked(&buf[..n]).expect("a frame");
        let r = DispatchRepr::parse(&p).expect("a well-formed frame");
        assert_eq!((r.kind, r.src, r.dst), (Kind::ToClient, vip, mn_addr));
        let _ = mn.handle(unix_now(), r.src, p.payload());
        while let Some(ev) = mn.poll_event() {
            if matches!(ev, Event::Accepted { .. }) {
                accepted = true;
            }
        }
    }
    assert!(
        accepted,
        "the registration was accepted through the dispatcher"
    );
    assert!(adverts > 0, "the node advertised its health");
}

// --- the real dispatcher and the data plane (root) ---

const LAB_VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LAB_HA: SocketAddrV4 = SocketAddrV4::new(LAB_VIP, 434);
const DISP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const NODE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const MN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 60);
const DISP_HEALTH: u16 = 4341;
const DISP_ENCAP: u16 = 4343;
const NODE_ENCAP: u16 = 4342;
const DISP_METRICS: &str = "http://127.0.0.1:9500/metrics";
const CN_PORT: u16 = 9000;
const MN_PORT: u16 = 7000;

/// The inner IPv4/UDP source, destination and payload of tunnel data.
fn inner_of(d: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4, Vec<u8>)> {
    let t = TunnelDataRepr::parse(&TunnelDataPacket::new_checked(d).ok()?).ok()?;
    let p = Ipv4Packet::new_checked(t.payload).ok()?;
    let u = UdpPacket::new_checked(p.payload()).ok()?;
    if !p.verify_checksum() || !u.verify_checksum(p.src_addr(), p.dst_addr()) {
        return None;
    }
    Some((
        SocketAddrV4::new(p.src_addr(), u.src_port()),
        SocketAddrV4::new(p.dst_addr(), u.dst_port()),
        u.payload().to_vec(),
    ))
}

#[test]
fn udp_tunnel_data_through_a_real_encap_dispatcher() {
    if topo::skip_without_root() {
        return;
    }
    let lab = Topology::builder()
        .host("disp")
        .host("node")
        .host("mn")
        .host("cn")
        .switch(
            "seg",
            [
                ("disp", "198.18.0.2/24"),
                ("node", "198.18.0.11/24"),
                ("mn", "198.18.0.50/24"),
                ("cn", "198.18.0.60/24"),
            ],
        )
        .loopback_addr("disp", "192.0.2.1/32")
        .route("mn", "192.0.2.1/32", "198.18.0.2")
        .route("cn", "198.51.100.0/24", "198.18.0.11")
        // The node forwards between the segment and its TUN device.
        .router("node")
        .expire_after(Duration::from_secs(120))
        .build()
        .expect("build the lab");
    let prefix = lab.prefix().to_owned();
    let ns = |h: &str| lab.ns_name(h).expect("host").to_owned();
    let (disp_ns, node_ns, mn_ns, cn_ns) = (ns("disp"), ns("node"), ns("mn"), ns("cn"));
    // The node must not emit VIP:434 itself: in encap mode it is not on
    // the mobile node's path and a provider's source filter would drop it.
    for rule in [
        "add table ip hvtest",
        "add chain ip hvtest out { type filter hook output priority 0 ; }",
        "add rule ip hvtest out ip saddr 192.0.2.1 udp sport 434 counter drop",
    ] {
        let out = lab.exec("node", ["nft", rule]).expect("nft");
        assert!(out.status.success(), "nft {rule}: {out:?}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let disp_cfg = dir.path().join("disp.toml");
    std::fs::write(
        &disp_cfg,
        format!(
            "[dispatcher]\nvip = \"{LAB_VIP}\"\nport = 434\nmode = \"encap\"\nmanage_vip = false\n\
             address = \"{DISP}\"\nencap_port = {DISP_ENCAP}\n\n\
             [health]\nlisten_port = {DISP_HEALTH}\nrise = 1\n\n\
             [metrics]\nlisten = \"127.0.0.1:9500\"\n\n\
             [[node]]\nid = 1\naddress = \"{NODE}\"\nencap_port = {NODE_ENCAP}\n"
        ),
    )
    .expect("write");
    let disp_bin = workspace_binary("haven-dispatcher", "dispatcher").expect("dispatcher binary");
    let disp = Process::spawn(
        "dispatcher-encap",
        Spec::new(disp_bin)
            .arg("--config")
            .arg(&disp_cfg)
            .env("RUST_LOG", "info"),
        Some(&disp_ns),
    )
    .expect("spawn dispatcher");

    let spec = NodeSpec::new(
        1,
        "127.0.0.1:4340".parse().expect("addr"),
        "127.0.0.1:9434".parse().expect("addr"),
    )
    .realm(
        RealmSpec::new("lab", LAB_VIP, "198.51.100.0/24").with_home_address_sas(HOA, 1, 256, KEY),
    )
    .dispatch(DispatchSpec {
        mode: "encap",
        encap_listen: Some(SocketAddrV4::new(NODE, NODE_ENCAP)),
        ..DispatchSpec::l2(NODE, vec![SocketAddrV4::new(DISP, DISP_HEALTH)], 50)
    });
    let node_cfg = write_dataplane_config(&spec, dir.path()).expect("write");
    let node = node::spawn("ha-node-encap-dp", &node_cfg, "info", Some(&node_ns));
    let url = spec.metrics_url();
    node::await_ready(&spec, Some(&node_ns)).expect("node starts");
    await_metric(
        DISP_METRICS,
        Some(&disp_ns),
        "haven_dispatcher_node_up",
        &[("node", "1")],
        |v| v == 1.0,
        BOUND,
    )
    .expect("the dispatcher sees the node");

    // Register through the dispatcher, UDP tunnelling forced (no NAT here:
    // the F bit [RFC 3519 § 3.1]), reverse tunnelling on.
    let mn_sock = udp_in(&mn_ns, SocketAddrV4::new(MN, 0));
    let mut cfg = MnConfig::new(HOA, LAB_VIP, MN, 256, KEY);
    cfg.udp_tunnel = true;
    cfg.force_udp_tunnel = true;
    cfg.reverse_tunnel = true;
    let mut mn = MobileNode::new(cfg);
    mn.register(unix_now());
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + BOUND;
    let mut accepted = false;
    while !accepted && Instant::now() < deadline {
        while let Some((dst, bytes)) = mn.poll_transmit() {
            mn_sock.send_to(&bytes, dst).expect("send");
        }
        match mn_sock.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(from))) => {
                assert_eq!(from, LAB_HA, "the reply comes from VIP:434");
                let _ = mn.handle(unix_now(), from, &buf[..n]);
            }
            Ok(_) => {}
            Err(_) => mn.handle_timeout(unix_now()),
        }
        while let Some(ev) = mn.poll_event() {
            match ev {
                Event::Accepted { .. } => accepted = true,
                Event::Denied { code } => panic!("denied: {code:?}"),
                Event::GaveUp => panic!("gave up"),
                _ => {}
            }
        }
    }
    assert!(accepted, "registered through the dispatcher");

    // Forward: cn → HoA enters the node's TUN and must reach the MN as
    // tunnel data from VIP:434, through the dispatcher.
    let cn_sock = udp_in(&cn_ns, SocketAddrV4::new(CN, CN_PORT));
    let to_mn = SocketAddrV4::new(HOA, MN_PORT);
    let mut got = None;
    wait_for("forward tunnel data at the MN", BOUND, || {
        let _ = cn_sock.send_to(b"to the mobile node", to_mn);
        while let Ok((n, from)) = mn_sock.recv_from(&mut buf) {
            if udptun::classify(&buf[..n]) == udptun::Kind::TunnelData {
                got = Some((from, inner_of(&buf[..n])));
                return true;
            }
        }
        false
    })
    .expect("forward tunnel data arrives");
    let (from, inner) = got.expect("got");
    assert_eq!(from, SocketAddr::V4(LAB_HA), "from VIP:434");
    assert_eq!(
        inner,
        Some((
            SocketAddrV4::new(CN, CN_PORT),
            to_mn,
            b"to the mobile node".to_vec()
        ))
    );
    await_metric(
        &url,
        Some(&node_ns),
        "haven_dataplane_packets_total",
        &[("direction", "forward"), ("encap", "udp")],
        |v| v >= 1.0,
        BOUND,
    )
    .expect("counted as forward UDP tunnel data");

    // Reverse: tunnel data MN → VIP:434 (inner HoA → cn) reaches the node
    // in a ToNode frame, then the data plane and the TUN, then cn.
    let mut msg = vec![0u8; udptun::HEADER_LEN + ip::ipv4_udp_len(4)];
    msg[..4].copy_from_slice(&[udptun::TYPE_TUNNEL_DATA, ip::protocol::IPIP, 0, 0]);
    ip::write_ipv4_udp(
        &mut msg[4..],
        SocketAddrV4::new(HOA, MN_PORT),
        SocketAddrV4::new(CN, CN_PORT),
        b"back",
    );
    let mut back = None;
    wait_for("reverse tunnel data at cn", BOUND, || {
        let _ = mn_sock.send_to(&msg, LAB_HA);
        while let Ok((n, from)) = cn_sock.recv_from(&mut buf) {
            if &buf[..n] == b"back" {
                back = Some(from);
                return true;
            }
        }
        false
    })
    .expect("reverse tunnel data arrives");
    assert_eq!(back, Some(SocketAddr::V4(SocketAddrV4::new(HOA, MN_PORT))));

    drop(node);
    drop(disp);
    drop(lab);
    assert!(leftovers(&prefix).is_empty(), "namespaces left behind");
}

// --- two real encap dispatchers, one per realm, on loopback (no root) ---

/// Mobile nodes per realm.
const PER_REALM: usize = 8;

/// One realm with its own encap dispatcher.
struct RealmLab {
    name: &'static str,
    vip: SocketAddrV4,
    prefix: &'static str,
    hoa: Ipv4Addr,
    disp: Ipv4Addr,
    disp_encap: u16,
    health: u16,
    metrics: u16,
}

impl RealmLab {
    fn new(name: &'static str, vip: u8, prefix: &'static str, hoa: Ipv4Addr, disp: u8) -> Self {
        Self {
            name,
            vip: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, vip), free_port()),
            prefix,
            hoa,
            disp: Ipv4Addr::new(127, 0, 0, disp),
            disp_encap: free_port(),
            health: free_port(),
            metrics: free_port(),
        }
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics)
    }

    fn dispatcher_toml(&self, node: SocketAddrV4) -> String {
        format!(
            "[dispatcher]\nvip = \"{}\"\nport = {}\nmode = \"encap\"\nmanage_vip = false\n\
             address = \"{}\"\nencap_port = {}\n\n\
             [health]\nlisten_port = {}\nrise = 1\n\n\
             [metrics]\nlisten = \"127.0.0.1:{}\"\n\n\
             [[node]]\nid = 1\naddress = \"{}\"\nencap_port = {}\n",
            self.vip.ip(),
            self.vip.port(),
            self.disp,
            self.disp_encap,
            self.health,
            self.metrics,
            node.ip(),
            node.port()
        )
    }
}

/// Registers `PER_REALM` mobile nodes of every realm at once, each from its
/// own socket, with a junk datagram to every VIP between rounds; every
/// reply must come from the mobile node's own realm VIP:port.
fn register_everyone(realms: &[RealmLab], noise: &UdpSocket) {
    let mut mns: Vec<(usize, MobileNode, UdpSocket, bool)> = Vec::new();
    for (k, r) in realms.iter().enumerate() {
        for i in 0..PER_REALM {
            let hoa = Ipv4Addr::from(u32::from(r.hoa) + i as u32);
            let mut cfg = MnConfig::new(hoa, *r.vip.ip(), Ipv4Addr::LOCALHOST, 256, KEY);
            cfg.home_agent_port = r.vip.port();
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a mobile node");
            sock.set_nonblocking(true).expect("nonblocking");
            let mut mn = MobileNode::new(cfg);
            mn.register(unix_now());
            mns.push((k, mn, sock, false));
        }
    }
    let mut buf = [0u8; 4096];
    let done = wait_for("every mobile node registered", BOUND, || {
        for r in realms {
            let _ = noise.send_to(b"\xffjunk", r.vip);
        }
        for (k, mn, sock, accepted) in &mut mns {
            let vip = realms[*k].vip;
            let now = unix_now();
            if mn.poll_timeout().is_some_and(|t| t <= now) {
                mn.handle_timeout(now);
            }
            while let Some((dst, bytes)) = mn.poll_transmit() {
                assert_eq!(dst, vip);
                sock.send_to(&bytes, dst).expect("send");
            }
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                assert_eq!(
                    from,
                    SocketAddr::V4(vip),
                    "realm {}: the reply comes from its own VIP:port",
                    realms[*k].name
                );
                let _ = mn.handle(unix_now(), vip, &buf[..n]);
            }
            while let Some(ev) = mn.poll_event() {
                match ev {
                    Event::Accepted { .. } => *accepted = true,
                    Event::Denied { code } => panic!("denied: {code:?}"),
                    Event::GaveUp => panic!("gave up"),
                    _ => {}
                }
            }
        }
        mns.iter().all(|m| m.3)
    });
    let left: Vec<_> = mns
        .iter()
        .filter(|m| !m.3)
        .map(|m| (realms[m.0].name, m.1.home_address()))
        .collect();
    assert!(done.is_ok(), "not registered: {left:?}");
}

#[test]
fn two_encap_dispatchers_one_per_realm_share_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let realms = [
        RealmLab::new("inner", 141, "198.51.100.0/24", HOA, 144),
        RealmLab::new(
            "outer",
            142,
            "192.0.2.0/24",
            Ipv4Addr::new(192, 0, 2, 10),
            145,
        ),
    ];
    let node = Ipv4Addr::new(127, 0, 0, 143);
    let encap = SocketAddrV4::new(node, free_port());
    let adverts = realms
        .iter()
        // The advert checksum covers the dispatcher's own address.
        .map(|r| SocketAddrV4::new(r.disp, r.health))
        .collect();
    let mut spec =
        NodeSpec::new(1, loopback(free_port()), loopback(free_port())).dispatch(DispatchSpec {
            mode: "encap",
            encap_listen: Some(encap),
            ..DispatchSpec::l2(node, adverts, 50)
        });
    for r in &realms {
        spec = spec.realm(
            RealmSpec {
                port: r.vip.port(),
                ..RealmSpec::new(r.name, *r.vip.ip(), r.prefix)
            }
            .with_home_address_sas(r.hoa, PER_REALM, 256, KEY),
        );
    }
    let config = spec.write(dir.path()).expect("write");
    let mut node_proc = node::spawn("ha-node-two-realms", &config, "info", None);
    node::await_ready(&spec, None).expect("node starts");
    // Every listener is bound once haven_build_info shows: if the node
    // held either VIP:port, this plain bind (no SO_REUSEADDR) would fail.
    for r in &realms {
        let held = UdpSocket::bind(r.vip);
        assert!(
            held.is_ok(),
            "realm {}: the node holds {} in encap mode: {held:?}",
            r.name,
            r.vip
        );
    }

    let bin = workspace_binary("haven-dispatcher", "dispatcher").expect("dispatcher binary");
    let mut dispatchers = Vec::new();
    for r in &realms {
        let path = dir.path().join(format!("disp-{}.toml", r.name));
        std::fs::write(&path, r.dispatcher_toml(encap)).expect("write");
        dispatchers.push(
            Process::spawn(
                &format!("dispatcher-{}", r.name),
                Spec::new(&bin)
                    .arg("--config")
                    .arg(&path)
                    .env("RUST_LOG", "info"),
                None,
            )
            .expect("spawn dispatcher"),
        );
    }
    let nodes_up = || {
        for r in &realms {
            await_metric(
                &r.metrics_url(),
                None,
                "haven_dispatcher_node_up",
                &[("node", "1")],
                |v| v == 1.0,
                BOUND,
            )
            .expect("the dispatcher sees the node");
        }
    };
    nodes_up();

    let noise = UdpSocket::bind("127.0.0.146:0").expect("bind the noise source");
    register_everyone(&realms, &noise);
    // A reply sent to the other realm's dispatcher would be dropped there
    // as malformed (its source is not that dispatcher's VIP); none may be.
    for r in &realms {
        let mut text = String::new();
        wait_for("the dispatcher publishes its replies", BOUND, || {
            text = scrape(&r.metrics_url(), None).unwrap_or_default();
            metric(&text, "haven_dispatcher_replies_total", &[])
                .is_some_and(|v| v >= PER_REALM as f64)
        })
        .expect("replies counted");
        assert_eq!(
            metric(
                &text,
                "haven_dispatcher_drops_total",
                &[("reason", "malformed")]
            ),
            Some(0.0),
            "realm {}: a reply for another VIP reached this dispatcher",
            r.name
        );
    }

    // Killed and restarted under the running dispatchers: nothing to
    // rebind, both realms answer again.
    node_proc.sigkill().expect("kill the node");
    node_proc
        .wait_exit(Duration::from_secs(5))
        .expect("node exits");
    node_proc.restart().expect("restart the node");
    node::await_ready(&spec, None).expect("node restarts");
    nodes_up();
    register_everyone(&realms, &noise);

    drop(dispatchers);
    drop(node_proc);
}
