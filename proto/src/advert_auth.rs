//! Authenticated node health advertisements (node → dispatcher).
//!
//! A home-agent node's health advert ([`crate::vrrp`], DESIGN.md §5) is a
//! plain RFC 5798 advertisement: a host on the backend segment that can
//! spoof a node's address could keep a dead node in the dispatcher's table
//! or drain a live one. With a shared key both sides use the layout the
//! pair's own adverts already use (`docs/wire-sync.md`, "Authenticated
//! adverts"): the VRRPv3 advert, then the 22-octet sync header of
//! [`crate::sync`] carrying a 64-bit sequence number (acknowledged
//! sequence, fragment index, flags and Count-D all zero), then the 32-octet
//! HMAC-SHA256 trailer over source, destination and the message with the
//! checksum zeroed. The VRRP checksum still covers the whole message
//! [RFC 5798 § 5.2.8], so a dispatcher without a key parses the same bytes
//! with [`VrrpRepr::parse`] (which ignores octets after the address list).
//!
//! Replay protection is the receiver's: it keeps the highest sequence
//! accepted per node and refuses anything not above it (adverts are
//! periodic state, so there is nothing to gain from a reorder window).

use core::net::Ipv4Addr;

use crate::sync::{self, MAC_LEN, SYNC_HEADER_LEN, SyncPacket};
use crate::vrrp::{VrrpPacket, VrrpRepr};
use crate::{Error, Result};

/// Octets after the address list: sync header (sequence) and HMAC trailer.
pub const TRAILER_LEN: usize = SYNC_HEADER_LEN + MAC_LEN;

/// An authenticated advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthAdvertRepr {
    /// The advertisement proper.
    pub advert: VrrpRepr,
    /// The sender's sequence number (strictly increasing per sender).
    pub sequence: u64,
}

impl AuthAdvertRepr {
    /// Parses a message from `src` to `dst`: the VRRP checks of
    /// [`VrrpRepr::parse`] first (so a misaddressed advert is `Checksum`,
    /// not `Authentication`), then the trailer, which must be exactly
    /// [`TRAILER_LEN`] octets after the address list and carry a valid HMAC
    /// with `key`; a bare RFC 5798 advert is `Authentication` too.
    pub fn parse(bytes: &[u8], src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<Self> {
        let p = VrrpPacket::new_checked(bytes)?;
        let advert = VrrpRepr::parse(&p, src, dst)?;
        if bytes.len() != p.addrs_end() + TRAILER_LEN {
            return Err(Error::Authentication);
        }
        let sp = SyncPacket::new_checked(bytes).map_err(|_| Error::Authentication)?;
        if !sp.verify_mac(src, dst, key) {
            return Err(Error::Authentication);
        }
        Ok(Self {
            advert,
            sequence: sp.sequence(),
        })
    }

    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        self.advert.buffer_len() + TRAILER_LEN
    }

    /// Writes the message, HMAC and checksum into a buffer of exactly
    /// `buffer_len()` octets (`Truncated` otherwise; `BadLength` as
    /// [`VrrpRepr::emit`]).
    pub fn emit(&self, buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<()> {
        if buf.len() != self.buffer_len() {
            return Err(Error::Truncated);
        }
        let (head, trailer) = buf.split_at_mut(self.advert.buffer_len());
        self.advert
            .emit(&mut VrrpPacket::new_unchecked(head), src, dst)?;
        trailer.fill(0);
        let (seq, _) = trailer.split_at_mut(8);
        seq.copy_from_slice(&self.sequence.to_be_bytes());
        sync::seal(buf, src, dst, key)
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr, key: &[u8]) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut v, src, dst, key)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hex_literal::hex;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const KEY: [u8; 16] = hex!("00112233445566778899aabbccddeeff");

    fn repr() -> AuthAdvertRepr {
        AuthAdvertRepr {
            advert: VrrpRepr {
                vrid: 1,
                priority: 100,
                max_advert_int_cs: 100,
                addresses: vec![],
            },
            sequence: 0x0006_0f00_1122_3344,
        }
    }

    // Independently computed with python3: HMAC-SHA256(KEY, SRC ‖ DST ‖
    // 31 01 64 00 00 64 00 00 ‖ sequence ‖ 14 × 00), then the RFC 1071
    // checksum over the pseudo-header (length 62) and the whole message.
    const AUTH: [u8; 62] = hex!(
        "310164000064" "297e"
        "00060f0011223344" "0000000000000000" "000000000000"
        "77ff715e385912d640d5238fb2fc4bef" "359dde43e4e6d0844033664950de084a"
    );

    #[test]
    fn emit_and_parse_vector() {
        let b = repr().to_bytes(SRC, DST, &KEY).unwrap();
        assert_eq!(b, AUTH);
        assert_eq!(
            AuthAdvertRepr::parse(&AUTH, SRC, DST, &KEY).unwrap(),
            repr()
        );
        // A dispatcher without a key reads the same bytes as a plain advert.
        let p = VrrpPacket::new_checked(&AUTH[..]).unwrap();
        assert_eq!(VrrpRepr::parse(&p, SRC, DST).unwrap(), repr().advert);
    }

    #[test]
    fn wrong_key_and_addresses() {
        let mut other = KEY;
        other[0] ^= 1;
        assert_eq!(
            AuthAdvertRepr::parse(&AUTH, SRC, DST, &other),
            Err(Error::Authentication)
        );
        // Replayed to another dispatcher (or from another source): the
        // checksum fails first; re-sealing the checksum leaves the HMAC bad.
        let other_dst = Ipv4Addr::new(198, 18, 0, 3);
        assert_eq!(
            AuthAdvertRepr::parse(&AUTH, SRC, other_dst, &KEY),
            Err(Error::Checksum)
        );
        let mut b = AUTH;
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, other_dst);
        assert_eq!(
            AuthAdvertRepr::parse(&b, SRC, other_dst, &KEY),
            Err(Error::Authentication)
        );
    }

    #[test]
    fn missing_or_cut_trailer() {
        let bare = repr().advert.to_bytes(SRC, DST).unwrap();
        assert_eq!(
            AuthAdvertRepr::parse(&bare, SRC, DST, &KEY),
            Err(Error::Authentication)
        );
        // One octet short or long, checksum recomputed: still refused.
        for len in [AUTH.len() - 1, AUTH.len() + 1] {
            let mut b = AUTH.to_vec();
            b.resize(len, 0);
            VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
            assert_eq!(
                AuthAdvertRepr::parse(&b, SRC, DST, &KEY),
                Err(Error::Authentication),
                "len {len}"
            );
        }
    }

    #[test]
    fn tamper_every_bit() {
        for bit in 0..AUTH.len() * 8 {
            let mut b = AUTH;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                AuthAdvertRepr::parse(&b, SRC, DST, &KEY).is_err(),
                "bit {bit}"
            );
            // Even with the checksum made right again, only the HMAC
            // stands between the tampered bytes and acceptance.
            VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
            if b != AUTH {
                assert!(
                    AuthAdvertRepr::parse(&b, SRC, DST, &KEY).is_err(),
                    "bit {bit} re-checksummed"
                );
            }
        }
    }

    #[test]
    fn emit_needs_exact_buffer() {
        let r = repr();
        let mut b = vec![0u8; r.buffer_len() - 1];
        assert_eq!(r.emit(&mut b, SRC, DST, &KEY), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn roundtrip(priority in any::<u8>(), mai in 0u16..4096, sequence in any::<u64>(),
                     addrs in proptest::collection::vec(any::<[u8; 4]>(), 0..8)) {
            let r = AuthAdvertRepr {
                advert: VrrpRepr { vrid: 1, priority, max_advert_int_cs: mai,
                                   addresses: addrs.into_iter().map(Ipv4Addr::from).collect() },
                sequence,
            };
            let b = r.to_bytes(SRC, DST, &KEY).unwrap();
            prop_assert_eq!(AuthAdvertRepr::parse(&b, SRC, DST, &KEY).unwrap(), r);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = AuthAdvertRepr::parse(&data, SRC, DST, &KEY);
        }
    }
}
