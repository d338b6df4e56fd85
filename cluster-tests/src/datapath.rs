//! Helpers the data-plane namespace tests share (cluster-tests/tests/
//! dataplane.rs, dataplane_failover.rs, ha-node/tests/dispatch_encap.rs):
//! the node with its data plane on, sockets made inside a namespace, a
//! mobile node's registration over one, RFC 3519 tunnel data built, sent as
//! a paced stream and read, and a raw IP-in-IP socket (RFC 2003) for mobile
//! nodes that tunnel without UDP.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use haven_proto::ip::{self, Ipv4Packet, UdpPacket};
use haven_proto::udptun::{self, Kind, TunnelDataPacket, TunnelDataRepr};

use crate::fleet::NodeSpec;
use crate::mn::{Event, MobileNode};
use crate::mnsim::{DataSink, FlowStats, unix_now};
use crate::supervisor::{Process, Spec, SupError, await_metric, workspace_binary};
use crate::topo::in_netns;

/// Writes `spec`'s configuration with `[dataplane] enabled = true` (the
/// node's defaults otherwise) to `dir/node-<id>.toml`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_dataplane_config(spec: &NodeSpec, dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("node-{}.toml", spec.id));
    std::fs::write(
        &path,
        format!("{}\n[dataplane]\nenabled = true\n", spec.toml()),
    )?;
    Ok(path)
}

/// Starts `ha-node-<id>` on [`write_dataplane_config`]'s file inside
/// namespace `ns` with `RUST_LOG=log`; does not wait for it (see
/// [`await_ready`]).
///
/// # Errors
/// When the config cannot be written or the binary not built or spawned.
pub fn spawn_dataplane_node(
    spec: &NodeSpec,
    dir: &Path,
    ns: &str,
    log: &str,
) -> Result<Process, SupError> {
    let config = write_dataplane_config(spec, dir).map_err(|source| SupError::Io {
        what: format!("writing the config of node {}", spec.id),
        source,
    })?;
    let bin = workspace_binary("haven-ha-node", "ha-node")?;
    Process::spawn(
        &format!("ha-node-{}", spec.id),
        Spec::new(bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", log),
        Some(ns),
    )
}

/// Waits (20 s at most) until the node publishes `haven_build_info`: by
/// then every realm socket and its TUN device are up.
///
/// # Errors
/// When it does not in time.
pub fn await_ready(spec: &NodeSpec, ns: &str) -> Result<f64, SupError> {
    await_metric(
        &spec.metrics_url(),
        Some(ns),
        "haven_build_info",
        &[],
        |v| v == 1.0,
        Duration::from_secs(20),
    )
}

/// Registers `core` over `sock` within `bound`; returns the accepted home
/// address. Tunnel data that arrives meanwhile goes to `sink` when given.
///
/// # Errors
/// A denial, giving up, a failed send or no outcome within `bound`.
pub fn register(
    core: &mut MobileNode,
    sock: &UdpSocket,
    sink: Option<&Mutex<DataSink>>,
    bound: Duration,
) -> Result<Ipv4Addr, String> {
    let start = Instant::now();
    core.register(unix_now());
    let mut buf = vec![0u8; 65_536];
    while start.elapsed() < bound {
        while let Some((dst, bytes)) = core.poll_transmit() {
            sock.send_to(&bytes, dst).map_err(|e| e.to_string())?;
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                Event::Accepted { home_address, .. } => return Ok(home_address),
                Event::Denied { code } => return Err(format!("denied: {code:?}")),
                Event::GaveUp => return Err("gave up".into()),
                _ => {}
            }
        }
        match sock.recv_from(&mut buf) {
            Ok((n, SocketAddr::V4(from))) => {
                let d = &buf[..n];
                match (udptun::classify(d), sink) {
                    (Kind::RegistrationReply, _) => {
                        let _ = core.handle(unix_now(), from, d);
                    }
                    (Kind::TunnelData, Some(sink)) => record_tunnel_data(sink, d),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(_) => core.handle_timeout(unix_now()),
        }
    }
    Err("no reply within the bound".into())
}

/// Reads tunnel data from `sock` into `sink` until `stop`.
pub fn tunnel_reader(
    sock: UdpSocket,
    sink: Arc<Mutex<DataSink>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && udptun::classify(&buf[..n]) == Kind::TunnelData
            {
                record_tunnel_data(&sink, &buf[..n]);
            }
        }
    })
}

/// Sends `make(seq)` to `dst` on `sock` at `pps` until `stop`; returns the
/// count sent.
pub fn stream(
    sock: UdpSocket,
    dst: SocketAddrV4,
    pps: u32,
    stop: Arc<AtomicBool>,
    make: impl Fn(u64) -> Vec<u8> + Send + 'static,
) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let period = Duration::from_secs(1) / pps;
        let mut seq = 0u64;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let _ = sock.send_to(&make(seq), dst);
            seq += 1;
            next += period;
            // Pacing of the generator, not a wait for the system under test.
            if let Some(w) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
        seq
    })
}

/// Flow `id` as `sink` has seen it so far.
pub fn flow(sink: &Mutex<DataSink>, id: u32) -> Option<FlowStats> {
    sink.lock()
        .unwrap()
        .flows()
        .into_iter()
        .find(|f| f.mn == id)
}

/// Packets of flow `id` in `sink` so far.
pub fn received(sink: &Mutex<DataSink>, id: u32) -> u64 {
    flow(sink, id).map_or(0, |f| f.received)
}

/// A UDP socket bound to `bind` inside namespace `ns`, 20 ms read timeout.
///
/// # Panics
/// When the namespace cannot be entered or the bind fails (test set-up).
pub fn udp_in(ns: &str, bind: SocketAddrV4) -> UdpSocket {
    let s = in_netns(ns, || UdpSocket::bind(bind))
        .expect("enter namespace")
        .expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    s
}

/// The inner UDP payload and source of a tunnelled IPv4/UDP packet.
pub fn inner_udp(inner: &[u8]) -> Option<(SocketAddrV4, Vec<u8>)> {
    let p = Ipv4Packet::new_checked(inner).ok()?;
    if !p.verify_checksum() || p.protocol() != ip::protocol::UDP {
        return None;
    }
    let u = UdpPacket::new_checked(p.payload()).ok()?;
    if !u.verify_checksum(p.src_addr(), p.dst_addr()) {
        return None;
    }
    Some((
        SocketAddrV4::new(p.src_addr(), u.src_port()),
        u.payload().to_vec(),
    ))
}

/// Records the inner UDP packet of RFC 3519 tunnel data `d` in `sink`.
pub fn record_tunnel_data(sink: &Mutex<DataSink>, d: &[u8]) {
    let Ok(p) = TunnelDataPacket::new_checked(d) else {
        return;
    };
    let Ok(t) = TunnelDataRepr::parse(&p) else {
        return;
    };
    if let Some((src, payload)) = inner_udp(t.payload) {
        sink.lock().unwrap().record(unix_now(), src, &payload);
    }
}

/// An RFC 3519 tunnel data message holding IPv4/UDP from `src` to `dst`.
pub fn tunnel_data(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut msg = vec![0u8; udptun::HEADER_LEN + ip::ipv4_udp_len(payload.len())];
    msg[..4].copy_from_slice(&[udptun::TYPE_TUNNEL_DATA, ip::protocol::IPIP, 0, 0]);
    ip::write_ipv4_udp(&mut msg[4..], src, dst, payload);
    msg
}

/// A raw IPv4 socket for protocol 4 in the calling thread's namespace,
/// with a 20 ms receive timeout.
/// # Errors
/// When the socket cannot be made (no CAP_NET_RAW).
pub fn raw_ipip() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ip::protocol::IPIP),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket(2) just returned, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval; `tv` is one and outlives the
    // call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One datagram from a raw socket such as [`raw_ipip`]'s into `buf`;
/// `None` on its receive timeout or an error.
pub fn raw_recv(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is a live, exclusively borrowed buffer of `buf.len()`
    // writable bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).ok()
}

/// Sends `payload` (the inner IPv4 packet) to `dst` as protocol 4: the
/// kernel writes the outer header (source = the care-of address).
/// # Errors
/// When the kernel refuses the datagram.
pub fn raw_send(fd: &OwnedFd, dst: Ipv4Addr, payload: &[u8]) -> io::Result<()> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `payload` is readable for its length; `sa` is a sockaddr_in
    // of the stated size and outlives the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            payload.as_ptr().cast(),
            payload.len(),
            0,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
