//! RFC 3519 UDP tunnelling: the Mobile IP tunnel data message and keepalives.
//!
//! Behind a NAT, a mobile node and its home agent carry tunnelled traffic
//! over UDP port 434, the port registrations use, so the NAT mapping the
//! registration opened also carries data, and the dispatcher (which hashes
//! on the source port) sends both to the same node. [`classify`] tells the
//! three kinds of datagram on that port apart by their first octet.
//!
//! Keepalives [RFC 3519 § 3, keepalives; section number unchecked]: the mobile node
//! sends an ICMP Echo Request through the UDP tunnel (a tunnel data message
//! with next header 4 whose inner IPv4 packet goes from the home address to
//! the home agent) to keep the NAT mapping open. Their purpose is the
//! refresh of the mapping, which the request alone achieves; RFC 3519 does
//! not ask for a protocol-specific answer. haven answers them anyway with an
//! ordinary ICMP Echo Reply through the tunnel ([`build_keepalive_reply`]),
//! as every host answers echo requests addressed to it [RFC 1122 § 3.2.2.6],
//! which also gives the mobile node a liveness signal and refreshes stateful
//! firewalls in the reverse direction. See `docs/wire-sync.md` § keepalives.

use core::net::Ipv4Addr;

use crate::ip::{self, Ipv4Packet, Ipv4Repr, checksum, protocol};
use crate::{Error, Result};

/// The tunnel data message type [RFC 3519 § 3.3].
pub const TYPE_TUNNEL_DATA: u8 = 4;
/// Registration Request type [RFC 5944 § 3.3].
pub const TYPE_REGISTRATION_REQUEST: u8 = 1;
/// Registration Reply type [RFC 5944 § 3.4].
pub const TYPE_REGISTRATION_REPLY: u8 = 3;
/// Length of the tunnel data header.
pub const HEADER_LEN: usize = 4;
/// UDP port of Mobile IP [RFC 5944 § 3.1].
pub const PORT: u16 = 434;

mod field {
    use crate::{Field, Rest};
    pub const TYPE: usize = 0;
    pub const NEXT_HEADER: usize = 1;
    pub const RESERVED: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

/// What a datagram arriving on UDP port 434 is, by its first octet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Type 1.
    RegistrationRequest,
    /// Type 3.
    RegistrationReply,
    /// Type 4 [RFC 3519 § 3.3].
    TunnelData,
    /// Anything else; an empty datagram is `Other(0)` (type 0 is unassigned).
    Other(u8),
}

/// Classifies a UDP/434 payload by its first octet.
pub fn classify(payload: &[u8]) -> Kind {
    match payload.first() {
        Some(&TYPE_REGISTRATION_REQUEST) => Kind::RegistrationRequest,
        Some(&TYPE_REGISTRATION_REPLY) => Kind::RegistrationReply,
        Some(&TYPE_TUNNEL_DATA) => Kind::TunnelData,
        Some(&o) => Kind::Other(o),
        None => Kind::Other(0),
    }
}

/// The encapsulation inside a tunnel data message [RFC 3519 § 3.3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHeader {
    /// IP-in-IP [RFC 2003].
    IpIp,
    /// GRE [RFC 2784].
    Gre,
    /// Minimal encapsulation [RFC 2004].
    Minimal,
    /// Not defined by RFC 3519; the receiver drops the message.
    Unknown(u8),
}

impl From<u8> for NextHeader {
    fn from(v: u8) -> Self {
        match v {
            protocol::IPIP => Self::IpIp,
            protocol::GRE => Self::Gre,
            protocol::MINIMAL => Self::Minimal,
            o => Self::Unknown(o),
        }
    }
}

impl From<NextHeader> for u8 {
    fn from(n: NextHeader) -> u8 {
        match n {
            NextHeader::IpIp => protocol::IPIP,
            NextHeader::Gre => protocol::GRE,
            NextHeader::Minimal => protocol::MINIMAL,
            NextHeader::Unknown(o) => o,
        }
    }
}

/// A read/write view of a tunnel data message.
#[derive(Debug, Clone)]
pub struct TunnelDataPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TunnelDataPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps a buffer, checking the 4-octet header is present.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Checks the header fits.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref().get(field::TYPE).copied().unwrap_or(0)
    }
    /// Next header.
    pub fn next_header(&self) -> NextHeader {
        NextHeader::from(
            self.buffer
                .as_ref()
                .get(field::NEXT_HEADER)
                .copied()
                .unwrap_or(0),
        )
    }
    /// Reserved field (sent as zero, ignored on receipt).
    pub fn reserved(&self) -> u16 {
        match self.buffer.as_ref().get(field::RESERVED) {
            Some(&[h, l]) => u16::from_be_bytes([h, l]),
            _ => 0,
        }
    }
    /// The encapsulated packet.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TunnelDataPacket<T> {
    /// Writes type 4, the next header and a zero reserved field.
    pub fn set_header(&mut self, next: NextHeader) {
        if let Some(h) = self.buffer.as_mut().get_mut(..HEADER_LEN) {
            h.copy_from_slice(&[TYPE_TUNNEL_DATA, next.into(), 0, 0]);
        }
    }
    /// The mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD)
            .unwrap_or(&mut [])
    }
}

/// A parsed tunnel data message; the payload borrows the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelDataRepr<'a> {
    /// The encapsulation of `payload`.
    pub next_header: NextHeader,
    /// The encapsulated packet.
    pub payload: &'a [u8],
}

impl<'a> TunnelDataRepr<'a> {
    /// Parses a message: type 4 (`UnexpectedType` otherwise). The reserved
    /// field is ignored [RFC 3519 § 3.3]; an unknown next header is returned
    /// as [`NextHeader::Unknown`] for the caller to drop and count.
    pub fn parse(p: &TunnelDataPacket<&'a [u8]>) -> Result<Self> {
        p.check_len()?;
        if p.msg_type() != TYPE_TUNNEL_DATA {
            return Err(Error::UnexpectedType(p.msg_type()));
        }
        let b: &'a [u8] = p.buffer;
        Ok(Self {
            next_header: p.next_header(),
            payload: b.get(HEADER_LEN..).unwrap_or(&[]),
        })
    }
    /// Encoded length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
    /// Writes the message into a buffer of at least `buffer_len()` octets
    /// (`Truncated` otherwise) and returns the length written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let n = self.buffer_len();
        let out = buf.get_mut(..n).ok_or(Error::Truncated)?;
        let mut p = TunnelDataPacket::new_unchecked(out);
        p.set_header(self.next_header);
        p.payload_mut().copy_from_slice(self.payload);
        Ok(n)
    }
}

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_HEADER_LEN: usize = 8;
/// TTL of keepalive inner packets (the inner packet is delivered, not
/// routed, at the tunnel end).
pub const KEEPALIVE_TTL: u8 = 64;

/// A keepalive's content: the inner ICMP echo's addresses and identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Keepalive<'a> {
    /// Inner source (the MN's home address for a request).
    pub src: Ipv4Addr,
    /// Inner destination (the home agent for a request).
    pub dst: Ipv4Addr,
    /// ICMP echo identifier.
    pub ident: u16,
    /// ICMP echo sequence number.
    pub seq: u16,
    /// Echo data (echoed back in the reply) [RFC 792].
    pub data: &'a [u8],
    /// Request (true) or reply (false).
    pub is_request: bool,
}

impl Keepalive<'_> {
    /// Length of the whole tunnel data message for this keepalive.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + ip::IPV4_HEADER_LEN + ICMP_HEADER_LEN + self.data.len()
    }

    /// Writes the keepalive as a complete tunnel data message (the UDP
    /// payload) and returns its length; `Truncated` if `buf` is too short.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let n = self.buffer_len();
        let out = buf.get_mut(..n).ok_or(Error::Truncated)?;
        let (tun, rest) = out.split_at_mut(HEADER_LEN);
        TunnelDataPacket::new_unchecked(&mut *tun).set_header(NextHeader::IpIp);
        let (iph, icmp) = rest.split_at_mut(ip::IPV4_HEADER_LEN);
        let ipr = Ipv4Repr {
            src: self.src,
            dst: self.dst,
            protocol: protocol::ICMP,
            ttl: KEEPALIVE_TTL,
            tos: 0,
            df: false,
            ident: 0,
            payload_len: icmp.len(),
        };
        ipr.emit(&mut Ipv4Packet::new_unchecked(iph))?;
        let (h, d) = icmp.split_at_mut(ICMP_HEADER_LEN);
        let t = if self.is_request {
            ICMP_ECHO_REQUEST
        } else {
            ICMP_ECHO_REPLY
        };
        let [ih, il] = self.ident.to_be_bytes();
        let [sh, sl] = self.seq.to_be_bytes();
        h.copy_from_slice(&[t, 0, 0, 0, ih, il, sh, sl]);
        d.copy_from_slice(self.data);
        let c = checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        Ok(n)
    }
}

/// Builds an RFC 3519 keepalive: a tunnel data message (next header 4)
/// holding an ICMP Echo Request from `home_addr` to `home_agent`, no data.
/// Returns the UDP payload length written (32), or `Truncated`.
pub fn build_keepalive(
    buf: &mut [u8],
    home_addr: Ipv4Addr,
    home_agent: Ipv4Addr,
    ident: u16,
    seq: u16,
) -> Result<usize> {
    Keepalive {
        src: home_addr,
        dst: home_agent,
        ident,
        seq,
        data: &[],
        is_request: true,
    }
    .emit(buf)
}

/// Builds the Echo Reply haven sends back through the tunnel for a parsed
/// keepalive request: addresses swapped, identifier, sequence and data
/// echoed. `Malformed` if `req` is not a request.
pub fn build_keepalive_reply(buf: &mut [u8], req: &Keepalive<'_>) -> Result<usize> {
    if !req.is_request {
        return Err(Error::Malformed("keepalive reply to a reply"));
    }
    Keepalive {
        src: req.dst,
        dst: req.src,
        is_request: false,
        ..*req
    }
    .emit(buf)
}

/// Recognises a keepalive in a UDP/434 payload: a tunnel data message with
/// next header 4 whose inner IPv4 packet (header checksum verified) carries
/// an ICMP Echo Request or Reply (code 0, checksum verified). Anything else
/// is an error: `UnexpectedType` for other message types or ICMP types,
/// `Unsupported` for other encapsulations or inner protocols.
pub fn parse_keepalive(payload: &[u8]) -> Result<Keepalive<'_>> {
    let t = TunnelDataRepr::parse(&TunnelDataPacket::new_checked(payload)?)?;
    if t.next_header != NextHeader::IpIp {
        return Err(Error::Unsupported("keepalive not IP-in-IP"));
    }
    let inner = Ipv4Packet::new_checked(t.payload)?;
    let r = Ipv4Repr::parse(&inner)?;
    if r.protocol != protocol::ICMP {
        return Err(Error::Unsupported("keepalive not ICMP"));
    }
    let icmp = t
        .payload
        .get(inner.header_len()..usize::from(inner.total_len()))
        .ok_or(Error::Truncated)?;
    let [ty, code, _, _, ih, il, sh, sl, data @ ..] = icmp else {
        return Err(Error::Truncated);
    };
    let is_request = match (*ty, *code) {
        (ICMP_ECHO_REQUEST, 0) => true,
        (ICMP_ECHO_REPLY, 0) => false,
        (other, _) => return Err(Error::UnexpectedType(other)),
    };
    if checksum::sum(icmp) != 0xffff {
        return Err(Error::Checksum);
    }
    Ok(Keepalive {
        src: r.src,
        dst: r.dst,
        ident: u16::from_be_bytes([*ih, *il]),
        seq: u16::from_be_bytes([*sh, *sl]),
        data,
        is_request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    const HOA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    // Computed with python3 (struct + RFC 1071 sum).
    const KEEPALIVE: [u8; 32] =
        hex!("040400004500001c00000000400114a2cb00710ac63364010800e5c412340007");
    const KEEPALIVE_REPLY: [u8; 36] =
        hex!("0404000045000020000000004001149ec6336401cb00710a00000ef41234000770696e67");

    #[test]
    fn classify_by_first_octet() {
        assert_eq!(classify(&[1, 0]), Kind::RegistrationRequest);
        assert_eq!(classify(&[3]), Kind::RegistrationReply);
        assert_eq!(classify(&KEEPALIVE), Kind::TunnelData);
        assert_eq!(classify(&[2]), Kind::Other(2));
        assert_eq!(classify(&[]), Kind::Other(0));
    }

    #[test]
    fn tunnel_data_vector() {
        let v = hex!("042f0000cafe");
        let p = TunnelDataPacket::new_checked(&v[..]).unwrap();
        let r = TunnelDataRepr::parse(&p).unwrap();
        assert_eq!(
            r,
            TunnelDataRepr {
                next_header: NextHeader::Gre,
                payload: &hex!("cafe")
            }
        );
        let mut out = [0u8; 6];
        assert_eq!(r.emit(&mut out), Ok(6));
        assert_eq!(out, v);
        assert_eq!(r.emit(&mut out[..5]), Err(Error::Truncated));
        // Reserved bits are ignored on receipt.
        let v2 = hex!("04370102");
        let r2 = TunnelDataRepr::parse(&TunnelDataPacket::new_checked(&v2[..]).unwrap()).unwrap();
        assert_eq!(r2.next_header, NextHeader::Minimal);
        assert!(r2.payload.is_empty());
        let v3 = hex!("01040000");
        assert_eq!(
            TunnelDataRepr::parse(&TunnelDataPacket::new_checked(&v3[..]).unwrap()),
            Err(Error::UnexpectedType(1))
        );
        let v4 = hex!("04110000");
        let r4 = TunnelDataRepr::parse(&TunnelDataPacket::new_checked(&v4[..]).unwrap()).unwrap();
        assert_eq!(r4.next_header, NextHeader::Unknown(17));
    }

    #[test]
    fn keepalive_vector() {
        let mut buf = [0u8; 64];
        let n = build_keepalive(&mut buf, HOA, HA, 0x1234, 7).unwrap();
        assert_eq!(&buf[..n], &KEEPALIVE);
        let k = parse_keepalive(&KEEPALIVE).unwrap();
        assert_eq!(
            k,
            Keepalive {
                src: HOA,
                dst: HA,
                ident: 0x1234,
                seq: 7,
                data: &[],
                is_request: true
            }
        );
        assert_eq!(
            build_keepalive(&mut buf[..31], HOA, HA, 1, 1),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn keepalive_reply_vector() {
        let req = Keepalive {
            src: HOA,
            dst: HA,
            ident: 0x1234,
            seq: 7,
            data: b"ping",
            is_request: true,
        };
        let mut buf = [0u8; 64];
        let n = req.emit(&mut buf).unwrap();
        let parsed = parse_keepalive(&buf[..n]).unwrap();
        assert_eq!(parsed, req);
        let mut out = [0u8; 64];
        let m = build_keepalive_reply(&mut out, &parsed).unwrap();
        assert_eq!(&out[..m], &KEEPALIVE_REPLY);
        let rep = parse_keepalive(&out[..m]).unwrap();
        assert_eq!(
            (rep.src, rep.dst, rep.is_request, rep.data),
            (HA, HOA, false, &b"ping"[..])
        );
        let mut out2 = [0u8; 64];
        assert!(build_keepalive_reply(&mut out2, &rep).is_err());
    }

    #[test]
    fn keepalive_tamper_and_truncation() {
        for bit in 4 * 8..KEEPALIVE.len() * 8 {
            let mut b = KEEPALIVE;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_keepalive(&b).is_err(), "bit {bit}");
        }
        for n in 0..KEEPALIVE.len() {
            assert!(parse_keepalive(&KEEPALIVE[..n]).is_err(), "len {n}");
        }
        for n in 0..HEADER_LEN {
            assert_eq!(
                TunnelDataPacket::new_checked(&KEEPALIVE[..n]).err(),
                Some(Error::Truncated)
            );
        }
    }

    proptest! {
        #[test]
        fn roundtrip(nh in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = TunnelDataRepr { next_header: NextHeader::from(nh), payload: &payload };
            let mut buf = vec![0u8; r.buffer_len()];
            prop_assert_eq!(r.emit(&mut buf), Ok(buf.len()));
            let p = TunnelDataPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(TunnelDataRepr::parse(&p).unwrap(), r);
            prop_assert_eq!(u8::from(r.next_header), nh);
        }

        #[test]
        fn keepalive_roundtrip(s in any::<[u8; 4]>(), d in any::<[u8; 4]>(), id in any::<u16>(), seq in any::<u16>(),
                               data in proptest::collection::vec(any::<u8>(), 0..40), req in any::<bool>()) {
            let k = Keepalive { src: s.into(), dst: d.into(), ident: id, seq, data: &data, is_request: req };
            let mut buf = vec![0u8; k.buffer_len()];
            prop_assert_eq!(k.emit(&mut buf), Ok(buf.len()));
            prop_assert_eq!(parse_keepalive(&buf).unwrap(), k);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = classify(&data);
            let _ = parse_keepalive(&data);
            if let Ok(p) = TunnelDataPacket::new_checked(&data[..]) {
                let _ = TunnelDataRepr::parse(&p);
            }
        }
    }
}
