//! IPv4 and UDP header helpers and the Internet checksum.
//!
//! haven mostly receives Mobile IP over ordinary UDP sockets, but several
//! paths build or read raw headers themselves: RFC 3519 keepalives carry an
//! inner IPv4/ICMP packet, the dispatcher re-emits IPv4/UDP frames, VRRP and
//! the binding-sync messages need the IPv4 pseudo-header for their checksum,
//! and the pcap writers need complete datagrams. This module is the one
//! implementation of those headers (smoltcp `wire::ipv4` / `wire::udp` shape).

use core::net::{Ipv4Addr, SocketAddrV4};

use crate::{Error, Field, Result};

/// IP protocol numbers haven uses ([IANA "Assigned Internet Protocol Numbers"]).
pub mod protocol {
    /// ICMP [RFC 792].
    pub const ICMP: u8 = 1;
    /// IP-in-IP encapsulation [RFC 2003].
    pub const IPIP: u8 = 4;
    /// UDP [RFC 768].
    pub const UDP: u8 = 17;
    /// GRE [RFC 2784].
    pub const GRE: u8 = 47;
    /// Minimal encapsulation [RFC 2004].
    pub const MINIMAL: u8 = 55;
    /// VRRP [RFC 5798].
    pub const VRRP: u8 = 112;
}

/// The Internet checksum [RFC 1071].
///
/// Sums are one's-complement 16-bit values, kept folded so that partial sums
/// of different pieces (pseudo-header, header, payload) can be combined.
pub mod checksum {
    use core::net::Ipv4Addr;

    /// The folded one's-complement sum of `data` (not complemented). An odd
    /// trailing byte is padded with zero [RFC 1071 § 4.1].
    pub fn sum(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
            // Folding inside the loop keeps `acc` far from overflow for any
            // buffer length.
            acc = (acc & 0xffff) + (acc >> 16);
        }
        if let [last] = chunks.remainder() {
            acc += u32::from(u16::from_be_bytes([*last, 0]));
        }
        fold(acc)
    }

    /// Folds a 32-bit accumulator into a 16-bit one's-complement sum.
    pub fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        // The loop leaves acc <= 0xffff.
        acc as u16
    }

    /// One's-complement addition of several partial sums.
    pub fn combine(sums: &[u16]) -> u16 {
        fold(sums.iter().map(|&s| u32::from(s)).sum())
    }

    /// The partial sum of the IPv4 pseudo-header (source, destination, zero,
    /// protocol, length) used by UDP [RFC 768] and VRRP [RFC 5798 § 5.2.8].
    pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
        let s = src.octets();
        let d = dst.octets();
        let [lh, ll] = length.to_be_bytes();
        sum(&[
            s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3], 0, protocol, lh, ll,
        ])
    }

    /// The checksum to put into a header whose checksum field is zero.
    pub fn checksum(data: &[u8]) -> u16 {
        !sum(data)
    }
}

mod ipv4_field {
    use crate::Field;
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC: Field = 12..16;
    pub const DST: Field = 16..20;
}

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// Big-endian u16 at `f`; 0 when out of range (callers checked lengths).
pub(crate) fn be16(b: &[u8], f: Field) -> u16 {
    match b.get(f) {
        Some(&[h, l]) => u16::from_be_bytes([h, l]),
        _ => 0,
    }
}

/// IPv4 address at `f`; unspecified when out of range.
pub(crate) fn addr(b: &[u8], f: Field) -> Ipv4Addr {
    match b.get(f) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// Writes `v` at `f` when it fits exactly; never panics.
pub(crate) fn put(b: &mut [u8], f: Field, v: &[u8]) {
    if let Some(dst) = b.get_mut(f) {
        if dst.len() == v.len() {
            dst.copy_from_slice(v);
        }
    }
}

fn put8(b: &mut [u8], at: usize, v: u8) {
    if let Some(x) = b.get_mut(at) {
        *x = v;
    }
}

/// A read/write view of an IPv4 header and its payload [RFC 791 § 3.1].
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer and validates IHL and Total Length against it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header, its options and the declared total length fit.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < IPV4_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hl = self.header_len();
        if hl < IPV4_HEADER_LEN {
            return Err(Error::BadLength);
        }
        let total = usize::from(self.total_len());
        if total < hl {
            return Err(Error::BadLength);
        }
        if len < hl || len < total {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version nibble.
    pub fn version(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(ipv4_field::VER_IHL)
            .map_or(0, |b| b >> 4)
    }
    /// The header length in octets (IHL × 4).
    pub fn header_len(&self) -> usize {
        self.buffer
            .as_ref()
            .get(ipv4_field::VER_IHL)
            .map_or(0, |b| usize::from(b & 0x0f) * 4)
    }
    /// Type of service / DSCP+ECN octet.
    pub fn tos(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(ipv4_field::TOS)
            .copied()
            .unwrap_or(0)
    }
    /// Total Length (header plus payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::LENGTH)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::IDENT)
    }
    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), ipv4_field::FLG_OFF) & FLAG_DF != 0
    }
    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), ipv4_field::FLG_OFF) & FLAG_MF != 0
    }
    /// Fragment offset in 8-octet units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::FLG_OFF) & OFFSET_MASK
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(ipv4_field::TTL)
            .copied()
            .unwrap_or(0)
    }
    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(ipv4_field::PROTOCOL)
            .copied()
            .unwrap_or(0)
    }
    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), ipv4_field::CHECKSUM)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), ipv4_field::SRC)
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        addr(self.buffer.as_ref(), ipv4_field::DST)
    }
    /// Whether the header checksum verifies (options included).
    pub fn verify_checksum(&self) -> bool {
        let hl = self.header_len();
        self.buffer
            .as_ref()
            .get(..hl)
            .is_some_and(|h| checksum::sum(h) == 0xffff)
    }
    /// The payload: from the end of the options to Total Length (link-layer
    /// padding after Total Length is not part of it).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(self.header_len()..usize::from(self.total_len()))
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets version 4 and the IHL for a header of `len` octets.
    pub fn set_version_and_header_len(&mut self, len: usize) {
        let ihl = ((len / 4) & 0x0f) as u8;
        put8(self.b(), ipv4_field::VER_IHL, 0x40 | ihl);
    }
    /// Sets the TOS octet.
    pub fn set_tos(&mut self, v: u8) {
        put8(self.b(), ipv4_field::TOS, v);
    }
    /// Sets Total Length.
    pub fn set_total_len(&mut self, v: u16) {
        put(self.b(), ipv4_field::LENGTH, &v.to_be_bytes());
    }
    /// Sets Identification.
    pub fn set_ident(&mut self, v: u16) {
        put(self.b(), ipv4_field::IDENT, &v.to_be_bytes());
    }
    /// Sets flags (DF only, never MF) and a zero fragment offset.
    pub fn set_dont_frag_unfragmented(&mut self, df: bool) {
        let v = if df { FLAG_DF } else { 0 };
        put(self.b(), ipv4_field::FLG_OFF, &v.to_be_bytes());
    }
    /// Sets TTL.
    pub fn set_ttl(&mut self, v: u8) {
        put8(self.b(), ipv4_field::TTL, v);
    }
    /// Sets the protocol.
    pub fn set_protocol(&mut self, v: u8) {
        put8(self.b(), ipv4_field::PROTOCOL, v);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        put(self.b(), ipv4_field::CHECKSUM, &v.to_be_bytes());
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        put(self.b(), ipv4_field::SRC, &a.octets());
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        put(self.b(), ipv4_field::DST, &a.octets());
    }
    /// Recomputes the header checksum over the header and its options.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = self.buffer.as_ref().get(..hl).map_or(0, checksum::checksum);
        self.set_checksum(c);
    }
    /// The mutable payload (after the header, up to the buffer's end).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        self.b().get_mut(hl..).unwrap_or(&mut [])
    }
}

/// A parsed IPv4 header [RFC 791 § 3.1]. Options are accepted on parse (IHL
/// above 5) and skipped; they are never emitted. Fragments are refused:
/// nothing haven reads this way (keepalives, sync, VRRP) is ever fragmented,
/// and reassembly belongs to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Payload protocol ([`protocol`]).
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// TOS / DSCP+ECN octet.
    pub tos: u8,
    /// Don't Fragment.
    pub df: bool,
    /// Identification.
    pub ident: u16,
    /// Payload length in octets.
    pub payload_len: usize,
}

impl Ipv4Repr {
    /// Parses and validates a header: version 4, header checksum, no
    /// fragmentation.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        p.check_len()?;
        if p.version() != 4 {
            return Err(Error::Unsupported("IP version other than 4"));
        }
        if !p.verify_checksum() {
            return Err(Error::Checksum);
        }
        if p.more_frags() || p.frag_offset() != 0 {
            return Err(Error::Unsupported("IPv4 fragment"));
        }
        Ok(Self {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            ttl: p.ttl(),
            tos: p.tos(),
            df: p.dont_frag(),
            ident: p.ident(),
            payload_len: usize::from(p.total_len()) - p.header_len(),
        })
    }

    /// The header length this repr emits (always 20: no options).
    pub const fn buffer_len(&self) -> usize {
        IPV4_HEADER_LEN
    }

    /// Writes the header (not the payload) and its checksum. Fails with
    /// `BadLength` when the payload does not fit Total Length and with
    /// `Truncated` when the buffer is shorter than the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) -> Result<()> {
        let total =
            u16::try_from(IPV4_HEADER_LEN + self.payload_len).map_err(|_| Error::BadLength)?;
        if p.buffer.as_ref().len() < IPV4_HEADER_LEN {
            return Err(Error::Truncated);
        }
        p.set_version_and_header_len(IPV4_HEADER_LEN);
        p.set_tos(self.tos);
        p.set_total_len(total);
        p.set_ident(self.ident);
        p.set_dont_frag_unfragmented(self.df);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        p.fill_checksum();
        Ok(())
    }
}

mod udp_field {
    use crate::{Field, Rest};
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: Rest = 8..;
}

/// A read/write view of a UDP datagram [RFC 768].
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps a buffer and validates the Length field against it.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Checks the header and the declared length fit the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < UDP_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let l = usize::from(self.len());
        if l < UDP_HEADER_LEN {
            return Err(Error::BadLength);
        }
        if l > len {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Source port.
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::SRC_PORT)
    }
    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::DST_PORT)
    }
    /// Length field (header plus payload).
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::LENGTH)
    }
    /// Whether the Length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= UDP_HEADER_LEN
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), udp_field::CHECKSUM)
    }
    /// The payload, bounded by the Length field.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(UDP_HEADER_LEN..usize::from(self.len()))
            .unwrap_or(&[])
    }
    /// Verifies the checksum with the pseudo-header; a zero checksum means
    /// the sender computed none and is accepted [RFC 768].
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let l = self.len();
        let Some(d) = self.buffer.as_ref().get(..usize::from(l)) else {
            return false;
        };
        checksum::combine(&[
            checksum::pseudo_header(src, dst, protocol::UDP, l),
            checksum::sum(d),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        put(self.b(), udp_field::SRC_PORT, &v.to_be_bytes());
    }
    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        put(self.b(), udp_field::DST_PORT, &v.to_be_bytes());
    }
    /// Sets the Length field.
    pub fn set_len(&mut self, v: u16) {
        put(self.b(), udp_field::LENGTH, &v.to_be_bytes());
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        put(self.b(), udp_field::CHECKSUM, &v.to_be_bytes());
    }
    /// The mutable payload (to the end of the buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.b().get_mut(udp_field::PAYLOAD).unwrap_or(&mut [])
    }
    /// Computes the checksum over pseudo-header, header and payload; a
    /// computed zero is sent as 0xffff [RFC 768].
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let l = self.len();
        let s = self
            .buffer
            .as_ref()
            .get(..usize::from(l))
            .map_or(0, checksum::sum);
        let c = !checksum::combine(&[checksum::pseudo_header(src, dst, protocol::UDP, l), s]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

/// A parsed UDP header [RFC 768]. The payload stays in the packet view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl UdpRepr {
    /// Parses a datagram and verifies its checksum (0 = none, accepted).
    pub fn parse<T: AsRef<[u8]>>(p: &UdpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        p.check_len()?;
        if !p.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        Ok(Self {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        UDP_HEADER_LEN + payload_len
    }

    /// Writes header, payload and checksum into a buffer of exactly
    /// `buffer_len(payload.len())` octets (`Truncated` if shorter,
    /// `BadLength` if the datagram exceeds 65535 octets).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut UdpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
    ) -> Result<()> {
        let len = u16::try_from(self.buffer_len(payload.len())).map_err(|_| Error::BadLength)?;
        if p.buffer.as_ref().len() < usize::from(len) {
            return Err(Error::Truncated);
        }
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_len(len);
        if let Some(d) = p.payload_mut().get_mut(..payload.len()) {
            d.copy_from_slice(payload);
        }
        p.fill_checksum(src, dst);
        Ok(())
    }
}

/// Length of the IPv4+UDP datagram [`write_ipv4_udp`] writes for a payload.
pub const fn ipv4_udp_len(payload_len: usize) -> usize {
    IPV4_HEADER_LEN + UDP_HEADER_LEN + payload_len
}

/// Writes a complete IPv4+UDP datagram (TTL 64, DF set, ident 0, checksums
/// filled) into `buf` and returns its length. Returns 0, writing nothing
/// useful, when `buf` is shorter than [`ipv4_udp_len`] or the datagram would
/// exceed 65535 octets.
pub fn write_ipv4_udp(
    buf: &mut [u8],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> usize {
    let total = ipv4_udp_len(payload.len());
    if total > usize::from(u16::MAX) || buf.len() < total {
        return 0;
    }
    let Some(buf) = buf.get_mut(..total) else {
        return 0;
    };
    let ip = Ipv4Repr {
        src: *src.ip(),
        dst: *dst.ip(),
        protocol: protocol::UDP,
        ttl: 64,
        tos: 0,
        df: true,
        ident: 0,
        payload_len: UDP_HEADER_LEN + payload.len(),
    };
    let mut p = Ipv4Packet::new_unchecked(&mut *buf);
    if ip.emit(&mut p).is_err() {
        return 0;
    }
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    if udp.emit(&mut u, ip.src, ip.dst, payload).is_err() {
        return 0;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    // RFC 1071 § 3 worked example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
    #[test]
    fn rfc1071_example_sum() {
        assert_eq!(checksum::sum(&hex!("0001f203f4f5f6f7")), 0xddf2);
        assert_eq!(checksum::checksum(&hex!("0001f203f4f5f6f7")), !0xddf2);
        // odd length pads with zero
        assert_eq!(checksum::sum(&hex!("01")), 0x0100);
        assert_eq!(checksum::combine(&[0xffff, 0x0001]), 0x0001);
    }

    // Generated with python3 (struct + a reference RFC 1071 implementation):
    // 192.0.2.1:434 -> 198.51.100.2:40000, payload "haven".
    const DGRAM: [u8; 33] =
        hex!("450000210000400040114e95c0000201c633640201b29c40000d28e3686176656e");

    fn src() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 434)
    }
    fn dst() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 40000)
    }

    #[test]
    fn write_ipv4_udp_vector() {
        let mut buf = [0u8; 64];
        let n = write_ipv4_udp(&mut buf, src(), dst(), b"haven");
        assert_eq!(n, 33);
        assert_eq!(&buf[..n], &DGRAM);
        assert_eq!(write_ipv4_udp(&mut buf[..32], src(), dst(), b"haven"), 0);
    }

    #[test]
    fn parse_vector() {
        let ip = Ipv4Packet::new_checked(&DGRAM[..]).unwrap();
        let r = Ipv4Repr::parse(&ip).unwrap();
        assert_eq!(
            r,
            Ipv4Repr {
                src: *src().ip(),
                dst: *dst().ip(),
                protocol: protocol::UDP,
                ttl: 64,
                tos: 0,
                df: true,
                ident: 0,
                payload_len: 13,
            }
        );
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        let ur = UdpRepr::parse(&u, r.src, r.dst).unwrap();
        assert_eq!(
            ur,
            UdpRepr {
                src_port: 434,
                dst_port: 40000
            }
        );
        assert_eq!(u.payload(), b"haven");
        // The pseudo-header matters: another destination fails.
        assert_eq!(
            UdpRepr::parse(&u, r.src, Ipv4Addr::new(198, 51, 100, 3)),
            Err(Error::Checksum)
        );
    }

    #[test]
    fn zero_udp_checksum_means_none() {
        let mut d = DGRAM;
        d[26] = 0;
        d[27] = 0;
        let u = UdpPacket::new_checked(&d[20..]).unwrap();
        assert!(UdpRepr::parse(&u, *src().ip(), *dst().ip()).is_ok());
    }

    #[test]
    fn options_accepted() {
        // IHL 6 with one NOP-padded option word; checksum by python3.
        let v = hex!("460000180000400040014badc0000201c633640201010100dead");
        let p = Ipv4Packet::new_checked(&v[..]).unwrap();
        let r = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(r.protocol, protocol::ICMP);
        assert_eq!(r.payload_len, 0);
        assert_eq!(p.payload(), b"");
    }

    #[test]
    fn tamper_every_bit_fails() {
        for bit in 0..(20 * 8) {
            let mut d = DGRAM;
            d[bit / 8] ^= 1 << (bit % 8);
            if let Ok(p) = Ipv4Packet::new_checked(&d[..]) {
                assert!(Ipv4Repr::parse(&p).is_err(), "bit {bit}");
            }
        }
        for bit in (20 * 8)..(33 * 8) {
            let mut d = DGRAM;
            d[bit / 8] ^= 1 << (bit % 8);
            if let Ok(u) = UdpPacket::new_checked(&d[20..]) {
                // Flipping a checksum bit to make it 0 would disable it; not
                // possible from 0x28e3 with a single flip.
                assert!(
                    UdpRepr::parse(&u, *src().ip(), *dst().ip()).is_err(),
                    "bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncation_errors() {
        for n in 0..DGRAM.len() {
            assert!(Ipv4Packet::new_checked(&DGRAM[..n]).is_err(), "len {n}");
        }
        for n in 0..13 {
            assert!(
                UdpPacket::new_checked(&DGRAM[20..20 + n]).is_err(),
                "len {n}"
            );
        }
    }

    #[test]
    fn fragments_and_versions_refused() {
        let mut d = DGRAM;
        d[0] = 0x65;
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(matches!(Ipv4Repr::parse(&p), Err(Error::Unsupported(_))));
        let mut d = DGRAM;
        d[6] = 0x20; // MF
        Ipv4Packet::new_unchecked(&mut d[..]).fill_checksum();
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(matches!(Ipv4Repr::parse(&p), Err(Error::Unsupported(_))));
    }

    proptest! {
        #[test]
        fn roundtrip(sa in any::<[u8; 4]>(), da in any::<[u8; 4]>(), sp in any::<u16>(), dp in any::<u16>(),
                     payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = SocketAddrV4::new(Ipv4Addr::from(sa), sp);
            let d = SocketAddrV4::new(Ipv4Addr::from(da), dp);
            let mut buf = vec![0u8; ipv4_udp_len(payload.len())];
            prop_assert_eq!(write_ipv4_udp(&mut buf, s, d, &payload), buf.len());
            let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
            let r = Ipv4Repr::parse(&ip).unwrap();
            prop_assert_eq!(r.src, *s.ip());
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            let ur = UdpRepr::parse(&u, r.src, r.dst).unwrap();
            prop_assert_eq!((ur.src_port, ur.dst_port), (sp, dp));
            prop_assert_eq!(u.payload(), &payload[..]);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Ipv4Packet::new_checked(&data[..]) {
                let _ = Ipv4Repr::parse(&p);
                let _ = p.payload();
            }
            if let Ok(u) = UdpPacket::new_checked(&data[..]) {
                let _ = UdpRepr::parse(&u, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
                let _ = u.payload();
            }
        }
    }
}
