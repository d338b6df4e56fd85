#![no_main]
//! Fuzzes the RFC 3519 classifier, tunnel data parser and keepalive parser.
//! Keepalive checksums are re-computed on a copy first so the ICMP field
//! parser is reached; successful parses must survive emit → parse unchanged.
use haven_proto::udptun::{self, TunnelDataPacket, TunnelDataRepr};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = udptun::classify(data);
    if let Ok(p) = TunnelDataPacket::new_checked(data) {
        if let Ok(r) = TunnelDataRepr::parse(&p) {
            let mut buf = vec![0u8; r.buffer_len()];
            assert_eq!(r.emit(&mut buf), Ok(buf.len()));
            let p2 = TunnelDataPacket::new_checked(&buf[..]).expect("emitted header");
            assert_eq!(TunnelDataRepr::parse(&p2), Ok(r));
        }
    }
    let mut v = data.to_vec();
    reseal_keepalive(&mut v);
    for input in [data, &v[..]] {
        if let Ok(k) = udptun::parse_keepalive(input) {
            let mut buf = vec![0u8; k.buffer_len()];
            assert_eq!(k.emit(&mut buf), Ok(buf.len()));
            assert_eq!(udptun::parse_keepalive(&buf), Ok(k));
        }
    }
});

/// Fixes the inner IPv4 header checksum and the ICMP checksum in place.
fn reseal_keepalive(v: &mut [u8]) {
    let Some(inner) = v.get_mut(4..) else { return };
    let hl = usize::from(inner.first().copied().unwrap_or(0) & 0x0f) * 4;
    let total = inner
        .get(2..4)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    if hl < 20 || total < hl + 4 || inner.len() < total {
        return;
    }
    inner[10] = 0;
    inner[11] = 0;
    let c = haven_proto::ip::checksum::checksum(&inner[..hl]);
    inner[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut inner[hl..total];
    icmp[2] = 0;
    icmp[3] = 0;
    let c = haven_proto::ip::checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}
