//! Peer-death withdrawals (node → dispatcher).
//!
//! A home-agent node whose Raft stream to peer P ends and whose immediate
//! reconnect is refused (ECONNREFUSED: P's host answers, P's port is
//! closed, so P's process is gone) tells every dispatcher "take P out now"
//! instead of leaving them to notice P's silence after its
//! Master_Down_Interval (DESIGN.md § 9: the failover gap after a node dies).
//! The message is a VRRPv3-framed message of its own type, so that it
//! travels to the same advert listener, is checked by the same checksum
//! and, with a key, authenticated by the same HMAC trailer and the
//! reporter's own rising sequence as its adverts ([`crate::advert_auth`]);
//! the layout and the reasons are in `docs/wire-sync.md`, "Withdrawals".
//!
//! * **Type 6** ([`TYPE_WITHDRAWAL`]), never 1: RFC 5798 § 5.2.2 says a
//!   packet with an unknown type MUST be discarded, and a dispatcher that
//!   predates withdrawals parses adverts with [`VrrpRepr::parse`], which
//!   returns `UnexpectedType(6)`: it drops the message, it can never read
//!   it as "the reporter is up" or "draining". For a parser that ignored
//!   the type, priority 0 with Max Adver Int 0 is an advert every
//!   dispatcher refuses (interval 0) before any state change.
//! * **One withdrawn address**, in the address list (Count = 1): the
//!   address the dispatchers know the withdrawn node by (their `[[node]]
//!   address`, the node's `[dispatch] source`). The reporter is the IP
//!   source, as for adverts.
//! * **With a key**: the 22-octet sync header (sequence; the other fields
//!   zero) and the 32-octet HMAC-SHA256 over source, destination and the
//!   message with the checksum zeroed — exactly the advert trailer, so one
//!   key, one construction, one replay state per reporter. Without a key
//!   the message ends after the address (octets after it are ignored, as
//!   for adverts) and the sequence reads as 0.
//!
//! [`VrrpRepr::parse`]: crate::vrrp::VrrpRepr::parse

use core::net::Ipv4Addr;

use crate::advert_auth::TRAILER_LEN;
use crate::sync::{self, SyncPacket};
use crate::vrrp::{self, HEADER_LEN, VrrpPacket};
use crate::{Error, Result};

/// The VRRPv3 type nibble of a withdrawal (1 is an advertisement
/// [RFC 5798 § 5.2.2], 2–5 are the pair's sync messages).
pub const TYPE_WITHDRAWAL: u8 = 6;

/// Length of an unauthenticated withdrawal: the header and one address.
pub const PLAIN_LEN: usize = HEADER_LEN + 4;

/// Length of an authenticated withdrawal.
pub const AUTH_LEN: usize = PLAIN_LEN + TRAILER_LEN;

/// Whether `bytes` claim to be a withdrawal (version 3, type 6): how a
/// receiver chooses between this parser and the advert parser before any
/// check. Nothing is verified.
pub fn is_withdrawal(bytes: &[u8]) -> bool {
    bytes.first() == Some(&((vrrp::VERSION << 4) | TYPE_WITHDRAWAL))
}

/// A withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WithdrawRepr {
    /// The reporter's VRID (its adverts'; the dispatcher ignores it).
    pub vrid: u8,
    /// The node to take out: its address as the dispatchers know it.
    pub subject: Ipv4Addr,
    /// The reporter's sequence (its adverts' sequence space; 0 and not
    /// sent without a key).
    pub sequence: u64,
}

impl WithdrawRepr {
    /// Parses a withdrawal from `src` (the reporter) to `dst`.
    ///
    /// Checks in order: the VRRP header fits, version 3 (`Unsupported`),
    /// checksum over the pseudo-header and the whole message (`Checksum`),
    /// type 6 (`UnexpectedType`), Count = 1, priority 0 and Max Adver Int 0
    /// (`Malformed`). With `key`, the message must then be exactly
    /// [`AUTH_LEN`] octets with a valid HMAC (`Authentication`, which is
    /// also what a plain withdrawal gets); without, trailing octets are
    /// ignored and the sequence is 0.
    pub fn parse(bytes: &[u8], src: Ipv4Addr, dst: Ipv4Addr, key: Option<&[u8]>) -> Result<Self> {
        let p = VrrpPacket::new_checked(bytes)?;
        vrrp::check_common(&p, src, dst)?;
        if p.msg_type() != TYPE_WITHDRAWAL {
            return Err(Error::UnexpectedType(p.msg_type()));
        }
        if p.addr_count() != 1 {
            return Err(Error::Malformed("a withdrawal names exactly one node"));
        }
        if p.priority() != 0 || p.max_advert_int() != 0 {
            return Err(Error::Malformed(
                "withdrawal priority and interval must be 0",
            ));
        }
        let subject = p
            .addresses()
            .next()
            .ok_or(Error::Malformed("a withdrawal names exactly one node"))?;
        let sequence = match key {
            None => 0,
            Some(key) => {
                if bytes.len() != AUTH_LEN {
                    return Err(Error::Authentication);
                }
                let sp = SyncPacket::new_checked(bytes).map_err(|_| Error::Authentication)?;
                if !sp.verify_mac(src, dst, key) {
                    return Err(Error::Authentication);
                }
                sp.sequence()
            }
        };
        Ok(Self {
            vrid: p.vrid(),
            subject,
            sequence,
        })
    }

    /// Encoded length: [`AUTH_LEN`] with a key, [`PLAIN_LEN`] without.
    pub const fn buffer_len(keyed: bool) -> usize {
        if keyed { AUTH_LEN } else { PLAIN_LEN }
    }

    /// Writes the withdrawal (checksum, and with `key` the sequence and the
    /// HMAC) into a buffer of exactly `buffer_len(key.is_some())` octets;
    /// `Truncated` otherwise.
    pub fn emit(
        &self,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        key: Option<&[u8]>,
    ) -> Result<()> {
        if buf.len() != Self::buffer_len(key.is_some()) {
            return Err(Error::Truncated);
        }
        buf.fill(0);
        let (head, trailer) = buf.split_at_mut(PLAIN_LEN);
        {
            let mut p = VrrpPacket::new_unchecked(&mut *head);
            p.set_version_type(vrrp::VERSION, TYPE_WITHDRAWAL);
            p.set_vrid(self.vrid);
            p.set_priority(0);
            p.set_addr_count(1);
            p.set_max_advert_int(0);
            p.set_addresses(&[self.subject]);
        }
        match key {
            None => {
                VrrpPacket::new_unchecked(buf).fill_checksum(src, dst);
                Ok(())
            }
            Some(key) => {
                if let Some(seq) = trailer.get_mut(..8) {
                    seq.copy_from_slice(&self.sequence.to_be_bytes());
                }
                sync::seal(buf, src, dst, key)
            }
        }
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr, key: Option<&[u8]>) -> Result<Vec<u8>> {
        let mut v = vec![0u8; Self::buffer_len(key.is_some())];
        self.emit(&mut v, src, dst, key)?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::advert_auth::AuthAdvertRepr;
    use crate::vrrp::VrrpRepr;
    use hex_literal::hex;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const KEY: [u8; 16] = hex!("00112233445566778899aabbccddeeff");

    fn repr() -> WithdrawRepr {
        WithdrawRepr {
            vrid: 1,
            subject: Ipv4Addr::new(198, 18, 0, 12),
            sequence: 0x0006_0f00_1122_3344,
        }
    }

    // Independently computed with python3 (hmac, hashlib):
    // HMAC-SHA256(KEY, SRC ‖ DST ‖ 36 01 00 01 00 00 00 00 ‖ c6 12 00 0c ‖
    // sequence ‖ 14 × 00), then the RFC 1071 checksum over the
    // pseudo-header (protocol 112, length 66) and the whole message.
    const AUTH: [u8; 66] = hex!(
        "36010001" "0000" "3bd7" "c612000c"
        "00060f0011223344" "0000000000000000" "000000000000"
        "85352aeaf5ccf35f637e2658abca38a1" "ddbe15c7ba027fab06a8c5e3225bc40c"
    );
    // The same without a key: header, address, checksum.
    const PLAIN: [u8; 12] = hex!("36010001" "0000" "7730" "c612000c");

    #[test]
    fn emit_and_parse_vectors() {
        let b = repr().to_bytes(SRC, DST, Some(&KEY)).unwrap();
        assert_eq!(b, AUTH);
        assert_eq!(WithdrawRepr::parse(&AUTH, SRC, DST, Some(&KEY)), Ok(repr()));
        let plain = WithdrawRepr {
            sequence: 0,
            ..repr()
        };
        assert_eq!(plain.to_bytes(SRC, DST, None).unwrap(), PLAIN);
        assert_eq!(WithdrawRepr::parse(&PLAIN, SRC, DST, None), Ok(plain));
        // A receiver without a key reads an authenticated one (no sequence).
        assert_eq!(WithdrawRepr::parse(&AUTH, SRC, DST, None), Ok(plain));
        assert!(is_withdrawal(&AUTH) && is_withdrawal(&PLAIN));
    }

    #[test]
    fn an_advert_parser_never_reads_a_withdrawal() {
        // What a dispatcher that predates withdrawals does with them
        // [RFC 5798 § 5.2.2: unknown type, discard].
        for b in [&AUTH[..], &PLAIN[..]] {
            let p = VrrpPacket::new_checked(b).unwrap();
            assert_eq!(VrrpRepr::parse(&p, SRC, DST), Err(Error::UnexpectedType(6)));
            assert_eq!(
                AuthAdvertRepr::parse(b, SRC, DST, &KEY),
                Err(Error::UnexpectedType(6))
            );
        }
        // And the withdrawal parser refuses an advert.
        let advert = AuthAdvertRepr {
            advert: VrrpRepr {
                vrid: 1,
                priority: 100,
                max_advert_int_cs: 10,
                addresses: vec![repr().subject],
            },
            sequence: 7,
        }
        .to_bytes(SRC, DST, &KEY)
        .unwrap();
        assert!(!is_withdrawal(&advert));
        assert_eq!(
            WithdrawRepr::parse(&advert, SRC, DST, Some(&KEY)),
            Err(Error::UnexpectedType(1))
        );
    }

    #[test]
    fn unauthenticated_wrong_key_and_misaddressed() {
        assert_eq!(
            WithdrawRepr::parse(&PLAIN, SRC, DST, Some(&KEY)),
            Err(Error::Authentication),
            "a plain withdrawal where a key is configured"
        );
        let mut other = KEY;
        other[15] ^= 0x80;
        assert_eq!(
            WithdrawRepr::parse(&AUTH, SRC, DST, Some(&other)),
            Err(Error::Authentication)
        );
        // From another reporter or to another dispatcher: the checksum
        // fails; re-sealing the checksum leaves the HMAC wrong.
        let spoofed = Ipv4Addr::new(198, 18, 0, 13);
        assert_eq!(
            WithdrawRepr::parse(&AUTH, spoofed, DST, Some(&KEY)),
            Err(Error::Checksum)
        );
        let mut b = AUTH;
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(spoofed, DST);
        assert_eq!(
            WithdrawRepr::parse(&b, spoofed, DST, Some(&KEY)),
            Err(Error::Authentication)
        );
    }

    #[test]
    fn truncated_and_malformed() {
        for len in 0..AUTH.len() {
            let r = WithdrawRepr::parse(&AUTH[..len], SRC, DST, Some(&KEY));
            assert!(r.is_err(), "len {len}");
        }
        for len in 0..PLAIN.len() {
            assert_eq!(
                WithdrawRepr::parse(&PLAIN[..len], SRC, DST, None),
                Err(Error::Truncated),
                "len {len}"
            );
        }
        // One octet too many, checksum made right: refused with a key.
        let mut b = AUTH.to_vec();
        b.push(0);
        VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
        assert_eq!(
            WithdrawRepr::parse(&b, SRC, DST, Some(&KEY)),
            Err(Error::Authentication)
        );
        // Field rules, each with a valid checksum.
        let with = |at: usize, v: u8| {
            let mut b = PLAIN.to_vec();
            b[at] = v;
            if at == 3 {
                b.resize(8 + 4 * usize::from(v), 0);
            }
            VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
            WithdrawRepr::parse(&b, SRC, DST, None)
        };
        assert_eq!(
            with(0, 0x26),
            Err(Error::Unsupported("VRRP version other than 3"))
        );
        assert_eq!(with(0, 0x35), Err(Error::UnexpectedType(5)));
        assert!(matches!(with(3, 0), Err(Error::Malformed(_))));
        assert!(matches!(with(3, 2), Err(Error::Malformed(_))));
        assert!(matches!(with(2, 100), Err(Error::Malformed(_))));
        assert!(matches!(with(5, 10), Err(Error::Malformed(_))));
    }

    #[test]
    fn tamper_every_bit() {
        for bit in 0..AUTH.len() * 8 {
            let mut b = AUTH;
            b[bit / 8] ^= 1 << (bit % 8);
            VrrpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
            if b != AUTH {
                assert!(
                    WithdrawRepr::parse(&b, SRC, DST, Some(&KEY)).is_err(),
                    "bit {bit}"
                );
            }
        }
    }

    #[test]
    fn emit_needs_exact_buffer() {
        let mut b = [0u8; AUTH_LEN - 1];
        assert_eq!(
            repr().emit(&mut b, SRC, DST, Some(&KEY)),
            Err(Error::Truncated)
        );
        let mut b = [0u8; AUTH_LEN];
        assert_eq!(repr().emit(&mut b, SRC, DST, None), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn roundtrip(vrid in any::<u8>(), subject in any::<[u8; 4]>(), sequence in any::<u64>()) {
            let r = WithdrawRepr { vrid, subject: Ipv4Addr::from(subject), sequence };
            let b = r.to_bytes(SRC, DST, Some(&KEY)).unwrap();
            prop_assert_eq!(WithdrawRepr::parse(&b, SRC, DST, Some(&KEY)).unwrap(), r);
            let b = r.to_bytes(SRC, DST, None).unwrap();
            prop_assert_eq!(
                WithdrawRepr::parse(&b, SRC, DST, None).unwrap(),
                WithdrawRepr { sequence: 0, ..r }
            );
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = WithdrawRepr::parse(&data, SRC, DST, Some(&KEY));
            let _ = WithdrawRepr::parse(&data, SRC, DST, None);
        }
    }
}
