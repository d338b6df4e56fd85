#![no_main]
//! Fuzzes the VRRPv3 advertisement parser. The checksum is re-computed on a
//! copy so the field parsers are reached; successful parses must survive
//! emit → parse unchanged. The authenticated node advert
//! ([`haven_proto::advert_auth`]) is parsed from the same bytes: it must
//! never panic, and whatever verifies must re-encode to the same bytes.
use core::net::Ipv4Addr;

use haven_proto::advert_auth::AuthAdvertRepr;
use haven_proto::vrrp::{VrrpPacket, VrrpRepr};

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const DST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
const KEY: &[u8] = b"fuzz-advert-key!";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    if v.len() >= 8 && v.len() <= usize::from(u16::MAX) {
        VrrpPacket::new_unchecked(&mut v[..]).fill_checksum(SRC, DST);
    }
    for input in [data, &v[..]] {
        let Ok(p) = VrrpPacket::new_checked(input) else {
            continue;
        };
        if let Ok(r) = VrrpRepr::parse(&p, SRC, DST) {
            let b = r.to_bytes(SRC, DST).expect("parsed repr re-encodes");
            let p2 = VrrpPacket::new_checked(&b[..]).expect("emitted length");
            assert_eq!(VrrpRepr::parse(&p2, SRC, DST), Ok(r));
        }
    }
    if let Ok(a) = AuthAdvertRepr::parse(data, SRC, DST, KEY) {
        let b = a.to_bytes(SRC, DST, KEY).expect("verified advert re-encodes");
        assert_eq!(AuthAdvertRepr::parse(&b, SRC, DST, KEY), Ok(a));
    }
});
