//! The raw IPv4 socket of the data plane: sends IP-in-IP packets (and the
//! ICMP errors the core builds) with their own IPv4 header (`IP_HDRINCL`),
//! and receives protocol 4 packets tunnelled to the VIPs [RFC 2003].
//!
//! This kernel has no `ipip` module, so nothing else claims protocol 4: a
//! raw socket bound to `IPPROTO_IPIP` receives every such packet, outer
//! header included, after the kernel reassembled it.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};

use haven_proto::ip::protocol;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A raw IPv4 socket for protocol 4 with `IP_HDRINCL`.
#[derive(Debug)]
pub struct RawSocket {
    io: AsyncFd<Socket>,
}

impl RawSocket {
    /// Opens the socket. Needs CAP_NET_RAW.
    pub fn open() -> io::Result<RawSocket> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(protocol::IPIP))),
        )?;
        // The core writes the outer header itself (source = VIP, TTL, TOS,
        // DF copied [RFC 2003 § 3.1]); the header's protocol field is used
        // as written, so ICMP errors leave through this socket too.
        s.set_header_included_v4(true)?;
        s.set_nonblocking(true)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        // SAFETY: the `Socket` owns a valid open descriptor, returns the
        // same one from every `as_raw_fd`, and is closed only when the
        // `AsyncFd` (which owns it) is dropped.
        let io = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE)? };
        Ok(RawSocket { io })
    }

    /// Sends a complete IPv4 packet to `dst` (non-blocking; a full send
    /// buffer is reported as `WouldBlock` and the packet is dropped).
    pub fn send(&self, dst: Ipv4Addr, packet: &[u8]) -> io::Result<()> {
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        self.io.get_ref().send_to(packet, &to).map(|_| ())
    }

    /// Waits for packets and receives every ready one into `bufs`;
    /// `lens` gets their lengths (whole IPv4 packets).
    pub async fn recv_batch(&self, bufs: &mut [Vec<u8>], lens: &mut Vec<usize>) -> io::Result<()> {
        lens.clear();
        loop {
            let mut guard = self.io.readable().await?;
            for b in bufs.iter_mut() {
                // SAFETY: `u8` and `MaybeUninit<u8>` have the same layout,
                // and the buffer is initialised already, so viewing it as
                // possibly-uninitialised bytes for recv(2) is sound.
                let slice: &mut [MaybeUninit<u8>] =
                    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len()) };
                match self.io.get_ref().recv(slice) {
                    Ok(n) => lens.push(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if lens.is_empty() => return Err(e),
                    Err(_) => break,
                }
            }
            if !lens.is_empty() {
                return Ok(());
            }
        }
    }
}
