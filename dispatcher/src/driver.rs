//! The daemon around the sans-IO cores: forwarding workers, the control
//! loop (node adverts and peer-death withdrawals → [`NodePool`], the
//! [`Vrrp`] router, MAC resolution, metrics), and VIP ownership.
//!
//! Threads, not tasks: the packet path is a blocking `recvmmsg` → Maglev
//! lookup → in-place header rebuild → `sendmmsg` loop per worker, with every
//! buffer allocated once at start. Workers read shared state lock-free
//! (atomics) except one `RwLock` read per *batch* to take the current table
//! (`Arc<MaglevTable>`, replaced by the control loop on every rebuild).
//! Counters are per-worker-shared atomics that the control loop exports to
//! `metrics` once a second, so no label lookup happens per packet.
//!
//! * **l2**: each datagram is received straight into a frame buffer at
//!   [`frame::L2_PAYLOAD_OFFSET`]; Ethernet/IPv4/UDP headers are written in
//!   front of it (the mobile node's address and port as source, VIP:434 as
//!   destination, the node's MAC) and the frame leaves through an AF_PACKET
//!   socket on the rack interface. The node replies directly (DSR).
//! * **IP-in-IP to the VIP** (l2 only): a raw `IPPROTO_IPIP` socket takes
//!   whole packets to the VIP (only while the VIP is ours, reassembled, and
//!   its presence stops the kernel answering protocol-unreachable); each is
//!   received at [`frame::ETH_HEADER_LEN`], an Ethernet header to the node
//!   chosen by its outer source address is written in front, and it leaves
//!   unchanged through the AF_PACKET socket.
//! * **home-prefix gateway** (l2 only, `home_prefixes`): an AF_PACKET socket
//!   with a classic BPF filter takes the frames the router sends to our MAC
//!   for a home address; the MACs are rewritten to the node chosen by the
//!   destination address and the frame goes back out. Our own kernel must
//!   not forward them as well: start-up refuses `forwarding=1` on the rack
//!   interface.
//! * **encap**: the datagram is received after a 16-octet
//!   [`haven_proto::dispatch`] header and sent over UDP to the node's encap
//!   listener; the node's `ToClient` frames come back to the encap socket
//!   and leave from VIP:434 (one return thread).
//!
//! VRRP adverts are raw IP protocol 112 [RFC 5798 § 5.1], to the peer by
//! unicast when `[vrrp] peer` is set (works on any segment, no IGMP
//! snooping questions), else to 224.0.0.18 with TTL 255; received adverts
//! must have TTL 255 [RFC 5798 § 7.1]. On Master the VIP is added to the
//! rack interface (`ip addr add`) and a gratuitous ARP is sent; on Backup and
//! on shutdown it is removed; on SIGTERM a priority-0 advert goes first.

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haven_proto::dispatch::{self, DispatchPacket, DispatchRepr, Kind};
use haven_proto::ip::{Ipv4Packet, Ipv4Repr, protocol};
use haven_proto::vrrp::{self as vrrp_wire, VrrpPacket, VrrpRepr};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Config, Mac, Mode, Prefix};
use crate::frame;
use crate::health::{AdvertAuth, WithdrawOutcome};
use crate::maglev::MaglevTable;
use crate::sys::{self, BATCH, RecvMeta, TxItem};
use crate::vrrp::{Action, Vrrp, VrrpState};
use crate::{HealthEvent, NodeId, NodePool};

/// Largest datagram forwarded (jumbo frames); longer ones are dropped as
/// malformed (they arrive truncated).
pub const MAX_DATAGRAM: usize = 9000;
/// How often workers look at the stop flag while idle.
const IDLE: Duration = Duration::from_millis(100);

/// Drop reasons, the `reason` label of `haven_dispatcher_drops_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Drop {
    /// No node in the table (none Up or Draining).
    NoHealthyNode = 0,
    /// The kernel refused the send.
    SendError,
    /// Truncated, or a bad encap frame.
    Malformed,
    /// Received while Backup (the VIP moved away a moment ago).
    NotActive,
    /// l2: the chosen node's MAC is not known yet.
    UnresolvedMac,
    /// encap: a reply frame from an address that is not a node's.
    UnknownSource,
    /// IP-in-IP: a (reassembled) packet longer than the rack interface's
    /// MTU; the dispatcher does not fragment.
    TooBig,
}

impl Drop {
    const ALL: [Drop; 7] = [
        Drop::NoHealthyNode,
        Drop::SendError,
        Drop::Malformed,
        Drop::NotActive,
        Drop::UnresolvedMac,
        Drop::UnknownSource,
        Drop::TooBig,
    ];
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Drop::NoHealthyNode => "no_healthy_node",
            Drop::SendError => "send_error",
            Drop::Malformed => "malformed",
            Drop::NotActive => "not_active",
            Drop::UnresolvedMac => "unresolved_mac",
            Drop::UnknownSource => "unknown_source",
            Drop::TooBig => "too_big",
        }
    }
}

/// What a forwarded packet was, the `path` label of the per-node counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Path {
    /// UDP to VIP:434 (registrations, RFC 3519 data), by (source, port).
    Udp = 0,
    /// IP-in-IP to the VIP [RFC 2003], by outer source address.
    Ipip,
    /// Correspondent traffic to a home address, by destination address.
    Home,
}

impl Path {
    const ALL: [Path; 3] = [Path::Udp, Path::Ipip, Path::Home];
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Path::Udp => "udp",
            Path::Ipip => "ipip",
            Path::Home => "home",
        }
    }
}

/// A node as the packet path sees it.
#[derive(Debug)]
pub struct Target {
    /// Its id.
    pub id: NodeId,
    /// Its unique address.
    pub addr: Ipv4Addr,
    /// Its encap listener.
    pub encap: SocketAddrV4,
    /// Its MAC as [`Mac::to_u64`]; 0 while unknown.
    pub mac: AtomicU64,
    /// Whether the MAC came from the configuration.
    pub static_mac: bool,
    /// Packets forwarded to it, by [`Path`].
    pub packets: [AtomicU64; 3],
    /// Octets forwarded to it, by [`Path`]: the UDP payload on the UDP
    /// path, the whole IP packet on the others.
    pub bytes: [AtomicU64; 3],
}

impl Target {
    /// Packets forwarded to it on `path`.
    pub fn packets(&self, path: Path) -> u64 {
        self.packets
            .get(path as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn count(&self, path: Path, bytes: usize) {
        if let (Some(p), Some(b)) = (
            self.packets.get(path as usize),
            self.bytes.get(path as usize),
        ) {
            p.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }
}

/// Everything workers and the control loop share.
#[derive(Debug)]
pub struct Shared {
    /// Set once to stop every thread.
    pub stop: AtomicBool,
    /// Whether this dispatcher holds the VIP (VRRP Master, or alone).
    pub active: AtomicBool,
    table: RwLock<Arc<MaglevTable>>,
    /// Sorted by id.
    pub targets: Vec<Target>,
    drops: [AtomicU64; 7],
    /// encap: replies sent to mobile nodes.
    pub replies: AtomicU64,
}

impl Shared {
    /// Drops counted for `why`.
    pub fn drops(&self, why: Drop) -> u64 {
        self.drops
            .get(why as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn drop_n(&self, why: Drop, n: u64) {
        if let Some(c) = self.drops.get(why as usize) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn target(&self, id: NodeId) -> Option<&Target> {
        self.targets
            .binary_search_by_key(&id, |t| t.id)
            .ok()
            .and_then(|i| self.targets.get(i))
    }

    fn table(&self) -> Arc<MaglevTable> {
        Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn publish(&self, t: &MaglevTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(t.clone());
    }
}

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket, interface or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The pool or VRRP core refused the configuration.
    #[error("{0}")]
    Core(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// A running dispatcher.
#[derive(Debug)]
pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    /// The shared state (counters, flags).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops every thread: the control loop sends a priority-0 advert and
    /// gives up the VIP first. Returns when all have ended.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn udp_socket(bind: SocketAddrV4, reuseport: bool) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    // The VIP is only on the interface while Master; bind it anyway.
    s.set_freebind_v4(true)?;
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&SocketAddr::V4(bind).into())?;
    let u: UdpSocket = s.into();
    sys::set_recv_timeout(u.as_fd(), IDLE)?;
    Ok(u)
}

/// Starts workers and the control loop for `config` (already validated).
pub fn start(config: Config) -> Result<Running, StartError> {
    let mut targets: Vec<Target> = config
        .nodes
        .iter()
        .map(|n| Target {
            id: NodeId(n.id),
            addr: n.address,
            encap: SocketAddrV4::new(n.address, n.encap_port),
            mac: AtomicU64::new(n.mac.map_or(0, Mac::to_u64)),
            static_mac: n.mac.is_some(),
            packets: Default::default(),
            bytes: Default::default(),
        })
        .collect();
    targets.sort_by_key(|t| t.id);
    let pool = NodePool::new(config.pool_config()).map_err(|e| StartError::Core(e.to_string()))?;
    let vrrp = config
        .vrrp_config()
        .map(Vrrp::new)
        .transpose()
        .map_err(|e| StartError::Core(e.to_string()))?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        active: AtomicBool::new(false),
        table: RwLock::new(Arc::new(pool.table().clone())),
        targets,
        drops: Default::default(),
        replies: AtomicU64::new(0),
    });
    let d = &config.dispatcher;
    let vip = config.vip();
    let rack = match &d.interface {
        Some(i) => Some(Rack::open(i)?),
        None => None,
    };
    if let (false, Some(r)) = (d.home_prefixes.is_empty(), &rack) {
        check_no_forwarding(&r.name)?;
    }
    let mut threads = Vec::new();
    let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(io_err(format!("spawning {name}")))
    };
    let encap_sock = match d.mode {
        Mode::Encap => Some(Arc::new(
            udp_socket(SocketAddrV4::new(d.address, d.encap_port), false).map_err(io_err(
                format!("binding encap socket {}:{}", d.address, d.encap_port),
            ))?,
        )),
        Mode::L2 => None,
    };
    let mut vip_sockets = Vec::new();
    for w in 0..d.workers {
        let sock = udp_socket(vip, true).map_err(io_err(format!("binding {vip}")))?;
        let sock = Arc::new(sock);
        vip_sockets.push(Arc::clone(&sock));
        let sh = Arc::clone(&shared);
        let f: Box<dyn FnOnce() + Send> = match (d.mode, &rack, &encap_sock) {
            (Mode::L2, Some(r), _) => {
                let out = sys::packet_socket(r.ifindex)
                    .map_err(io_err(format!("AF_PACKET socket on {}", r.name)))?;
                let mac = r.mac;
                Box::new(move || l2_worker(&sh, &sock, &out, mac, vip))
            }
            (Mode::Encap, _, Some(e)) => {
                let e = Arc::clone(e);
                Box::new(move || encap_worker(&sh, &sock, &e, vip))
            }
            _ => return Err(StartError::Core("l2 mode needs an interface".into())),
        };
        threads.push(spawn(format!("fwd-{w}"), f)?);
    }
    if d.mode == Mode::Encap {
        // docs/dispatcher.md: the whole-packet paths are l2-only for now.
        tracing::info!("encap mode: IP-in-IP to the VIP is not forwarded");
    }
    if let (Mode::L2, Some(r)) = (d.mode, &rack) {
        let raw = ipip_socket().map_err(io_err(
            "opening the IP-in-IP raw socket (needs CAP_NET_RAW)",
        ))?;
        let out = sys::packet_socket(r.ifindex)
            .map_err(io_err(format!("AF_PACKET socket on {}", r.name)))?;
        let (sh, mac, mtu) = (Arc::clone(&shared), r.mac, r.mtu);
        threads.push(spawn(
            "fwd-ipip".into(),
            Box::new(move || ipip_worker(&sh, &raw, &out, mac, mtu, vip)),
        )?);
        if !d.home_prefixes.is_empty() {
            let filter = frame::home_prefix_filter(&d.home_prefixes);
            let rx = sys::packet_rx_socket(r.ifindex, &filter, IDLE)
                .map_err(io_err(format!("filtered AF_PACKET socket on {}", r.name)))?;
            let out = sys::packet_socket(r.ifindex)
                .map_err(io_err(format!("AF_PACKET socket on {}", r.name)))?;
            let (sh, mac, prefixes) = (Arc::clone(&shared), r.mac, d.home_prefixes.clone());
            threads.push(spawn(
                "fwd-home".into(),
                Box::new(move || home_worker(&sh, &rx, &out, mac, &prefixes)),
            )?);
        }
    }
    if let (Some(e), Some(v)) = (&encap_sock, vip_sockets.first()) {
        let (sh, e, v) = (Arc::clone(&shared), Arc::clone(e), Arc::clone(v));
        threads.push(spawn(
            "encap-return".into(),
            Box::new(move || encap_return(&sh, &e, &v, vip)),
        )?);
    }
    let control = Control::new(&config, pool, vrrp, rack, Arc::clone(&shared))?;
    threads.push(spawn("control".into(), Box::new(move || control.run()))?);
    Ok(Running { shared, threads })
}

/// The rack interface.
#[derive(Debug)]
struct Rack {
    name: String,
    ifindex: u32,
    mac: Mac,
    /// Its MTU: the largest IP packet an AF_PACKET frame may carry.
    mtu: usize,
}

impl Rack {
    fn open(name: &str) -> Result<Self, StartError> {
        let ifindex = sys::ifindex(name).map_err(io_err(format!("interface {name}")))?;
        let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
            .map_err(io_err(format!("reading the MAC of {name}")))?;
        let mac = text
            .trim()
            .parse()
            .map_err(|_| StartError::Core(format!("{name} has no Ethernet address")))?;
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1500);
        Ok(Self {
            name: name.to_owned(),
            ifindex,
            mac,
            mtu,
        })
    }
}

/// The home-prefix gateway hands correspondent frames on at layer 2; if our
/// own kernel forwarded them too (IP forwarding on the rack interface), each
/// would reach the nodes twice, the second copy through our routing table.
/// With `forwarding=0` the kernel drops a frame for a foreign address
/// silently (no ICMP), while our AF_PACKET socket has its copy. Refuse to
/// start rather than duplicate traffic.
fn check_no_forwarding(dev: &str) -> Result<(), StartError> {
    let path = format!("/proc/sys/net/ipv4/conf/{dev}/forwarding");
    let v = std::fs::read_to_string(&path).map_err(io_err(format!("reading {path}")))?;
    if v.trim() != "0" {
        return Err(StartError::Core(format!(
            "home_prefixes: IP forwarding is on for {dev} ({path} = {}); the kernel would \
             forward correspondent traffic too. Set net.ipv4.conf.{dev}.forwarding=0 \
             (or net.ipv4.ip_forward=0) in the dispatcher's namespace",
            v.trim()
        )));
    }
    Ok(())
}

/// The raw IP protocol 4 socket: every IP-in-IP packet to a local address
/// (the VIP while we are Master), whole and reassembled; its existence also
/// stops the kernel's ICMP protocol-unreachable for protocol 4.
fn ipip_socket() -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol::IPIP))),
    )?;
    let _ = s.set_recv_buffer_size(8 << 20);
    sys::set_recv_timeout(s.as_fd(), IDLE)?;
    Ok(s)
}

/// Where one received packet goes in the send batch: bytes
/// `start..start + len` of its buffer, to `dst` (UDP sockets) or as a frame.
struct Out {
    start: usize,
    len: usize,
    dst: Option<SocketAddrV4>,
}

impl Out {
    fn frame(len: usize) -> Self {
        Out {
            start: 0,
            len,
            dst: None,
        }
    }
}

/// The skeleton every forwarding worker shares: batched receive into
/// buffers of `room` bytes, nothing forwarded unless `active` (the Master's
/// job only, when `needs_active`), one table snapshot per batch, `each`
/// deciding per packet (counting it on its node) or naming the drop reason,
/// one batched send. No lock or allocation per packet (issue 6 item 5).
fn forward_loop(
    sh: &Shared,
    room: usize,
    needs_active: bool,
    mut recv: impl FnMut(&mut [Vec<u8>], &mut [RecvMeta]) -> io::Result<usize>,
    mut each: impl FnMut(&MaglevTable, &RecvMeta, &mut Vec<u8>) -> Result<Out, Drop>,
    out: std::os::fd::BorrowedFd<'_>,
) {
    let mut bufs = vec![vec![0u8; room]; BATCH];
    let mut metas = [RecvMeta::default(); BATCH];
    let mut tx = [TxItem::default(); BATCH];
    while !sh.stop.load(Ordering::Relaxed) {
        let Ok(n) = recv(&mut bufs, &mut metas) else {
            continue;
        };
        if needs_active && !sh.active.load(Ordering::Relaxed) {
            sh.drop_n(Drop::NotActive, n as u64);
            continue;
        }
        let table = sh.table();
        let mut k = 0;
        for (i, (m, b)) in metas.iter().zip(bufs.iter_mut()).take(n).enumerate() {
            match each(&table, m, b) {
                Ok(o) => {
                    if let Some(slot) = tx.get_mut(k) {
                        *slot = TxItem {
                            buf: i,
                            start: o.start,
                            len: o.len,
                            dst: o.dst,
                        };
                        k += 1;
                    }
                }
                Err(why) => sh.drop_n(why, 1),
            }
        }
        send(sh, out, &bufs, tx.get(..k).unwrap_or_default());
    }
}

/// The node for a datagram to the VIP's UDP port: Maglev on (source IP,
/// source port) [issue 6 item 1].
fn flow_target<'a>(sh: &'a Shared, table: &MaglevTable, m: &RecvMeta) -> Result<&'a Target, Drop> {
    if m.truncated {
        return Err(Drop::Malformed);
    }
    table
        .lookup_flow(*m.src.ip(), m.src.port())
        .and_then(|id| sh.target(id))
        .ok_or(Drop::NoHealthyNode)
}

/// The node's MAC, if ARP has resolved it.
fn node_mac(t: &Target) -> Result<Mac, Drop> {
    match t.mac.load(Ordering::Relaxed) {
        0 => Err(Drop::UnresolvedMac),
        mac => Ok(Mac::from_u64(mac)),
    }
}

/// IP-in-IP to the VIP: an Ethernet header to the node chosen by the outer
/// source in front, the IP packet unchanged (module docs).
fn ipip_worker(
    sh: &Shared,
    raw: &Socket,
    out: &OwnedFd,
    my_mac: Mac,
    mtu: usize,
    vip: SocketAddrV4,
) {
    let room = frame::ETH_HEADER_LEN + MAX_DATAGRAM;
    let recv = |b: &mut [Vec<u8>], m: &mut [RecvMeta]| {
        sys::recv_batch(raw.as_fd(), b, frame::ETH_HEADER_LEN, m)
    };
    let each = |table: &MaglevTable, m: &RecvMeta, b: &mut Vec<u8>| {
        if m.truncated || m.len > mtu {
            return Err(Drop::TooBig);
        }
        let (src, len) = b
            .get(frame::ETH_HEADER_LEN..frame::ETH_HEADER_LEN + m.len)
            .and_then(|p| frame::ipip_to_vip(p, *vip.ip()))
            .ok_or(Drop::Malformed)?;
        let t = table
            .lookup_addr(src)
            .and_then(|id| sh.target(id))
            .ok_or(Drop::NoHealthyNode)?;
        frame::write_eth_header(b, node_mac(t)?, my_mac).ok_or(Drop::Malformed)?;
        t.count(Path::Ipip, len);
        Ok(Out::frame(frame::ETH_HEADER_LEN + len))
    };
    forward_loop(sh, room, true, recv, each, out.as_fd());
}

/// The home-prefix gateway: correspondent frames to a home address, MACs
/// rewritten to the node chosen by the destination (module docs). Only the
/// Master forwards; a Backup sees these frames only while the router's ARP
/// entry for the VIP is stale.
fn home_worker(sh: &Shared, rx: &OwnedFd, out: &OwnedFd, my_mac: Mac, prefixes: &[Prefix]) {
    let room = frame::ETH_HEADER_LEN + MAX_DATAGRAM;
    let recv = |b: &mut [Vec<u8>], m: &mut [RecvMeta]| sys::recv_frames(rx.as_fd(), b, m);
    let each = |table: &MaglevTable, m: &RecvMeta, b: &mut Vec<u8>| {
        if m.truncated {
            return Err(Drop::TooBig);
        }
        let (dst, len) = b
            .get(..m.len)
            .and_then(|f| frame::home_destination(f, prefixes))
            .ok_or(Drop::Malformed)?;
        let t = table
            .lookup_addr(dst)
            .and_then(|id| sh.target(id))
            .ok_or(Drop::NoHealthyNode)?;
        let mac = node_mac(t)?;
        // A local sender's checksum offload (veth) leaves the L4 checksum
        // for the egress device; our frame goes out as bytes.
        if m.csum_not_ready
            && let Some(pkt) = b.get_mut(frame::ETH_HEADER_LEN..len)
        {
            frame::complete_l4_checksum(pkt);
        }
        frame::rewrite_macs(b, mac, my_mac).ok_or(Drop::Malformed)?;
        t.count(Path::Home, len - frame::ETH_HEADER_LEN);
        Ok(Out::frame(len))
    };
    forward_loop(sh, room, true, recv, each, out.as_fd());
}

/// The l2 forwarding loop (module docs).
fn l2_worker(sh: &Shared, sock: &UdpSocket, out: &OwnedFd, my_mac: Mac, vip: SocketAddrV4) {
    let room = frame::L2_PAYLOAD_OFFSET + MAX_DATAGRAM;
    let recv = |b: &mut [Vec<u8>], m: &mut [RecvMeta]| {
        sys::recv_batch(sock.as_fd(), b, frame::L2_PAYLOAD_OFFSET, m)
    };
    let each = |table: &MaglevTable, m: &RecvMeta, b: &mut Vec<u8>| {
        let t = flow_target(sh, table, m)?;
        let len = frame::write_l2_udp(b, node_mac(t)?, my_mac, m.src, vip, m.len)
            .ok_or(Drop::Malformed)?;
        t.count(Path::Udp, m.len);
        Ok(Out::frame(len))
    };
    forward_loop(sh, room, true, recv, each, out.as_fd());
}

fn send(sh: &Shared, fd: std::os::fd::BorrowedFd<'_>, bufs: &[Vec<u8>], items: &[TxItem]) {
    if items.is_empty() {
        return;
    }
    let (_, failed, err) = sys::send_batch(fd, bufs, items);
    if failed > 0 {
        sh.drop_n(Drop::SendError, failed as u64);
        if let Some(e) = err {
            tracing::debug!("send: {e}");
        }
    }
}

/// The encap forwarding loop: header in front, UDP to the node.
fn encap_worker(sh: &Shared, sock: &UdpSocket, encap: &UdpSocket, vip: SocketAddrV4) {
    let room = dispatch::HEADER_LEN + MAX_DATAGRAM;
    let recv = |b: &mut [Vec<u8>], m: &mut [RecvMeta]| {
        sys::recv_batch(sock.as_fd(), b, dispatch::HEADER_LEN, m)
    };
    let each = |table: &MaglevTable, m: &RecvMeta, b: &mut Vec<u8>| {
        let t = flow_target(sh, table, m)?;
        let hdr = DispatchRepr {
            kind: Kind::ToNode,
            src: m.src,
            dst: vip,
        };
        hdr.emit_header(&mut DispatchPacket::new_unchecked(&mut b[..]))
            .map_err(|_| Drop::Malformed)?;
        t.count(Path::Udp, m.len);
        Ok(Out {
            start: 0,
            len: dispatch::HEADER_LEN + m.len,
            dst: Some(t.encap),
        })
    };
    forward_loop(sh, room, true, recv, each, encap.as_fd());
}

/// encap: node replies (`ToClient`) leave from VIP:434 to the mobile node,
/// whichever dispatcher is Master (a node answers the one that forwarded).
fn encap_return(sh: &Shared, encap: &UdpSocket, vip_sock: &UdpSocket, vip: SocketAddrV4) {
    let room = dispatch::HEADER_LEN + MAX_DATAGRAM;
    let recv = |b: &mut [Vec<u8>], m: &mut [RecvMeta]| sys::recv_batch(encap.as_fd(), b, 0, m);
    let each = |_: &MaglevTable, m: &RecvMeta, b: &mut Vec<u8>| {
        // Only nodes may make the dispatcher send from the VIP: anything
        // else would turn it into an open relay.
        if !sh.targets.iter().any(|t| t.addr == *m.src.ip()) {
            return Err(Drop::UnknownSource);
        }
        let r = b
            .get(..m.len)
            .ok_or(haven_proto::Error::Truncated)
            .and_then(DispatchPacket::new_checked)
            .and_then(|p| DispatchRepr::parse(&p))
            .map_err(|_| Drop::Malformed)?;
        if m.truncated || r.kind != Kind::ToClient || r.src != vip {
            return Err(Drop::Malformed);
        }
        sh.replies.fetch_add(1, Ordering::Relaxed);
        Ok(Out {
            start: dispatch::HEADER_LEN,
            len: m.len - dispatch::HEADER_LEN,
            dst: Some(r.dst),
        })
    };
    forward_loop(sh, room, false, recv, each, vip_sock.as_fd());
}

/// The control loop's state.
struct Control {
    shared: Arc<Shared>,
    pool: NodePool,
    vrrp: Option<Vrrp>,
    vrrp_sock: Option<Socket>,
    vrrp_dst: Ipv4Addr,
    adverts: UdpSocket,
    advert_port: u16,
    /// Advert parsing, authentication and replay refusal.
    auth: AdvertAuth,
    /// (source, refusal label) pairs already warned about (bounded by the
    /// configured nodes × 4: three advert refusals, one for withdrawals).
    warned: HashSet<(Ipv4Addr, &'static str)>,
    address: Ipv4Addr,
    vip: Ipv4Addr,
    manage_vip: bool,
    rack: Option<Rack>,
    garp: Option<OwnedFd>,
    l2: bool,
    published_rebuilds: u64,
    metrics_at: Instant,
    arp_at: Instant,
    /// Gratuitous ARPs per takeover and their spacing.
    garp_count: u32,
    garp_interval: Duration,
    /// Repeats still to send after a takeover, and when the next is due.
    garp_left: u32,
    garp_at: Instant,
    /// The latest this loop woke past a deadline since the last export:
    /// how long the host kept it from running (scheduling delay).
    lag_max: Duration,
}

impl Control {
    fn new(
        config: &Config,
        pool: NodePool,
        vrrp: Option<Vrrp>,
        rack: Option<Rack>,
        shared: Arc<Shared>,
    ) -> Result<Self, StartError> {
        let d = &config.dispatcher;
        let port = config.health.listen_port;
        let adverts = udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port), false).map_err(
            io_err(format!("binding the advert listener on port {port}")),
        )?;
        // Drained until WouldBlock after each poll(2) wake-up.
        adverts
            .set_nonblocking(true)
            .map_err(io_err("advert listener non-blocking"))?;
        if config.health.key.is_none() {
            tracing::warn!(
                "node adverts are not authenticated ([health] key_file unset): a host that can \
                 spoof a node's address can keep it in the table or drain it (docs/security.md)"
            );
        }
        let peer = config.vrrp.as_ref().and_then(|v| v.peer);
        let vrrp_dst = peer.unwrap_or(vrrp_wire::MULTICAST_ADDR);
        let vrrp_sock = match &vrrp {
            Some(_) => Some(
                vrrp_socket(
                    d.address,
                    peer.is_none(),
                    rack.as_ref().map(|r| r.name.as_str()),
                )
                .map_err(io_err("opening the VRRP raw socket (needs CAP_NET_RAW)"))?,
            ),
            None => None,
        };
        let garp = match (&rack, d.manage_vip) {
            (Some(r), true) => Some(
                sys::packet_socket(r.ifindex)
                    .map_err(io_err(format!("AF_PACKET socket on {}", r.name)))?,
            ),
            _ => None,
        };
        let now = Instant::now();
        Ok(Self {
            shared,
            pool,
            vrrp,
            vrrp_sock,
            vrrp_dst,
            adverts,
            advert_port: port,
            auth: AdvertAuth::new(config.health.key.clone()),
            warned: HashSet::new(),
            address: d.address,
            vip: d.vip,
            manage_vip: d.manage_vip,
            rack,
            garp,
            l2: d.mode == Mode::L2,
            published_rebuilds: u64::MAX,
            metrics_at: now,
            arp_at: now,
            garp_count: d.garp_count,
            garp_interval: Duration::from_millis(u64::from(d.garp_interval_ms)),
            garp_left: 0,
            garp_at: now,
            lag_max: Duration::ZERO,
        })
    }

    fn run(mut self) {
        describe_metrics();
        let now = Instant::now();
        match self.vrrp.as_mut() {
            Some(v) => v.startup(now),
            None => self.become_active(),
        }
        self.actions();
        let mut buf = vec![0u8; 2048];
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let next = [
                self.pool.poll_timeout(),
                self.vrrp.as_ref().and_then(Vrrp::poll_timeout),
                Some(self.metrics_at),
                self.l2.then_some(self.arp_at),
                (self.garp_left > 0).then_some(self.garp_at),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + IDLE);
            let wait = next.saturating_duration_since(now).min(IDLE);
            let mask = {
                let mut fds = vec![self.adverts.as_fd()];
                if let Some(s) = &self.vrrp_sock {
                    fds.push(s.as_fd());
                }
                sys::poll_readable(&fds, wait).unwrap_or(0)
            };
            if mask == 0 {
                let late = Instant::now().saturating_duration_since(now + wait);
                self.lag_max = self.lag_max.max(late);
            }
            if mask & 1 != 0 {
                self.read_adverts(&mut buf);
            }
            if mask & 2 != 0 {
                self.read_vrrp(&mut buf);
            }
            let now = Instant::now();
            let events = self.pool.poll(now);
            self.on_health(&events);
            if let Some(v) = self.vrrp.as_mut() {
                v.handle_timeout(now);
            }
            self.actions();
            if self.garp_left > 0 && now >= self.garp_at {
                self.garp_left -= 1;
                self.garp_at = now + self.garp_interval;
                self.send_garp();
            }
            if self.l2 && now >= self.arp_at {
                self.resolve_macs();
                self.arp_at = now + Duration::from_secs(1);
            }
            if now >= self.metrics_at {
                self.export();
                metrics::gauge!("haven_dispatcher_control_lag_seconds")
                    .set(self.lag_max.as_secs_f64());
                self.lag_max = Duration::ZERO;
                self.metrics_at = now + Duration::from_secs(1);
            }
        }
        // [RFC 5798 § 6.4.3]: a Master leaving sends priority 0 so the
        // Backup takes over after Skew_Time, not Master_Down_Interval.
        match self.vrrp.as_mut() {
            Some(v) => v.shutdown(),
            None => self.become_inactive(),
        }
        self.actions();
        self.export();
    }

    fn read_adverts(&mut self, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let (n, from) = match self.adverts.recv_from(buf) {
                Ok((n, SocketAddr::V4(a))) => (n, a),
                Ok(_) => continue,
                Err(_) => return,
            };
            let now = Instant::now();
            let bytes = buf.get(..n).unwrap_or(&[]);
            // A peer-death withdrawal shares the listener (and the framing,
            // key and sequence) with adverts; type 6 tells it apart
            // (haven_proto::withdraw).
            let withdrawal = haven_proto::withdraw::is_withdrawal(bytes);
            let Some(t) = self.shared.targets.iter().find(|t| t.addr == *from.ip()) else {
                if withdrawal {
                    tracing::debug!(src = %from.ip(), "withdrawal from an unconfigured source");
                    metrics::counter!("haven_dispatcher_withdrawals_total", "result" => "refused")
                        .increment(1);
                } else {
                    metrics::counter!("haven_dispatcher_adverts_total", "result" => "unknown_node")
                        .increment(1);
                }
                continue;
            };
            let id = t.id;
            if withdrawal {
                self.read_withdrawal(now, id, *from.ip(), bytes);
                continue;
            }
            // The node computes the checksum over the pseudo-header (its
            // address, ours) as VRRP over IP would [RFC 5798 § 5.2.8]; with
            // a key the HMAC and the sequence are checked too (health.rs).
            match self.auth.check(id, *from.ip(), self.address, bytes) {
                Ok(r) => match self.pool.on_advert(now, id, &r) {
                    Ok(()) => {
                        metrics::counter!("haven_dispatcher_adverts_total", "result" => "accepted")
                            .increment(1);
                    }
                    Err(e) => {
                        tracing::debug!(node = %id, "advert refused: {e}");
                        metrics::counter!("haven_dispatcher_adverts_total", "result" => "refused")
                            .increment(1);
                    }
                },
                Err(e) => {
                    // Once per source and kind at warn (a node whose
                    // advertise_to names another address of ours fails the
                    // checksum forever), then debug.
                    if self.warned.insert((*from.ip(), e.label())) {
                        tracing::warn!(
                            node = %id, src = %from.ip(), dst = %self.address,
                            "advert dropped: {e} (the checksum and HMAC cover both addresses: \
                             does the node's [dispatch] advertise_to name {}:{}, and its key_file \
                             match [health] key_file?); further ones from this source are logged at debug",
                            self.address, self.advert_port
                        );
                    } else {
                        tracing::debug!(node = %id, "advert dropped: {e}");
                    }
                    metrics::counter!("haven_dispatcher_adverts_total", "result" => e.label())
                        .increment(1);
                }
            }
            // A node we hear from is on the segment: learn its MAC soon.
            if self.l2 && t.mac.load(Ordering::Relaxed) == 0 {
                self.arp_at = now;
            }
        }
    }

    /// A withdrawal from configured node `by` at `src`: authenticated
    /// (with a key) and replay-checked like its adverts, about another
    /// configured node, then queued for the pool's next poll, which runs
    /// right after this receive batch (health.rs, "Withdrawals").
    fn read_withdrawal(&mut self, now: Instant, by: NodeId, src: Ipv4Addr, bytes: &[u8]) {
        let w = match self.auth.check_withdrawal(by, src, self.address, bytes) {
            Ok(w) => w,
            Err(e) => {
                if self.warned.insert((src, "withdrawal")) {
                    tracing::warn!(
                        node = %by, %src, dst = %self.address,
                        "withdrawal dropped: {e} (same checks as its adverts); further ones \
                         from this source are logged at debug"
                    );
                } else {
                    tracing::debug!(node = %by, "withdrawal dropped: {e}");
                }
                metrics::counter!("haven_dispatcher_withdrawals_total", "result" => "refused")
                    .increment(1);
                return;
            }
        };
        let Some(t) = self.shared.targets.iter().find(|t| t.addr == w.subject) else {
            tracing::debug!(node = %by, subject = %w.subject, "withdrawal of an unconfigured address");
            metrics::counter!("haven_dispatcher_withdrawals_total", "result" => "ignored")
                .increment(1);
            return;
        };
        // Applied now: the table is rebuilt here and published with the
        // transition by the next `on_health`, right after this batch.
        let result = match self.pool.on_withdrawal(now, by, t.id) {
            Ok(WithdrawOutcome::Accepted) => "accepted",
            Ok(WithdrawOutcome::Ignored(why)) => {
                tracing::debug!(node = %by, subject = %t.id, "withdrawal ignored: {why:?}");
                "ignored"
            }
            Err(e) => {
                tracing::debug!(node = %by, "withdrawal refused: {e}");
                "refused"
            }
        };
        metrics::counter!("haven_dispatcher_withdrawals_total", "result" => result).increment(1);
    }

    fn read_vrrp(&mut self, buf: &mut [u8]) {
        let Some(sock) = &self.vrrp_sock else { return };
        for _ in 0..BATCH {
            let n = match (&*sock).read(buf) {
                Ok(n) => n,
                Err(_) => return,
            };
            let now = Instant::now();
            let res = buf
                .get(..n)
                .ok_or(haven_proto::Error::Truncated)
                .and_then(Ipv4Packet::new_checked)
                .and_then(|ip| {
                    let r = Ipv4Repr::parse(&ip)?;
                    // [RFC 5798 § 7.1]: TTL must be 255, else discard.
                    if r.protocol != protocol::VRRP || r.ttl != vrrp_wire::TTL {
                        return Err(haven_proto::Error::Malformed("VRRP TTL not 255"));
                    }
                    let p = VrrpPacket::new_checked(ip.payload())?;
                    Ok((r.src, VrrpRepr::parse(&p, r.src, r.dst)?))
                });
            match res {
                Ok((src, advert)) => {
                    if let Some(v) = self.vrrp.as_mut()
                        && let Err(e) = v.handle_advert(now, src, &advert)
                    {
                        tracing::trace!(%src, "VRRP advert ignored: {e}");
                    }
                }
                Err(e) => {
                    tracing::debug!("bad VRRP packet: {e}");
                    metrics::counter!("haven_dispatcher_vrrp_malformed_total").increment(1);
                }
            }
        }
        self.actions();
    }

    fn actions(&mut self) {
        while let Some(a) = self.vrrp.as_mut().and_then(Vrrp::poll_action) {
            match a {
                Action::SendAdvert(advert) => self.send_vrrp(&advert),
                Action::BecomeMaster => {
                    tracing::info!("VRRP: Master, taking {}", self.vip);
                    metrics::counter!("haven_dispatcher_vrrp_transitions_total", "to" => "master")
                        .increment(1);
                    self.become_active();
                }
                Action::BecomeBackup => {
                    tracing::info!("VRRP: Backup, releasing {}", self.vip);
                    metrics::counter!("haven_dispatcher_vrrp_transitions_total", "to" => "backup")
                        .increment(1);
                    self.become_inactive();
                }
                Action::Reassert => {
                    tracing::info!(
                        "VRRP: a lower-priority router claimed {}; announcing it again",
                        self.vip
                    );
                    metrics::counter!("haven_dispatcher_vrrp_reasserts_total").increment(1);
                    self.reassert();
                }
                Action::Stopped => {
                    tracing::info!("VRRP: stopped");
                    metrics::counter!("haven_dispatcher_vrrp_transitions_total", "to" => "stopped")
                        .increment(1);
                    self.become_inactive();
                }
            }
        }
        let state = match self.vrrp.as_ref().map(Vrrp::state) {
            Some(VrrpState::Initialize) => 0.0,
            Some(VrrpState::Backup) => 1.0,
            Some(VrrpState::Master) | None => 2.0,
        };
        metrics::gauge!("haven_dispatcher_vrrp_state").set(state);
    }

    fn send_vrrp(&self, advert: &VrrpRepr) {
        let Some(sock) = &self.vrrp_sock else { return };
        match advert.to_bytes(self.address, self.vrrp_dst) {
            Ok(b) => {
                let dst = SockAddr::from(SocketAddrV4::new(self.vrrp_dst, 0));
                if let Err(e) = sock.send_to(&b, &dst) {
                    tracing::warn!("sending VRRP advert: {e}");
                }
            }
            Err(e) => tracing::warn!("encoding VRRP advert: {e}"),
        }
    }

    fn become_active(&mut self) {
        if self.manage_vip
            && let Some(r) = &self.rack
        {
            ip_addr("add", self.vip, &r.name);
            self.send_garp();
            // [RFC 5798 § 6.4.2] asks for a gratuitous ARP on takeover; the
            // repeats (timers of the control loop, never a sleep) cover a
            // lost first one.
            self.garp_left = self.garp_count.saturating_sub(1);
            self.garp_at = Instant::now() + self.garp_interval;
        }
        self.shared.active.store(true, Ordering::SeqCst);
    }

    /// Gratuitous ARPs for the VIP again, with the takeover's repeats
    /// ([`Action::Reassert`]); the address stays. A burst already running
    /// is left to finish, so a peer stuck advertising as Master cannot make
    /// us flood the segment.
    fn reassert(&mut self) {
        if !self.manage_vip || self.rack.is_none() || self.garp_left > 0 {
            return;
        }
        self.send_garp();
        self.garp_left = self.garp_count.saturating_sub(1);
        self.garp_at = Instant::now() + self.garp_interval;
    }

    /// One gratuitous ARP for the VIP (sender = target = VIP, broadcast).
    fn send_garp(&self) {
        if let Some(r) = &self.rack {
            let mut f = [0u8; 64];
            if let (Some(n), Some(fd)) = (
                frame::write_gratuitous_arp(&mut f, r.mac, self.vip),
                &self.garp,
            ) {
                let items = [TxItem {
                    buf: 0,
                    start: 0,
                    len: n,
                    dst: None,
                }];
                let bufs = [f.to_vec()];
                let (_, failed, e) = sys::send_batch(fd.as_fd(), &bufs, &items);
                if failed > 0 {
                    tracing::warn!("gratuitous ARP: {e:?}");
                } else {
                    metrics::counter!("haven_dispatcher_gratuitous_arps_total").increment(1);
                }
            }
        }
    }

    fn become_inactive(&mut self) {
        self.shared.active.store(false, Ordering::SeqCst);
        self.garp_left = 0;
        if self.manage_vip
            && let Some(r) = &self.rack
        {
            ip_addr("del", self.vip, &r.name);
        }
    }

    fn on_health(&mut self, events: &[HealthEvent]) {
        for ev in events {
            let (to, node) = match ev {
                HealthEvent::NodeUp { node, .. } => ("up", node),
                HealthEvent::NodeDraining { node, .. } => ("draining", node),
                HealthEvent::NodeDown { node, .. } => ("down", node),
            };
            tracing::info!(%node, "node {to}: {ev:?}");
            metrics::counter!("haven_dispatcher_node_transitions_total",
                "node" => node.0.to_string(), "to" => to)
            .increment(1);
        }
        let rebuilds = self.pool.table().rebuilds();
        if rebuilds != self.published_rebuilds {
            self.shared.publish(self.pool.table());
            self.published_rebuilds = rebuilds;
        }
    }

    fn resolve_macs(&mut self) {
        let iface = self.rack.as_ref().map(|r| r.name.clone());
        let text = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
        for t in self.shared.targets.iter().filter(|t| !t.static_mac) {
            match frame::arp_lookup(&text, t.addr, iface.as_deref()) {
                Some(m) => {
                    if t.mac.swap(m.to_u64(), Ordering::Relaxed) != m.to_u64() {
                        tracing::info!(node = %t.id, "MAC {m}");
                    }
                }
                // Not in the neighbour table: one datagram to the discard
                // port makes the kernel ARP for it.
                None => {
                    let _ = self.adverts.send_to(&[0], SocketAddrV4::new(t.addr, 9));
                }
            }
        }
    }

    fn export(&self) {
        for t in &self.shared.targets {
            let node = t.id.0.to_string();
            for (p, (pk, by)) in Path::ALL.iter().zip(t.packets.iter().zip(&t.bytes)) {
                metrics::counter!("haven_dispatcher_packets_total",
                    "node" => node.clone(), "path" => p.label())
                .absolute(pk.load(Ordering::Relaxed));
                metrics::counter!("haven_dispatcher_bytes_total",
                    "node" => node.clone(), "path" => p.label())
                .absolute(by.load(Ordering::Relaxed));
            }
            let state = match self.pool.health().state(t.id) {
                Some(crate::NodeState::Up) => 1.0,
                _ => 0.0,
            };
            metrics::gauge!("haven_dispatcher_node_up", "node" => node).set(state);
        }
        for d in Drop::ALL {
            metrics::counter!("haven_dispatcher_drops_total", "reason" => d.label())
                .absolute(self.shared.drops(d));
        }
        metrics::counter!("haven_dispatcher_replies_total")
            .absolute(self.shared.replies.load(Ordering::Relaxed));
        metrics::counter!("haven_dispatcher_table_rebuilds_total")
            .absolute(self.pool.table().rebuilds());
        metrics::gauge!("haven_dispatcher_active").set(
            if self.shared.active.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
    }
}

/// `ip addr add|del VIP/32 dev IF`; "already there"/"not there" are fine.
fn ip_addr(op: &str, vip: Ipv4Addr, dev: &str) {
    let out = std::process::Command::new("ip")
        .args(["addr", op, &format!("{vip}/32"), "dev", dev])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => tracing::info!("ip addr {op} {vip}/32 dev {dev}"),
        Ok(o) => tracing::debug!(
            "ip addr {op} {vip}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("running ip addr {op}: {e}"),
    }
}

/// The raw IP protocol 112 socket [RFC 5798 § 5.1]: source `address`, TTL
/// 255 for unicast and multicast, multicast loop off (our own adverts are
/// ignored by the core anyway), joined to 224.0.0.18 when `multicast`.
fn vrrp_socket(address: Ipv4Addr, multicast: bool, dev: Option<&str>) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(protocol::VRRP))),
    )?;
    s.set_ttl_v4(u32::from(vrrp_wire::TTL))?;
    s.set_multicast_ttl_v4(u32::from(vrrp_wire::TTL))?;
    s.set_multicast_loop_v4(false)?;
    if let Some(d) = dev {
        s.bind_device(Some(d.as_bytes()))?;
    }
    s.bind(&SockAddr::from(SocketAddrV4::new(address, 0)))?;
    if multicast {
        s.set_multicast_if_v4(&address)?;
        s.join_multicast_v4(&vrrp_wire::MULTICAST_ADDR, &address)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "haven_dispatcher_packets_total",
        Unit::Count,
        "Packets forwarded to each node, by path (udp, ipip, home)"
    );
    describe_counter!(
        "haven_dispatcher_bytes_total",
        Unit::Bytes,
        "Octets forwarded to each node, by path (UDP payload; whole IP packet for ipip, home)"
    );
    describe_counter!(
        "haven_dispatcher_gratuitous_arps_total",
        Unit::Count,
        "Gratuitous ARPs sent for the VIP"
    );
    describe_counter!(
        "haven_dispatcher_drops_total",
        Unit::Count,
        "Datagrams dropped, by reason"
    );
    describe_counter!(
        "haven_dispatcher_table_rebuilds_total",
        Unit::Count,
        "Maglev table rebuilds"
    );
    describe_counter!(
        "haven_dispatcher_node_transitions_total",
        Unit::Count,
        "Node health transitions, by node and new state"
    );
    describe_gauge!("haven_dispatcher_node_up", "1 while the node is Up");
    describe_counter!(
        "haven_dispatcher_withdrawals_total",
        Unit::Count,
        "Peer-death withdrawals received, by result (accepted, ignored, refused)"
    );
    describe_gauge!(
        "haven_dispatcher_vrrp_state",
        "VRRP state: 0 Initialize, 1 Backup, 2 Master (also 2 when alone)"
    );
    describe_counter!(
        "haven_dispatcher_vrrp_transitions_total",
        Unit::Count,
        "VRRP transitions, by new state"
    );
    describe_counter!(
        "haven_dispatcher_vrrp_reasserts_total",
        Unit::Count,
        "Lower-priority VRRP advertisements heard as Master, each answered by an advertisement and gratuitous ARPs for the VIP"
    );
    describe_gauge!(
        "haven_dispatcher_active",
        "1 while this dispatcher forwards"
    );
    describe_gauge!(
        "haven_dispatcher_control_lag_seconds",
        Unit::Seconds,
        "Longest the control loop woke past a deadline in the last second (the host's scheduling delay of failure detection)"
    );
}
