//! The frames the dispatcher writes itself: the rebuilt Ethernet/IPv4/UDP
//! frame of layer-2 direct server return, the Ethernet header put in front
//! of an IP-in-IP packet to the VIP, the MAC rewrite of a correspondent's
//! frame to a home address, the classic BPF program that picks those frames
//! off the rack interface, the gratuitous ARP of a VRRP takeover, and the
//! neighbour-table lookup that finds a node's MAC.
//!
//! Pure functions over caller buffers, so the packet path allocates nothing
//! and the tests check every octet (checksums with [`haven_proto::ip`]).

use std::net::{Ipv4Addr, SocketAddrV4};

use haven_proto::ip::{self, Ipv4Packet, Ipv4Repr, UdpPacket};

use crate::config::{Mac, Prefix};

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

/// Checks an IP-in-IP packet to the VIP [RFC 2003 § 3] as a raw
/// `IPPROTO_IPIP` socket delivers it (whole, outer header first, after the
/// kernel's reassembly) and returns its outer source (the mobile node's
/// care-of address, the Maglev key) and its length. `None` for anything
/// that is not IPv4, protocol 4, to `vip`, with a consistent length.
pub fn ipip_to_vip(packet: &[u8], vip: Ipv4Addr) -> Option<(Ipv4Addr, usize)> {
    let p = Ipv4Packet::new_checked(packet).ok()?;
    let ok = p.version() == 4 && p.protocol() == ip::protocol::IPIP && p.dst_addr() == vip;
    ok.then(|| (p.src_addr(), usize::from(p.total_len())))
}

/// Writes an Ethernet header (`dst`, `src`, IPv4) into `frame[..14]`, in
/// front of an IP packet the caller received at [`ETH_HEADER_LEN`]. The IP
/// header stays as it came: the mobile node's care-of address as source,
/// the VIP as destination, its TTL (the dispatcher is a layer-2 steering
/// hop, not a router: DESIGN.md §5, like IPVS-DR).
pub fn write_eth_header(frame: &mut [u8], dst: Mac, src: Mac) -> Option<()> {
    let eth = frame.get_mut(..ETH_HEADER_LEN)?;
    eth.get_mut(0..6)?.copy_from_slice(&dst.0);
    eth.get_mut(6..12)?.copy_from_slice(&src.0);
    eth.get_mut(12..14)?
        .copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    Some(())
}

/// For an Ethernet frame holding IPv4 to an address in one of `prefixes`:
/// that destination (the home address, the Maglev key) and the frame's
/// length without Ethernet padding. `None` for anything else (the BPF
/// filter already selected these frames; this is the check in user space
/// that does not trust it).
pub fn home_destination(frame: &[u8], prefixes: &[Prefix]) -> Option<(Ipv4Addr, usize)> {
    let ty = frame.get(12..14)?;
    if ty != ETHERTYPE_IPV4.to_be_bytes() {
        return None;
    }
    let p = Ipv4Packet::new_checked(frame.get(ETH_HEADER_LEN..)?).ok()?;
    let dst = p.dst_addr();
    (p.version() == 4 && prefixes.iter().any(|x| x.contains(dst)))
        .then(|| (dst, ETH_HEADER_LEN + usize::from(p.total_len())))
}

/// Completes the UDP or TCP checksum of the IPv4 packet in `packet` when
/// the sender's checksum offload left it unfinished (the frame's
/// `TP_STATUS_CSUMNOTREADY`; the field then holds only the pseudo-header
/// sum). A frame we pass on at layer 2 leaves with its bytes as they are,
/// so the checksum must be whole before it goes. Returns false for a packet
/// it cannot complete (a fragment, another protocol, a bad length).
pub fn complete_l4_checksum(packet: &mut [u8]) -> bool {
    let Ok(p) = Ipv4Packet::new_checked(&*packet) else {
        return false;
    };
    if p.more_frags() || p.frag_offset() != 0 {
        return false;
    }
    let (src, dst, proto) = (p.src_addr(), p.dst_addr(), p.protocol());
    let (hl, total) = (p.header_len(), usize::from(p.total_len()));
    let at = match proto {
        ip::protocol::UDP => 6,
        TCP => 16,
        _ => return false,
    };
    let Some(seg) = packet.get_mut(hl..total) else {
        return false;
    };
    let Ok(len) = u16::try_from(seg.len()) else {
        return false;
    };
    let Some(field) = seg.get_mut(at..at + 2) else {
        return false;
    };
    field.copy_from_slice(&[0, 0]);
    let c = !ip::checksum::combine(&[
        ip::checksum::pseudo_header(src, dst, proto, len),
        ip::checksum::sum(seg),
    ]);
    // UDP sends a computed 0 as all ones [RFC 768].
    let c = if c == 0 && proto == ip::protocol::UDP {
        0xffff
    } else {
        c
    };
    if let Some(field) = seg.get_mut(at..at + 2) {
        field.copy_from_slice(&c.to_be_bytes());
    }
    true
}

/// IP protocol number of TCP.
const TCP: u8 = 6;

/// Rewrites the MACs of a received frame in place: to the chosen node, from
/// this dispatcher. Nothing else changes (no TTL decrement: the dispatcher
/// steers at layer 2 on the node's own segment; the node routes, and
/// decrements, when it forwards into its TUN device).
pub fn rewrite_macs(frame: &mut [u8], dst: Mac, src: Mac) -> Option<()> {
    frame.get_mut(0..6)?.copy_from_slice(&dst.0);
    frame.get_mut(6..12)?.copy_from_slice(&src.0);
    Some(())
}

/// One classic BPF instruction (`struct sock_filter`, linux/filter.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    /// Opcode.
    pub code: u16,
    /// Jump offset if true.
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant.
    pub k: u32,
}

/// Classic BPF opcodes used here (linux/bpf_common.h).
pub mod bpf {
    /// `ld [k]` (word, absolute).
    pub const LD_W_ABS: u16 = 0x20;
    /// `ldh [k]` (half word, absolute).
    pub const LD_H_ABS: u16 = 0x28;
    /// `and #k`.
    pub const ALU_AND_K: u16 = 0x54;
    /// `jeq #k, jt, jf`.
    pub const JMP_JEQ_K: u16 = 0x15;
    /// `ret #k`.
    pub const RET_K: u16 = 0x06;
    /// `SKF_AD_OFF + SKF_AD_PKTTYPE`: the ancillary load of the packet type.
    pub const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
    /// `PACKET_HOST`: addressed to this host's MAC.
    pub const PACKET_HOST: u32 = 0;
    /// Accept length: the whole frame.
    pub const ACCEPT: u32 = 0x0004_0000;
}

/// The receive filter of the home-prefix gateway: accept a frame only if
/// it was sent to our MAC (`PACKET_HOST`: not flooded unknown unicast, not
/// broadcast), is IPv4, and its destination lies in one of `prefixes`. The
/// kernel runs it before queueing, so the socket never sees the rest of the
/// rack's traffic. Three instructions per prefix
/// ([`crate::config::MAX_HOME_PREFIXES`] keeps every jump within 8 bits).
pub fn home_prefix_filter(prefixes: &[Prefix]) -> Vec<BpfInsn> {
    let i = |code, jt, jf, k| BpfInsn { code, jt, jf, k };
    let n = prefixes.len();
    // Layout: 0 pkttype, 1 jeq, 2 ldh, 3 jeq, then 3 per prefix, then
    // drop at 4 + 3n, accept at 5 + 3n.
    let drop_at = 4 + 3 * n;
    let rel = |from: usize, to: usize| u8::try_from(to - from - 1).unwrap_or(u8::MAX);
    let mut p = Vec::with_capacity(drop_at + 2);
    p.push(i(bpf::LD_W_ABS, 0, 0, bpf::AD_PKTTYPE));
    p.push(i(bpf::JMP_JEQ_K, 0, rel(1, drop_at), bpf::PACKET_HOST));
    p.push(i(bpf::LD_H_ABS, 0, 0, 12));
    p.push(i(
        bpf::JMP_JEQ_K,
        0,
        rel(3, drop_at),
        u32::from(ETHERTYPE_IPV4),
    ));
    for (j, pre) in prefixes.iter().enumerate() {
        let at = 4 + 3 * j;
        // The IPv4 destination: Ethernet 14 + offset 16.
        p.push(i(bpf::LD_W_ABS, 0, 0, 30));
        p.push(i(bpf::ALU_AND_K, 0, 0, pre.mask()));
        p.push(i(bpf::JMP_JEQ_K, rel(at + 2, drop_at + 1), 0, pre.net()));
    }
    p.push(i(bpf::RET_K, 0, 0, 0));
    p.push(i(bpf::RET_K, 0, 0, bpf::ACCEPT));
    p
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

    /// A classic BPF interpreter for the opcodes [`home_prefix_filter`]
    /// uses (linux/filter.h semantics: loads are big-endian, an
    /// out-of-range load returns 0 = drop).
    fn run_bpf(prog: &[BpfInsn], frame: &[u8], pkttype: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        for _ in 0..prog.len() + 1 {
            let ins = prog[pc];
            pc += 1;
            match ins.code {
                bpf::LD_W_ABS if ins.k == bpf::AD_PKTTYPE => a = pkttype,
                bpf::LD_W_ABS => match frame.get(ins.k as usize..ins.k as usize + 4) {
                    Some(b) => a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                    None => return 0,
                },
                bpf::LD_H_ABS => match frame.get(ins.k as usize..ins.k as usize + 2) {
                    Some(b) => a = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                bpf::ALU_AND_K => a &= ins.k,
                bpf::JMP_JEQ_K => pc += usize::from(if a == ins.k { ins.jt } else { ins.jf }),
                bpf::RET_K => return ins.k,
                c => panic!("opcode {c:#x}"),
            }
        }
        panic!("no return");
    }

    fn ipv4_frame(dst: Ipv4Addr, proto: u8) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HEADER_LEN + 28];
        write_eth_header(&mut f, ME, NODE).unwrap();
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 1, 2),
            dst,
            protocol: proto,
            ttl: 63,
            tos: 0,
            df: true,
            ident: 7,
            payload_len: 8,
        };
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut f[ETH_HEADER_LEN..]))
            .unwrap();
        f
    }

    #[test]
    fn home_prefix_filter_accepts_exactly_the_prefixes() {
        let prefixes: Vec<Prefix> = ["198.51.100.0/24", "203.0.113.128/25", "192.0.2.77/32"]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let prog = home_prefix_filter(&prefixes);
        assert_eq!(prog.len(), 6 + 3 * prefixes.len());
        let verdict = |dst: [u8; 4], pkttype| {
            run_bpf(
                &prog,
                &ipv4_frame(Ipv4Addr::from(dst), ip::protocol::UDP),
                pkttype,
            )
        };
        for dst in [
            [198, 51, 100, 0],
            [198, 51, 100, 255],
            [203, 0, 113, 128],
            [203, 0, 113, 255],
            [192, 0, 2, 77],
        ] {
            assert_eq!(verdict(dst, bpf::PACKET_HOST), bpf::ACCEPT, "{dst:?}");
            // Flooded unknown unicast (PACKET_OTHERHOST) or broadcast: not ours.
            assert_eq!(verdict(dst, 3), 0, "{dst:?} other host");
            assert_eq!(verdict(dst, 1), 0, "{dst:?} broadcast");
        }
        for dst in [
            [198, 51, 101, 1],
            [203, 0, 113, 127],
            [192, 0, 2, 76],
            [192, 0, 2, 1],
            [198, 18, 0, 11],
        ] {
            assert_eq!(verdict(dst, bpf::PACKET_HOST), 0, "{dst:?}");
        }
        // Not IPv4 (ARP) with a matching octet pattern at offset 30: dropped.
        let mut arp = ipv4_frame(Ipv4Addr::new(198, 51, 100, 5), ip::protocol::UDP);
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        assert_eq!(run_bpf(&prog, &arp, bpf::PACKET_HOST), 0);
        // Too short to hold a destination: the load fails, drop.
        assert_eq!(run_bpf(&prog, &arp[..20], bpf::PACKET_HOST), 0);
        // No prefixes: nothing passes.
        let none = home_prefix_filter(&[]);
        assert_eq!(
            run_bpf(&none, &ipv4_frame(Ipv4Addr::new(198, 51, 100, 5), 17), 0),
            0
        );
        // The largest allowed program keeps its jumps in range.
        let many: Vec<Prefix> = (0..crate::config::MAX_HOME_PREFIXES as u8)
            .map(|i| format!("198.51.100.{i}/32").parse().unwrap())
            .collect();
        let big = home_prefix_filter(&many);
        let last = ipv4_frame(Ipv4Addr::new(198, 51, 100, 31), 17);
        assert_eq!(run_bpf(&big, &last, 0), bpf::ACCEPT);
        assert_eq!(
            run_bpf(&big, &ipv4_frame(Ipv4Addr::new(198, 51, 100, 32), 17), 0),
            0
        );
    }

    #[test]
    fn home_frame_rewrite_keeps_the_ip_packet() {
        let prefixes = ["198.51.100.0/24".parse().unwrap()];
        let mut f = ipv4_frame(Ipv4Addr::new(198, 51, 100, 10), ip::protocol::UDP);
        // Ethernet padding after the IP packet is not forwarded.
        f.extend_from_slice(&[0; 10]);
        let before = f.clone();
        let (dst, len) = home_destination(&f, &prefixes).expect("home");
        assert_eq!((dst, len), (Ipv4Addr::new(198, 51, 100, 10), 42));
        rewrite_macs(&mut f, NODE, ME).unwrap();
        assert_eq!(&f[..12], &hex!("02000000000b 020000000002")[..]);
        assert_eq!(f[12..], before[12..], "IP header and TTL unchanged");
        assert_eq!(home_destination(&f[..40], &prefixes), None, "truncated");
        let other = ipv4_frame(Ipv4Addr::new(198, 51, 101, 10), ip::protocol::UDP);
        assert_eq!(home_destination(&other, &prefixes), None);
        let mut v6 = f.clone();
        v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(home_destination(&v6, &prefixes), None);
    }

    #[test]
    fn unfinished_checksums_are_completed() {
        let mut pkt = vec![0u8; ip::ipv4_udp_len(5)];
        let (src, dst) = (
            SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 5000),
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10), 7000),
        );
        ip::write_ipv4_udp(&mut pkt, src, dst, b"haven");
        let good = pkt.clone();
        // What offload leaves: the pseudo-header sum only.
        let partial = ip::checksum::pseudo_header(*src.ip(), *dst.ip(), 17, 13);
        pkt[26..28].copy_from_slice(&partial.to_be_bytes());
        assert!(complete_l4_checksum(&mut pkt));
        assert_eq!(pkt, good);
        let u = UdpPacket::new_checked(&pkt[20..]).unwrap();
        assert!(u.verify_checksum(*src.ip(), *dst.ip()));
        // TCP: the field at offset 16 of the segment.
        let mut tcp = vec![0u8; 20 + 20];
        Ipv4Repr {
            src: *src.ip(),
            dst: *dst.ip(),
            protocol: 6,
            ttl: 64,
            tos: 0,
            df: true,
            ident: 1,
            payload_len: 20,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut tcp[..]))
        .unwrap();
        tcp[20..24].copy_from_slice(&hex!("13887000"));
        tcp[32] = 0x50;
        assert!(complete_l4_checksum(&mut tcp));
        let sum = ip::checksum::combine(&[
            ip::checksum::pseudo_header(*src.ip(), *dst.ip(), 6, 20),
            ip::checksum::sum(&tcp[20..]),
        ]);
        assert_eq!(sum, 0xffff, "TCP checksum verifies");
        // A fragment or ICMP: left alone.
        let mut frag = good.clone();
        frag[6] |= 0x20;
        assert!(!complete_l4_checksum(&mut frag));
        let mut icmp = good.clone();
        icmp[9] = 1;
        assert!(!complete_l4_checksum(&mut icmp));
    }

    #[test]
    fn ipip_to_the_vip() {
        let vip = Ipv4Addr::new(192, 0, 2, 1);
        let mut f = ipv4_frame(vip, ip::protocol::IPIP);
        let (src, len) = ipip_to_vip(&f[ETH_HEADER_LEN..], vip).expect("ipip");
        assert_eq!((src, len), (Ipv4Addr::new(198, 18, 1, 2), 28));
        write_eth_header(&mut f, NODE, ME).unwrap();
        assert_eq!(&f[..14], &hex!("02000000000b 020000000002 0800")[..]);
        assert_eq!(f[ETH_HEADER_LEN + 8], 63, "TTL as it came");
        let udp = ipv4_frame(vip, ip::protocol::UDP);
        assert_eq!(ipip_to_vip(&udp[ETH_HEADER_LEN..], vip), None);
        let elsewhere = ipv4_frame(Ipv4Addr::new(192, 0, 2, 2), ip::protocol::IPIP);
        assert_eq!(ipip_to_vip(&elsewhere[ETH_HEADER_LEN..], vip), None);
        assert_eq!(ipip_to_vip(&f[ETH_HEADER_LEN..30], vip), None);
        let mut v6 = f.clone();
        v6[ETH_HEADER_LEN] = 0x65;
        assert_eq!(ipip_to_vip(&v6[ETH_HEADER_LEN..], vip), None);
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
