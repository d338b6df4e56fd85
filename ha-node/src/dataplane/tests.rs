//! Byte-vector tests of the data plane core. The expected packets were
//! computed independently with python3 (struct + an RFC 1071 sum), not with
//! haven_proto; checksums are verified again with `haven_proto::ip`.

use super::*;
use crate::binding::{BindingEntry, CareOfList};
use hex_literal::hex;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const OTHER_HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const COA2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 6);
const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const NAT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 2), 40001);
const R: RealmId = RealmId(0);
const NOW: Duration = Duration::from_secs(1_800_000_000);

/// CN:5000 → HoA:6000 UDP "hello", TOS 0x10, DF, TTL 63.
const INNER: [u8; 33] = hex!("45100021123440003f113836c6120102c633640a13881770000d9fb768656c6c6f");
/// The same with TTL 62 and its checksum.
const INNER_DEC: [u8; 33] =
    hex!("45100021123440003e113936c6120102c633640a13881770000d9fb768656c6c6f");
/// VIP → CoA, protocol 4, TTL 64, TOS and DF copied, ident 1 [RFC 2003 § 3.1].
const OUTER_IPIP: [u8; 53] = hex!(
    "451000350001400040043cadc0000201cb00710545100021123440003e113936c6120102c633640a13881770000d9fb768656c6c6f"
);
/// Tunnel data type 4, next header 4, the decremented inner [RFC 3519 § 3.3].
const UDP_MSG: [u8; 37] =
    hex!("0404000045100021123440003e113936c6120102c633640a13881770000d9fb768656c6c6f");
/// ICMP 3/1 from the VIP to the CN quoting INNER's header + 8 octets.
const HOST_UNREACH: [u8; 56] = hex!(
    "45000038000100004001f1aec0000201c6120102030132420000000045100021123440003f113836c6120102c633640a13881770000d9fb7"
);
const INNER_TTL1: [u8; 33] =
    hex!("451000211234400001117636c6120102c633640a13881770000d9fb768656c6c6f");
const TIME_EXCEEDED: [u8; 56] = hex!(
    "45000038000100004001f1aec0000201c61201020b002a4300000000451000211234400001117636c6120102c633640a13881770000d9fb7"
);
/// HoA:4343 → CN:9000 UDP "data".
const REV_INNER: [u8; 32] =
    hex!("450000200007000040118974c633640ac612010210f72328000c01a264617461");
/// CoA → VIP, protocol 4, around REV_INNER.
const REV_OUTER: [u8; 52] = hex!(
    "450000340009000040047cb6cb007105c0000201450000200007000040118974c633640ac612010210f72328000c01a264617461"
);
/// First 28 octets of a 1481-octet DF packet CN → HoA.
const BIG_HEAD: [u8; 28] = hex!("450005c9005540003f11447dc6120102c633640a1388177005b55460");
/// ICMP 3/4, next-hop MTU 1480 [RFC 1191 § 4].
const FRAG_NEEDED: [u8; 56] = hex!(
    "45000038000100004001f1aec0000201c612010203047226000005c8450005c9005540003f11447dc6120102c633640a1388177005b55460"
);
/// Keepalive: echo request HoA → VIP, id 0x77, seq 3, in tunnel data.
const KA_REQ: [u8; 32] = hex!("040400004500001c0000000040018ea2c633640ac00002010800f78500770003");
const KA_REP: [u8; 32] = hex!("040400004500001c0000000040018ea2c0000201c633640a0000ff8500770003");

fn care_of(coa: Ipv4Addr, encap: Encap, lifetime: u16) -> CareOf {
    CareOf {
        coa,
        registered_at: NOW - Duration::from_secs(10),
        lifetime,
        encap,
        reverse_tunnel: true,
    }
}

fn plane(bindings: &[(Ipv4Addr, Vec<CareOf>)], cfg: DataplaneConfig) -> DataPlane {
    let table = Arc::new(BindingTable::new());
    for (hoa, cs) in bindings {
        let care_of = CareOfList::from_vec(cs.clone()).expect("non-empty");
        table.put(
            R,
            *hoa,
            BindingEntry {
                nai: None,
                care_of,
                last_identification: 1,
            },
        );
    }
    let realms = vec![RealmPlane {
        id: R,
        vip: VIP,
        port: 434,
        prefix: Prefix {
            addr: Ipv4Addr::new(198, 51, 100, 0),
            len: 24,
        },
    }];
    DataPlane::new(realms, table, cfg)
}

fn one(bindings: &[(Ipv4Addr, Vec<CareOf>)]) -> DataPlane {
    plane(bindings, DataplaneConfig::default())
}

fn outputs(o: &Outputs) -> Vec<(Dest, Vec<u8>)> {
    o.iter().map(|(d, b)| (d, b.to_vec())).collect()
}

fn checksums_ok(packet: &[u8]) {
    let p = Ipv4Packet::new_checked(packet).expect("ipv4");
    assert!(p.verify_checksum(), "outer header checksum");
    if p.protocol() == protocol::IPIP {
        let inner = Ipv4Packet::new_checked(p.payload()).expect("inner");
        assert!(inner.verify_checksum(), "inner header checksum");
    }
    if p.protocol() == protocol::ICMP {
        assert_eq!(ip::checksum::sum(p.payload()), 0xffff, "ICMP checksum");
    }
}

#[test]
fn forward_ip_in_ip() {
    // Reference: RFC 2003 § 3.1 (outer TTL, TOS and DF copied, inner TTL
    // decremented).
    let dp = one(&[(HOA, vec![care_of(COA, Encap::IpInIp, 600)])]);
    let mut out = Outputs::new();
    assert_eq!(dp.forward(NOW, &INNER, &mut out), Ok(1));
    let o = outputs(&out);
    assert_eq!(o, vec![(Dest::Raw(COA), OUTER_IPIP.to_vec())]);
    checksums_ok(&o[0].1);
    assert_eq!(dp.stats().forward_ipip, 1);
    // Link-layer padding after Total Length is not forwarded.
    out.clear();
    let mut padded = INNER.to_vec();
    padded.extend_from_slice(&[0; 7]);
    assert_eq!(dp.forward(NOW, &padded, &mut out), Ok(1));
    let (_, b) = out.iter().next().expect("one");
    assert_eq!(b.len(), OUTER_IPIP.len());
}

#[test]
fn forward_udp_to_the_nat_mapping() {
    // Reference: RFC 3519 § 3.3: from VIP:434 to the mapping, type 4,
    // next header 4.
    let dp = one(&[(HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)])]);
    let mut out = Outputs::new();
    assert_eq!(dp.forward(NOW, &INNER, &mut out), Ok(1));
    let o = outputs(&out);
    assert_eq!(
        o,
        vec![(
            Dest::Udp {
                realm: R,
                src: SocketAddrV4::new(VIP, 434),
                dst: NAT
            },
            UDP_MSG.to_vec()
        )]
    );
    assert_eq!(&o[0].1[4..], &INNER_DEC);
    assert!(
        Ipv4Packet::new_checked(&o[0].1[4..])
            .unwrap()
            .verify_checksum()
    );
    assert_eq!(dp.stats().forward_udp, 1);
}

#[test]
fn simultaneous_bindings_get_a_copy_each_and_expired_ones_none() {
    // Reference: RFC 5944 § 3.6.1.2 (S bit: a copy to every care-of address).
    let dp = one(&[(
        HOA,
        vec![
            care_of(COA, Encap::IpInIp, 600),
            care_of(COA2, Encap::Udp { nat: NAT }, 600),
            // Registered 10 s ago for 5 s: expired.
            care_of(Ipv4Addr::new(203, 0, 113, 7), Encap::IpInIp, 5),
        ],
    )]);
    let mut out = Outputs::new();
    assert_eq!(dp.forward(NOW, &INNER, &mut out), Ok(2));
    let dests: Vec<Dest> = out.iter().map(|(d, _)| d).collect();
    assert_eq!(dests[0], Dest::Raw(COA));
    assert!(matches!(dests[1], Dest::Udp { dst, .. } if dst == NAT));
    let s = dp.stats();
    assert_eq!((s.forward_ipip, s.forward_udp), (1, 1));
}

#[test]
fn no_binding_host_unreachable_rate_limited() {
    let dp = plane(
        &[(HOA, vec![care_of(COA, Encap::IpInIp, 5)])],
        DataplaneConfig {
            icmp_errors_per_sec: 1,
            ..DataplaneConfig::default()
        },
    );
    let mut out = Outputs::new();
    // Only an expired care-of address: no binding.
    assert_eq!(
        dp.forward(NOW, &INNER, &mut out),
        Err(DropReason::NoBinding)
    );
    assert_eq!(outputs(&out), vec![(Dest::Raw(CN), HOST_UNREACH.to_vec())]);
    checksums_ok(&HOST_UNREACH);
    // A second miss in the same second: counted, not answered.
    out.clear();
    assert_eq!(
        dp.forward(NOW, &INNER, &mut out),
        Err(DropReason::NoBinding)
    );
    assert!(out.is_empty());
    // A second later the bucket has a token again.
    assert_eq!(
        dp.forward(NOW + Duration::from_secs(1), &INNER, &mut out),
        Err(DropReason::NoBinding)
    );
    assert_eq!(out.len(), 1);
    let s = dp.stats();
    assert_eq!(
        (s.drop_no_binding, s.icmp_sent, s.icmp_rate_limited),
        (3, 2, 1)
    );

    // Unreachables off: drop silently.
    let quiet = plane(
        &[],
        DataplaneConfig {
            icmp_unreachable: false,
            ..DataplaneConfig::default()
        },
    );
    out.clear();
    assert_eq!(
        quiet.forward(NOW, &INNER, &mut out),
        Err(DropReason::NoBinding)
    );
    assert!(out.is_empty());
    // Outside every home prefix: no binding, whatever the table says.
    let mut foreign = INNER;
    foreign[18] = 101; // 198.51.101.10
    assert_eq!(
        quiet.forward(NOW, &foreign, &mut out),
        Err(DropReason::NoBinding)
    );
}

#[test]
fn ttl_exhausted_time_exceeded() {
    // Reference: RFC 2003 § 3.1: TTL 1 would leave 0 after decrement.
    let dp = one(&[(HOA, vec![care_of(COA, Encap::IpInIp, 600)])]);
    let mut out = Outputs::new();
    assert_eq!(dp.forward(NOW, &INNER_TTL1, &mut out), Err(DropReason::Ttl));
    assert_eq!(outputs(&out), vec![(Dest::Raw(CN), TIME_EXCEEDED.to_vec())]);
    checksums_ok(&TIME_EXCEEDED);
    assert_eq!(dp.stats().drop_ttl, 1);
}

fn big_packet() -> Vec<u8> {
    // 1481 octets: header and UDP header from BIG_HEAD, 0xab payload.
    let mut v = BIG_HEAD.to_vec();
    v.resize(1481, 0xab);
    v
}

#[test]
fn df_and_too_big_fragmentation_needed() {
    // Reference: RFC 2003 § 5.1, RFC 1191 § 4: 1481 + 20 > 1500.
    let dp = one(&[(HOA, vec![care_of(COA, Encap::IpInIp, 600)])]);
    let mut out = Outputs::new();
    assert_eq!(
        dp.forward(NOW, &big_packet(), &mut out),
        Err(DropReason::Mtu)
    );
    assert_eq!(outputs(&out), vec![(Dest::Raw(CN), FRAG_NEEDED.to_vec())]);
    checksums_ok(&FRAG_NEEDED);
    assert_eq!(dp.stats().drop_mtu, 1);
    // 1480 fits: 1500 exactly.
    out.clear();
    let mut fits = big_packet();
    fits.truncate(1480);
    let mut p = Ipv4Packet::new_unchecked(&mut fits[..]);
    p.set_total_len(1480);
    p.fill_checksum();
    assert_eq!(dp.forward(NOW, &fits, &mut out), Ok(1));
}

/// CN:5000 → HoA:6000 UDP, 600 octets, TOS 0x10, DF clear, TTL 63, ident
/// 0x1234: the first 28 octets (IPv4 and UDP headers); 0xab payload.
const MID_HEAD: [u8; 28] = hex!("45100258123400003f1175ffc6120102c633640a1388177002441552");
/// Its outer fragments at tunnel MTU 576, IP in IP: 552 payload octets with
/// MF at offset 0, then 48 at offset 69 (552 / 8) [RFC 791 § 3.2].
const IPIP_FRAG1: [u8; 20] = hex!("4510023c0001200040045aa6c0000201cb007105");
const IPIP_FRAG2: [u8; 20] = hex!("451000440001004540047c59c0000201cb007105");
/// The same by UDP tunnelling: the datagram VIP:434 → NAT (612 octets, its
/// UDP header below), fragments of 552 and 60.
const UDP_FRAG1: [u8; 20] = hex!("4510023c0001200040115a9cc0000201cb007102");
const UDP_FRAG2: [u8; 20] = hex!("451000500001004540117c43c0000201cb007102");
const UDP_FRAG_UDP_HEAD: [u8; 12] = hex!("01b29c4102644ed204040000");

fn mid_packet(df: bool) -> Vec<u8> {
    let mut v = MID_HEAD.to_vec();
    v.resize(600, 0xab);
    if df {
        let mut p = Ipv4Packet::new_unchecked(&mut v[..]);
        p.set_dont_frag_unfragmented(true);
        p.fill_checksum();
    }
    v
}

fn small_mtu() -> DataplaneConfig {
    DataplaneConfig {
        tunnel_mtu: 576,
        ..DataplaneConfig::default()
    }
}

/// The fragments' payloads in order, checking each header is a fragment of
/// one datagram: same ident, DF clear, offsets contiguous, MF on all but
/// the last, header checksums right.
fn reassemble(frags: &[(Dest, Vec<u8>)], mtu: usize) -> Vec<u8> {
    let mut whole = Vec::new();
    let ident = Ipv4Packet::new_checked(&frags[0].1[..]).unwrap().ident();
    for (i, (_, f)) in frags.iter().enumerate() {
        assert!(f.len() <= mtu, "fragment {i} is {} octets", f.len());
        let p = Ipv4Packet::new_checked(&f[..]).unwrap();
        assert!(p.verify_checksum(), "fragment {i} header checksum");
        assert_eq!(p.ident(), ident);
        assert!(!p.dont_frag());
        assert_eq!(p.more_frags(), i + 1 < frags.len(), "MF of fragment {i}");
        assert_eq!(usize::from(p.frag_offset()) * 8, whole.len(), "offset {i}");
        whole.extend_from_slice(p.payload());
    }
    whole
}

#[test]
fn no_df_too_big_ip_in_ip_fragments_the_outer_datagram() {
    // Reference: RFC 2003 § 3.1 (DF copied; clear → the tunnel may
    // fragment), § 5.1; RFC 791 § 3.2 (fragment offsets in 8 octets).
    let dp = plane(
        &[(HOA, vec![care_of(COA, Encap::IpInIp, 600)])],
        small_mtu(),
    );
    let mut out = Outputs::new();
    let inner = mid_packet(false);
    assert_eq!(dp.forward(NOW, &inner, &mut out), Ok(1));
    let o = outputs(&out);
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|(d, _)| *d == Dest::Raw(COA)));
    // 556 octets of room, 552 used: a multiple of 8.
    assert_eq!(o[0].1.len(), 572);
    assert_eq!(&o[0].1[..20], &IPIP_FRAG1);
    assert_eq!(&o[1].1[..20], &IPIP_FRAG2);
    // Reassembled: the inner packet, TTL decremented, checksum right.
    let whole = reassemble(&o, 576);
    let mut expect = inner.clone();
    copy_decremented(&mut expect, &inner).unwrap();
    assert_eq!(whole, expect);
    assert!(
        Ipv4Packet::new_checked(&whole[..])
            .unwrap()
            .verify_checksum()
    );
    let s = dp.stats();
    assert_eq!(
        (
            s.forward_ipip,
            s.forward_fragmented,
            s.drop_mtu,
            s.icmp_sent
        ),
        (1, 1, 0, 0)
    );
    // The arena is reused: a second packet queues the same, nothing left
    // over from the first.
    out.clear();
    assert_eq!(dp.forward(NOW, &inner, &mut out), Ok(1));
    assert_eq!(out.len(), 2);
    // With DF the same packet is refused with the MTU the tunnel leaves.
    out.clear();
    assert_eq!(
        dp.forward(NOW, &mid_packet(true), &mut out),
        Err(DropReason::Mtu)
    );
    let o = outputs(&out);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].0, Dest::Raw(CN));
    assert_eq!(&o[0].1[20..22], &[3, 4]);
    assert_eq!(&o[0].1[26..28], &556u16.to_be_bytes());
}

#[test]
fn no_df_too_big_udp_fragments_the_udp_datagram() {
    // Reference: RFC 3519 § 3.3 (type 4 in UDP from VIP:434), RFC 768
    // (checksum over the whole datagram), RFC 791 § 3.2.
    let dp = plane(
        &[(HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)])],
        small_mtu(),
    );
    let mut out = Outputs::new();
    let inner = mid_packet(false);
    assert_eq!(dp.forward(NOW, &inner, &mut out), Ok(1));
    let o = outputs(&out);
    assert_eq!(o.len(), 2);
    assert!(o.iter().all(|(d, _)| *d == Dest::Raw(*NAT.ip())));
    assert_eq!(&o[0].1[..20], &UDP_FRAG1);
    assert_eq!(&o[1].1[..20], &UDP_FRAG2);
    let whole = reassemble(&o, 576);
    assert_eq!(whole.len(), 612);
    assert_eq!(&whole[..12], &UDP_FRAG_UDP_HEAD);
    let u = ip::UdpPacket::new_checked(&whole[..]).unwrap();
    assert!(u.verify_checksum(VIP, *NAT.ip()));
    let mut expect = inner.clone();
    copy_decremented(&mut expect, &inner).unwrap();
    assert_eq!(&whole[12..], &expect[..]);
    let s = dp.stats();
    assert_eq!((s.forward_udp, s.forward_fragmented, s.drop_mtu), (1, 1, 0));

    // Behind a dispatcher in encap mode the datagram goes whole to the
    // dispatcher, whose IP layer fragments it.
    let dp = plane(
        &[(HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)])],
        small_mtu(),
    )
    .udp_via_dispatcher(true);
    out.clear();
    assert_eq!(dp.forward(NOW, &inner, &mut out), Ok(1));
    let o = outputs(&out);
    assert_eq!(o.len(), 1);
    assert!(matches!(o[0].0, Dest::Udp { dst, .. } if dst == NAT));
    assert_eq!(&o[0].1[..4], &[4, 4, 0, 0]);
    assert_eq!(&o[0].1[4..], &expect[..]);
    assert_eq!(dp.stats().forward_fragmented, 1);
}

#[test]
fn fragmenting_a_simultaneous_binding_and_the_limits() {
    // One copy fits IP in IP (600 + 20 ≤ 630), the UDP one (600 + 32)
    // does not: only that one is fragmented.
    let dp = plane(
        &[(
            HOA,
            vec![
                care_of(COA, Encap::IpInIp, 600),
                care_of(COA2, Encap::Udp { nat: NAT }, 600),
            ],
        )],
        DataplaneConfig {
            tunnel_mtu: 630,
            ..DataplaneConfig::default()
        },
    );
    let mut out = Outputs::new();
    assert_eq!(dp.forward(NOW, &mid_packet(false), &mut out), Ok(2));
    let dests: Vec<Dest> = out.iter().map(|(d, _)| d).collect();
    assert_eq!(
        dests,
        vec![Dest::Raw(COA), Dest::Raw(*NAT.ip()), Dest::Raw(*NAT.ip())]
    );
    assert_eq!(dp.stats().forward_fragmented, 1);

    // 65535 octets inside, 65555 encapsulated: no IPv4 datagram holds it.
    let dp = plane(
        &[(HOA, vec![care_of(COA, Encap::IpInIp, 600)])],
        small_mtu(),
    );
    let mut huge = MID_HEAD.to_vec();
    huge.resize(65_535, 0);
    let mut p = Ipv4Packet::new_unchecked(&mut huge[..]);
    p.set_total_len(65_535);
    p.fill_checksum();
    out.clear();
    assert_eq!(dp.forward(NOW, &huge, &mut out), Err(DropReason::Mtu));
    assert!(out.is_empty(), "all or nothing");
    assert_eq!(dp.stats().drop_mtu, 1);
}

#[test]
fn tun_names_are_checked_like_the_kernel_does() {
    for ok in ["havtun", "a", "hv-tun.0_x", "fifteen-octets!"] {
        assert_eq!(validate_tun_name(ok), Ok(()), "{ok}");
    }
    assert_eq!(
        validate_tun_name(""),
        Err(DataplaneConfigError::EmptyTunName)
    );
    assert!(matches!(
        validate_tun_name("sixteen-octets!!"),
        Err(DataplaneConfigError::TunNameTooLong {
            len: 16,
            max: 15,
            ..
        })
    ));
    // Length is in octets (the kernel's), not characters.
    assert!(matches!(
        validate_tun_name("tüntüntüntün"),
        Err(DataplaneConfigError::TunNameTooLong { len: 16, .. })
    ));
    for (bad, ch) in [
        ("hav/tun", '/'),
        ("hav tun", ' '),
        ("hav\ttun", '\t'),
        ("tun\n", '\n'),
        ("eth0:1", ':'),
    ] {
        assert_eq!(
            validate_tun_name(bad),
            Err(DataplaneConfigError::TunNameChar {
                name: bad.into(),
                ch
            }),
            "{bad:?}"
        );
    }
    for bad in [".", ".."] {
        assert_eq!(
            validate_tun_name(bad),
            Err(DataplaneConfigError::TunNameReserved(bad.into()))
        );
    }
    let e = validate_tun_name("a/b").unwrap_err().to_string();
    assert!(e.contains("tun_name") && e.contains("'/'"), "{e}");
}

#[test]
fn dataplane_config_validate_counts_the_realm_suffix() {
    let realm = |name: &str, prefix: bool| RealmConfig {
        name: name.into(),
        home_prefix: prefix.then_some(Prefix {
            addr: Ipv4Addr::new(198, 51, 100, 0),
            len: 24,
        }),
        ..RealmConfig::default()
    };
    let cfg = |tun: &str| DataplaneConfig {
        tun_name: tun.into(),
        ..DataplaneConfig::default()
    };
    let one = [realm("a", true)];
    assert_eq!(DataplaneConfig::default().validate(&one), Ok(()));
    // 14 octets + "0" = 15: fits; 15 + "0" does not.
    assert_eq!(cfg("fourteen-octet").validate(&one), Ok(()));
    assert!(matches!(
        cfg("fifteen-octets!").validate(&one),
        Err(DataplaneConfigError::TunNameTooLong { ref name, len: 16, .. }) if name == "fifteen-octets!0"
    ));
    // Realm 10 (the 11th) gets two digits; realms without a home prefix
    // get no device.
    let mut many: Vec<RealmConfig> = (0..11).map(|i| realm(&format!("r{i}"), true)).collect();
    assert!(cfg("fourteen-octet").validate(&many).is_err());
    assert_eq!(cfg("thirteen-octe").validate(&many), Ok(()));
    many[10].home_prefix = None;
    assert_eq!(cfg("fourteen-octet").validate(&many), Ok(()));
    // The prefix itself is checked even with no realm to serve.
    assert!(cfg("bad/name").validate(&[]).is_err());
    assert_eq!(
        DataplaneConfig {
            tunnel_mtu: 575,
            ..DataplaneConfig::default()
        }
        .validate(&one),
        Err(DataplaneConfigError::TunnelMtuTooSmall(575))
    );
}

#[test]
fn reverse_ip_in_ip_and_spoofing() {
    // Reference: RFC 3024 § 4.2: decapsulate; the inner source must be the
    // home address bound to the outer source.
    let dp = one(&[
        (HOA, vec![care_of(COA, Encap::IpInIp, 600)]),
        (OTHER_HOA, vec![care_of(COA2, Encap::IpInIp, 600)]),
    ]);
    let mut out = Outputs::new();
    assert_eq!(
        dp.reverse_ipip(NOW, &REV_OUTER, &mut out),
        Ok(Reversed::Delivered)
    );
    assert_eq!(outputs(&out), vec![(Dest::Tun(R), REV_INNER.to_vec())]);
    // The same packet from the other MN's care-of address: spoofed.
    out.clear();
    let mut spoof = REV_OUTER;
    spoof[15] = 6; // outer source 203.0.113.6
    Ipv4Packet::new_unchecked(&mut spoof[..]).fill_checksum();
    assert_eq!(
        dp.reverse_ipip(NOW, &spoof, &mut out),
        Err(DropReason::Spoofed)
    );
    // An inner source outside the home prefix: spoofed.
    let mut outside = REV_OUTER;
    outside[20 + 14] = 101; // inner source 198.51.101.10
    Ipv4Packet::new_unchecked(&mut outside[20..]).fill_checksum();
    assert_eq!(
        dp.reverse_ipip(NOW, &outside, &mut out),
        Err(DropReason::Spoofed)
    );
    assert!(out.is_empty());
    // A bad outer checksum, a truncated packet: malformed.
    let mut bad = REV_OUTER;
    bad[10] ^= 1;
    assert_eq!(
        dp.reverse_ipip(NOW, &bad, &mut out),
        Err(DropReason::Malformed)
    );
    assert_eq!(
        dp.reverse_ipip(NOW, &REV_OUTER[..30], &mut out),
        Err(DropReason::Malformed)
    );
    let s = dp.stats();
    assert_eq!(
        (s.reverse_ipip, s.drop_spoofed, s.drop_malformed),
        (1, 2, 2)
    );
}

#[test]
fn reverse_udp_and_spoofing() {
    let dp = one(&[
        (HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)]),
        (OTHER_HOA, vec![care_of(COA2, Encap::IpInIp, 600)]),
    ]);
    let vip = SocketAddrV4::new(VIP, 434);
    let mut msg = vec![4, 4, 0, 0];
    msg.extend_from_slice(&REV_INNER);
    let mut out = Outputs::new();
    assert_eq!(
        dp.reverse_udp(NOW, NAT, vip, &msg, &mut out),
        Ok(Reversed::Delivered)
    );
    assert_eq!(outputs(&out), vec![(Dest::Tun(R), REV_INNER.to_vec())]);
    out.clear();
    // Another port behind the same NAT: not the recorded mapping.
    let other = SocketAddrV4::new(*NAT.ip(), 40002);
    assert_eq!(
        dp.reverse_udp(NOW, other, vip, &msg, &mut out),
        Err(DropReason::Spoofed)
    );
    // The other MN's home address as inner source from our mapping.
    let mut spoof = msg.clone();
    spoof[4 + 15] = 11;
    Ipv4Packet::new_unchecked(&mut spoof[4..]).fill_checksum();
    assert_eq!(
        dp.reverse_udp(NOW, NAT, vip, &spoof, &mut out),
        Err(DropReason::Spoofed)
    );
    // Next header GRE: malformed (not offered); too short: malformed.
    let mut gre = msg.clone();
    gre[1] = 47;
    assert_eq!(
        dp.reverse_udp(NOW, NAT, vip, &gre, &mut out),
        Err(DropReason::Malformed)
    );
    assert_eq!(
        dp.reverse_udp(NOW, NAT, vip, &msg[..3], &mut out),
        Err(DropReason::Malformed)
    );
    assert!(out.is_empty());
    let s = dp.stats();
    assert_eq!((s.reverse_udp, s.drop_spoofed, s.drop_malformed), (1, 2, 2));
}

#[test]
fn keepalive_answered_only_for_a_bound_mapping() {
    // Reference: RFC 3519 § 3.9 (keepalives); haven answers with an echo
    // reply through the tunnel (see the module docs).
    let dp = one(&[(HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)])]);
    let vip = SocketAddrV4::new(VIP, 434);
    let mut out = Outputs::new();
    assert_eq!(
        dp.reverse_udp(NOW, NAT, vip, &KA_REQ, &mut out),
        Ok(Reversed::Keepalive)
    );
    assert_eq!(
        outputs(&out),
        vec![(
            Dest::Udp {
                realm: R,
                src: vip,
                dst: NAT
            },
            KA_REP.to_vec()
        )]
    );
    // From an unknown mapping: dropped, no reply.
    out.clear();
    let stranger = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 5555);
    assert_eq!(
        dp.reverse_udp(NOW, stranger, vip, &KA_REQ, &mut out),
        Err(DropReason::Spoofed)
    );
    assert!(out.is_empty());
    assert_eq!(dp.stats().keepalives, 1);
}

#[test]
fn malformed_forward_input() {
    let dp = one(&[]);
    let mut out = Outputs::new();
    for bad in [&[][..], &[0x45; 10][..], &INNER[..25], &[0x60; 40][..]] {
        assert_eq!(
            dp.forward(NOW, bad, &mut out),
            Err(DropReason::Malformed),
            "{bad:02x?}"
        );
    }
    assert!(out.is_empty());
    assert_eq!(dp.stats().drop_malformed, 4);
}

#[test]
fn never_panics_on_garbage() {
    let dp = one(&[(HOA, vec![care_of(COA, Encap::Udp { nat: NAT }, 600)])]);
    let vip = SocketAddrV4::new(VIP, 434);
    let mut out = Outputs::new();
    let mut x: u32 = 0x1234_5678;
    for len in 0..200usize {
        let mut v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x & 0xff) as u8
            })
            .collect();
        if let Some(b) = v.first_mut() {
            *b = 0x45;
        }
        let _ = dp.forward(NOW, &v, &mut out);
        let _ = dp.reverse_ipip(NOW, &v, &mut out);
        let _ = dp.reverse_udp(NOW, NAT, vip, &v, &mut out);
    }
}

#[test]
fn config_defaults_and_unknown_fields() {
    let c: DataplaneConfig = toml::from_str("").unwrap();
    assert_eq!(c, DataplaneConfig::default());
    assert!(!c.enabled, "off unless asked for");
    assert_eq!((c.tun_name.as_str(), c.tunnel_mtu), ("havtun", 1500));
    let c: DataplaneConfig =
        toml::from_str("enabled = true\ntun_name = \"hv\"\nicmp_errors_per_sec = 0\n").unwrap();
    assert!(c.enabled && c.tun_name == "hv" && c.icmp_errors_per_sec == 0);
    assert!(toml::from_str::<DataplaneConfig>("mtu = 1400\n").is_err());
}

#[test]
fn icmp_disabled_by_zero_rate_and_never_about_icmp_errors() {
    let dp = plane(
        &[],
        DataplaneConfig {
            icmp_errors_per_sec: 0,
            ..DataplaneConfig::default()
        },
    );
    let mut out = Outputs::new();
    assert_eq!(
        dp.forward(NOW, &INNER, &mut out),
        Err(DropReason::NoBinding)
    );
    assert!(out.is_empty());
    // An ICMP error (the TIME_EXCEEDED vector, readdressed to a home
    // address) is never answered with another [RFC 1122 § 3.2.2].
    let dp = one(&[]);
    let mut err = TIME_EXCEEDED;
    err[16..20].copy_from_slice(&HOA.octets());
    Ipv4Packet::new_unchecked(&mut err[..]).fill_checksum();
    assert_eq!(dp.forward(NOW, &err, &mut out), Err(DropReason::NoBinding));
    assert!(out.is_empty());
}
