//! The dispatcher's encapsulating mode, node side (DESIGN.md §5).
//!
//! In `encap` mode the dispatcher does not rewrite MACs; it sends each
//! datagram a mobile node addressed to VIP:434 over UDP to this node's
//! unique address, prefixed by a [`haven_proto::dispatch`] header carrying
//! the mobile node's own address and port. [`Ingress::recv`] strips the
//! header and hands the engine exactly what the VIP socket would have given
//! it in l2 mode: `(src = the mobile node, dst = VIP:434, payload)`.
//!
//! Replies cannot leave from the VIP here (the node is not on the mobile
//! node's path, or the VIP is not on this host), so [`Egress::send`] wraps
//! them in a `ToClient` frame back to the dispatcher, which sends the payload
//! from VIP:434 to the mobile node. Replies go to the dispatcher that
//! forwarded most recently: only the VRRP Master forwards, so that is the
//! one holding the VIP.
//!
//! Wiring (in the daemon): bind with [`Ingress::bind`], feed
//! [`Ingress::recv`]'s `(src, dst, payload)` to the engine as if from the
//! VIP endpoint, and send every transmit whose source is a VIP through
//! [`Egress::send`] instead of the VIP socket.
//!
//! The data plane uses the same path for RFC 3519 tunnel data: in the
//! reverse direction it arrives in `ToNode` frames like registrations and
//! the daemon's driver hands it to the data plane; in the forward direction
//! it must leave from VIP:434 as registration replies do, or the mobile
//! node's NAT, which only has a mapping towards VIP:434, drops it
//! [RFC 3519 § 3.3]. So the data plane sends it with
//! [`Egress::send_reusing`], which builds the frame in the caller's buffer
//! (no allocation per packet).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use haven_proto::dispatch::{self, DispatchPacket, DispatchRepr, Kind};

/// Largest frame accepted (jumbo datagram plus header).
pub const MAX_FRAME: usize = 9000 + dispatch::HEADER_LEN;

/// One decapsulated datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decapsulated {
    /// The mobile node (as the dispatcher saw it: after its NAT).
    pub src: SocketAddrV4,
    /// The address the mobile node sent to (VIP:434).
    pub dst: SocketAddrV4,
    /// The original UDP payload.
    pub payload: Vec<u8>,
    /// The dispatcher that forwarded it.
    pub dispatcher: SocketAddrV4,
}

/// Parses one frame from a dispatcher: a `ToNode` header, then the payload.
///
/// # Errors
/// A short frame, another version or kind, reserved bits set.
pub fn decapsulate(frame: &[u8]) -> haven_proto::Result<(DispatchRepr, &[u8])> {
    let p = DispatchPacket::new_checked(frame)?;
    let r = DispatchRepr::parse(&p)?;
    if r.kind != Kind::ToNode {
        return Err(haven_proto::Error::UnexpectedType(u8::from(r.kind)));
    }
    Ok((r, frame.get(dispatch::HEADER_LEN..).unwrap_or_default()))
}

/// Wraps a reply `from` (VIP:434) `to` (the mobile node) as a `ToClient`
/// frame.
///
/// # Errors
/// Never for payloads that fit in memory; kept a `Result` as codecs are.
pub fn encapsulate_reply(
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
) -> haven_proto::Result<Vec<u8>> {
    DispatchRepr {
        kind: Kind::ToClient,
        src: from,
        dst: to,
    }
    .to_bytes(payload)
}

fn pack(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

fn unpack(v: u64) -> Option<SocketAddrV4> {
    (v != 0).then(|| {
        // Casts: the value was packed from a u32 and a u16.
        SocketAddrV4::new(Ipv4Addr::from((v >> 16) as u32), (v & 0xffff) as u16)
    })
}

/// The encap listener.
#[derive(Debug)]
pub struct Ingress {
    sock: Arc<tokio::net::UdpSocket>,
    last: Arc<AtomicU64>,
    buf: Vec<u8>,
}

/// The reply path back through the dispatcher (cheap to clone).
#[derive(Debug, Clone)]
pub struct Egress {
    sock: Arc<tokio::net::UdpSocket>,
    last: Arc<AtomicU64>,
}

impl Ingress {
    /// Binds the listener on `listen` (the node's unique address and encap
    /// port, `[dispatch] encap_listen`) and returns it with its reply path.
    ///
    /// # Errors
    /// The bind failed.
    pub async fn bind(listen: SocketAddrV4) -> io::Result<(Ingress, Egress)> {
        let sock = Arc::new(tokio::net::UdpSocket::bind(listen).await?);
        let last = Arc::new(AtomicU64::new(0));
        let egress = Egress {
            sock: Arc::clone(&sock),
            last: Arc::clone(&last),
        };
        Ok((
            Ingress {
                sock,
                last,
                buf: vec![0u8; MAX_FRAME],
            },
            egress,
        ))
    }

    /// The bound address.
    ///
    /// # Errors
    /// As `getsockname(2)`.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Waits for the next well-formed frame and returns it decapsulated.
    /// Malformed frames are counted (`haven_registration_drops_total
    /// {reason="bad_encap"}`) and skipped.
    ///
    /// # Errors
    /// Only socket errors.
    pub async fn recv(&mut self) -> io::Result<Decapsulated> {
        loop {
            let (n, from) = self.sock.recv_from(&mut self.buf).await?;
            let SocketAddr::V4(from) = from else { continue };
            let Some(frame) = self.buf.get(..n) else {
                continue;
            };
            match decapsulate(frame) {
                Ok((r, payload)) => {
                    self.last.store(pack(from), Ordering::Relaxed);
                    return Ok(Decapsulated {
                        src: r.src,
                        dst: r.dst,
                        payload: payload.to_vec(),
                        dispatcher: from,
                    });
                }
                Err(e) => {
                    tracing::debug!(%from, "bad encap frame: {e}");
                    metrics::counter!("haven_registration_drops_total", "reason" => "bad_encap")
                        .increment(1);
                }
            }
        }
    }
}

impl Egress {
    /// The dispatcher replies go to (the last one that forwarded to us).
    pub fn dispatcher(&self) -> Option<SocketAddrV4> {
        unpack(self.last.load(Ordering::Relaxed))
    }

    /// Sends `payload` as if from `from` (VIP:434) to `to` (the mobile node)
    /// through the dispatcher.
    ///
    /// # Errors
    /// No dispatcher has forwarded anything yet (`NotConnected`), or the
    /// send failed.
    pub async fn send(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let Some(d) = self.dispatcher() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no dispatcher has forwarded to this node yet",
            ));
        };
        let frame = encapsulate_reply(from, to, payload).map_err(io::Error::other)?;
        self.sock.send_to(&frame, SocketAddr::V4(d)).await.map(drop)
    }

    /// [`Egress::send`] with the frame built in `frame` (cleared first and
    /// kept for the next call): the data plane's hot path.
    ///
    /// # Errors
    /// As [`Egress::send`].
    pub async fn send_reusing(
        &self,
        frame: &mut Vec<u8>,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let Some(d) = self.dispatcher() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no dispatcher has forwarded to this node yet",
            ));
        };
        let repr = DispatchRepr {
            kind: Kind::ToClient,
            src: from,
            dst: to,
        };
        frame.clear();
        frame.resize(repr.buffer_len(payload.len()), 0);
        repr.emit(&mut DispatchPacket::new_unchecked(&mut frame[..]), payload)
            .map_err(io::Error::other)?;
        self.sock.send_to(frame, SocketAddr::V4(d)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;

    fn mn() -> SocketAddrV4 {
        "203.0.113.2:40000".parse().unwrap()
    }
    fn vip() -> SocketAddrV4 {
        "192.0.2.1:434".parse().unwrap()
    }

    #[test]
    fn decapsulates_to_node_frames_only() {
        // The vector of haven_proto::dispatch's tests (python3 struct.pack).
        let f = hex!("01010000cb007102c00002019c4001b2686176656e");
        let (r, p) = decapsulate(&f).unwrap();
        assert_eq!((r.src, r.dst, p), (mn(), vip(), &b"haven"[..]));
        let reply = encapsulate_reply(vip(), mn(), b"ok").unwrap();
        assert_eq!(reply, hex!("01020000c0000201cb00710201b29c406f6b").to_vec());
        assert_eq!(
            decapsulate(&reply).err(),
            Some(haven_proto::Error::UnexpectedType(2))
        );
        assert!(decapsulate(&f[..10]).is_err());
    }

    #[test]
    fn pack_roundtrip() {
        assert_eq!(unpack(pack(mn())), Some(mn()));
        assert_eq!(unpack(0), None);
    }

    #[tokio::test]
    async fn loopback_roundtrip_through_a_fake_dispatcher() {
        let (mut ingress, egress) = Ingress::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let SocketAddr::V4(at) = ingress.local_addr().unwrap() else {
            panic!("v4")
        };
        assert!(egress.dispatcher().is_none());
        assert_eq!(
            egress.send(vip(), mn(), b"x").await.unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        let disp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Garbage first: skipped, not returned.
        disp.send_to(b"junk", at).await.unwrap();
        let frame = DispatchRepr {
            kind: Kind::ToNode,
            src: mn(),
            dst: vip(),
        }
        .to_bytes(b"request")
        .unwrap();
        disp.send_to(&frame, at).await.unwrap();
        let d = ingress.recv().await.unwrap();
        assert_eq!(
            (d.src, d.dst, &d.payload[..]),
            (mn(), vip(), &b"request"[..])
        );
        let SocketAddr::V4(disp_addr) = disp.local_addr().unwrap() else {
            panic!("v4")
        };
        assert_eq!(d.dispatcher, disp_addr);
        egress.send(d.dst, d.src, b"reply").await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = disp.recv_from(&mut buf).await.unwrap();
        let p = DispatchPacket::new_checked(&buf[..n]).unwrap();
        let r = DispatchRepr::parse(&p).unwrap();
        assert_eq!((r.kind, r.src, r.dst), (Kind::ToClient, vip(), mn()));
        assert_eq!(p.payload(), b"reply");
        // The reusing variant: the same frame, and a shorter second one
        // from the same buffer carries nothing of the first.
        let mut frame = Vec::new();
        for payload in [&b"tunnel data, long"[..], b"td"] {
            egress
                .send_reusing(&mut frame, d.dst, d.src, payload)
                .await
                .unwrap();
            let (n, _) = disp.recv_from(&mut buf).await.unwrap();
            assert_eq!(
                &buf[..n],
                &encapsulate_reply(vip(), mn(), payload).unwrap()[..]
            );
        }
    }
}
