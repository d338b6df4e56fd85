//! Helpers the data-plane namespace tests share (cluster-tests/tests/
//! dataplane.rs, dataplane_failover.rs): sockets made inside a namespace,
//! RFC 3519 tunnel data built and read, and a raw IP-in-IP socket
//! (RFC 2003) for mobile nodes that tunnel without UDP.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use haven_proto::ip::{self, Ipv4Packet, UdpPacket};
use haven_proto::udptun::{self, TunnelDataPacket, TunnelDataRepr};

use crate::mnsim::{DataSink, unix_now};
use crate::topo::in_netns;

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
