#![no_main]
//! Fuzzes the dispatcher's encap-mode header parser: never a panic, and a
//! successful parse re-emits to the same bytes.
use haven_proto::dispatch::{DispatchPacket, DispatchRepr};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(p) = DispatchPacket::new_checked(data) else {
        return;
    };
    if let Ok(r) = DispatchRepr::parse(&p) {
        let b = r.to_bytes(p.payload()).expect("parsed repr re-encodes");
        assert_eq!(&b[..], data);
    }
});
