#![no_main]
//! Fuzzes the peer-death withdrawal parser ([`haven_proto::withdraw`]),
//! keyed and plain. The checksum is re-computed on a copy so the field
//! checks are reached; whatever parses must re-encode to a message that
//! parses to the same value, and a verified keyed withdrawal must
//! re-encode to exactly the input (the HMAC binds every octet).
use core::net::Ipv4Addr;

use haven_proto::vrrp::VrrpPacket;
use haven_proto::withdraw::{WithdrawRepr, is_withdrawal};

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const KEY: &[u8] = b"fuzz-advert-key!";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() >= 8 && v.len() <= usize::from(u16::MAX) {
        VrrpPacket::new_unchecked(&mut v[..]).fill_checksum(SRC, DST);
    }
    for input in [data, &v[..]] {
        if let Ok(w) = WithdrawRepr::parse(input, SRC, DST, None) {
            assert!(is_withdrawal(input));
            let b = w.to_bytes(SRC, DST, None).expect("parsed withdrawal re-encodes");
            assert_eq!(WithdrawRepr::parse(&b, SRC, DST, None), Ok(w));
        }
        if let Ok(w) = WithdrawRepr::parse(input, SRC, DST, Some(KEY)) {
            let b = w
                .to_bytes(SRC, DST, Some(KEY))
                .expect("verified withdrawal re-encodes");
            assert_eq!(&b[..], input, "the HMAC covers every octet");
        }
    }
});
