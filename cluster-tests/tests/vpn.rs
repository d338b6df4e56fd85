//! A real strongSwan IKEv2/MOBIKE VPN in the lab (issue 8, item 2; seed 000
//! figure 7, seed 004 'mc' mode). Needs root and the strongSwan packages
//! (see `haven_cluster_tests::vpn`).
//!
//! ```text
//!  client ── nat1 (nftables masquerade) ──┐
//!         └─ nat2 (nftables masquerade) ── inet ── gw (DMZ, charon) ── intra
//! ```
//!
//! * `sa_tia_echo_and_mobike_move`: the IKE SA comes up through the NAT,
//!   the client gets a TIA from the pool on `ipsec0`, a UDP stream from the
//!   TIA to an echo server in the intranet goes through the tunnel; the
//!   client then moves to the second access network (new address added
//!   before the old one goes) and the stream resumes over the same IKE SA
//!   (same SPIs, same TIA) after a MOBIKE update; the gap is printed.
//! * `inner_client_registers_with_the_tia`: a real `ha-node` in the
//!   intranet serves the inner realm; the mobile-node client, on a UDP
//!   socket bound to the TIA, registers with the TIA as co-located care-of
//!   address [RFC 5944 § 3.6] and its reply is accepted; then it moves with
//!   the VPN and re-registers, still from the same TIA.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_cluster_tests::datapath::register;
use haven_cluster_tests::fleet::{NodeSpec, RealmSpec, havenctl_json, start_node};
use haven_cluster_tests::mn::{MnConfig, MobileNode};
use haven_cluster_tests::supervisor::{
    Process, Proto, Spec, wait_for, wait_port, workspace_binary,
};
use haven_cluster_tests::topo::{self, Lab, Topology, in_netns, leftovers};
use haven_cluster_tests::vpn::{
    Capture, ClientConfig, GatewayConfig, TUN_DEV, VpnClient, VpnGateway, plan, test_psk,
};

/// One wait on the IKE daemons (an exchange, a MOBIKE update).
const BOUND: Duration = Duration::from_secs(10);
/// One wait on the data stream (50 echoes at 100 per second).
const STREAM_BOUND: Duration = Duration::from_secs(5);
const ECHO_PORT: u16 = 7777;

struct Rig {
    // Field order: the daemons go before the lab that holds their
    // namespaces.
    client: VpnClient,
    gateway: VpnGateway,
    _echo: Process,
    lab: Lab,
}

fn lab() -> Lab {
    let lab = Topology::builder()
        .host("client")
        .host("nat1")
        .host("nat2")
        .host("inet")
        .host("gw")
        .host("intra")
        .link(("client", "198.19.10.2/24"), ("nat1", "198.19.10.1/24"))
        .link(("client", "198.19.11.2/24"), ("nat2", "198.19.11.1/24"))
        .link(("nat1", "203.0.113.2/30"), ("inet", "203.0.113.1/30"))
        .link(("nat2", "203.0.113.6/30"), ("inet", "203.0.113.5/30"))
        .link(("inet", "203.0.113.65/28"), ("gw", "203.0.113.66/28"))
        .link(("gw", "198.18.100.1/24"), ("intra", "198.18.100.2/24"))
        .route("client", "default", &plan::NAT1_INSIDE.to_string())
        .route("nat1", "default", &plan::INET_NAT1.to_string())
        .route("nat2", "default", &plan::INET_NAT2.to_string())
        .route("gw", "default", &plan::INET_DMZ.to_string())
        .route("intra", "default", &plan::GATEWAY_INTRANET.to_string())
        .router("nat1")
        .router("nat2")
        .router("inet")
        .router("gw")
        .masquerade("nat1", "inet")
        .masquerade("nat2", "inet")
        // Every wait is bounded; the worst case stays under 40 s.
        .expire_after(Duration::from_secs(60))
        .build()
        .expect("build the lab");
    // The second access network is not there yet: the client "arrives" on
    // it during the move.
    let e = lab.iface("client", "nat2").expect("client-nat2").to_owned();
    ip(
        &lab,
        "client",
        &["addr", "del", "198.19.11.2/24", "dev", &e],
    );
    lab
}

fn ip(lab: &Lab, host: &str, args: &[&str]) {
    let out = lab
        .exec(host, std::iter::once("ip").chain(args.iter().copied()))
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lab, gateway, client, echo server; the SA is not up yet.
fn rig() -> Rig {
    let lab = lab();
    let psk = test_psk().expect("psk");
    let mut gcfg = GatewayConfig::lab(&psk);
    gcfg.interface = Some(lab.iface("gw", "inet").expect("gw-inet").to_owned());
    let gateway = VpnGateway::start(lab.ns_name("gw").expect("gw"), &gcfg).expect("gateway");
    let client = VpnClient::start(
        lab.ns_name("client").expect("client"),
        &ClientConfig::lab(&psk),
    )
    .expect("client");
    let intra = lab.ns_name("intra").expect("intra").to_owned();
    let echo_addr = SocketAddrV4::new(plan::INTRANET_HOST, ECHO_PORT);
    let echo = Process::spawn(
        "udp-echo",
        Spec::new(env!("CARGO_BIN_EXE_udp-echo"))
            .arg("serve")
            .arg(echo_addr.to_string()),
        Some(&intra),
    )
    .expect("echo server");
    wait_port(echo_addr.into(), Proto::Udp, b"up?", Some(&intra), BOUND).expect("echo up");
    Rig {
        client,
        gateway,
        _echo: echo,
        lab,
    }
}

/// What the prober saw: when each echo came back and from whom the server
/// said it came.
#[derive(Default)]
struct Probe {
    replies: Vec<Instant>,
    wrong_source: Vec<String>,
}

/// Sends a numbered datagram from `tia` to the echo server every 10 ms
/// until `stop`, recording replies.
fn prober(
    ns: String,
    tia: Ipv4Addr,
    probe: Arc<Mutex<Probe>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        in_netns(&ns, || {
            let s = UdpSocket::bind(SocketAddrV4::new(tia, 0)).expect("bind to the TIA");
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            let echo = SocketAddrV4::new(plan::INTRANET_HOST, ECHO_PORT);
            let want = format!("from {}:", tia);
            let mut buf = [0u8; 2048];
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // A send can fail while the addresses move (no route for a
                // moment): the gap measures exactly that.
                let _ = s.send_to(format!("probe {seq}").as_bytes(), echo);
                seq += 1;
                while let Ok((n, _)) = s.recv_from(&mut buf) {
                    let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut p = probe.lock().unwrap();
                    p.replies.push(Instant::now());
                    if !r.starts_with(&want) {
                        p.wrong_source.push(r);
                    }
                }
            }
        })
        .expect("enter the client's namespace");
    })
}

fn replies(p: &Mutex<Probe>) -> usize {
    p.lock().unwrap().replies.len()
}

/// The longest silence between consecutive replies received after `from`
/// (including the silence from `from` to the first of them).
fn gap_after(p: &Mutex<Probe>, from: Instant) -> Duration {
    let p = p.lock().unwrap();
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &t in p.replies.iter().filter(|t| **t >= from) {
        gap = gap.max(t - last);
        last = t;
    }
    gap
}

/// The client moves to the second access network: the new address and
/// default route come first, the old address goes last (issue 8: add
/// before remove, or charon loses its only address for a moment).
fn move_to_second_network(lab: &Lab) {
    let e_new = lab.iface("client", "nat2").expect("client-nat2").to_owned();
    let e_old = lab.iface("client", "nat1").expect("client-nat1").to_owned();
    ip(
        lab,
        "client",
        &["addr", "add", "198.19.11.2/24", "dev", &e_new],
    );
    ip(
        lab,
        "client",
        &[
            "route",
            "replace",
            "default",
            "via",
            &plan::NAT2_INSIDE.to_string(),
        ],
    );
    ip(
        lab,
        "client",
        &["addr", "del", "198.19.10.2/24", "dev", &e_old],
    );
}

#[test]
fn sa_tia_echo_and_mobike_move() {
    if topo::skip_without_root() {
        return;
    }
    let started = Instant::now();
    let rig = rig();
    let prefix = rig.lab.prefix().to_owned();
    let client_ns = rig.lab.ns_name("client").expect("client").to_owned();

    // The SA comes up and the TIA comes from the pool.
    let t0 = Instant::now();
    let tia = rig.client.connect(BOUND).expect("IKE SA and CHILD_SA up");
    println!(
        "IKE_SA + CHILD_SA established in {:?}, TIA {tia}",
        t0.elapsed()
    );
    let pool = u32::from(Ipv4Addr::new(198, 18, 200, 0));
    assert_eq!(
        u32::from(tia) & 0xffff_ff00,
        pool,
        "TIA {tia} from the pool"
    );
    let before = rig.client.established().unwrap().expect("established");
    assert_eq!(before.local, Some(SocketAddrV4::new(plan::CLIENT_A, 4500)));
    assert_eq!(before.remote, Some(SocketAddrV4::new(plan::GATEWAY, 4500)));
    assert_eq!(
        before.children[0].mode, "TUNNEL-in-UDP",
        "ESP in UDP behind the NAT (RFC 3948)"
    );
    // The gateway sees the client behind nat1 and holds the same TIA.
    let gw_sa = rig.gateway.ike_sas().unwrap();
    let gw_sa = gw_sa.first().expect("gateway holds the SA");
    assert_eq!(gw_sa.remote.map(|r| *r.ip()), Some(plan::NAT1_PUBLIC));
    assert_eq!(gw_sa.remote_vips, vec![tia]);
    let leases = rig.gateway.leases().unwrap();
    assert!(
        leases.contains(&format!("{tia}")) && leases.contains("online"),
        "{leases}"
    );

    // A UDP stream from the TIA reaches the intranet through the tunnel
    // (nothing outside routes 198.18.100.0/24 or the pool: only ipsec0).
    let probe = Arc::new(Mutex::new(Probe::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let th = prober(client_ns.clone(), tia, probe.clone(), stop.clone());
    wait_for("50 echoes through the tunnel", STREAM_BOUND, || {
        replies(&probe) >= 50
    })
    .expect("echo through the tunnel");

    // MOBIKE: move to the other access network and NAT.
    let moved = Instant::now();
    move_to_second_network(&rig.lab);
    let after = rig
        .client
        .wait_local_addr(plan::CLIENT_B, BOUND)
        .expect("MOBIKE update to the new address");
    let sa_moved = moved.elapsed();
    let n = replies(&probe);
    wait_for("50 more echoes after the move", STREAM_BOUND, || {
        replies(&probe) >= n + 50
    })
    .expect("traffic resumes after the move");
    stop.store(true, Ordering::Relaxed);
    th.join().expect("prober");
    let gap = gap_after(&probe, moved);
    println!("MOBIKE move: IKE SA on the new address after {sa_moved:?}, data-plane gap {gap:?}");

    assert_eq!(after.unique_id, before.unique_id, "same IKE SA");
    assert_eq!(after.spis, before.spis, "same IKE SPIs");
    assert_eq!(after.local_vips, vec![tia], "same TIA");
    assert_eq!(rig.client.tia(), Some(tia));
    let gw_sa = rig.gateway.ike_sas().unwrap();
    let gw_sa = gw_sa.first().expect("gateway holds the SA");
    assert_eq!(
        gw_sa.remote.map(|r| *r.ip()),
        Some(plan::NAT2_PUBLIC),
        "the gateway follows the client to nat2"
    );
    let p = probe.lock().unwrap();
    assert!(
        p.wrong_source.is_empty(),
        "the server saw other sources: {:?}",
        &p.wrong_source[..p.wrong_source.len().min(3)]
    );
    drop(p);
    assert!(gap < Duration::from_secs(5), "gap {gap:?}");

    drop(rig);
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));
    println!("total {:?}", started.elapsed());
}

const KEY: &[u8] = b"vpn-inner-realm-key";
const SPI: u32 = 1000;
const INNER_HOA: Ipv4Addr = Ipv4Addr::new(198, 18, 101, 10);

#[test]
fn inner_client_registers_with_the_tia() {
    if topo::skip_without_root() {
        return;
    }
    // Built before the lab exists, so a build does not eat the lab's time.
    for bin in ["ha-node", "havenctl"] {
        workspace_binary("haven-ha-node", bin).expect("build the home agent");
    }
    let rig = rig();
    let prefix = rig.lab.prefix().to_owned();
    let intra = rig.lab.ns_name("intra").expect("intra").to_owned();
    let client_ns = rig.lab.ns_name("client").expect("client").to_owned();

    // The inner home agent: one node in the intranet, its realm's VIP the
    // intranet host's own address, the inner home prefix 198.18.101.0/24.
    let spec = NodeSpec::new(
        1,
        "127.0.0.1:4340".parse().unwrap(),
        "127.0.0.1:9434".parse().unwrap(),
    )
    .realm(
        RealmSpec::new("inner", plan::INTRANET_HOST, plan::INNER_HOME_PREFIX)
            .with_home_address_sas(INNER_HOA, 1, SPI, KEY),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(&spec, dir.path(), Some(&intra)).expect("start the inner ha-node");

    let tia = rig.client.connect(BOUND).expect("VPN up");
    // The inner client's socket is bound to the TIA: its packets enter the
    // tunnel, and the home agent sees the TIA as source and care-of address.
    let sock = in_netns(&client_ns, || UdpSocket::bind(SocketAddrV4::new(tia, 0)))
        .expect("enter the client's namespace")
        .expect("bind to the TIA");
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let cfg = MnConfig::new(INNER_HOA, plan::INTRANET_HOST, tia, SPI, KEY);
    assert!(cfg.colocated, "the TIA is a co-located care-of address");
    let mut core = MobileNode::new(cfg);
    // What the layers look like: the client's physical interface and its
    // tunnel device, during the registration.
    let phys = rig
        .lab
        .iface("client", "nat1")
        .expect("client-nat1")
        .to_owned();
    let mut capture = Capture::available().then(|| {
        Capture::start("client", &client_ns, &[&phys, TUN_DEV]).expect("start the capture")
    });
    let t0 = Instant::now();
    assert_eq!(register(&mut core, &sock, None, BOUND), Ok(INNER_HOA));
    println!(
        "inner registration through the VPN accepted in {:?}",
        t0.elapsed()
    );
    match capture.as_mut() {
        Some(c) => check_layers(c, &phys, tia),
        None => println!("capture skipped: dumpcap/tshark not installed"),
    }

    let binding = |want: Ipv4Addr| {
        let listed = havenctl_json(&spec, Some(&intra), &["bindings", "list"]).expect("havenctl");
        let b = listed
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|b| b["home_address"] == INNER_HOA.to_string())
            })
            .cloned()
            .expect("the inner binding is listed");
        assert_eq!(
            b["care_of"][0]["care_of_address"],
            want.to_string(),
            "care-of address is the TIA: {b}"
        );
    };
    binding(tia);

    // The VPN follows the client to the other NAT (seed 004): the TIA, and
    // so the inner binding's care-of address, stay; a re-registration
    // after the move still comes from the TIA and is accepted.
    move_to_second_network(&rig.lab);
    rig.client
        .wait_local_addr(plan::CLIENT_B, BOUND)
        .expect("MOBIKE update");
    let t1 = Instant::now();
    assert_eq!(register(&mut core, &sock, None, BOUND), Ok(INNER_HOA));
    println!(
        "inner re-registration after the MOBIKE move accepted in {:?}",
        t1.elapsed()
    );
    binding(tia);

    drop(sock);
    drop(node);
    drop(rig);
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));
}

/// Seed 000 figure 7 / seed 004 'mc' mode on the wire: the registration
/// (UDP 434, RFC 5944 § 3.6) appears on `ipsec0` from the TIA to the inner
/// home agent, and on the physical interface only as ESP in UDP 4500
/// (RFC 3948) to the VPN gateway: never beside the tunnel.
fn check_layers(c: &mut Capture, phys: &str, tia: Ipv4Addr) {
    let rows = c
        .stop_and_read(
            4,
            &[
                "-T",
                "fields",
                "-E",
                "separator=|",
                "-e",
                "frame.interface_name",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
                "-e",
                "udp.dstport",
                "-e",
                "_ws.col.Protocol",
                "-e",
                "_ws.col.Info",
                "-e",
                "frame.protocols",
            ],
        )
        .expect("read the capture");
    println!("capture (interface|src|dst|udp dst|protocol|info|layers):\n{rows}");
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    let on = |dev: &str| -> Vec<&Vec<&str>> {
        rows.iter().filter(|r| r.first() == Some(&dev)).collect()
    };
    let inner = on(TUN_DEV)
        .into_iter()
        .filter(|r| {
            r.get(1) == Some(&tia.to_string().as_str())
                && r.get(2) == Some(&plan::INTRANET_HOST.to_string().as_str())
                && r.get(3) == Some(&"434")
        })
        .count();
    assert!(inner >= 1, "the registration request on {TUN_DEV}");
    for r in on(phys) {
        assert!(
            r.get(3) != Some(&"434") && r.get(4) != Some(&"MobileIP"),
            "registration seen outside the tunnel: {r:?}"
        );
    }
    assert!(
        on(phys)
            .into_iter()
            .any(|r| r.get(4) == Some(&"ESP") && r.get(3) == Some(&"4500")),
        "ESP in UDP 4500 on {phys}"
    );
}
