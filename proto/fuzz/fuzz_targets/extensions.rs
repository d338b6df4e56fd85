#![no_main]
//! The extension framework alone: iterate an arbitrary extension area, and
//! re-emit every extension that parses; it must parse back identically.
//! Vendor payloads (static routes, filter rules) are decoded too.

use haven_proto::mip::ext::{Extension, Extensions};
use haven_proto::mip::vendor::VendorPayload;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for item in Extensions::new(data).located() {
        let Ok(l) = item else { break };
        let mut buf = vec![0u8; l.extension.buffer_len()];
        assert_eq!(l.extension.buffer_len(), l.len);
        l.extension
            .emit(&mut buf)
            .expect("a parsed extension re-emits");
        let (again, n) = Extension::parse(&buf).expect("re-emitted extension parses");
        assert_eq!(n, buf.len());
        assert_eq!(again, l.extension);
        if let Extension::Nvse(v) | Extension::Cvse(v) = l.extension {
            if let Ok(Some(p)) = VendorPayload::parse(&v) {
                let bytes = p.to_data();
                assert_eq!(bytes, v.data);
            }
        }
    }
});
