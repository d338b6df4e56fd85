//! The data plane's tasks: the thin async shell around [`DataPlane`].
//!
//! * one task per realm reads its TUN device in batches and forwards;
//! * one task receives IP-in-IP on the raw socket (`recvmmsg`) and
//!   reverses it;
//! * one task takes the RFC 3519 tunnel data the daemon's realm sockets
//!   received (the daemon's driver hands it over with [`UdpIngress::offer`]
//!   instead of feeding it to the registration engine) and reverses it;
//!   behind a dispatcher in encap mode that data arrives in `ToNode` frames
//!   and takes the same way;
//! * one task copies the core's counters into `metrics` once a second.
//!
//! Output: raw-socket packets (IP in IP, ICMP errors, outer fragments) go
//! out in `sendmmsg` batches; UDP tunnel data leaves from the realm's
//! VIP:434 socket, or, behind a dispatcher in encap mode, in a `ToClient`
//! frame through [`Egress`] so the dispatcher sends it from VIP:434 (the
//! mobile node's NAT mapping is towards the VIP, not towards this node
//! [RFC 3519 § 3.3]).
//!
//! Each task owns its receive buffers, its [`Outputs`] arena and its frame
//! buffer, so the steady state allocates nothing per packet on the TUN and
//! raw paths; the UDP path receives owned datagrams from the daemon's
//! batches.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use haven_proto::udptun::{self, Kind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::raw::{self, RawSocket};
use super::tun::Tun;
use super::{DataPlane, DataplaneConfig, Dest, Outputs, RealmPlane};
use crate::binding::BindingTable;
use crate::config::{RealmConfig, RealmId};
use crate::ingress::Egress;
use crate::net::Endpoint;

/// Packets handled, by `direction` (forward, reverse) and `encap` (ipip,
/// udp), and keepalives answered (`encap` = keepalive).
pub const PACKETS: &str = "haven_dataplane_packets_total";
/// Packets dropped, by `reason`.
pub const DROPS: &str = "haven_dataplane_drops_total";
/// ICMP errors sent.
pub const ICMP: &str = "haven_dataplane_icmp_errors_total";
/// Packets the kernel refused to send or the TUN to take.
pub const SEND_ERRORS: &str = "haven_dataplane_send_errors_total";
/// Forwarded copies sent as outer fragments (DF clear, larger than the
/// tunnel MTU [RFC 2003 § 5.1]).
pub const FRAGMENTED: &str = "haven_dataplane_fragmented_packets_total";

/// Packets read per wake-up (one `recvmmsg` on the raw socket).
const BATCH: usize = raw::BATCH;
/// MTU of the TUN devices: the largest IPv4 packet, so the kernel hands
/// the core whole packets and the core applies each binding's own tunnel
/// overhead (module docs of `dataplane`, "Fragmentation").
pub const TUN_MTU: u16 = u16::MAX;
/// Largest packet read from a TUN device or the raw socket.
const MAX_PACKET: usize = 65_535;
/// Queue of UDP tunnel data between the daemon's driver and the reverse task.
const UDP_QUEUE: usize = 4096;

fn wall_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The daemon's side of the UDP path: tunnel data goes here instead of the
/// registration engine.
#[derive(Debug, Clone)]
pub struct UdpIngress {
    tx: mpsc::Sender<(SocketAddrV4, SocketAddrV4, Vec<u8>)>,
}

impl UdpIngress {
    /// When `bytes` (a UDP payload received from `src` at `dst`, VIP:434) is
    /// RFC 3519 tunnel data (first octet 4 [RFC 3519 § 3.3]), queues it for
    /// the data plane and returns true; registration messages return false
    /// and stay with the caller. A full queue drops the packet (counted).
    pub fn offer(&self, src: SocketAddrV4, dst: SocketAddrV4, bytes: &[u8]) -> bool {
        if udptun::classify(bytes) != Kind::TunnelData {
            return false;
        }
        if self.tx.try_send((src, dst, bytes.to_vec())).is_err() {
            metrics::counter!(SEND_ERRORS, "reason" => "udp_queue_full").increment(1);
        }
        true
    }
}

/// A running data plane.
#[derive(Debug)]
pub struct Running {
    /// The core (counters).
    pub dataplane: Arc<DataPlane>,
    /// Where the daemon's driver hands tunnel data.
    pub udp: UdpIngress,
    /// The tasks; they end when the stop signal turns true.
    pub tasks: Vec<JoinHandle<()>>,
}

/// The sending side shared by the tasks.
#[derive(Debug)]
struct Io {
    tuns: HashMap<RealmId, Arc<Tun>>,
    raw: Arc<RawSocket>,
    eps: HashMap<RealmId, Arc<Endpoint>>,
    /// Encap mode: UDP tunnel data goes back through the dispatcher.
    egress: Option<Egress>,
}

impl Io {
    /// Sends everything in `out`: the raw-socket packets first, in
    /// `sendmmsg` batches, then the rest in order. `frame` is the task's
    /// buffer for `ToClient` frames.
    async fn deliver(&self, out: &Outputs, frame: &mut Vec<u8>) {
        let r = self.raw.send_batch(out.raw_packets()).await;
        if r.failed > 0 {
            let e = r.error.map(io::Error::from_raw_os_error);
            debug!(failed = r.failed, error = ?e, "raw send refused");
            metrics::counter!(SEND_ERRORS, "reason" => "raw").increment(r.failed as u64);
        }
        for (dest, bytes) in out.iter() {
            let res = match dest {
                Dest::Raw(_) => continue,
                Dest::Tun(r) => match self.tuns.get(&r) {
                    Some(t) => t.write(bytes),
                    None => Err(io::Error::other("no TUN for realm")),
                },
                Dest::Udp { realm, src, dst } => match (&self.egress, self.eps.get(&realm)) {
                    (Some(eg), _) => eg.send_reusing(frame, src, dst, bytes).await,
                    (None, Some(ep)) => ep.send(dst, IpAddr::V4(*src.ip()), bytes).await,
                    (None, None) => Err(io::Error::other("no socket for realm")),
                },
            };
            if let Err(e) = res {
                debug!(error = %e, ?dest, "data plane send failed");
                metrics::counter!(SEND_ERRORS, "reason" => "send").increment(1);
            }
        }
    }
}

/// Creates the TUN devices (one per realm with a home prefix: routes for
/// the prefix into `<tun_name><i>`), opens the raw socket and spawns the
/// tasks. `endpoints` are the daemon's realm sockets by VIP:port (UDP tunnel
/// data leaves through them, from VIP:434 [RFC 3519 § 3.3]); with `egress`
/// (the node runs behind a dispatcher in encap mode) it leaves through the
/// dispatcher instead.
///
/// # Errors
/// Creating a device or the raw socket (root or CAP_NET_ADMIN and
/// CAP_NET_RAW are needed).
pub fn start(
    cfg: &DataplaneConfig,
    realms: &[RealmConfig],
    table: Arc<BindingTable>,
    endpoints: &HashMap<SocketAddrV4, Arc<Endpoint>>,
    egress: Option<Egress>,
    stop: watch::Receiver<bool>,
) -> io::Result<Running> {
    let planes = RealmPlane::from_config(realms);
    let mtu = TUN_MTU;
    let mut tuns = HashMap::new();
    let mut eps = HashMap::new();
    for r in &planes {
        let name = cfg.tun_device(r.id.0);
        let tun = Tun::create(&name, mtu, r.prefix)?;
        info!(device = %name, prefix = %r.prefix, mtu, "data plane TUN up");
        tuns.insert(r.id, Arc::new(tun));
        if let Some(ep) = endpoints.get(&SocketAddrV4::new(r.vip, r.port)) {
            eps.insert(r.id, ep.clone());
        }
    }
    let raw = Arc::new(RawSocket::open()?);
    let dp =
        Arc::new(DataPlane::new(planes, table, cfg.clone()).udp_via_dispatcher(egress.is_some()));
    let io = Arc::new(Io {
        tuns: tuns.clone(),
        raw: raw.clone(),
        eps,
        egress,
    });
    let mut tasks = Vec::new();
    for tun in tuns.into_values() {
        tasks.push(tokio::spawn(tun_task(
            tun,
            dp.clone(),
            io.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(raw_task(
        raw,
        dp.clone(),
        io.clone(),
        stop.clone(),
    )));
    let (tx, rx) = mpsc::channel(UDP_QUEUE);
    tasks.push(tokio::spawn(udp_task(
        rx,
        dp.clone(),
        io.clone(),
        stop.clone(),
    )));
    tasks.push(tokio::spawn(metrics_task(dp.clone(), stop)));
    Ok(Running {
        dataplane: dp,
        udp: UdpIngress { tx },
        tasks,
    })
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn buffers() -> Vec<Vec<u8>> {
    (0..BATCH).map(|_| vec![0u8; MAX_PACKET]).collect()
}

async fn tun_task(tun: Arc<Tun>, dp: Arc<DataPlane>, io: Arc<Io>, mut stop: watch::Receiver<bool>) {
    let mut bufs = buffers();
    let mut lens = Vec::with_capacity(BATCH);
    let mut out = Outputs::new();
    let mut frame = Vec::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            r = tun.read_batch(&mut bufs, &mut lens) => {
                if let Err(e) = r {
                    warn!(device = tun.name(), error = %e, "TUN read failed");
                    return;
                }
                let now = wall_now();
                out.clear();
                for (b, &n) in bufs.iter().zip(&lens) {
                    let _ = dp.forward(now, b.get(..n).unwrap_or_default(), &mut out);
                }
                io.deliver(&out, &mut frame).await;
            }
        }
    }
}

async fn raw_task(
    raw: Arc<RawSocket>,
    dp: Arc<DataPlane>,
    io: Arc<Io>,
    mut stop: watch::Receiver<bool>,
) {
    let mut bufs = buffers();
    let mut lens = Vec::with_capacity(BATCH);
    let mut out = Outputs::new();
    let mut frame = Vec::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            r = raw.recv_batch(&mut bufs, &mut lens) => {
                if let Err(e) = r {
                    debug!(error = %e, "raw receive error");
                    continue;
                }
                let now = wall_now();
                out.clear();
                for (b, &n) in bufs.iter().zip(&lens) {
                    let _ = dp.reverse_ipip(now, b.get(..n).unwrap_or_default(), &mut out);
                }
                io.deliver(&out, &mut frame).await;
            }
        }
    }
}

async fn udp_task(
    mut rx: mpsc::Receiver<(SocketAddrV4, SocketAddrV4, Vec<u8>)>,
    dp: Arc<DataPlane>,
    io: Arc<Io>,
    mut stop: watch::Receiver<bool>,
) {
    let mut out = Outputs::new();
    let mut frame = Vec::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            m = rx.recv() => {
                let Some((src, dst, bytes)) = m else { return };
                let now = wall_now();
                out.clear();
                let _ = dp.reverse_udp(now, src, dst, &bytes, &mut out);
                // Take what else is queued: one delivery pass for the batch.
                let mut more = 0;
                while more < BATCH {
                    let Ok((src, dst, bytes)) = rx.try_recv() else { break };
                    let _ = dp.reverse_udp(now, src, dst, &bytes, &mut out);
                    more += 1;
                }
                io.deliver(&out, &mut frame).await;
            }
        }
    }
}

async fn metrics_task(dp: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            _ = tick.tick() => {
                let s = dp.stats();
                let p = |d: &'static str, e: &'static str, v: u64| {
                    metrics::counter!(PACKETS, "direction" => d, "encap" => e).absolute(v);
                };
                p("forward", "ipip", s.forward_ipip);
                p("forward", "udp", s.forward_udp);
                metrics::counter!(FRAGMENTED).absolute(s.forward_fragmented);
                p("reverse", "ipip", s.reverse_ipip);
                p("reverse", "udp", s.reverse_udp);
                p("reverse", "keepalive", s.keepalives);
                for r in [
                    super::DropReason::NoBinding,
                    super::DropReason::Spoofed,
                    super::DropReason::Malformed,
                    super::DropReason::Mtu,
                    super::DropReason::Ttl,
                ] {
                    metrics::counter!(DROPS, "reason" => r.as_str()).absolute(s.drops(r));
                }
                metrics::counter!(ICMP).absolute(s.icmp_sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The drivers for real, in a private network namespace (root only):
    //! a TUN device, the raw socket and the tasks, with the care-of address
    //! on the namespace's own loopback so one namespace plays every part.

    use super::*;
    use crate::binding::{BindingEntry, CareOf, CareOfList, Encap};
    use crate::config::Prefix;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    fn sh(args: &[&str]) {
        let st = std::process::Command::new("ip").args(args).status();
        assert!(st.is_ok_and(|s| s.success()), "ip {args:?}");
    }

    fn raw_ipip() -> OwnedFd {
        // SAFETY: socket(2) with constant arguments; checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 4) };
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn udp_ingress_takes_tunnel_data_only() {
        let (tx, mut rx) = mpsc::channel(4);
        let ingress = UdpIngress { tx };
        let (src, dst) = (
            SocketAddrV4::new(COA, 4000),
            SocketAddrV4::new(VIP, udptun::PORT),
        );
        // A Registration Request (type 1) stays with the engine.
        assert!(!ingress.offer(src, dst, &[1, 0, 0, 0]));
        assert!(!ingress.offer(src, dst, &[]));
        // Tunnel data (type 4 [RFC 3519 § 3.3]) is the data plane's.
        assert!(ingress.offer(src, dst, &[4, 4, 0, 0, 0x45]));
        assert_eq!(rx.try_recv().ok(), Some((src, dst, vec![4, 4, 0, 0, 0x45])));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn tun_and_raw_socket_carry_both_directions() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root (a network namespace, TUN and raw sockets)");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare(2) moves only this thread (and what it forks)
            // into a new network namespace, which dies with them.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            sh(&["link", "set", "lo", "up"]);
            sh(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
            sh(&["addr", "add", "203.0.113.5/32", "dev", "lo"]);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(drive());
        })
        .join()
        .expect("namespace thread");
    }

    async fn drive() {
        let table = Arc::new(BindingTable::new());
        table.put(
            RealmId(0),
            HOA,
            BindingEntry {
                nai: None,
                care_of: CareOfList::One(CareOf {
                    coa: COA,
                    registered_at: wall_now(),
                    lifetime: 600,
                    encap: Encap::IpInIp,
                    reverse_tunnel: true,
                }),
                last_identification: 1,
            },
        );
        let realm = RealmConfig {
            name: "home".into(),
            vip: VIP,
            home_prefix: Some(Prefix {
                addr: Ipv4Addr::new(198, 51, 100, 0),
                len: 24,
            }),
            ..RealmConfig::default()
        };
        let (stop_tx, stop) = watch::channel(false);
        let cfg = DataplaneConfig {
            enabled: true,
            ..DataplaneConfig::default()
        };
        let running = start(&cfg, &[realm], table, &HashMap::new(), None, stop).expect("start");

        // Forward: a datagram to the home address enters the TUN and comes
        // back IP in IP to the care-of address (local here).
        let raw = raw_ipip();
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: SO_RCVTIMEO reads one timeval that outlives the call.
        unsafe {
            libc::setsockopt(
                raw.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let app = std::net::UdpSocket::bind("203.0.113.5:9000").unwrap();
        app.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut buf = vec![0u8; 2048];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut got = None;
        while got.is_none() && std::time::Instant::now() < deadline {
            app.send_to(b"to the mobile node", "198.51.100.10:7000")
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(raw.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let outer = haven_proto::ip::Ipv4Packet::new_checked(&buf[..n]).unwrap();
            if outer.src_addr() == VIP && outer.dst_addr() == COA {
                got = Some(outer.payload().to_vec());
            }
        }
        let inner = got.expect("IP-in-IP copy at the care-of address");
        let ip = haven_proto::ip::Ipv4Packet::new_checked(&inner[..]).unwrap();
        assert_eq!(ip.dst_addr(), HOA);
        assert!(ip.payload().ends_with(b"to the mobile node"));
        assert!(running.dataplane.stats().forward_ipip >= 1);

        // Reverse: IP in IP from the care-of address to the VIP holding
        // HoA → 203.0.113.5:9000 comes out of the TUN and is delivered.
        let mut pkt = vec![0u8; haven_proto::ip::ipv4_udp_len(4)];
        haven_proto::ip::write_ipv4_udp(
            &mut pkt,
            SocketAddrV4::new(HOA, 4343),
            SocketAddrV4::new(COA, 9000),
            b"back",
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(VIP).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = libc::sockaddr_in {
            sin_addr: libc::in_addr {
                s_addr: u32::from(COA).to_be(),
            },
            ..sa
        };
        // SAFETY: `local` is a sockaddr_in of the given size: the outer
        // source must be the care-of address.
        let rc = unsafe {
            libc::bind(
                raw.as_raw_fd(),
                (&local as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let mut from = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while from.is_none() && std::time::Instant::now() < deadline {
            // SAFETY: `pkt` readable, `sa` a sockaddr_in of the given size.
            unsafe {
                libc::sendto(
                    raw.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Ok((n, f)) = app.recv_from(&mut buf) {
                if &buf[..n] == b"back" {
                    from = Some(f);
                }
            }
        }
        assert_eq!(
            from,
            Some(std::net::SocketAddr::V4(SocketAddrV4::new(HOA, 4343))),
            "{:?}",
            running.dataplane.stats()
        );
        assert!(running.dataplane.stats().reverse_ipip >= 1);
        let _ = stop_tx.send(true);
        for t in running.tasks {
            let _ = t.await;
        }
    }
}
