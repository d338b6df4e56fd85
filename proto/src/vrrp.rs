//! RFC 5798 VRRP version 3 advertisements for IPv4.
//!
//! The dispatcher pair uses them to own the VIP, and every home-agent node
//! sends them so the dispatcher knows it is alive (priority 0 = draining).
//! The common header defined here is also the first part of the binding-sync
//! messages in [`crate::sync`], which reuse the type nibble (2–5).

use core::net::Ipv4Addr;

use crate::ip::{checksum, protocol};
use crate::{Error, Result};

/// The IPv4 multicast group advertisements go to [RFC 5798 § 5.1.1.2].
pub const MULTICAST_ADDR: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Advertisements must be sent with TTL 255 and are dropped otherwise
/// [RFC 5798 § 5.1.1.3].
pub const TTL: u8 = 255;
/// Priority 0: the master stops being master (haven: node draining)
/// [RFC 5798 § 5.2.4].
pub const PRIORITY_STOP: u8 = 0;
/// Priority 255: the owner of the virtual address [RFC 5798 § 5.2.4].
pub const PRIORITY_OWNER: u8 = 255;
/// Default backup priority [RFC 5798 § 5.2.4].
pub const PRIORITY_DEFAULT: u8 = 100;
/// VRRP version this crate speaks.
pub const VERSION: u8 = 3;
/// Type of an advertisement [RFC 5798 § 5.2.2].
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed header length before the addresses.
pub const HEADER_LEN: usize = 8;

pub(crate) mod field {
    use crate::{Field, Rest};
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    pub const MAX_ADVER: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const ADDRS: Rest = 8..;
}

/// A read/write view of a VRRPv3 message (advertisement or sync) [RFC 5798 § 5.1].
#[derive(Debug, Clone)]
pub struct VrrpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VrrpPacket<T> {
    /// Wraps a buffer without checking it (for emitting).
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    /// Wraps a buffer, checking the fixed header and the address list fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Checks that the fixed header and `count` IPv4 addresses fit.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN || b.len() < self.addrs_end() {
            return Err(Error::Truncated);
        }
        Ok(())
    }
    /// The whole message buffer (the IP payload).
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    fn octet(&self, at: usize) -> u8 {
        self.buffer.as_ref().get(at).copied().unwrap_or(0)
    }
    /// Version nibble.
    pub fn version(&self) -> u8 {
        self.octet(field::VER_TYPE) >> 4
    }
    /// Type nibble.
    pub fn msg_type(&self) -> u8 {
        self.octet(field::VER_TYPE) & 0x0f
    }
    /// Virtual router identifier.
    pub fn vrid(&self) -> u8 {
        self.octet(field::VRID)
    }
    /// Priority.
    pub fn priority(&self) -> u8 {
        self.octet(field::PRIORITY)
    }
    /// Count IPvX Addr.
    pub fn addr_count(&self) -> u8 {
        self.octet(field::COUNT)
    }
    /// Max Adver Int in centiseconds (12 bits; the 4 reserved bits masked).
    pub fn max_advert_int(&self) -> u16 {
        u16::from_be_bytes([self.octet(4), self.octet(5)]) & 0x0fff
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.octet(6), self.octet(7)])
    }
    /// Offset just past the address list.
    pub fn addrs_end(&self) -> usize {
        HEADER_LEN + 4 * usize::from(self.addr_count())
    }
    /// The IPv4 addresses.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let b = self
            .buffer
            .as_ref()
            .get(HEADER_LEN..self.addrs_end())
            .unwrap_or(&[]);
        b.chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
    }
    /// Verifies the checksum over the pseudo-header and the whole message
    /// [RFC 5798 § 5.2.8].
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        checksum::combine(&[
            checksum::pseudo_header(src, dst, protocol::VRRP, len),
            checksum::sum(b),
        ]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VrrpPacket<T> {
    fn set_octet(&mut self, at: usize, v: u8) {
        if let Some(x) = self.buffer.as_mut().get_mut(at) {
            *x = v;
        }
    }
    fn set_be16(&mut self, f: crate::Field, v: u16) {
        if let Some(x) = self.buffer.as_mut().get_mut(f) {
            x.copy_from_slice(&v.to_be_bytes());
        }
    }
    /// Sets version and type nibbles.
    pub fn set_version_type(&mut self, version: u8, msg_type: u8) {
        self.set_octet(field::VER_TYPE, (version << 4) | (msg_type & 0x0f));
    }
    /// Sets the VRID.
    pub fn set_vrid(&mut self, v: u8) {
        self.set_octet(field::VRID, v);
    }
    /// Sets the priority.
    pub fn set_priority(&mut self, v: u8) {
        self.set_octet(field::PRIORITY, v);
    }
    /// Sets Count IPvX Addr.
    pub fn set_addr_count(&mut self, v: u8) {
        self.set_octet(field::COUNT, v);
    }
    /// Sets Max Adver Int (reserved bits sent as zero).
    pub fn set_max_advert_int(&mut self, v: u16) {
        self.set_be16(field::MAX_ADVER, v & 0x0fff);
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_be16(field::CHECKSUM, v);
    }
    /// Writes the address list (as many as `count` allows and fit).
    pub fn set_addresses(&mut self, addrs: &[Ipv4Addr]) {
        let end = self.addrs_end();
        if let Some(b) = self.buffer.as_mut().get_mut(field::ADDRS.start..end) {
            for (c, a) in b.chunks_exact_mut(4).zip(addrs) {
                c.copy_from_slice(&a.octets());
            }
        }
    }
    /// Recomputes the checksum over pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        let c = !checksum::combine(&[
            checksum::pseudo_header(src, dst, protocol::VRRP, len),
            checksum::sum(b),
        ]);
        self.set_checksum(c);
    }
}

/// The common checks of every VRRPv3 message this crate reads: length,
/// version 3, checksum. Shared with [`crate::sync`].
pub(crate) fn check_common<T: AsRef<[u8]>>(
    p: &VrrpPacket<T>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<()> {
    p.check_len()?;
    if p.version() != VERSION {
        return Err(Error::Unsupported("VRRP version other than 3"));
    }
    if !p.verify_checksum(src, dst) {
        return Err(Error::Checksum);
    }
    Ok(())
}

/// A parsed VRRPv3 advertisement [RFC 5798 § 5.2].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VrrpRepr {
    /// Virtual router identifier.
    pub vrid: u8,
    /// Priority (0 = stop/draining, 255 = owner).
    pub priority: u8,
    /// Max Adver Int in centiseconds (12 bits).
    pub max_advert_int_cs: u16,
    /// The virtual IPv4 addresses (at most 255).
    pub addresses: Vec<Ipv4Addr>,
}

impl VrrpRepr {
    /// Parses an advertisement received from `src` to `dst`: checksum,
    /// version 3 (`Unsupported`), type 1 (`UnexpectedType`). Octets after
    /// the address list are covered by the checksum and otherwise ignored.
    pub fn parse<T: AsRef<[u8]>>(p: &VrrpPacket<T>, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Self> {
        check_common(p, src, dst)?;
        if p.msg_type() != TYPE_ADVERTISEMENT {
            return Err(Error::UnexpectedType(p.msg_type()));
        }
        Ok(Self {
            vrid: p.vrid(),
            priority: p.priority(),
            max_advert_int_cs: p.max_advert_int(),
            addresses: p.addresses().collect(),
        })
    }

    /// Whether the sender says it is leaving (priority 0).
    pub const fn is_stop(&self) -> bool {
        self.priority == PRIORITY_STOP
    }

    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4 * self.addresses.len()
    }

    /// Writes the advertisement with its checksum into a buffer of exactly
    /// `buffer_len()` octets. `BadLength` for more than 255 addresses or a
    /// Max Adver Int above 4095; `Truncated` for another buffer length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut VrrpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<()> {
        let count = u8::try_from(self.addresses.len()).map_err(|_| Error::BadLength)?;
        if self.max_advert_int_cs > 0x0fff {
            return Err(Error::BadLength);
        }
        if p.buffer.as_ref().len() != self.buffer_len() {
            return Err(Error::Truncated);
        }
        p.set_version_type(VERSION, TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_addr_count(count);
        p.set_max_advert_int(self.max_advert_int_cs);
        p.set_addresses(&self.addresses);
        p.fill_checksum(src, dst);
        Ok(())
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut VrrpPacket::new_unchecked(&mut v[..]), src, dst)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn repr() -> VrrpRepr {
        VrrpRepr {
            vrid: 7,
            priority: 100,
            max_advert_int_cs: 100,
            addresses: vec![
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 101),
            ],
        }
    }

    // Checksum computed with python3 over pseudo-header + message.
    const ADVERT: [u8; 16] = hex!("31076402006436fcc6120064c6120065");

    #[test]
    fn emit_vector() {
        assert_eq!(repr().to_bytes(SRC, MULTICAST_ADDR).unwrap(), ADVERT);
    }

    #[test]
    fn parse_vector() {
        let p = VrrpPacket::new_checked(&ADVERT[..]).unwrap();
        assert_eq!(VrrpRepr::parse(&p, SRC, MULTICAST_ADDR).unwrap(), repr());
        // The pseudo-header is covered: another source fails.
        assert_eq!(
            VrrpRepr::parse(&p, Ipv4Addr::new(198, 18, 0, 3), MULTICAST_ADDR),
            Err(Error::Checksum)
        );
    }

    #[test]
    fn stop_advert() {
        let r = VrrpRepr {
            priority: PRIORITY_STOP,
            addresses: vec![],
            ..repr()
        };
        assert!(r.is_stop());
        let b = r.to_bytes(SRC, MULTICAST_ADDR).unwrap();
        assert_eq!(b, hex!("31070000006427f5"));
        let p = VrrpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(VrrpRepr::parse(&p, SRC, MULTICAST_ADDR).unwrap(), r);
    }

    #[test]
    fn version_and_type() {
        let mut b = ADVERT;
        b[0] = 0x21;
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, MULTICAST_ADDR);
        let p = VrrpPacket::new_checked(&b[..]).unwrap();
        assert!(matches!(
            VrrpRepr::parse(&p, SRC, MULTICAST_ADDR),
            Err(Error::Unsupported(_))
        ));
        let mut b = ADVERT;
        b[0] = 0x32;
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, MULTICAST_ADDR);
        let p = VrrpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            VrrpRepr::parse(&p, SRC, MULTICAST_ADDR),
            Err(Error::UnexpectedType(2))
        );
    }

    #[test]
    fn tamper_every_bit() {
        for bit in 0..ADVERT.len() * 8 {
            let mut b = ADVERT;
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(p) = VrrpPacket::new_checked(&b[..]) {
                assert!(
                    VrrpRepr::parse(&p, SRC, MULTICAST_ADDR).is_err(),
                    "bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncation() {
        for n in 0..ADVERT.len() {
            assert_eq!(
                VrrpPacket::new_checked(&ADVERT[..n]).err(),
                Some(Error::Truncated),
                "len {n}"
            );
        }
    }

    #[test]
    fn emit_limits() {
        let r = VrrpRepr {
            addresses: vec![SRC; 256],
            ..repr()
        };
        assert_eq!(r.to_bytes(SRC, MULTICAST_ADDR), Err(Error::BadLength));
        let r = VrrpRepr {
            max_advert_int_cs: 4096,
            ..repr()
        };
        assert_eq!(r.to_bytes(SRC, MULTICAST_ADDR), Err(Error::BadLength));
    }

    proptest! {
        #[test]
        fn roundtrip(vrid in any::<u8>(), priority in any::<u8>(), mai in 0u16..4096,
                     addrs in proptest::collection::vec(any::<[u8; 4]>(), 0..20)) {
            let r = VrrpRepr { vrid, priority, max_advert_int_cs: mai,
                               addresses: addrs.into_iter().map(Ipv4Addr::from).collect() };
            let b = r.to_bytes(SRC, MULTICAST_ADDR).unwrap();
            let p = VrrpPacket::new_checked(&b[..]).unwrap();
            prop_assert_eq!(VrrpRepr::parse(&p, SRC, MULTICAST_ADDR).unwrap(), r);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = VrrpPacket::new_checked(&data[..]) {
                let _ = VrrpRepr::parse(&p, SRC, MULTICAST_ADDR);
            }
        }
    }
}
