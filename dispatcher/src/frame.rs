//! The frames the dispatcher writes itself: the rebuilt Ethernet/IPv4/UDP
//! frame of layer-2 direct server return, the gratuitous ARP of a VRRP
//! takeover, and the neighbour-table lookup that finds a node's MAC.
//!
//! Pure functions over caller buffers, so the packet path allocates nothing
//! and the tests check every octet (checksums with [`haven_proto::ip`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use haven_proto::ip::{self, Ipv4Packet, Ipv4Repr, UdpPacket};

use crate::config::Mac;

/// Ethernet header length.
pub const ETH_HEADER_LEN: usize = 14;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Where the UDP payload starts in an l2 frame: the receive path reads each
/// datagram straight to this offset and writes the headers in front of it.
pub const L2_PAYLOAD_OFFSET: usize = ETH_HEADER_LEN + ip::IPV4_HEADER_LEN + ip::UDP_HEADER_LEN;
/// Length of a gratuitous ARP frame (without padding; the NIC pads to 60).
pub const GARP_LEN: usize = ETH_HEADER_LEN + 28;

/// Writes the Ethernet, IPv4 and UDP headers in front of a payload already
/// at `frame[L2_PAYLOAD_OFFSET..L2_PAYLOAD_OFFSET + payload_len]` and returns
/// the frame length, or `None` if the frame does not fit or exceeds IPv4's
/// 65535 octets.
///
/// The datagram is the mobile node's own, rebuilt: source = the mobile node
/// (after its NAT), destination = VIP:434, TTL 64, DF clear (the original
/// may have been fragmented and reassembled by our kernel; the node's link
/// has the same MTU), IPv4 and UDP checksums filled in, so the node's kernel
/// delivers it to its ordinary VIP:434 socket (DESIGN.md §5).
pub fn write_l2_udp(
    frame: &mut [u8],
    dst_mac: Mac,
    src_mac: Mac,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
) -> Option<usize> {
    let udp_len = ip::UDP_HEADER_LEN + payload_len;
    let total = L2_PAYLOAD_OFFSET + payload_len;
    if ip::IPV4_HEADER_LEN + udp_len > usize::from(u16::MAX) {
        return None;
    }
    let frame = frame.get_mut(..total)?;
    let (eth, rest) = frame.split_at_mut_checked(ETH_HEADER_LEN)?;
    eth.get_mut(0..6)?.copy_from_slice(&dst_mac.0);
    eth.get_mut(6..12)?.copy_from_slice(&src_mac.0);
    eth.get_mut(12..14)?
        .copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let repr = Ipv4Repr {
        src: *src.ip(),
        dst: *dst.ip(),
        protocol: ip::protocol::UDP,
        ttl: 64,
        tos: 0,
        df: false,
        ident: 0,
        payload_len: udp_len,
    };
    let mut p = Ipv4Packet::new_unchecked(&mut *rest);
    repr.emit(&mut p).ok()?;
    let mut u = UdpPacket::new_unchecked(p.payload_mut());
    u.set_src_port(src.port());
    u.set_dst_port(dst.port());
    // Fits: udp_len ≤ 65535 − 20 was checked above.
    u.set_len(u16::try_from(udp_len).ok()?);
    u.fill_checksum(repr.src, repr.dst);
    Some(total)
}

/// Writes a gratuitous ARP for `ip` from `mac` into `frame` (at least
/// [`GARP_LEN`] octets) and returns its length.
///
/// An ARP *request* whose sender and target protocol addresses are both the
/// VIP, broadcast [RFC 5798 § 6.4.1 (o.k. (b)), RFC 5227 § 3]: requests are
/// what every Linux neighbour table updates an existing entry from, so the
/// router switches to the new Master at once.
pub fn write_gratuitous_arp(frame: &mut [u8], mac: Mac, ip: Ipv4Addr) -> Option<usize> {
    let f = frame.get_mut(..GARP_LEN)?;
    let mut w = Writer { buf: f, at: 0 };
    w.put(&Mac::BROADCAST.0);
    w.put(&mac.0);
    w.put(&ETHERTYPE_ARP.to_be_bytes());
    w.put(&1u16.to_be_bytes()); // HTYPE Ethernet
    w.put(&ETHERTYPE_IPV4.to_be_bytes()); // PTYPE
    w.put(&[6, 4]); // HLEN, PLEN
    w.put(&1u16.to_be_bytes()); // OPER request
    w.put(&mac.0); // SHA
    w.put(&ip.octets()); // SPA
    w.put(&[0; 6]); // THA
    w.put(&ip.octets()); // TPA
    (w.at == GARP_LEN).then_some(GARP_LEN)
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, v: &[u8]) {
        if let Some(d) = self.buf.get_mut(self.at..self.at + v.len()) {
            d.copy_from_slice(v);
            self.at += v.len();
        }
    }
}

/// The MAC of `ip` on `dev` from the text of `/proc/net/arp`, if complete
/// (flags 0x2 = ATF_COM) and not all zeros.
pub fn arp_lookup(proc_net_arp: &str, ip: Ipv4Addr, dev: Option<&str>) -> Option<Mac> {
    proc_net_arp.lines().skip(1).find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let [addr, _hw, flags, mac, _mask, device] = cols.as_slice() else {
            return None;
        };
        if addr.parse::<Ipv4Addr>().ok()? != ip || dev.is_some_and(|d| d != *device) {
            return None;
        }
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        let mac: Mac = mac.parse().ok()?;
        (flags & 0x2 != 0 && mac != Mac([0; 6])).then_some(mac)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_proto::ip::UdpRepr;
    use hex_literal::hex;

    const NODE: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);
    const ME: Mac = Mac([0x02, 0, 0, 0, 0, 0x02]);

    fn mn() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 40000)
    }
    fn vip() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 434)
    }

    // Computed with python3 (struct + an RFC 1071 checksum over the header,
    // and over pseudo-header ‖ UDP header ‖ payload for UDP): IPv4 checksum
    // 0x7cc8, UDP checksum 0x1716.
    const FRAME: [u8; 47] = hex!(
        "02000000000b 020000000002 0800"
        "450000210000000040117cc8cb007102c0000201"
        "9c4001b2000d1716686176656e"
    );

    #[test]
    fn l2_frame_vector() {
        let mut buf = [0u8; 128];
        buf[L2_PAYLOAD_OFFSET..L2_PAYLOAD_OFFSET + 5].copy_from_slice(b"haven");
        let n = write_l2_udp(&mut buf, NODE, ME, mn(), vip(), 5).expect("fits");
        assert_eq!(n, 47);
        assert_eq!(&buf[..n], &FRAME[..]);
        // Independently: the checksums verify with haven_proto::ip.
        let p = Ipv4Packet::new_checked(&buf[ETH_HEADER_LEN..n]).expect("ipv4");
        assert!(p.verify_checksum());
        let r = Ipv4Repr::parse(&p).expect("repr");
        assert_eq!((r.src, r.dst, r.ttl), (*mn().ip(), *vip().ip(), 64));
        let u = UdpPacket::new_checked(p.payload()).expect("udp");
        let ur = UdpRepr::parse(&u, r.src, r.dst).expect("udp checksum");
        assert_eq!((ur.src_port, ur.dst_port), (40000, 434));
        assert_eq!(u.payload(), b"haven");
    }

    #[test]
    fn l2_frame_bounds() {
        let mut buf = [0u8; 46];
        assert_eq!(write_l2_udp(&mut buf, NODE, ME, mn(), vip(), 5), None);
        let mut big = vec![0u8; 70_000];
        assert_eq!(write_l2_udp(&mut big, NODE, ME, mn(), vip(), 65_508), None);
        assert!(write_l2_udp(&mut big, NODE, ME, mn(), vip(), 65_507).is_some());
    }

    #[test]
    fn gratuitous_arp_vector() {
        let mut buf = [0u8; 64];
        let n = write_gratuitous_arp(&mut buf, ME, Ipv4Addr::new(192, 0, 2, 1)).unwrap();
        assert_eq!(
            &buf[..n],
            &hex!(
                "ffffffffffff 020000000002 0806"
                "0001 0800 06 04 0001 020000000002 c0000201 000000000000 c0000201"
            )[..]
        );
        assert_eq!(
            write_gratuitous_arp(&mut buf[..41], ME, Ipv4Addr::LOCALHOST),
            None
        );
    }

    #[test]
    fn proc_net_arp() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 198.18.0.11      0x1         0x2         02:00:00:00:00:0b     *        s0\n\
                 198.18.0.12      0x1         0x0         00:00:00:00:00:00     *        s0\n\
                 198.18.0.13      0x1         0x2         02:00:00:00:00:0d     *        s1\n";
        assert_eq!(
            arp_lookup(t, Ipv4Addr::new(198, 18, 0, 11), Some("s0")),
            Some(NODE)
        );
        assert_eq!(
            arp_lookup(t, Ipv4Addr::new(198, 18, 0, 12), Some("s0")),
            None
        );
        assert_eq!(
            arp_lookup(t, Ipv4Addr::new(198, 18, 0, 13), Some("s0")),
            None
        );
        assert!(arp_lookup(t, Ipv4Addr::new(198, 18, 0, 13), None).is_some());
    }
}
