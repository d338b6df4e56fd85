//! The socket layer under the registration engine.
//!
//! One UDP socket per realm, bound to the realm's VIP and port (434). It
//! reports, for every datagram, the destination address it was sent to
//! (IP_PKTINFO, through `quinn-udp`'s `RecvMeta`, STYLE.md §3) and sends
//! replies from the address that was asked, so a node that holds the VIP on
//! its loopback for direct server return answers from the VIP, never from its
//! own unique address (DESIGN.md §5). Receives are batched (recvmmsg) and
//! coalesced datagrams (UDP GRO) are split at their stride.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

/// Largest datagram the node accepts on 434: a registration request with all
/// its extensions is far below this; RFC 3519 tunnel data is bounded by the
/// tunnel MTU.
pub const MAX_DATAGRAM: usize = 2048;

/// How many datagrams one receive call may return.
pub const BATCH: usize = 32;

/// A bound UDP endpoint with per-datagram destination addresses.
#[derive(Debug)]
pub struct Endpoint {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local: SocketAddrV4,
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// The sender's address as seen on the wire (behind a NAT: the mapping).
    pub src: SocketAddrV4,
    /// The address the sender asked for: the realm's VIP.
    pub dst: SocketAddrV4,
    /// Offset and length of the datagram in the receive buffer.
    pub offset: usize,
    pub len: usize,
}

/// Reusable receive buffers for [`Endpoint::recv`].
#[derive(Debug)]
pub struct RecvBuffers {
    bufs: Vec<Vec<u8>>,
    metas: Vec<RecvMeta>,
    out: Vec<(usize, Received)>,
}

impl Default for RecvBuffers {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            metas: vec![RecvMeta::default(); BATCH],
            out: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBuffers {
    /// The datagrams of the last receive, with the buffer each lives in.
    pub fn datagrams(&self) -> impl Iterator<Item = (Received, &[u8])> + '_ {
        self.out.iter().filter_map(|(i, r)| {
            let buf = self.bufs.get(*i)?;
            Some((*r, buf.get(r.offset..r.offset + r.len)?))
        })
    }
}

impl Endpoint {
    /// Binds `addr`. `IP_FREEBIND` is set so a node can bind its VIP before
    /// (or without) holding it on an interface: in a rack the VIP sits on
    /// `lo` with `arp_ignore`, on a dispatcher pair it moves.
    pub fn bind(addr: SocketAddrV4) -> io::Result<Self> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        sock.set_reuse_address(true)?;
        sock.set_freebind_v4(true)?;
        // Bursts of registrations after a failover arrive together; a deep
        // receive queue turns them into latency instead of loss.
        let _ = sock.set_recv_buffer_size(4 << 20);
        sock.set_nonblocking(true)?;
        sock.bind(&SocketAddr::V4(addr).into())?;
        let std: std::net::UdpSocket = sock.into();
        let state = UdpSocketState::new((&std).into())?;
        let io = tokio::net::UdpSocket::from_std(std)?;
        let local = match io.local_addr()? {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(io::Error::other("bound an IPv6 address")),
        };
        Ok(Self { io, state, local })
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Waits for at least one datagram and fills `bufs` with every datagram
    /// that is ready (up to [`BATCH`]). Returns how many there are.
    pub async fn recv(&self, bufs: &mut RecvBuffers) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            let RecvBuffers {
                bufs: b,
                metas,
                out,
            } = bufs;
            let res = self.io.try_io(Interest::READABLE, || {
                let mut slices: Vec<IoSliceMut<'_>> =
                    b.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                self.state.recv((&self.io).into(), &mut slices, metas)
            });
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            out.clear();
            for (i, meta) in metas.iter().take(n).enumerate() {
                let SocketAddr::V4(src) = meta.addr else {
                    continue;
                };
                let dst_ip = match meta.dst_ip {
                    Some(IpAddr::V4(ip)) => ip,
                    _ => *self.local.ip(),
                };
                let dst = SocketAddrV4::new(dst_ip, self.local.port());
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let len = stride.min(meta.len - offset);
                    out.push((
                        i,
                        Received {
                            src,
                            dst,
                            offset,
                            len,
                        },
                    ));
                    offset += stride;
                }
            }
            return Ok(out.len());
        }
    }

    /// Sends `bytes` to `dst`, from `src_ip` (the VIP that was asked).
    pub async fn send(&self, dst: SocketAddrV4, src_ip: IpAddr, bytes: &[u8]) -> io::Result<()> {
        let transmit = Transmit {
            destination: SocketAddr::V4(dst),
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: (!src_ip.is_unspecified()).then_some(src_ip),
        };
        loop {
            self.io.writable().await?;
            match self.io.try_io(Interest::WRITABLE, || {
                self.state.try_send((&self.io).into(), &transmit)
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn reports_destination_and_replies_from_it() {
        // 127.0.0.2 stands for a VIP: any 127/8 address reaches loopback.
        let ep = Endpoint::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..5u8 {
            peer.send_to(&[i; 10], SocketAddr::V4(ep.local_addr()))
                .await
                .unwrap();
        }
        let mut bufs = RecvBuffers::default();
        let mut seen = Vec::new();
        while seen.len() < 5 {
            ep.recv(&mut bufs).await.unwrap();
            for (r, bytes) in bufs.datagrams() {
                assert_eq!(r.dst, ep.local_addr());
                assert_eq!(SocketAddr::V4(r.src), peer.local_addr().unwrap());
                seen.push(bytes.to_vec());
            }
        }
        assert_eq!(seen, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());

        let SocketAddr::V4(p) = peer.local_addr().unwrap() else {
            unreachable!()
        };
        ep.send(p, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), b"reply")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"reply");
        assert_eq!(from, SocketAddr::V4(ep.local_addr()));
    }
}
