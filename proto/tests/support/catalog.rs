//! One sample of every message kind haven puts on the wire, built only with
//! haven-proto's emitters. Shared (by `#[path]`) between the Wireshark
//! interoperability test (`tests/tshark.rs`), which checks tshark decodes each
//! sample as sent, and the `wire_tour` example, which prints them and writes
//! them as fuzz seeds. The values are fixed constants so the test can state
//! its expectations literally.

// Each includer uses a different subset of the catalogue's fields.
#![allow(dead_code)]

use core::net::{Ipv4Addr, SocketAddrV4};

use haven_proto::ip::{self, Ipv4Packet, Ipv4Repr};
use haven_proto::mip::ReplyCode;
use haven_proto::mip::auth::Algorithm;
use haven_proto::mip::ext::{
    AuthKind, Encapsulation, Extension, MessageBuilder, RevocationSupport, TunnelReplyCode,
    UdpTunnelReply, UdpTunnelRequest, VendorExt,
};
use haven_proto::mip::ident::Identification;
use haven_proto::mip::registration::{Flags, ReplyRepr, RequestRepr};
use haven_proto::mip::vendor::{
    ENTERPRISE_NUMBER, FilterAction, FilterRule, StaticRoute, VendorPayload,
};
use haven_proto::sync::{DataBlock, Subtype, SyncRepr, SyncType};
use haven_proto::udptun::{self, NextHeader, TunnelDataRepr};
use haven_proto::vrrp::{self, VrrpRepr};

/// Home address of the mobile node.
pub const HOA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// Home agent address (the cluster VIP).
pub const HA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Care-of address (co-located, or a foreign agent's).
pub const COA: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// A correspondent node, the far end of tunnelled data.
pub const CN: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
/// The mobile node's UDP source port (what the dispatcher hashes on).
pub const MN_PORT: u16 = 49_152;
/// A fixed Identification: an NTP timestamp (RFC 5944 § 5.7).
pub const IDENT: u64 = 0xe9a1_b2c3_8000_0001;
/// The HA's corrected Identification in a code-133 reply.
pub const IDENT_HA: u64 = 0xe9a1_b2d0_0000_0000;
/// MN-HA, MN-FA and FA-HA security parameter indices and keys.
pub const SPI_MN_HA: u32 = 0x0000_0100;
pub const SPI_MN_FA: u32 = 0x0000_0200;
pub const SPI_FA_HA: u32 = 0x0000_0300;
pub const KEY_MN_HA: &[u8] = b"mn-ha shared secret";
pub const KEY_MN_FA: &[u8] = b"mn-fa shared secret";
pub const KEY_FA_HA: &[u8] = b"fa-ha shared secret";
/// The NAI of the dynamic-address request (RFC 2794).
pub const NAI: &str = "mn1@example.com";
/// The CVSE: vendor id (haven's, RFC 5612 documentation number) and type.
pub const CVSE_VENDOR: u32 = ENTERPRISE_NUMBER;
pub const CVSE_TYPE: u16 = 7;
pub const CVSE_DATA: &[u8] = &[0xde, 0xad, 0xbe, 0xef];
/// Revocation Support timestamp (RFC 3543 § 3.2).
pub const REV_TIMESTAMP: u32 = 0x6553_f100;
/// UDP Tunnel Reply keepalive interval, seconds (RFC 3519 § 3.2).
pub const KEEPALIVE_S: u16 = 110;
/// VRRP: dispatcher VIP advertisement source and virtual router.
pub const VRRP_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VRID: u8 = 7;
/// Binding-sync peers and key (the same as the `sync` fuzz target's, so its
/// seeds pass the HMAC and reach the block walker).
pub const SYNC_SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const SYNC_DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const SYNC_KEY: &[u8] = b"fuzz-key";
pub const SYNC_VRID: u8 = 9;
pub const SYNC_PRIORITY: u8 = 200;
/// A capture timestamp (2023-11-14T22:13:20Z) for the pcap records.
pub const EPOCH_S: u64 = 1_700_000_000;

/// One message, as its fuzz target sees it and as a whole IPv4 datagram.
#[derive(Debug, Clone)]
pub struct Sample {
    /// File stem, unique within the catalogue.
    pub name: &'static str,
    /// A one-line description.
    pub about: &'static str,
    /// The fuzz target whose input format `seed` is.
    pub target: &'static str,
    /// The bytes the fuzz target takes (a UDP or VRRP payload, or an
    /// extension area).
    pub seed: Vec<u8>,
    /// The IPv4 datagram carrying it, for a capture. Empty for seeds that
    /// are not a message on their own (extension areas).
    pub packet: Vec<u8>,
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ip::ipv4_udp_len(payload.len())];
    let n = ip::write_ipv4_udp(&mut buf, src, dst, payload);
    assert_eq!(n, buf.len(), "write_ipv4_udp failed");
    buf
}

fn mn_to_ha(payload: &[u8]) -> Vec<u8> {
    udp(
        SocketAddrV4::new(COA, MN_PORT),
        SocketAddrV4::new(HA, 434),
        payload,
    )
}

fn ha_to_mn(payload: &[u8]) -> Vec<u8> {
    udp(
        SocketAddrV4::new(HA, 434),
        SocketAddrV4::new(COA, MN_PORT),
        payload,
    )
}

/// A raw IP datagram of `protocol` with TTL 255 (VRRP, RFC 5798 § 5.1.1.3).
fn raw_ip(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src,
        dst,
        protocol,
        ttl: vrrp::TTL,
        tos: 0xc0,
        df: false,
        ident: 0,
        payload_len: payload.len(),
    };
    let mut buf = vec![0u8; ip::IPV4_HEADER_LEN + payload.len()];
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]))
        .expect("IPv4 header emits");
    buf[ip::IPV4_HEADER_LEN..].copy_from_slice(payload);
    buf
}

fn flags(bits: u8) -> Flags {
    Flags::from_bits(bits)
}

fn request(f: u8, lifetime: u16, home_address: Ipv4Addr, care_of: Ipv4Addr) -> RequestRepr {
    RequestRepr {
        flags: flags(f),
        lifetime,
        home_address,
        home_agent: HA,
        care_of_address: care_of,
        identification: Identification(IDENT),
    }
}

fn push(b: &mut MessageBuilder, e: Extension<'_>) {
    b.push(&e).expect("extension emits");
}

/// The static routes carried in the NVSE sample (seed fig. 6b).
pub fn routes() -> Vec<StaticRoute> {
    vec![StaticRoute {
        destination: Ipv4Addr::new(198, 18, 64, 0),
        netmask: Ipv4Addr::new(255, 255, 192, 0),
        gateway: HA,
    }]
}

/// The filter rules carried in the accepted reply (seed fig. 6c).
pub fn filters() -> Vec<FilterRule> {
    vec![FilterRule {
        source: HOA,
        source_mask: Ipv4Addr::new(255, 255, 255, 255),
        destination: Ipv4Addr::new(198, 18, 0, 0),
        destination_mask: Ipv4Addr::new(255, 254, 0, 0),
        protocol: 6,
        action: FilterAction::DenyAndLog,
        port: 23,
    }]
}

/// Every registration message, each with its extension area split out.
fn registrations() -> Vec<(Sample, usize)> {
    let mut out = Vec::new();

    // All six defined flags (S B D M G T = 0xfa) plus MN-NAI.
    let mut b = MessageBuilder::request(&request(0xfa, 1800, HOA, COA));
    push(&mut b, Extension::MnNai(NAI.as_bytes()));
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "request_all_flags",
        "Registration Request, flags S B D M G T, MN-NAI, MN-HA (HMAC-MD5)",
        b.finish(),
        24,
        true,
    ));

    // Behind a NAT: S and T, UDP Tunnel Request (RFC 3519 § 3.1).
    let mut b = MessageBuilder::request(&request(0x82, 600, HOA, COA));
    push(
        &mut b,
        Extension::UdpTunnelRequest(UdpTunnelRequest {
            force: true,
            registration_via_fa: false,
            encapsulation: Encapsulation::IpInIp,
        }),
    );
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "request_udp_tunnel",
        "Registration Request, flags S T, UDP Tunnel Request (F, IP-in-IP), MN-HA",
        b.finish(),
        24,
        true,
    ));

    // Dynamic home address by NAI, B and M, vendor extensions, revocation.
    let data = VendorPayload::StaticRoutes(routes()).to_data();
    let mut b = MessageBuilder::request(&request(0x50, 65_535, Ipv4Addr::UNSPECIFIED, COA));
    push(&mut b, Extension::MnNai(NAI.as_bytes()));
    push(
        &mut b,
        Extension::RevocationSupport(RevocationSupport {
            inform: true,
            timestamp: REV_TIMESTAMP,
        }),
    );
    push(
        &mut b,
        VendorPayload::StaticRoutes(routes())
            .nvse(&data)
            .expect("routes fit"),
    );
    push(
        &mut b,
        Extension::Cvse(VendorExt {
            vendor_id: CVSE_VENDOR,
            vendor_type: CVSE_TYPE,
            data: CVSE_DATA,
        }),
    );
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "request_nai_vendor",
        "Registration Request, HoA 0.0.0.0, flags B M, NAI, Revocation, NVSE routes, CVSE, MN-HA",
        b.finish(),
        24,
        true,
    ));

    // Relayed by a foreign agent: D and G, MN-HA, MN-FA, FA-HA (§ 3.5).
    let mut b = MessageBuilder::request(&request(0x28, 300, HOA, COA));
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    b.sign(AuthKind::MnFa, SPI_MN_FA, Algorithm::HmacMd5, KEY_MN_FA);
    b.sign(
        AuthKind::FaHa,
        SPI_FA_HA,
        Algorithm::PrefixSuffixMd5,
        KEY_FA_HA,
    );
    out.push((
        "request_via_fa",
        "Registration Request via FA, flags D G, MN-HA, MN-FA, FA-HA (prefix+suffix MD5)",
        b.finish(),
        24,
        true,
    ));

    // Deregistration: lifetime 0, CoA = HoA (§ 3.6.1.2).
    let mut b = MessageBuilder::request(&request(0x00, 0, HOA, HOA));
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "request_deregister",
        "Registration Request, deregistration (lifetime 0, CoA = HoA), MN-HA",
        b.finish(),
        24,
        true,
    ));

    // Accepted, with UDP tunnelling and filter rules.
    let data = VendorPayload::FilterRules(filters()).to_data();
    let mut b = MessageBuilder::reply(&ReplyRepr {
        code: ReplyCode::Accepted,
        lifetime: 1800,
        home_address: HOA,
        home_agent: HA,
        identification: Identification(IDENT),
    });
    push(
        &mut b,
        Extension::UdpTunnelReply(UdpTunnelReply {
            code: TunnelReplyCode::Accepted,
            force: true,
            keepalive_interval: KEEPALIVE_S,
        }),
    );
    push(
        &mut b,
        VendorPayload::FilterRules(filters())
            .nvse(&data)
            .expect("rules fit"),
    );
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "reply_accepted",
        "Registration Reply, code 0, UDP Tunnel Reply (keepalive 110 s), NVSE filters, MN-HA",
        b.finish(),
        20,
        false,
    ));

    // Identification mismatch: the HA's time in the high 32 bits (§ 5.7).
    let mut b = MessageBuilder::reply(&ReplyRepr {
        code: ReplyCode::IdentificationMismatch,
        lifetime: 0,
        home_address: HOA,
        home_agent: HA,
        identification: Identification(IDENT_HA),
    });
    b.sign(AuthKind::MnHa, SPI_MN_HA, Algorithm::HmacMd5, KEY_MN_HA);
    out.push((
        "reply_ident_mismatch",
        "Registration Reply, code 133 (identification mismatch), MN-HA",
        b.finish(),
        20,
        false,
    ));

    // Poorly formed: no authenticator can be trusted, so none is added.
    let b = MessageBuilder::reply(&ReplyRepr {
        code: ReplyCode::PoorlyFormedRequest,
        lifetime: 0,
        home_address: HOA,
        home_agent: HA,
        identification: Identification(IDENT),
    });
    out.push((
        "reply_poorly_formed",
        "Registration Reply, code 134 (poorly formed request), no extensions",
        b.finish(),
        20,
        false,
    ));

    out.into_iter()
        .map(|(name, about, bytes, fixed, is_request)| {
            let packet = if is_request {
                mn_to_ha(&bytes)
            } else {
                ha_to_mn(&bytes)
            };
            (
                Sample {
                    name,
                    about,
                    target: "registration",
                    seed: bytes,
                    packet,
                },
                fixed,
            )
        })
        .collect()
}

/// A small inner datagram: the mobile node's UDP packet to a correspondent.
fn inner_datagram() -> Vec<u8> {
    udp(
        SocketAddrV4::new(HOA, 5000),
        SocketAddrV4::new(CN, 7),
        b"haven",
    )
}

fn tunnel() -> Vec<Sample> {
    let mut out = Vec::new();
    let inner = inner_datagram();
    let t = TunnelDataRepr {
        next_header: NextHeader::IpIp,
        payload: &inner,
    };
    let mut v = vec![0u8; t.buffer_len()];
    t.emit(&mut v).expect("tunnel data emits");
    out.push(Sample {
        name: "tunnel_data_ipip",
        about: "RFC 3519 tunnel data, next header 4 (IP-in-IP), MN -> HA",
        target: "udptun",
        packet: mn_to_ha(&v),
        seed: v,
    });

    // GRE (RFC 2784): 4-octet header, protocol type 0x0800, then the packet.
    let mut gre = vec![0x00, 0x00, 0x08, 0x00];
    gre.extend_from_slice(&inner);
    let t = TunnelDataRepr {
        next_header: NextHeader::Gre,
        payload: &gre,
    };
    let mut v = vec![0u8; t.buffer_len()];
    t.emit(&mut v).expect("tunnel data emits");
    out.push(Sample {
        name: "tunnel_data_gre",
        about: "RFC 3519 tunnel data, next header 47 (GRE), HA -> MN",
        target: "udptun",
        packet: ha_to_mn(&v),
        seed: v,
    });

    let mut v = vec![0u8; 64];
    let n = udptun::build_keepalive(&mut v, HOA, HA, 0x4856, 1).expect("keepalive emits");
    v.truncate(n);
    let req = udptun::parse_keepalive(&v).expect("keepalive parses");
    let mut r = vec![0u8; 64];
    let m = udptun::build_keepalive_reply(&mut r, &req).expect("keepalive reply emits");
    r.truncate(m);
    out.push(Sample {
        name: "keepalive_request",
        about: "RFC 3519 keepalive: tunnel data carrying ICMP echo request HoA -> HA",
        target: "udptun",
        packet: mn_to_ha(&v),
        seed: v,
    });
    out.push(Sample {
        name: "keepalive_reply",
        about: "RFC 3519 keepalive reply: ICMP echo reply HA -> HoA",
        target: "udptun",
        packet: ha_to_mn(&r),
        seed: r,
    });
    out
}

/// The VRRPv3 advertisements (RFC 5798 § 5.2), in (name, about, repr) form.
pub fn adverts() -> Vec<(&'static str, &'static str, VrrpRepr)> {
    vec![
        (
            "advert_one",
            "VRRPv3 advertisement, VRID 7, priority 100, 1 s, one address",
            VrrpRepr {
                vrid: VRID,
                priority: vrrp::PRIORITY_DEFAULT,
                max_advert_int_cs: 100,
                addresses: vec![HA],
            },
        ),
        (
            "advert_owner_three",
            "VRRPv3 advertisement, priority 255 (owner), 0.35 s, three addresses",
            VrrpRepr {
                vrid: VRID,
                priority: vrrp::PRIORITY_OWNER,
                max_advert_int_cs: 35,
                addresses: vec![
                    HA,
                    Ipv4Addr::new(198, 51, 100, 2),
                    Ipv4Addr::new(203, 0, 113, 1),
                ],
            },
        ),
        (
            "advert_stop",
            "VRRPv3 advertisement, priority 0 (master stopping), max interval 4095 cs",
            VrrpRepr {
                vrid: 255,
                priority: vrrp::PRIORITY_STOP,
                max_advert_int_cs: 0x0fff,
                addresses: vec![HA],
            },
        ),
    ]
}

fn vrrp_samples() -> Vec<Sample> {
    adverts()
        .into_iter()
        .map(|(name, about, r)| {
            let seed = r
                .to_bytes(VRRP_SRC, vrrp::MULTICAST_ADDR)
                .expect("advert emits");
            Sample {
                name,
                about,
                target: "vrrp",
                packet: raw_ip(VRRP_SRC, vrrp::MULTICAST_ADDR, ip::protocol::VRRP, &seed),
                seed,
            }
        })
        .collect()
}

/// A binding record as the sync blocks carry it (opaque to the codec).
pub const RECORD_A: &[u8] = b"binding 192.0.2.10 -> 203.0.113.7";
pub const RECORD_B: &[u8] = b"binding 192.0.2.11 -> 198.18.9.9";

/// The binding-sync messages, in (name, about, repr) form.
pub fn syncs() -> Vec<(&'static str, &'static str, SyncRepr<'static>)> {
    let base = |msg_type, sequence, ack_sequence, blocks: Vec<DataBlock<'static>>| SyncRepr {
        msg_type,
        vrid: SYNC_VRID,
        priority: SYNC_PRIORITY,
        max_advert_int_cs: 100,
        addresses: vec![HA],
        sequence,
        ack_sequence,
        fragment_index: 0,
        more_fragments: false,
        blocks,
    };
    let block = |data| DataBlock {
        subtype: Subtype::Registration,
        data,
    };
    let mut dump = base(
        SyncType::DataDump,
        11,
        0,
        vec![block(RECORD_A), block(RECORD_B)],
    );
    dump.fragment_index = 1;
    dump.more_fragments = true;
    vec![
        (
            "dump_request",
            "Sync Data Dump Request (VRRP type 2), no blocks",
            base(SyncType::DataDumpRequest, 10, 0, vec![]),
        ),
        (
            "dump_fragment",
            "Sync Data Dump (type 3), fragment 1 with more to come, two records",
            dump,
        ),
        (
            "forward",
            "Sync Data Forward (type 4), one registration record",
            base(SyncType::DataForward, 12, 0, vec![block(RECORD_A)]),
        ),
        (
            "ack",
            "Sync Ack (type 5) of sequence 12",
            base(SyncType::Ack, 13, 12, vec![]),
        ),
    ]
}

fn sync_samples() -> Vec<Sample> {
    syncs()
        .into_iter()
        .map(|(name, about, r)| {
            let seed = r
                .to_bytes(SYNC_SRC, SYNC_DST, SYNC_KEY)
                .expect("sync emits");
            Sample {
                name,
                about,
                target: "sync",
                packet: raw_ip(SYNC_SRC, SYNC_DST, ip::protocol::VRRP, &seed),
                seed,
            }
        })
        .collect()
}

/// Every sample: registration messages, their extension areas (seeds only,
/// no packet), tunnel data and keepalives, VRRP, sync.
pub fn all() -> Vec<Sample> {
    let mut out = Vec::new();
    let mut areas = Vec::new();
    for (s, fixed) in registrations() {
        if let Some(area) = s.seed.get(fixed..).filter(|a| !a.is_empty()) {
            areas.push(Sample {
                name: s.name,
                about: "the extension area of the message of the same name",
                target: "extensions",
                seed: area.to_vec(),
                packet: Vec::new(),
            });
        }
        out.push(s);
    }
    out.extend(areas);
    out.extend(tunnel());
    out.extend(vrrp_samples());
    out.extend(sync_samples());
    out
}

/// The sample of that name and target.
pub fn get(target: &str, name: &str) -> Sample {
    all()
        .into_iter()
        .find(|s| s.target == target && s.name == name)
        .unwrap_or_else(|| panic!("no sample {target}/{name}"))
}

/// A name's companion constant, so users need not import the codec for it.
pub const NVSE_VENDOR: u32 = ENTERPRISE_NUMBER;
