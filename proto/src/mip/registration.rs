//! The fixed parts of the Registration Request (type 1, [RFC 5944 § 3.3])
//! and Registration Reply (type 3, [RFC 5944 § 3.4]).
//!
//! Two layers, as smoltcp's `wire` (STYLE.md §1): [`RequestPacket`] and
//! [`ReplyPacket`] are zero-copy views over a buffer, validated once by
//! `new_checked`; [`RequestRepr`] and [`ReplyRepr`] are plain values with
//! `parse`, `buffer_len` and `emit`. The extensions after the fixed part are
//! exposed as bytes ([`RequestPacket::extensions`]) and read by
//! [`super::ext`].

use core::net::Ipv4Addr;

use super::ReplyCode;
use super::ident::Identification;
use crate::{Error, Result};

/// Message type of a Registration Request [RFC 5944 § 3.3].
pub const REQUEST_TYPE: u8 = 1;
/// Message type of a Registration Reply [RFC 5944 § 3.4].
pub const REPLY_TYPE: u8 = 3;
/// Length of the fixed part of a Registration Request.
pub const REQUEST_LEN: usize = 24;
/// Length of the fixed part of a Registration Reply.
pub const REPLY_LEN: usize = 20;

/// The fixed-part length of a message by its type octet: where the
/// extensions start.
///
/// # Errors
/// [`Error::Truncated`] for an empty buffer, [`Error::UnexpectedType`] for a
/// type other than 1 or 3.
pub fn fixed_len(message: &[u8]) -> Result<usize> {
    match message.first() {
        None => Err(Error::Truncated),
        Some(&REQUEST_TYPE) => Ok(REQUEST_LEN),
        Some(&REPLY_TYPE) => Ok(REPLY_LEN),
        Some(&t) => Err(Error::UnexpectedType(t)),
    }
}

mod field {
    use crate::{Field, Rest};

    pub const TYPE: usize = 0;
    /// Request: flags; reply: code.
    pub const FLAGS_OR_CODE: usize = 1;
    pub const LIFETIME: Field = 2..4;
    pub const HOME_ADDRESS: Field = 4..8;
    pub const HOME_AGENT: Field = 8..12;

    pub const RQ_CARE_OF: Field = 12..16;
    pub const RQ_IDENT: Field = 16..24;
    pub const RQ_EXT: Rest = 24..;

    pub const RP_IDENT: Field = 12..20;
    pub const RP_EXT: Rest = 20..;
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

/// The flags octet of a Registration Request: S B D M G r T x
/// [RFC 5944 § 3.3].
///
/// `r` and `x` are reserved: sent as zero and ignored on receipt, so
/// [`Flags::from_bits`] clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// S: simultaneous bindings requested.
    pub const S: u8 = 0x80;
    /// B: broadcast datagrams to be tunnelled to the mobile node.
    pub const B: u8 = 0x40;
    /// D: decapsulation by the mobile node (co-located care-of address).
    pub const D: u8 = 0x20;
    /// M: minimal encapsulation requested (RFC 2004).
    pub const M: u8 = 0x10;
    /// G: GRE encapsulation requested (RFC 2784).
    pub const G: u8 = 0x08;
    /// T: reverse tunnelling requested (RFC 3024).
    pub const T: u8 = 0x02;
    /// The bits a receiver keeps: everything but the reserved `r` (0x04)
    /// and `x` (0x01).
    pub const DEFINED: u8 = Self::S | Self::B | Self::D | Self::M | Self::G | Self::T;

    /// Flags from the octet on the wire, reserved bits ignored.
    pub const fn from_bits(bits: u8) -> Self {
        Flags(bits & Self::DEFINED)
    }

    /// The octet to send (reserved bits zero).
    pub const fn bits(self) -> u8 {
        self.0
    }

    const fn get(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// S: keep prior bindings (simultaneous mobility bindings).
    pub const fn simultaneous_bindings(self) -> bool {
        self.get(Self::S)
    }
    /// B: tunnel broadcast datagrams.
    pub const fn broadcast(self) -> bool {
        self.get(Self::B)
    }
    /// D: the mobile node decapsulates (co-located care-of address).
    pub const fn decapsulation_by_mn(self) -> bool {
        self.get(Self::D)
    }
    /// M: minimal encapsulation.
    pub const fn minimal_encapsulation(self) -> bool {
        self.get(Self::M)
    }
    /// G: GRE encapsulation.
    pub const fn gre_encapsulation(self) -> bool {
        self.get(Self::G)
    }
    /// T: reverse tunnelling (RFC 3024 § 3.1).
    pub const fn reverse_tunnel(self) -> bool {
        self.get(Self::T)
    }

    /// Sets S.
    pub fn set_simultaneous_bindings(&mut self, on: bool) {
        self.set(Self::S, on)
    }
    /// Sets B.
    pub fn set_broadcast(&mut self, on: bool) {
        self.set(Self::B, on)
    }
    /// Sets D.
    pub fn set_decapsulation_by_mn(&mut self, on: bool) {
        self.set(Self::D, on)
    }
    /// Sets M.
    pub fn set_minimal_encapsulation(&mut self, on: bool) {
        self.set(Self::M, on)
    }
    /// Sets G.
    pub fn set_gre_encapsulation(&mut self, on: bool) {
        self.set(Self::G, on)
    }
    /// Sets T.
    pub fn set_reverse_tunnel(&mut self, on: bool) {
        self.set(Self::T, on)
    }
}

/// A zero-copy view of a Registration Request [RFC 5944 § 3.3].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RequestPacket<T> {
    /// Wraps a buffer without checks: accessors panic if it is shorter than
    /// [`REQUEST_LEN`]. Use only on buffers this program sized.
    pub const fn new_unchecked(buffer: T) -> Self {
        RequestPacket { buffer }
    }

    /// Wraps untrusted bytes: checks the length and the type octet.
    ///
    /// # Errors
    /// [`Error::Truncated`] if shorter than 24 bytes,
    /// [`Error::UnexpectedType`] if the type is not 1.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        match p.msg_type() {
            REQUEST_TYPE => Ok(p),
            t => Err(Error::UnexpectedType(t)),
        }
    }

    /// Checks that the fixed part fits, so no accessor panics.
    ///
    /// # Errors
    /// [`Error::Truncated`].
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < REQUEST_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The type octet (1).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// The flags, reserved bits ignored.
    pub fn flags(&self) -> Flags {
        Flags::from_bits(self.buffer.as_ref()[field::FLAGS_OR_CODE])
    }
    /// Requested lifetime in seconds; 0 deregisters, 0xffff is infinite.
    pub fn lifetime(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LIFETIME];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// Home address of the mobile node (0.0.0.0 asks for one, RFC 2794).
    pub fn home_address(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::HOME_ADDRESS])
    }
    /// Home agent address.
    pub fn home_agent(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::HOME_AGENT])
    }
    /// Care-of address.
    pub fn care_of_address(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::RQ_CARE_OF])
    }
    /// Identification (§ 5.7).
    pub fn identification(&self) -> Identification {
        Identification(be64(&self.buffer.as_ref()[field::RQ_IDENT]))
    }
    /// Everything after the fixed part: the extensions.
    pub fn extensions(&self) -> &[u8] {
        &self.buffer.as_ref()[field::RQ_EXT]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RequestPacket<T> {
    /// Sets the type octet.
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }
    /// Sets the flags (reserved bits zero).
    pub fn set_flags(&mut self, f: Flags) {
        self.buffer.as_mut()[field::FLAGS_OR_CODE] = f.bits();
    }
    /// Sets the lifetime.
    pub fn set_lifetime(&mut self, v: u16) {
        self.buffer.as_mut()[field::LIFETIME].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the home address.
    pub fn set_home_address(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::HOME_ADDRESS].copy_from_slice(&a.octets());
    }
    /// Sets the home agent.
    pub fn set_home_agent(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::HOME_AGENT].copy_from_slice(&a.octets());
    }
    /// Sets the care-of address.
    pub fn set_care_of_address(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::RQ_CARE_OF].copy_from_slice(&a.octets());
    }
    /// Sets the identification.
    pub fn set_identification(&mut self, i: Identification) {
        self.buffer.as_mut()[field::RQ_IDENT].copy_from_slice(&i.0.to_be_bytes());
    }
    /// The extension area, writable.
    pub fn extensions_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::RQ_EXT]
    }
}

/// A zero-copy view of a Registration Reply [RFC 5944 § 3.4].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ReplyPacket<T> {
    /// Wraps a buffer without checks (see [`RequestPacket::new_unchecked`]).
    pub const fn new_unchecked(buffer: T) -> Self {
        ReplyPacket { buffer }
    }

    /// Wraps untrusted bytes: checks the length and the type octet.
    ///
    /// # Errors
    /// [`Error::Truncated`] if shorter than 20 bytes,
    /// [`Error::UnexpectedType`] if the type is not 3.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        match p.msg_type() {
            REPLY_TYPE => Ok(p),
            t => Err(Error::UnexpectedType(t)),
        }
    }

    /// Checks that the fixed part fits.
    ///
    /// # Errors
    /// [`Error::Truncated`].
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < REPLY_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// Unwraps the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The type octet (3).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        ReplyCode::from(self.buffer.as_ref()[field::FLAGS_OR_CODE])
    }
    /// Granted lifetime in seconds.
    pub fn lifetime(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LIFETIME];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// Home address.
    pub fn home_address(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::HOME_ADDRESS])
    }
    /// Home agent address.
    pub fn home_agent(&self) -> Ipv4Addr {
        addr(&self.buffer.as_ref()[field::HOME_AGENT])
    }
    /// Identification (§ 5.7).
    pub fn identification(&self) -> Identification {
        Identification(be64(&self.buffer.as_ref()[field::RP_IDENT]))
    }
    /// Everything after the fixed part: the extensions.
    pub fn extensions(&self) -> &[u8] {
        &self.buffer.as_ref()[field::RP_EXT]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ReplyPacket<T> {
    /// Sets the type octet.
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }
    /// Sets the code.
    pub fn set_code(&mut self, c: ReplyCode) {
        self.buffer.as_mut()[field::FLAGS_OR_CODE] = u8::from(c);
    }
    /// Sets the lifetime.
    pub fn set_lifetime(&mut self, v: u16) {
        self.buffer.as_mut()[field::LIFETIME].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the home address.
    pub fn set_home_address(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::HOME_ADDRESS].copy_from_slice(&a.octets());
    }
    /// Sets the home agent.
    pub fn set_home_agent(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::HOME_AGENT].copy_from_slice(&a.octets());
    }
    /// Sets the identification.
    pub fn set_identification(&mut self, i: Identification) {
        self.buffer.as_mut()[field::RP_IDENT].copy_from_slice(&i.0.to_be_bytes());
    }
    /// The extension area, writable.
    pub fn extensions_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::RP_EXT]
    }
}

/// The fixed part of a Registration Request, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestRepr {
    /// S B D M G T flags.
    pub flags: Flags,
    /// Requested lifetime (seconds).
    pub lifetime: u16,
    /// Home address (0.0.0.0 when asking for one with an NAI).
    pub home_address: Ipv4Addr,
    /// Home agent address.
    pub home_agent: Ipv4Addr,
    /// Care-of address.
    pub care_of_address: Ipv4Addr,
    /// Identification (§ 5.7).
    pub identification: Identification,
}

impl RequestRepr {
    /// Reads the fixed part of a checked packet.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::UnexpectedType`].
    pub fn parse<T: AsRef<[u8]>>(packet: &RequestPacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.msg_type() != REQUEST_TYPE {
            return Err(Error::UnexpectedType(packet.msg_type()));
        }
        Ok(RequestRepr {
            flags: packet.flags(),
            lifetime: packet.lifetime(),
            home_address: packet.home_address(),
            home_agent: packet.home_agent(),
            care_of_address: packet.care_of_address(),
            identification: packet.identification(),
        })
    }

    /// Length of the fixed part (24).
    pub const fn buffer_len(&self) -> usize {
        REQUEST_LEN
    }

    /// Writes the fixed part; the packet's buffer must hold at least
    /// [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut RequestPacket<T>) {
        packet.set_msg_type(REQUEST_TYPE);
        packet.set_flags(self.flags);
        packet.set_lifetime(self.lifetime);
        packet.set_home_address(self.home_address);
        packet.set_home_agent(self.home_agent);
        packet.set_care_of_address(self.care_of_address);
        packet.set_identification(self.identification);
    }
}

/// The fixed part of a Registration Reply, as values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyRepr {
    /// Result of the registration.
    pub code: ReplyCode,
    /// Granted lifetime (seconds).
    pub lifetime: u16,
    /// Home address.
    pub home_address: Ipv4Addr,
    /// Home agent address.
    pub home_agent: Ipv4Addr,
    /// Identification (§ 5.7).
    pub identification: Identification,
}

impl ReplyRepr {
    /// Reads the fixed part of a checked packet.
    ///
    /// # Errors
    /// [`Error::Truncated`] or [`Error::UnexpectedType`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ReplyPacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.msg_type() != REPLY_TYPE {
            return Err(Error::UnexpectedType(packet.msg_type()));
        }
        Ok(ReplyRepr {
            code: packet.code(),
            lifetime: packet.lifetime(),
            home_address: packet.home_address(),
            home_agent: packet.home_agent(),
            identification: packet.identification(),
        })
    }

    /// Length of the fixed part (20).
    pub const fn buffer_len(&self) -> usize {
        REPLY_LEN
    }

    /// Writes the fixed part; the buffer must hold at least
    /// [`buffer_len`](Self::buffer_len) bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ReplyPacket<T>) {
        packet.set_msg_type(REPLY_TYPE);
        packet.set_code(self.code);
        packet.set_lifetime(self.lifetime);
        packet.set_home_address(self.home_address);
        packet.set_home_agent(self.home_agent);
        packet.set_identification(self.identification);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    // Type 1, flags T+G (0x0a), lifetime 1800, HoA 192.0.2.10, HA 198.51.100.1,
    // CoA 203.0.113.7, identification 0x83aa7e80_00000001, no extensions.
    pub(crate) const REQUEST: [u8; 24] =
        hex!("01 0a 0708 c000020a c6336401 cb007107 83aa7e8000000001");
    // Type 3, code 0, lifetime 1800, same HoA/HA/identification.
    pub(crate) const REPLY: [u8; 20] = hex!("03 00 0708 c000020a c6336401 83aa7e8000000001");

    pub(crate) fn request_repr() -> RequestRepr {
        let mut flags = Flags::default();
        flags.set_reverse_tunnel(true);
        flags.set_gre_encapsulation(true);
        RequestRepr {
            flags,
            lifetime: 1800,
            home_address: Ipv4Addr::new(192, 0, 2, 10),
            home_agent: Ipv4Addr::new(198, 51, 100, 1),
            care_of_address: Ipv4Addr::new(203, 0, 113, 7),
            identification: Identification(0x83aa_7e80_0000_0001),
        }
    }

    pub(crate) fn reply_repr() -> ReplyRepr {
        ReplyRepr {
            code: ReplyCode::Accepted,
            lifetime: 1800,
            home_address: Ipv4Addr::new(192, 0, 2, 10),
            home_agent: Ipv4Addr::new(198, 51, 100, 1),
            identification: Identification(0x83aa_7e80_0000_0001),
        }
    }

    #[test]
    fn deconstruct_request() {
        // Reference: RFC 5944 § 3.3 field layout.
        let p = RequestPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.msg_type(), 1);
        assert!(p.flags().reverse_tunnel());
        assert!(p.flags().gre_encapsulation());
        assert!(!p.flags().simultaneous_bindings());
        assert_eq!(p.lifetime(), 1800);
        assert_eq!(p.home_address(), Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(p.home_agent(), Ipv4Addr::new(198, 51, 100, 1));
        assert_eq!(p.care_of_address(), Ipv4Addr::new(203, 0, 113, 7));
        assert_eq!(p.identification(), Identification(0x83aa_7e80_0000_0001));
        assert!(p.extensions().is_empty());
    }

    #[test]
    fn request_parse_and_emit() {
        let p = RequestPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(RequestRepr::parse(&p).unwrap(), request_repr());
        let mut buf = [0u8; 24];
        request_repr().emit(&mut RequestPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn reply_parse_and_emit() {
        // Reference: RFC 5944 § 3.4 field layout.
        let p = ReplyPacket::new_checked(&REPLY[..]).unwrap();
        assert_eq!(p.code(), ReplyCode::Accepted);
        assert_eq!(ReplyRepr::parse(&p).unwrap(), reply_repr());
        let mut buf = [0u8; 20];
        reply_repr().emit(&mut ReplyPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn reserved_flags_ignored() {
        // Reference: RFC 5944 § 3.3: r and x "sent as zero; ignored on reception".
        let mut b = REQUEST;
        b[1] = 0xff;
        let p = RequestPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.flags().bits(), 0xfa);
        let mut out = [0u8; 24];
        RequestRepr::parse(&p)
            .unwrap()
            .emit(&mut RequestPacket::new_unchecked(&mut out[..]));
        assert_eq!(out[1], 0xfa);
    }

    #[test]
    fn flag_bits() {
        let mut f = Flags::default();
        f.set_simultaneous_bindings(true);
        f.set_broadcast(true);
        f.set_decapsulation_by_mn(true);
        f.set_minimal_encapsulation(true);
        assert_eq!(f.bits(), 0xf0);
        f.set_broadcast(false);
        assert_eq!(f.bits(), 0xb0);
        assert!(f.decapsulation_by_mn() && f.minimal_encapsulation() && !f.broadcast());
    }

    #[test]
    fn truncation_and_type() {
        for n in 0..24 {
            assert_eq!(
                RequestPacket::new_checked(&REQUEST[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        for n in 0..20 {
            assert_eq!(
                ReplyPacket::new_checked(&REPLY[..n]).unwrap_err(),
                Error::Truncated
            );
        }
        assert_eq!(
            RequestPacket::new_checked(&REPLY[..]).unwrap_err(),
            Error::Truncated
        );
        let mut r = REQUEST;
        r[0] = 3;
        assert_eq!(
            RequestPacket::new_checked(&r[..]).unwrap_err(),
            Error::UnexpectedType(3)
        );
        assert_eq!(
            ReplyPacket::new_checked(&REQUEST[..]).unwrap_err(),
            Error::UnexpectedType(1)
        );
        assert_eq!(fixed_len(&[]), Err(Error::Truncated));
        assert_eq!(fixed_len(&[9]), Err(Error::UnexpectedType(9)));
    }

    #[test]
    fn extensions_bytes() {
        let mut b = REQUEST.to_vec();
        b.extend_from_slice(&[0x83, 0x00]);
        let p = RequestPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.extensions(), &[0x83, 0x00]);
    }

    fn arb_addr() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    pub(crate) fn arb_request() -> impl Strategy<Value = RequestRepr> {
        (
            any::<u8>(),
            any::<u16>(),
            arb_addr(),
            arb_addr(),
            arb_addr(),
            any::<u64>(),
        )
            .prop_map(
                |(f, lifetime, home_address, home_agent, care_of_address, id)| RequestRepr {
                    flags: Flags::from_bits(f),
                    lifetime,
                    home_address,
                    home_agent,
                    care_of_address,
                    identification: Identification(id),
                },
            )
    }

    pub(crate) fn arb_reply() -> impl Strategy<Value = ReplyRepr> {
        (
            any::<u8>(),
            any::<u16>(),
            arb_addr(),
            arb_addr(),
            any::<u64>(),
        )
            .prop_map(|(c, lifetime, home_address, home_agent, id)| ReplyRepr {
                code: ReplyCode::from(c),
                lifetime,
                home_address,
                home_agent,
                identification: Identification(id),
            })
    }

    proptest! {
        #[test]
        fn request_round_trip(r in arb_request()) {
            let mut buf = [0u8; REQUEST_LEN];
            r.emit(&mut RequestPacket::new_unchecked(&mut buf[..]));
            let p = RequestPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(RequestRepr::parse(&p).unwrap(), r);
        }

        #[test]
        fn reply_round_trip(r in arb_reply()) {
            let mut buf = [0u8; REPLY_LEN];
            r.emit(&mut ReplyPacket::new_unchecked(&mut buf[..]));
            let p = ReplyPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(ReplyRepr::parse(&p).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = RequestPacket::new_checked(&b[..]) {
                let _ = RequestRepr::parse(&p);
                let _ = p.extensions();
            }
            if let Ok(p) = ReplyPacket::new_checked(&b[..]) {
                let _ = ReplyRepr::parse(&p);
                let _ = p.extensions();
            }
        }
    }
}
