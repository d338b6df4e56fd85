//! The home agent's data plane end to end (issue "Data plane", item 3;
//! DESIGN.md § 6): one real `ha-node` with `[dataplane] enabled = true`, its
//! home prefix 198.51.100.0/24 routed on `rtr` to node-1 (a plain route: a
//! single node), a correspondent `cn`, a mobile node behind the real NAT
//! (UDP tunnelling, RFC 3519) and one on a plain link (`mn2`, IP in IP,
//! RFC 2003). Needs root.
//!
//! * `udp_tunnel_both_ways_spoofing_and_a_move`: cn → HoA arrives at the
//!   MN's registration socket as tunnel data; MN → cn reverse-tunnelled
//!   arrives at cn's [`DataSink`] with the home address as source; a spoofed
//!   inner source is dropped and counted; the MN moves to a new NAT mapping
//!   and the stream follows (the gap is printed and bounded); then ICMP
//!   echo both ways at the new mapping: the MN pings cn, and the real
//!   `ping` on cn pings the home address (0% loss, rtt printed) while a
//!   thread on the MN's socket answers the tunnelled requests.
//! * `ip_in_ip_and_simultaneous_bindings`: the same through IP in IP to a
//!   raw socket on `mn2`, and two simultaneous bindings (two care-of
//!   addresses) each receive a copy.
//! * `oversize_packets_fragmented_without_df_refused_with_df`: a 1600-octet
//!   non-DF datagram from cn reaches both mobile nodes whole over 1500-octet
//!   links (the node fragments the outer datagram, RFC 2003 § 5.1), and a
//!   DF one too big for the tunnel gets ICMP Fragmentation Needed with the
//!   tunnel's MTU (cn's path MTU drops to 1468 or 1480).
//!
//! The mobile nodes are the sans-IO [`MobileNode`] over sockets made inside
//! the namespaces; everything waits on conditions with bounds.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_cluster_tests::datapath::{
    self, flow, inner_udp, raw_ipip, raw_recv, raw_send, spawn_dataplane_node, stream, tunnel_data,
    tunnel_reader, udp_in,
};
use haven_cluster_tests::fleet::{NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{MnConfig, MobileNode};
use haven_cluster_tests::mnsim::{DATA_SRC_PORT, DataSink, data_payload, unix_now};
use haven_cluster_tests::supervisor::{Process, await_metric, metric, scrape, wait_for};
use haven_cluster_tests::topo::{self, Lab, in_netns, leftovers, racks};
use haven_proto::ip::{self, Ipv4Packet, UdpPacket};
use haven_proto::udptun::{self, TunnelDataPacket, TunnelDataRepr};

const KEY: &[u8] = b"dataplane-test-key";
const SPI: u32 = 1000;
const HOME_BASE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The UDP mobile node (behind the NAT).
const HOA_UDP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The IP-in-IP mobile node on `mn2`.
const HOA_IPIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// The mobile node with two simultaneous bindings on `mn2`.
const HOA_TWO: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
/// A home address nobody uses: the spoofer's pick.
const HOA_SPOOF: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 13);
const MN2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const MN2_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 3);
const SINK_PORT: u16 = 9000;
/// Where the cn's stream goes on the home address.
const MN_PORT: u16 = 7000;
const BOUND: Duration = Duration::from_secs(10);
/// The home agent: VIP:434.
const HA: SocketAddrV4 = SocketAddrV4::new(racks::plan::VIP, 434);

struct Rig {
    node: Process,
    lab: Lab,
    url: String,
    node_ns: String,
    _dir: tempfile::TempDir,
}

/// The lab (nat_scenario(1) plus `mn2` on `inet` and the home prefix
/// routed to node-1) and the node with the data plane on.
fn rig() -> Rig {
    let lab = racks::nat_scenario(1)
        .host("mn2")
        .link(("inet", "198.18.2.1/24"), ("mn2", "198.18.2.2/24"))
        .route("mn2", "default", "198.18.2.1")
        .route("rtr", "198.51.100.0/24", &racks::node_addr(1).to_string())
        // The node forwards between its rack interface and its TUN device.
        .router("node-1")
        .expire_after(Duration::from_secs(180))
        .build()
        .expect("build the lab");
    let node_ns = lab.ns_name("node-1").expect("node-1").to_owned();
    let mn2_if = lab.iface("mn2", "inet").expect("mn2 iface").to_owned();
    lab.exec(
        "mn2",
        ["ip", "addr", "add", "198.18.2.3/24", "dev", &mn2_if],
    )
    .expect("second care-of address");
    let spec = NodeSpec::new(
        1,
        "127.0.0.1:4340".parse().unwrap(),
        "127.0.0.1:9434".parse().unwrap(),
    )
    .realm(
        RealmSpec {
            simultaneous_bindings: 2,
            ..RealmSpec::new("home", racks::plan::VIP, "198.51.100.0/24")
        }
        .with_home_address_sas(HOME_BASE, 8, SPI, KEY),
    );
    let dir = tempfile::tempdir().unwrap();
    let node = spawn_dataplane_node(&spec, dir.path(), &node_ns, "info").expect("start ha-node");
    let url = spec.metrics_url();
    datapath::await_ready(&spec, &node_ns).expect("ha-node up");
    Rig {
        node,
        lab,
        url,
        node_ns,
        _dir: dir,
    }
}

impl Rig {
    fn ns(&self, host: &str) -> String {
        self.lab.ns_name(host).expect("host").to_owned()
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape(&self.url, Some(&self.node_ns))
            .ok()
            .and_then(|t| metric(&t, name, labels))
            .unwrap_or(0.0)
    }

    fn finish(self) {
        let prefix = self.lab.prefix().to_owned();
        drop(self.node);
        drop(self.lab);
        assert!(
            leftovers(&prefix).is_empty(),
            "namespaces left: {:?}",
            leftovers(&prefix)
        );
    }
}

/// Registers `core` over `sock` (registration replies to the core; tunnel
/// data seen meanwhile to `sink`, when given). Returns the accepted home
/// address.
fn register(
    core: &mut MobileNode,
    sock: &UdpSocket,
    sink: Option<&Mutex<DataSink>>,
) -> Result<Ipv4Addr, String> {
    datapath::register(core, sock, sink, BOUND)
}

/// `data_payload(flow, seq..)` to `dst` from `sock` at `pps` until `stop`.
fn data_stream(
    sock: UdpSocket,
    dst: SocketAddrV4,
    flow: u32,
    pps: u32,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    stream(sock, dst, pps, stop, move |seq| {
        data_payload(flow, seq, unix_now(), 64)
    })
}

#[test]
fn udp_tunnel_both_ways_spoofing_and_a_move() {
    if topo::skip_without_root() {
        return;
    }
    let rig = rig();
    let (mn_ns, cn_ns) = (rig.ns("mn"), rig.ns("cn"));
    let cn = SocketAddrV4::new(racks::plan::CN, SINK_PORT);
    let cn_sink = in_netns(&cn_ns, || DataSink::spawn(cn))
        .expect("cn namespace")
        .expect("cn sink");
    let at_mn = Arc::new(Mutex::new(DataSink::new()));

    // (a) Register behind the NAT with UDP tunnelling and reverse tunnelling.
    let sock = udp_in(&mn_ns, SocketAddrV4::new(racks::plan::MN, 0));
    let mut cfg = MnConfig::new(HOA_UDP, racks::plan::VIP, racks::plan::MN, SPI, KEY);
    cfg.udp_tunnel = true;
    cfg.reverse_tunnel = true;
    let mut core = MobileNode::new(cfg);
    assert_eq!(register(&mut core, &sock, Some(&at_mn)), Ok(HOA_UDP));

    let stop = Arc::new(AtomicBool::new(false));
    let read1 = tunnel_reader(sock.try_clone().unwrap(), at_mn.clone(), stop.clone());
    // cn → HoA, 200 packets per second.
    let cn_sock = udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0));
    let fwd = data_stream(
        cn_sock,
        SocketAddrV4::new(HOA_UDP, MN_PORT),
        1,
        200,
        stop.clone(),
    );
    wait_for("cn → MN through the UDP tunnel", BOUND, || {
        flow(&at_mn, 1).is_some_and(|f| f.received >= 50)
    })
    .expect("forward stream arrives at the MN");
    let f = flow(&at_mn, 1).unwrap();
    assert_eq!(f.source, Some(racks::plan::CN), "inner source kept");

    // MN → cn, reverse-tunnelled: 100 packets.
    let from = SocketAddrV4::new(HOA_UDP, DATA_SRC_PORT);
    for seq in 0..100u64 {
        let m = tunnel_data(from, cn, &data_payload(2, seq, unix_now(), 64));
        sock.send_to(&m, HA).unwrap();
    }

    // (c) The same MN claims another home address as inner source.
    let spoofed = SocketAddrV4::new(HOA_SPOOF, DATA_SRC_PORT);
    for seq in 0..20u64 {
        let m = tunnel_data(spoofed, cn, &data_payload(3, seq, unix_now(), 64));
        sock.send_to(&m, HA).unwrap();
    }
    await_metric(
        &rig.url,
        Some(&rig.node_ns),
        "haven_dataplane_drops_total",
        &[("reason", "spoofed")],
        |v| v >= 20.0,
        BOUND,
    )
    .expect("spoofed packets counted");
    wait_for("reverse stream at cn", BOUND, || {
        rig.metric(
            "haven_dataplane_packets_total",
            &[("direction", "reverse"), ("encap", "udp")],
        ) >= 100.0
    })
    .expect("reverse packets counted");

    // (e) The MN moves: a new socket, so a new NAT mapping; the same CoA.
    let sock2 = udp_in(&mn_ns, SocketAddrV4::new(racks::plan::MN, 0));
    assert_eq!(register(&mut core, &sock2, Some(&at_mn)), Ok(HOA_UDP));
    let read2 = tunnel_reader(sock2.try_clone().unwrap(), at_mn.clone(), stop.clone());
    let before = flow(&at_mn, 1).unwrap().received;
    wait_for("the stream follows the move", BOUND, || {
        flow(&at_mn, 1).is_some_and(|f| f.received >= before + 100)
    })
    .expect("forward stream after the move");
    // After the move the old mapping is no longer bound: reverse traffic
    // from it is spoofed; from the new one it passes.
    let spoofed_before = rig.metric("haven_dataplane_drops_total", &[("reason", "spoofed")]);
    for seq in 0..10u64 {
        let m = tunnel_data(from, cn, &data_payload(4, seq, unix_now(), 64));
        sock.send_to(&m, HA).unwrap();
        let m = tunnel_data(from, cn, &data_payload(5, seq, unix_now(), 64));
        sock2.send_to(&m, HA).unwrap();
    }
    wait_for("post-move reverse packets at cn", BOUND, || {
        rig.metric("haven_dataplane_drops_total", &[("reason", "spoofed")]) >= spoofed_before + 10.0
            && rig.metric(
                "haven_dataplane_packets_total",
                &[("direction", "reverse"), ("encap", "udp")],
            ) >= 110.0
    })
    .expect("old mapping refused, new mapping accepted");
    // Counted at the node is not yet read at cn: wait for cn itself.
    wait_for("reverse packets read at cn", BOUND, || {
        cn_sink.received(2) >= 100 && cn_sink.received(5) >= 10
    })
    .expect("reverse packets at cn");

    stop.store(true, Ordering::Relaxed);
    let sent = fwd.join().unwrap();
    read1.join().unwrap();
    read2.join().unwrap();
    let sink = cn_sink.stop();
    let f = flow(&at_mn, 1).unwrap();
    let gap = f.max_gap;
    eprintln!(
        "dataplane: forward sent {sent}, MN received {} (lost {}), max gap {gap:?} (the move)",
        f.received, f.lost
    );
    // 200 pps: the move costs one registration round trip; allow 1 s.
    assert!(gap < Duration::from_secs(1), "gap {gap:?} after the move");
    let flows = sink.flows();
    let rev = flows
        .iter()
        .find(|f| f.mn == 2)
        .expect("reverse flow at cn");
    assert_eq!(rev.received, 100, "every reverse packet arrives");
    assert_eq!(rev.source, Some(HOA_UDP), "from the home address");
    assert!(
        flows.iter().all(|f| f.mn != 3 && f.mn != 4),
        "spoofed or stale-mapping packets reached cn: {flows:?}"
    );
    let after = flows.iter().find(|f| f.mn == 5).expect("post-move flow");
    assert_eq!(after.received, 10);

    // (f) ICMP both ways through the tunnel at the new mapping (issue 7:
    // "ping and a UDP stream both ways"); the streams above have stopped,
    // so the counters below see only the echoes.
    ping_both_ways(&rig, &sock2);
    rig.finish();
}

/// ICMP Echo [RFC 792] type octets.
const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
/// The MN side's echo identifier for its own pings of cn.
const PING_IDENT: u16 = 0x4856;

/// What the MN side's ICMP thread saw.
#[derive(Default)]
struct Echoes {
    /// Echo requests to the home address answered (cn's `ping`).
    answered: u64,
    /// Echo replies from cn to the home address with our identifier and
    /// data, by sequence number: when they arrived.
    replies: std::collections::HashMap<u16, Instant>,
}

/// The echo data of the MN's ping `seq`: checked on the way back.
fn ping_data(seq: u16) -> Vec<u8> {
    format!("haven-echo-{seq:04}").into_bytes()
}

/// The Echo Reply to an inner IPv4 Echo Request: addresses swapped, type
/// 0, identifier, sequence and data kept, ICMP checksum [RFC 1071] and
/// header checksum recomputed. `None` for anything else (fragments, other
/// protocols or types, bad checksums).
fn echo_reply(inner: &[u8]) -> Option<Vec<u8>> {
    let p = Ipv4Packet::new_checked(inner).ok()?;
    if !p.verify_checksum()
        || p.protocol() != ip::protocol::ICMP
        || p.more_frags()
        || p.frag_offset() != 0
    {
        return None;
    }
    let (hl, src, dst) = (p.header_len(), p.src_addr(), p.dst_addr());
    let mut out = inner.get(..usize::from(p.total_len()))?.to_vec();
    let icmp = out.get_mut(hl..)?;
    if icmp.len() < 8
        || icmp[0] != ECHO_REQUEST
        || icmp[1] != 0
        || ip::checksum::sum(icmp) != 0xffff
    {
        return None;
    }
    icmp[0] = ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let c = ip::checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut q = Ipv4Packet::new_unchecked(&mut out[..]);
    q.set_src_addr(dst);
    q.set_dst_addr(src);
    q.set_ttl(64);
    q.fill_checksum();
    Some(out)
}

#[test]
fn echo_reply_is_a_valid_echo_reply() {
    // No root needed: the responder's reply, checked by the proto parser
    // (header and ICMP checksums verified), so that a wrong checksum of
    // ours cannot hide behind a lenient `ping`.
    let data = ping_data(7);
    let mut buf = [0u8; 128];
    let n = udptun::Keepalive {
        src: racks::plan::CN,
        dst: HOA_UDP,
        ident: 0x1234,
        seq: 7,
        data: &data,
        is_request: true,
    }
    .emit(&mut buf)
    .unwrap();
    let reply = echo_reply(&buf[udptun::HEADER_LEN..n]).expect("a reply");
    assert_eq!(reply.len(), n - udptun::HEADER_LEN);
    let mut msg = vec![udptun::TYPE_TUNNEL_DATA, ip::protocol::IPIP, 0, 0];
    msg.extend_from_slice(&reply);
    let k = udptun::parse_keepalive(&msg).expect("valid checksums");
    assert!(!k.is_request);
    assert_eq!(
        (k.src, k.dst, k.ident, k.seq),
        (HOA_UDP, racks::plan::CN, 0x1234, 7)
    );
    assert_eq!(k.data, &data[..]);
    assert!(
        Ipv4Packet::new_checked(&reply[..])
            .unwrap()
            .verify_checksum()
    );
    // Not a request: no reply.
    assert_eq!(echo_reply(&reply), None);
}

/// The MN's ICMP on its registration socket until `stop`: Echo Requests
/// to the home address that arrive as tunnel data (RFC 3519 § 3.3, type 4,
/// next header 4) are answered reverse-tunnelled from the same socket;
/// Echo Replies from cn to the MN's own pings are recorded.
fn echo_responder(
    sock: UdpSocket,
    seen: Arc<Mutex<Echoes>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(p) = TunnelDataPacket::new_checked(&buf[..n]) else {
                continue;
            };
            let Ok(t) = TunnelDataRepr::parse(&p) else {
                continue;
            };
            if t.next_header != udptun::NextHeader::IpIp {
                continue;
            }
            if let Some(reply) = echo_reply(t.payload) {
                let Ok(q) = Ipv4Packet::new_checked(&reply[..]) else {
                    continue;
                };
                if q.src_addr() != HOA_UDP {
                    continue;
                }
                let mut msg = vec![udptun::TYPE_TUNNEL_DATA, ip::protocol::IPIP, 0, 0];
                msg.extend_from_slice(&reply);
                if sock.send_to(&msg, HA).is_ok() {
                    seen.lock().unwrap().answered += 1;
                }
            } else if let Ok(k) = udptun::parse_keepalive(&buf[..n])
                && !k.is_request
                && k.src == racks::plan::CN
                && k.dst == HOA_UDP
                && k.ident == PING_IDENT
                && k.data == ping_data(k.seq)
            {
                seen.lock()
                    .unwrap()
                    .replies
                    .entry(k.seq)
                    .or_insert_with(Instant::now);
            }
        }
    })
}

/// `(transmitted, received, loss %)` and the rtt line of iputils `ping`'s
/// summary ("3 packets transmitted, 3 received, 0% packet loss, time
/// 401ms" / "rtt min/avg/max/mdev = ...").
fn ping_summary(out: &str) -> Option<((u32, u32, String), Option<String>)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let mut parts = line.split(", ");
    let tx = parts.next()?.split(' ').next()?.parse().ok()?;
    let rx = parts.next()?.split(' ').next()?.parse().ok()?;
    let loss = line
        .split(", ")
        .find(|p| p.ends_with("packet loss"))?
        .split(' ')
        .next()?
        .to_owned();
    let rtt = out
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .map(str::to_owned);
    Some(((tx, rx, loss), rtt))
}

/// The MN pings cn (Echo Requests from the home address, reverse-tunnelled;
/// cn's kernel replies through the forward tunnel), then the real `ping`
/// on cn pings the home address (the node tunnels the requests to the
/// MN's NAT mapping; [`echo_responder`] answers). Bounded: 5 s for the
/// first, about 2.5 s (`ping -c 3 -i 0.2 -W 2`) for the second.
fn ping_both_ways(rig: &Rig, sock: &UdpSocket) {
    let counter = |dir: &str| {
        rig.metric(
            "haven_dataplane_packets_total",
            &[("direction", dir), ("encap", "udp")],
        )
    };
    let (fwd0, rev0) = (counter("forward"), counter("reverse"));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Echoes::default()));
    let responder = echo_responder(sock.try_clone().unwrap(), seen.clone(), stop.clone());

    // MN → cn.
    let mut sent = std::collections::HashMap::new();
    let mut buf = [0u8; 128];
    for seq in 1..=3u16 {
        let data = ping_data(seq);
        let n = udptun::Keepalive {
            src: HOA_UDP,
            dst: racks::plan::CN,
            ident: PING_IDENT,
            seq,
            data: &data,
            is_request: true,
        }
        .emit(&mut buf)
        .unwrap();
        sent.insert(seq, Instant::now());
        sock.send_to(&buf[..n], HA).unwrap();
    }
    wait_for(
        "cn's echo replies at the MN through the UDP tunnel",
        Duration::from_secs(5),
        || seen.lock().unwrap().replies.len() == 3,
    )
    .expect("MN → cn ping answered");
    let rtts: Vec<Duration> = {
        let s = seen.lock().unwrap();
        (1..=3u16).map(|q| s.replies[&q] - sent[&q]).collect()
    };

    // cn → MN, with the real ping: 3 requests 0.2 s apart, then at most
    // 2 s for the last reply (no -w: with it, iputils keeps sending until
    // the deadline when replies are missing).
    let hoa = HOA_UDP.to_string();
    let out = rig
        .lab
        .exec(
            "cn",
            ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", &hoa],
        )
        .expect("run ping on cn (iputils-ping installed?)");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = ping_summary(&text);
    let answered = seen.lock().unwrap().answered;
    stop.store(true, Ordering::Relaxed);
    responder.join().unwrap();
    let Some(((tx, rx, loss), rtt)) = summary else {
        panic!(
            "no ping summary (iputils-ping installed?): {:?}\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eprintln!(
        "dataplane: MN → cn echo rtt {rtts:?}; cn → MN ping {tx} sent, {rx} received, \
         {loss} loss, MN answered {answered}; {}",
        rtt.as_deref().unwrap_or("no rtt line")
    );
    assert!(out.status.success(), "ping failed:\n{text}");
    assert_eq!(
        (tx, rx, loss.as_str()),
        (3, 3, "0%"),
        "ping summary:\n{text}"
    );
    assert!(rtt.is_some(), "ping printed no rtt:\n{text}");
    // Flagged replies still count as received. (iputils 20221126 on a raw
    // socket does not even flag a wrong ICMP checksum — seen with tshark —
    // hence `echo_reply_is_a_valid_echo_reply` for the responder's own.)
    assert!(
        !text.contains("BAD CHECKSUM") && !text.contains("DUP!") && !text.contains("wrong data"),
        "ping flagged replies:\n{text}"
    );
    assert!(answered >= 3, "the MN answered {answered} echo requests");
    // Both ways went through the node's UDP tunnel: 3 replies from cn and
    // 3 requests from ping forward; 3 requests and 3 replies reverse.
    wait_for("the echoes counted by the node", BOUND, || {
        counter("forward") >= fwd0 + 6.0 && counter("reverse") >= rev0 + 6.0
    })
    .expect("echo packets counted");
}

/// Per (outer destination, flow): packets received on `mn2`'s raw socket.
type Copies = Arc<Mutex<std::collections::HashMap<(Ipv4Addr, u32), DataSink>>>;

fn ipip_reader(fd: OwnedFd, copies: Copies, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let Some(n) = raw_recv(&fd, &mut buf) else {
                continue;
            };
            let Ok(outer) = Ipv4Packet::new_checked(&buf[..n]) else {
                continue;
            };
            if outer.protocol() != ip::protocol::IPIP || !outer.verify_checksum() {
                continue;
            }
            let Some((src, payload)) = inner_udp(outer.payload()) else {
                continue;
            };
            let Some((flow, _, _)) = haven_cluster_tests::mnsim::parse_data_payload(&payload)
            else {
                continue;
            };
            copies
                .lock()
                .unwrap()
                .entry((outer.dst_addr(), flow))
                .or_default()
                .record(unix_now(), src, &payload);
        }
    })
}

fn copies_of(c: &Copies, coa: Ipv4Addr, flow: u32) -> u64 {
    c.lock()
        .unwrap()
        .get(&(coa, flow))
        .and_then(|s| s.flows().first().map(|f| f.received))
        .unwrap_or(0)
}

#[test]
fn ip_in_ip_and_simultaneous_bindings() {
    if topo::skip_without_root() {
        return;
    }
    let rig = rig();
    let (mn2_ns, cn_ns) = (rig.ns("mn2"), rig.ns("cn"));
    let cn = SocketAddrV4::new(racks::plan::CN, SINK_PORT);
    let cn_sink = in_netns(&cn_ns, || DataSink::spawn(cn))
        .expect("cn namespace")
        .expect("cn sink");

    // (b) A mobile node on a plain link: its source is its care-of address,
    // so the binding is IP in IP.
    let sock = udp_in(&mn2_ns, SocketAddrV4::new(MN2, 0));
    let mut cfg = MnConfig::new(HOA_IPIP, racks::plan::VIP, MN2, SPI, KEY);
    cfg.reverse_tunnel = true;
    let mut core = MobileNode::new(cfg);
    assert_eq!(register(&mut core, &sock, None), Ok(HOA_IPIP));

    // (d) Another with two simultaneous care-of addresses (S bit).
    let sock_a = udp_in(&mn2_ns, SocketAddrV4::new(MN2, 0));
    let sock_b = udp_in(&mn2_ns, SocketAddrV4::new(MN2_B, 0));
    let two = |coa| {
        let mut c = MnConfig::new(HOA_TWO, racks::plan::VIP, coa, SPI, KEY);
        c.simultaneous = true;
        MobileNode::new(c)
    };
    let (mut core_a, mut core_b) = (two(MN2), two(MN2_B));
    assert_eq!(register(&mut core_a, &sock_a, None), Ok(HOA_TWO));
    assert_eq!(register(&mut core_b, &sock_b, None), Ok(HOA_TWO));

    let raw = in_netns(&mn2_ns, raw_ipip)
        .expect("mn2 namespace")
        .expect("raw socket");
    let raw_tx = raw.try_clone().unwrap();
    let copies: Copies = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = ipip_reader(raw, copies.clone(), stop.clone());
    let s1 = data_stream(
        udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0)),
        SocketAddrV4::new(HOA_IPIP, MN_PORT),
        10,
        200,
        stop.clone(),
    );
    let s2 = data_stream(
        udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0)),
        SocketAddrV4::new(HOA_TWO, MN_PORT),
        11,
        200,
        stop.clone(),
    );
    wait_for("IP-in-IP forward and both copies", BOUND, || {
        copies_of(&copies, MN2, 10) >= 50
            && copies_of(&copies, MN2, 11) >= 50
            && copies_of(&copies, MN2_B, 11) >= 50
    })
    .expect("forward streams arrive");
    assert_eq!(copies_of(&copies, MN2_B, 10), 0, "one binding, one copy");

    // Reverse: IP in IP from the care-of address to the VIP; and a spoof
    // (another home address inside, same care-of address).
    let mut inner = vec![0u8; ip::ipv4_udp_len(64)];
    for seq in 0..100u64 {
        let p = data_payload(12, seq, unix_now(), 64);
        ip::write_ipv4_udp(
            &mut inner,
            SocketAddrV4::new(HOA_IPIP, DATA_SRC_PORT),
            cn,
            &p,
        );
        raw_send(&raw_tx, racks::plan::VIP, &inner).unwrap();
        let p = data_payload(13, seq, unix_now(), 64);
        ip::write_ipv4_udp(
            &mut inner,
            SocketAddrV4::new(HOA_SPOOF, DATA_SRC_PORT),
            cn,
            &p,
        );
        raw_send(&raw_tx, racks::plan::VIP, &inner).unwrap();
    }
    wait_for("reverse IP in IP counted", BOUND, || {
        rig.metric(
            "haven_dataplane_packets_total",
            &[("direction", "reverse"), ("encap", "ipip")],
        ) >= 100.0
            && rig.metric("haven_dataplane_drops_total", &[("reason", "spoofed")]) >= 100.0
    })
    .expect("reverse and spoofed counted");
    wait_for("reverse IP in IP read at cn", BOUND, || {
        cn_sink.received(12) >= 100
    })
    .expect("reverse packets at cn");

    // No binding: the correspondent hears ICMP Host Unreachable from the
    // VIP, which its connected socket reports as EHOSTUNREACH.
    let probe = udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0));
    probe
        .connect(SocketAddrV4::new(HOA_SPOOF, MN_PORT))
        .unwrap();
    // Host Unreachable is a soft error: Linux reports it on the socket only
    // with IP_RECVERR.
    let one: libc::c_int = 1;
    // SAFETY: IP_RECVERR takes an int; pointer and length describe `one`.
    let rc = unsafe {
        libc::setsockopt(
            probe.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_RECVERR,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    wait_for("ICMP host unreachable for an unbound home address", BOUND, || {
        let _ = probe.send(b"anyone?");
        matches!(probe.recv(&mut [0u8; 16]), Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH))
    })
    .expect("host unreachable");
    wait_for("no_binding and ICMP counted", BOUND, || {
        rig.metric("haven_dataplane_drops_total", &[("reason", "no_binding")]) >= 1.0
            && rig.metric("haven_dataplane_icmp_errors_total", &[]) >= 1.0
    })
    .expect("counted");

    stop.store(true, Ordering::Relaxed);
    let (n1, n2) = (s1.join().unwrap(), s2.join().unwrap());
    reader.join().unwrap();
    let sink = cn_sink.stop();
    let flows = sink.flows();
    let rev = flows.iter().find(|f| f.mn == 12).expect("reverse flow");
    assert_eq!(rev.received, 100);
    assert_eq!(rev.source, Some(HOA_IPIP));
    assert!(flows.iter().all(|f| f.mn != 13), "spoof reached cn");
    let (a, b) = (copies_of(&copies, MN2, 11), copies_of(&copies, MN2_B, 11));
    eprintln!(
        "dataplane: ipip sent {n1} got {}; simultaneous sent {n2} got {a} + {b}",
        copies_of(&copies, MN2, 10)
    );
    // Both copies of nearly every packet (the last ones may be in flight).
    assert!(a + 5 >= n2 && b + 5 >= n2, "sent {n2}, copies {a} and {b}");
    rig.finish();
}

fn set_int(fd: &impl AsRawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: an int option; pointer and length describe `v`, which
    // outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt {opt}: {}", io::Error::last_os_error());
}

/// The kernel's path MTU of a connected socket (`IP_MTU`).
fn path_mtu(s: &UdpSocket) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: IP_MTU writes one int; pointer and length describe `v`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(v)
}

/// Inner IPv4 fragments by Identification: (offset in octets, MF,
/// payload). Reassembles a datagram once its pieces are contiguous from 0
/// to one without MF [RFC 791 § 3.2], returning its UDP payload.
#[derive(Default)]
struct Pieces(std::collections::HashMap<u16, Vec<(usize, bool, Vec<u8>)>>);

impl Pieces {
    fn add(&mut self, inner: &[u8]) -> Option<Vec<u8>> {
        let p = Ipv4Packet::new_checked(inner).ok()?;
        if !p.verify_checksum() || p.protocol() != ip::protocol::UDP {
            return None;
        }
        let v = self.0.entry(p.ident()).or_default();
        v.push((
            usize::from(p.frag_offset()) * 8,
            p.more_frags(),
            p.payload().to_vec(),
        ));
        v.sort_by_key(|f| f.0);
        let mut whole = Vec::new();
        for (off, mf, data) in v.iter() {
            if *off != whole.len() {
                return None;
            }
            whole.extend_from_slice(data);
            if !mf {
                let u = UdpPacket::new_checked(&whole[..]).ok()?;
                return u
                    .verify_checksum(p.src_addr(), p.dst_addr())
                    .then(|| u.payload().to_vec());
            }
        }
        None
    }
}

/// 1572 octets of UDP payload: a 1600-octet IPv4 datagram.
fn big_payload(tag: u8) -> Vec<u8> {
    (0..1572u32).map(|i| (i as u8) ^ tag).collect()
}

#[test]
fn oversize_packets_fragmented_without_df_refused_with_df() {
    // Reference: RFC 2003 § 3.1 and § 5.1 (DF copied; clear: the tunnel
    // fragments; set: ICMP Fragmentation Needed with the tunnel's MTU,
    // RFC 1191 § 4), RFC 3519 § 3.3. Every link is 1500 octets and
    // `tunnel_mtu` is 1500: cn's own IP layer fragments a 1600-octet
    // datagram into 1500 + 120; the 1500-octet piece no longer fits any
    // tunnel, so the node fragments the outer datagram.
    if topo::skip_without_root() {
        return;
    }
    let rig = rig();
    let (mn_ns, mn2_ns, cn_ns) = (rig.ns("mn"), rig.ns("mn2"), rig.ns("cn"));

    // The UDP-tunnelling MN behind the NAT and the IP-in-IP one on mn2.
    let sock = udp_in(&mn_ns, SocketAddrV4::new(racks::plan::MN, 0));
    let mut cfg = MnConfig::new(HOA_UDP, racks::plan::VIP, racks::plan::MN, SPI, KEY);
    cfg.udp_tunnel = true;
    let mut core = MobileNode::new(cfg);
    assert_eq!(register(&mut core, &sock, None), Ok(HOA_UDP));
    let sock2 = udp_in(&mn2_ns, SocketAddrV4::new(MN2, 0));
    let mut core2 = MobileNode::new(MnConfig::new(HOA_IPIP, racks::plan::VIP, MN2, SPI, KEY));
    assert_eq!(register(&mut core2, &sock2, None), Ok(HOA_IPIP));
    let raw = in_netns(&mn2_ns, raw_ipip)
        .expect("mn2 namespace")
        .expect("raw socket");

    // Without DF (IP_PMTUDISC_DONT): the whole datagram arrives.
    let cn_sock = udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0));
    set_int(
        &cn_sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    );
    let mut buf = vec![0u8; 65_536];
    let (mut at_udp, mut at_ipip) = (Pieces::default(), Pieces::default());
    let (mut got_udp, mut got_ipip) = (false, false);
    wait_for("1600-octet non-DF datagrams at both MNs", BOUND, || {
        if !got_udp {
            let _ = cn_sock.send_to(&big_payload(1), SocketAddrV4::new(HOA_UDP, MN_PORT));
        }
        if !got_ipip {
            let _ = cn_sock.send_to(&big_payload(2), SocketAddrV4::new(HOA_IPIP, MN_PORT));
        }
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Ok(p) = TunnelDataPacket::new_checked(&buf[..n])
                && let Ok(t) = TunnelDataRepr::parse(&p)
                && at_udp.add(t.payload).is_some_and(|d| d == big_payload(1))
            {
                got_udp = true;
            }
        }
        while let Some(n) = raw_recv(&raw, &mut buf) {
            if let Ok(outer) = Ipv4Packet::new_checked(&buf[..n])
                && outer.protocol() == ip::protocol::IPIP
                && at_ipip
                    .add(outer.payload())
                    .is_some_and(|d| d == big_payload(2))
            {
                got_ipip = true;
            }
        }
        got_udp && got_ipip
    })
    .expect("both arrive whole");
    // The node, not a router after it, cut the outer datagrams: once per
    // tunnel at least (the 1500-octet piece, twice if retried).
    await_metric(
        &rig.url,
        Some(&rig.node_ns),
        "haven_dataplane_fragmented_packets_total",
        &[],
        |v| v >= 2.0,
        BOUND,
    )
    .expect("outer fragmentation counted");
    assert_eq!(
        rig.metric("haven_dataplane_drops_total", &[("reason", "mtu")]),
        0.0
    );

    // With DF (IP_PMTUDISC_DO) a 1490-octet datagram fits cn's link but
    // no tunnel: ICMP Fragmentation Needed from the VIP lowers cn's path
    // MTU to what each tunnel leaves (1500 - 32 for UDP, - 20 for IP in IP).
    for (hoa, mtu) in [(HOA_UDP, 1468), (HOA_IPIP, 1480)] {
        let df = udp_in(&cn_ns, SocketAddrV4::new(racks::plan::CN, 0));
        set_int(
            &df,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        );
        df.connect(SocketAddrV4::new(hoa, MN_PORT)).unwrap();
        assert_eq!(path_mtu(&df), Some(1500));
        wait_for(
            "ICMP fragmentation needed lowers the path MTU",
            BOUND,
            || {
                let _ = df.send(&[0u8; 1490 - 28]);
                let _ = df.recv(&mut [0u8; 16]);
                path_mtu(&df) == Some(mtu)
            },
        )
        .unwrap_or_else(|e| panic!("{hoa}: {e}; path MTU {:?}", path_mtu(&df)));
        // And now the kernel itself refuses the oversize send.
        assert_eq!(
            df.send(&[0u8; 1490 - 28]).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EMSGSIZE))
        );
    }
    wait_for("mtu drops and ICMP counted", BOUND, || {
        rig.metric("haven_dataplane_drops_total", &[("reason", "mtu")]) >= 2.0
            && rig.metric("haven_dataplane_icmp_errors_total", &[]) >= 2.0
    })
    .expect("counted");
    rig.finish();
}
