#![no_main]
//! Registration Request/Reply parsing with extensions: arbitrary bytes never
//! panic, and whatever parses re-emits to something that parses the same
//! (parse(emit(parse(x))) == parse(x)).

use haven_proto::mip::ext::{MessageBuilder, parse_reply, parse_request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = parse_request(data) {
        let mut b = MessageBuilder::request(&p.fixed);
        for l in &p.extensions {
            b.push(&l.extension).expect("a parsed extension re-emits");
        }
        let again = b.finish();
        let q = parse_request(&again).expect("re-emitted request parses");
        assert_eq!(p, q);
    }
    if let Ok(p) = parse_reply(data) {
        let mut b = MessageBuilder::reply(&p.fixed);
        for l in &p.extensions {
            b.push(&l.extension).expect("a parsed extension re-emits");
        }
        let again = b.finish();
        let q = parse_reply(&again).expect("re-emitted reply parses");
        assert_eq!(p, q);
    }
    if let Ok(Some(at)) = haven_proto::mip::auth::find_mn_ha(data) {
        let _ = at.verify(haven_proto::mip::auth::Algorithm::HmacMd5, b"fuzz", data);
    }
});
