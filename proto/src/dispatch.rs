//! The dispatcher's encapsulating mode: a small header carrying a mobile
//! node's original addresses and ports between the dispatcher and a node.
//!
//! In a rack the dispatcher forwards by rewriting the destination MAC
//! (layer-2 direct server return, DESIGN.md §5). Where a node is not on the
//! dispatcher's segment, or for unprivileged loopback runs, it instead sends
//! each datagram over ordinary UDP to the node's unique address, prefixed by
//! this header, so the node still sees who the mobile node is: registration
//! replies and RFC 3519 NAT mappings are about the mobile node's own source
//! address and port, never the dispatcher's. The node's replies travel back
//! the same way and the dispatcher sends them from VIP:434.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Version = 1  |     Kind      |        Reserved (zero)        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Source Address                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Destination Address                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Original UDP payload ...
//! ```
//!
//! Kind 1 (`ToNode`): source = the mobile node (as the dispatcher saw it,
//! i.e. after any NAT), destination = VIP:434. Kind 2 (`ToClient`): source =
//! VIP:434 (the address the node answers from), destination = the mobile
//! node. The header is versioned so it can grow; a receiver drops an unknown
//! version or kind and non-zero reserved bits (never guesses). No checksum:
//! the outer UDP datagram carries one.

use core::net::SocketAddrV4;

use crate::ip::{addr, be16, put};
use crate::{Error, Rest, Result};

/// The header version this module reads and writes.
pub const VERSION: u8 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 16;

mod field {
    use crate::{Field, Rest};
    pub const VERSION: usize = 0;
    pub const KIND: usize = 1;
    pub const RESERVED: Field = 2..4;
    pub const SRC_ADDR: Field = 4..8;
    pub const DST_ADDR: Field = 8..12;
    pub const SRC_PORT: Field = 12..14;
    pub const DST_PORT: Field = 14..16;
    pub const PAYLOAD: Rest = 16..;
}

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Dispatcher → node: a datagram a mobile node sent to the VIP.
    ToNode,
    /// Node → dispatcher: a reply to send from the VIP to the mobile node.
    ToClient,
    /// Not defined by this version; dropped.
    Unknown(u8),
}

impl From<u8> for Kind {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::ToNode,
            2 => Self::ToClient,
            o => Self::Unknown(o),
        }
    }
}

impl From<Kind> for u8 {
    fn from(k: Kind) -> u8 {
        match k {
            Kind::ToNode => 1,
            Kind::ToClient => 2,
            Kind::Unknown(o) => o,
        }
    }
}

fn rest(b: &[u8], f: Rest) -> &[u8] {
    b.get(f).unwrap_or_default()
}

/// A read/write view of an encapsulated frame.
#[derive(Debug, Clone)]
pub struct DispatchPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DispatchPacket<T> {
    /// Wraps a buffer without checking it (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer, checking that the header fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the fixed header fits.
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

    /// The version octet.
    pub fn version(&self) -> u8 {
        self.buffer
            .as_ref()
            .get(field::VERSION)
            .copied()
            .unwrap_or(0)
    }

    /// The kind octet.
    pub fn kind(&self) -> Kind {
        Kind::from(self.buffer.as_ref().get(field::KIND).copied().unwrap_or(0))
    }

    /// The reserved field.
    pub fn reserved(&self) -> u16 {
        be16(self.buffer.as_ref(), field::RESERVED)
    }

    /// The original source.
    pub fn src(&self) -> SocketAddrV4 {
        let b = self.buffer.as_ref();
        SocketAddrV4::new(addr(b, field::SRC_ADDR), be16(b, field::SRC_PORT))
    }

    /// The original destination.
    pub fn dst(&self) -> SocketAddrV4 {
        let b = self.buffer.as_ref();
        SocketAddrV4::new(addr(b, field::DST_ADDR), be16(b, field::DST_PORT))
    }

    /// The original UDP payload.
    pub fn payload(&self) -> &[u8] {
        rest(self.buffer.as_ref(), field::PAYLOAD)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DispatchPacket<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    /// Sets version and kind, and clears the reserved field.
    pub fn set_version_kind(&mut self, version: u8, kind: Kind) {
        let b = self.b();
        if let Some(v) = b.get_mut(field::VERSION) {
            *v = version;
        }
        if let Some(k) = b.get_mut(field::KIND) {
            *k = u8::from(kind);
        }
        put(b, field::RESERVED, &[0, 0]);
    }

    /// Sets the original source.
    pub fn set_src(&mut self, a: SocketAddrV4) {
        put(self.b(), field::SRC_ADDR, &a.ip().octets());
        put(self.b(), field::SRC_PORT, &a.port().to_be_bytes());
    }

    /// Sets the original destination.
    pub fn set_dst(&mut self, a: SocketAddrV4) {
        put(self.b(), field::DST_ADDR, &a.ip().octets());
        put(self.b(), field::DST_PORT, &a.port().to_be_bytes());
    }

    /// The mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.b().get_mut(field::PAYLOAD).unwrap_or(&mut [])
    }
}

/// A parsed header; the payload stays in the packet view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DispatchRepr {
    /// Direction.
    pub kind: Kind,
    /// Original source address and port.
    pub src: SocketAddrV4,
    /// Original destination address and port.
    pub dst: SocketAddrV4,
}

impl DispatchRepr {
    /// Parses the header: version 1 (`Unsupported` otherwise), a known kind
    /// (`UnexpectedType`), reserved zero (`Malformed`).
    pub fn parse<T: AsRef<[u8]>>(p: &DispatchPacket<T>) -> Result<Self> {
        p.check_len()?;
        if p.version() != VERSION {
            return Err(Error::Unsupported("dispatch header version other than 1"));
        }
        let kind = p.kind();
        if let Kind::Unknown(k) = kind {
            return Err(Error::UnexpectedType(k));
        }
        if p.reserved() != 0 {
            return Err(Error::Malformed("dispatch header reserved bits set"));
        }
        Ok(Self {
            kind,
            src: p.src(),
            dst: p.dst(),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self, payload_len: usize) -> usize {
        HEADER_LEN + payload_len
    }

    /// Writes the header only into the first [`HEADER_LEN`] octets of `p`
    /// (`Truncated` if shorter), leaving the payload in place: the
    /// dispatcher receives datagrams straight into the payload position.
    pub fn emit_header<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut DispatchPacket<T>,
    ) -> Result<()> {
        p.check_len()?;
        p.set_version_kind(VERSION, self.kind);
        p.set_src(self.src);
        p.set_dst(self.dst);
        Ok(())
    }

    /// Writes header and payload into a buffer of at least
    /// `buffer_len(payload.len())` octets and returns the frame length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut DispatchPacket<T>,
        payload: &[u8],
    ) -> Result<usize> {
        let len = self.buffer_len(payload.len());
        if p.buffer.as_ref().len() < len {
            return Err(Error::Truncated);
        }
        self.emit_header(p)?;
        if let Some(d) = p.payload_mut().get_mut(..payload.len()) {
            d.copy_from_slice(payload);
        }
        Ok(len)
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, payload: &[u8]) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.buffer_len(payload.len())];
        self.emit(&mut DispatchPacket::new_unchecked(&mut v[..]), payload)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use hex_literal::hex;
    use proptest::prelude::*;

    // Written by hand from the diagram (and checked with python3
    // `struct.pack("!BBH4s4sHH", 1, 1, 0, inet_aton("203.0.113.2"),
    // inet_aton("192.0.2.1"), 40000, 434) + b"haven"`):
    // 203.0.113.2:40000 -> 192.0.2.1:434, payload "haven".
    const TO_NODE: [u8; 21] = hex!("01010000cb007102c00002019c4001b2686176656e");

    fn repr() -> DispatchRepr {
        DispatchRepr {
            kind: Kind::ToNode,
            src: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 40000),
            dst: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 434),
        }
    }

    #[test]
    fn deconstruct() {
        let p = DispatchPacket::new_checked(&TO_NODE[..]).unwrap();
        assert_eq!(p.version(), 1);
        assert_eq!(p.kind(), Kind::ToNode);
        assert_eq!(p.reserved(), 0);
        assert_eq!(p.src(), repr().src);
        assert_eq!(p.dst(), repr().dst);
        assert_eq!(p.payload(), b"haven");
    }

    #[test]
    fn parse_and_emit() {
        let p = DispatchPacket::new_checked(&TO_NODE[..]).unwrap();
        assert_eq!(DispatchRepr::parse(&p), Ok(repr()));
        assert_eq!(repr().to_bytes(b"haven").unwrap(), TO_NODE);
        // Header only, payload left where it was received.
        let mut buf = [0xaau8; 21];
        buf[16..].copy_from_slice(b"haven");
        repr()
            .emit_header(&mut DispatchPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        assert_eq!(buf, TO_NODE);
        let mut short = [0u8; 20];
        assert_eq!(
            repr().emit(&mut DispatchPacket::new_unchecked(&mut short[..]), b"haven"),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn reply_kind() {
        let r = DispatchRepr {
            kind: Kind::ToClient,
            src: repr().dst,
            dst: repr().src,
        };
        let b = r.to_bytes(&[]).unwrap();
        assert_eq!(b, hex!("01020000c0000201cb00710201b29c40"));
        let p = DispatchPacket::new_checked(&b[..]).unwrap();
        assert_eq!(DispatchRepr::parse(&p), Ok(r));
        assert!(p.payload().is_empty());
    }

    #[test]
    fn refusals() {
        assert_eq!(
            DispatchPacket::new_checked(&TO_NODE[..15]).err(),
            Some(Error::Truncated)
        );
        let mut b = TO_NODE;
        b[0] = 2;
        let p = DispatchPacket::new_checked(&b[..]).unwrap();
        assert!(matches!(
            DispatchRepr::parse(&p),
            Err(Error::Unsupported(_))
        ));
        let mut b = TO_NODE;
        b[1] = 9;
        let p = DispatchPacket::new_checked(&b[..]).unwrap();
        assert_eq!(DispatchRepr::parse(&p), Err(Error::UnexpectedType(9)));
        let mut b = TO_NODE;
        b[3] = 1;
        let p = DispatchPacket::new_checked(&b[..]).unwrap();
        assert!(matches!(DispatchRepr::parse(&p), Err(Error::Malformed(_))));
    }

    proptest! {
        #[test]
        fn never_panics_and_roundtrips(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = DispatchPacket::new_checked(&data[..]) {
                if let Ok(r) = DispatchRepr::parse(&p) {
                    let b = r.to_bytes(p.payload()).unwrap();
                    prop_assert_eq!(&b[..], &data[..]);
                }
            }
        }
    }
}
