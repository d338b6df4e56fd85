#![no_main]
//! Fuzzes the binding-sync parser. The HMAC trailer and checksum are
//! re-computed on a copy (`sync::seal`) so the block walker is reached;
//! successful parses must survive emit → parse unchanged.
use core::net::Ipv4Addr;

use haven_proto::sync::{self, SyncPacket, SyncRepr};

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const KEY: &[u8] = b"fuzz-key";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut v = data.to_vec();
    let _ = sync::seal(&mut v, SRC, DST, KEY);
    for input in [data, &v[..]] {
        let Ok(p) = SyncPacket::new_checked(input) else {
            continue;
        };
        if let Ok(r) = SyncRepr::parse(&p, SRC, DST, KEY) {
            let b = r.to_bytes(SRC, DST, KEY).expect("parsed repr re-encodes");
            let p2 = SyncPacket::new_checked(&b[..]).expect("emitted length");
            assert_eq!(SyncRepr::parse(&p2, SRC, DST, KEY), Ok(r));
        }
    }
});
