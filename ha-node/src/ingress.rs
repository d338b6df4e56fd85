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
//! them in a `ToClient` frame back to a dispatcher, which sends the payload
//! from VIP:434 to the mobile node. Which dispatcher depends on the realm:
//! each realm VIP may sit behind its own dispatcher pair (inner and outer
//! clusters, DESIGN.md § 7), and a dispatcher only sends from its own VIP.
//! So the egress remembers, per realm VIP:port (the `ToNode` header's
//! destination), the dispatcher that forwarded for it most recently: only a
//! VRRP Master forwards, so that is the one holding that VIP, and after a
//! takeover the new Master's first frame moves the realm's replies to it.
//! The daemon can do better for a registration reply: [`Egress::send_via`]
//! answers through the dispatcher that delivered that very request.
//!
//! Wiring (in the daemon): bind with [`Ingress::bind`] (with the realms'
//! VIP:ports: a frame for any other destination is dropped), feed
//! [`Ingress::recv`]'s `(src, dst, payload)` to the engine as if from the
//! VIP endpoint, and send every transmit whose source is a VIP through
//! [`Egress::send`] (or [`Egress::send_via`]) instead of a VIP socket. In
//! encap mode the node binds no VIP socket at all by default (`[dispatch]
//! bind_vip`): on one host the dispatcher holds VIP:434, and a second
//! socket on it would take the dispatcher's datagrams.
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

/// The dispatcher that forwarded most recently for each realm VIP:port
/// (fixed at bind time; one atomic per realm, so the data plane's hot path
/// takes no lock).
#[derive(Debug)]
struct Realms(Vec<(SocketAddrV4, AtomicU64)>);

impl Realms {
    fn slot(&self, vip: SocketAddrV4) -> Option<&AtomicU64> {
        self.0.iter().find(|(v, _)| *v == vip).map(|(_, a)| a)
    }
}

/// The encap listener.
#[derive(Debug)]
pub struct Ingress {
    sock: Arc<tokio::net::UdpSocket>,
    realms: Arc<Realms>,
    buf: Vec<u8>,
}

/// The reply path back through the dispatchers (cheap to clone).
#[derive(Debug, Clone)]
pub struct Egress {
    sock: Arc<tokio::net::UdpSocket>,
    realms: Arc<Realms>,
}

impl Ingress {
    /// Binds the listener on `listen` (the node's unique address and encap
    /// port, `[dispatch] encap_listen`) for the realms at `vips` (each
    /// realm's VIP:port) and returns it with its reply path.
    ///
    /// # Errors
    /// The bind failed.
    pub async fn bind(
        listen: SocketAddrV4,
        vips: impl IntoIterator<Item = SocketAddrV4>,
    ) -> io::Result<(Ingress, Egress)> {
        let sock = Arc::new(tokio::net::UdpSocket::bind(listen).await?);
        let realms = Arc::new(Realms(
            vips.into_iter().map(|v| (v, AtomicU64::new(0))).collect(),
        ));
        let egress = Egress {
            sock: Arc::clone(&sock),
            realms: Arc::clone(&realms),
        };
        Ok((
            Ingress {
                sock,
                realms,
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

    /// Waits for the next well-formed frame for one of the realms and
    /// returns it decapsulated. Malformed frames (`haven_registration_drops_total
    /// {reason="bad_encap"}`) and frames for a VIP:port no realm has
    /// (`reason="unknown_vip"`) are counted and skipped.
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
                    let Some(slot) = self.realms.slot(r.dst) else {
                        tracing::debug!(%from, dst = %r.dst, "encap frame for no realm");
                        metrics::counter!("haven_registration_drops_total", "reason" => "unknown_vip")
                            .increment(1);
                        continue;
                    };
                    slot.store(pack(from), Ordering::Relaxed);
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
    /// The dispatcher replies from `vip` (a realm's VIP:port) go to: the
    /// last one that forwarded a frame for that VIP:port.
    pub fn dispatcher(&self, vip: SocketAddrV4) -> Option<SocketAddrV4> {
        unpack(self.realms.slot(vip)?.load(Ordering::Relaxed))
    }

    fn route(&self, from: SocketAddrV4) -> io::Result<SocketAddrV4> {
        self.dispatcher(from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("no dispatcher has forwarded for {from} to this node yet"),
            )
        })
    }

    /// Sends `payload` as if from `from` (a realm's VIP:434) to `to` (the
    /// mobile node) through the dispatcher of that realm.
    ///
    /// # Errors
    /// No dispatcher has forwarded for `from` yet (`NotConnected`), or the
    /// send failed.
    pub async fn send(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let d = self.route(from)?;
        self.send_via(d, from, to, payload).await
    }

    /// [`Egress::send`] through the dispatcher `via` (the one that
    /// delivered the request this answers).
    ///
    /// # Errors
    /// The send failed.
    pub async fn send_via(
        &self,
        via: SocketAddrV4,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
    ) -> io::Result<()> {
        let frame = encapsulate_reply(from, to, payload).map_err(io::Error::other)?;
        self.sock
            .send_to(&frame, SocketAddr::V4(via))
            .await
            .map(drop)
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
        let d = self.route(from)?;
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

    async fn recv_frame(s: &tokio::net::UdpSocket) -> DispatchRepr {
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).await.unwrap();
        DispatchRepr::parse(&DispatchPacket::new_checked(&buf[..n]).unwrap()).unwrap()
    }

    fn v4(a: SocketAddr) -> SocketAddrV4 {
        let SocketAddr::V4(a) = a else { panic!("v4") };
        a
    }

    #[tokio::test]
    async fn loopback_roundtrip_through_a_fake_dispatcher() {
        let (mut ingress, egress) = Ingress::bind("127.0.0.1:0".parse().unwrap(), [vip()])
            .await
            .unwrap();
        let at = v4(ingress.local_addr().unwrap());
        assert!(egress.dispatcher(vip()).is_none());
        assert_eq!(
            egress.send(vip(), mn(), b"x").await.unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        let disp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Garbage first: skipped, not returned.
        disp.send_to(b"junk", at).await.unwrap();
        let to_node = |dst| {
            DispatchRepr {
                kind: Kind::ToNode,
                src: mn(),
                dst,
            }
            .to_bytes(b"request")
            .unwrap()
        };
        // A frame for a VIP:port no realm has: skipped too.
        disp.send_to(&to_node("192.0.2.1:435".parse().unwrap()), at)
            .await
            .unwrap();
        disp.send_to(&to_node(vip()), at).await.unwrap();
        let d = ingress.recv().await.unwrap();
        assert_eq!(
            (d.src, d.dst, &d.payload[..]),
            (mn(), vip(), &b"request"[..])
        );
        let disp_addr = v4(disp.local_addr().unwrap());
        assert_eq!(d.dispatcher, disp_addr);
        assert_eq!(egress.dispatcher(vip()), Some(disp_addr));
        assert_eq!(egress.dispatcher("192.0.2.1:435".parse().unwrap()), None);
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

    #[tokio::test]
    async fn each_realm_answers_through_its_own_dispatcher() {
        let other: SocketAddrV4 = "203.0.113.1:434".parse().unwrap();
        let (mut ingress, egress) = Ingress::bind("127.0.0.1:0".parse().unwrap(), [vip(), other])
            .await
            .unwrap();
        let at = v4(ingress.local_addr().unwrap());
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let frame = |dst| {
            DispatchRepr {
                kind: Kind::ToNode,
                src: mn(),
                dst,
            }
            .to_bytes(b"r")
            .unwrap()
        };
        a.send_to(&frame(vip()), at).await.unwrap();
        ingress.recv().await.unwrap();
        b.send_to(&frame(other), at).await.unwrap();
        ingress.recv().await.unwrap();
        // b forwarded last, but only for `other`: vip()'s replies stay on a.
        egress.send(vip(), mn(), b"1").await.unwrap();
        egress.send(other, mn(), b"2").await.unwrap();
        assert_eq!(recv_frame(&a).await.src, vip());
        assert_eq!(recv_frame(&b).await.src, other);
        // A VRRP takeover for vip(): the new Master's first frame moves it.
        b.send_to(&frame(vip()), at).await.unwrap();
        ingress.recv().await.unwrap();
        egress.send(vip(), mn(), b"3").await.unwrap();
        assert_eq!(recv_frame(&b).await.src, vip());
        // An explicit route wins over the realm's last dispatcher.
        egress
            .send_via(v4(a.local_addr().unwrap()), vip(), mn(), b"4")
            .await
            .unwrap();
        assert_eq!(recv_frame(&a).await.src, vip());
    }
}
