//! Wireshark interoperability: every message kind haven-proto emits is
//! written into a pcap (UDP 434 over IPv4 for Mobile IP and RFC 3519 data,
//! IP protocol 112 with TTL 255 for VRRP and binding sync), decoded by
//! `tshark -T json`, and compared field by field with what haven sent
//! (issue "Foundation", item 3). tshark must be installed
//! (`apt-get install tshark`); set `HAVEN_SKIP_TSHARK=1` to skip.
//!
//! Where Wireshark 4.0's dissectors differ from the RFCs, the test asserts
//! what Wireshark shows and says why in a comment ("Dissector limitation").

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::ExtensionType;
use haven_proto::pcap::PcapWriter;
use haven_proto::vrrp::VrrpPacket;
use serde_json::Value;

#[path = "support/catalog.rs"]
mod catalog;
use catalog::*;

/// `_ws.expert.severity` of PI_ERROR (epan/proto.h: 0x00800000).
const SEVERITY_ERROR: &str = "8388608";

/// One decoded field: its name, display value, raw bytes (hex) and offset in
/// the frame. tshark's JSON objects are keyed by field name, so the offsets
/// (from `-x`) are what restores wire order.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    value: String,
    raw: Option<String>,
    offset: Option<u64>,
}

/// Every field tshark reported for one frame, in wire order, plus the names
/// of all subtrees (where `_ws.malformed` shows up).
#[derive(Debug, Clone)]
struct Frame {
    fields: Vec<Field>,
    keys: BTreeSet<String>,
}

fn raw_parts(raw: &Value) -> Option<(String, Option<u64>)> {
    let a = raw.as_array()?;
    Some((a.first()?.as_str()?.to_owned(), a.get(1)?.as_u64()))
}

fn walk(
    obj: &serde_json::Map<String, Value>,
    fields: &mut Vec<Field>,
    keys: &mut BTreeSet<String>,
) {
    // Fields of this object; those without raw bytes (generated ones such as
    // `ip.checksum.status`) take the object's first offset, so they sort with
    // the header they describe.
    let mut direct: Vec<Field> = Vec::new();
    for (k, v) in obj {
        keys.insert(k.clone());
        if k.ends_with("_raw") {
            continue;
        }
        let raw = obj.get(&format!("{k}_raw"));
        // With --no-duplicate-keys a repeated field is an array of values and
        // its `_raw` an array of raw arrays; a single raw is [hex, off, ...].
        let raws: Vec<Option<(String, Option<u64>)>> = match raw {
            Some(Value::Array(a)) if a.first().is_some_and(Value::is_array) => {
                a.iter().map(raw_parts).collect()
            }
            Some(r) => vec![raw_parts(r)],
            None => vec![],
        };
        let values: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for (i, val) in values.into_iter().enumerate() {
            match val {
                Value::Object(o) => walk(o, fields, keys),
                Value::String(s) => {
                    let r = raws.get(i).cloned().flatten();
                    direct.push(Field {
                        name: k.clone(),
                        value: s.clone(),
                        raw: r.as_ref().map(|r| r.0.clone()),
                        offset: r.and_then(|r| r.1),
                    });
                }
                _ => {}
            }
        }
    }
    let first = direct.iter().filter_map(|f| f.offset).min();
    for mut f in direct {
        if f.offset.is_none() {
            f.offset = first;
        }
        fields.push(f);
    }
}

impl Frame {
    fn from_json(packet: &Value) -> Frame {
        let layers = packet
            .pointer("/_source/layers")
            .and_then(Value::as_object)
            .expect("tshark JSON packet without _source.layers");
        let mut fields = Vec::new();
        let mut keys = BTreeSet::new();
        walk(layers, &mut fields, &mut keys);
        fields.sort_by_key(|f| f.offset.unwrap_or(u64::MAX));
        Frame { fields, keys }
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|f| f.name == name)
            .map(|f| f.value.as_str())
            .collect()
    }

    fn field(&self, name: &str) -> &Field {
        let v: Vec<&Field> = self.fields.iter().filter(|f| f.name == name).collect();
        assert_eq!(v.len(), 1, "expected one {name}, got {v:?}");
        v[0]
    }

    fn one(&self, name: &str) -> &str {
        &self.field(name).value
    }

    fn raw(&self, name: &str) -> &str {
        self.field(name)
            .raw
            .as_deref()
            .unwrap_or_else(|| panic!("{name} has no raw bytes"))
    }

    fn expect(&self, name: &str, want: impl ToString) {
        assert_eq!(self.one(name), want.to_string(), "field {name}");
    }

    /// The fields at or after frame offset `from` (e.g. an inner header).
    fn after(&self, from: u64) -> Frame {
        Frame {
            fields: self
                .fields
                .iter()
                .filter(|f| f.offset.is_some_and(|o| o >= from))
                .cloned()
                .collect(),
            keys: self.keys.clone(),
        }
    }

    /// The extension types in wire order.
    fn ext_types(&self) -> Vec<u8> {
        self.all("mip.ext.type")
            .iter()
            .map(|t| t.parse().expect("numeric extension type"))
            .collect()
    }

    /// The fields of the one extension of type `ty`: from its type octet up
    /// to the next extension's.
    fn ext(&self, ty: u8) -> Frame {
        let starts: Vec<u64> = self
            .fields
            .iter()
            .filter(|f| f.name == "mip.ext.type")
            .filter_map(|f| f.offset)
            .collect();
        let mine: Vec<u64> = self
            .fields
            .iter()
            .filter(|f| f.name == "mip.ext.type" && f.value == ty.to_string())
            .filter_map(|f| f.offset)
            .collect();
        assert_eq!(mine.len(), 1, "expected one extension of type {ty}");
        let start = mine[0];
        let end = starts
            .iter()
            .copied()
            .find(|&s| s > start)
            .unwrap_or(u64::MAX);
        Frame {
            fields: self
                .fields
                .iter()
                .filter(|f| f.offset.is_some_and(|o| o >= start && o < end))
                .cloned()
                .collect(),
            keys: BTreeSet::new(),
        }
    }

    fn is_malformed(&self) -> bool {
        self.keys.contains("_ws.malformed")
    }

    /// The messages of all expert items of severity error.
    fn expert_errors(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, f) in self.fields.iter().enumerate() {
            if f.name == "_ws.expert.severity" && f.value == SEVERITY_ERROR {
                let msg = self.fields[..i]
                    .iter()
                    .rev()
                    .find(|g| g.name == "_ws.expert.message")
                    .map_or("?", |g| g.value.as_str());
                out.push(msg.to_owned());
            }
        }
        out
    }

    /// A valid packet: no malformed marker, no expert error.
    fn assert_clean(&self, what: &str) {
        assert!(!self.is_malformed(), "{what}: tshark says malformed");
        assert_eq!(self.expert_errors(), Vec::<String>::new(), "{what}");
    }
}

fn tshark_or_skip() -> bool {
    if std::env::var("HAVEN_SKIP_TSHARK").is_ok_and(|v| v == "1") {
        eprintln!("HAVEN_SKIP_TSHARK=1: skipping the Wireshark interop test");
        return false;
    }
    match Command::new("tshark").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => panic!(
            "tshark is not installed: install it (`apt-get install tshark`) \
             or set HAVEN_SKIP_TSHARK=1 to skip the Wireshark interop test"
        ),
    }
}

/// Writes `packets` to a pcap and returns tshark's decode, one per frame.
fn decode(tag: &str, packets: &[&[u8]]) -> Vec<Frame> {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("haven-tshark-{tag}-{}.pcap", std::process::id()));
    let mut w = PcapWriter::new(Vec::new()).expect("pcap header");
    for (i, p) in packets.iter().enumerate() {
        w.write_packet(Duration::from_secs(EPOCH_S + i as u64), p)
            .expect("pcap record");
    }
    std::fs::write(&path, w.into_inner()).expect("write pcap");
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&path)
        .args(["-T", "json", "--no-duplicate-keys", "-x"])
        // Have tshark verify haven's IPv4 and UDP checksums too (off by
        // default in Wireshark); VRRP's is always verified.
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .output()
        .expect("run tshark");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("tshark JSON");
    let frames: Vec<Frame> = v
        .as_array()
        .expect("tshark JSON is an array")
        .iter()
        .map(Frame::from_json)
        .collect();
    assert_eq!(frames.len(), packets.len(), "tshark frame count");
    frames
}

/// The catalogue decoded once for all tests, keyed by (target, name).
fn decoded() -> &'static [(Sample, Frame)] {
    static CELL: OnceLock<Vec<(Sample, Frame)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let samples: Vec<Sample> = all().into_iter().filter(|s| !s.packet.is_empty()).collect();
        let pkts: Vec<&[u8]> = samples.iter().map(|s| s.packet.as_slice()).collect();
        let frames = decode("all", &pkts);
        samples.into_iter().zip(frames).collect()
    })
}

fn frame(target: &str, name: &str) -> (&'static Sample, &'static Frame) {
    decoded()
        .iter()
        .find(|(s, _)| s.target == target && s.name == name)
        .map(|(s, f)| (s, f))
        .unwrap_or_else(|| panic!("no decoded sample {target}/{name}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// IP and UDP headers as sent, checksums verified by tshark.
fn check_udp(f: &Frame, src: (std::net::Ipv4Addr, u16), dst: (std::net::Ipv4Addr, u16)) {
    // The outer headers are the first ones in wire order.
    assert_eq!(f.all("ip.src")[0], src.0.to_string());
    assert_eq!(f.all("ip.dst")[0], dst.0.to_string());
    assert_eq!(f.all("ip.proto")[0], "17");
    assert_eq!(f.all("ip.checksum.status")[0], "1", "IPv4 checksum good");
    assert_eq!(f.all("udp.srcport")[0], src.1.to_string());
    assert_eq!(f.all("udp.dstport")[0], dst.1.to_string());
    assert_eq!(f.all("udp.checksum.status")[0], "1", "UDP checksum good");
}

/// The fixed part of a request [RFC 5944 § 3.3].
fn check_request(f: &Frame, flags: u8, life: u16, hoa: &str, coa: &str) {
    check_udp(f, (COA, MN_PORT), (HA, 434));
    f.expect("frame.protocols", "raw:ip:udp:mip");
    f.expect("mip.type", 1);
    f.expect("mip.flags", format!("0x{flags:02x}"));
    for (name, bit) in [
        ("mip.s", 0x80),
        ("mip.b", 0x40),
        ("mip.d", 0x20),
        ("mip.m", 0x10),
        ("mip.g", 0x08),
        // Wireshark still calls the RFC 5944 'r' bit 'V' (Van Jacobson,
        // RFC 2002); it must be zero either way.
        ("mip.v", 0x04),
        ("mip.t", 0x02),
        ("mip.x", 0x01),
    ] {
        f.expect(name, u8::from(flags & bit != 0));
    }
    f.expect("mip.life", life);
    f.expect("mip.homeaddr", hoa);
    f.expect("mip.haaddr", HA);
    f.expect("mip.coa", coa);
    // mip.ident is shown as an NTP date; compare the raw 64 bits instead.
    assert_eq!(f.raw("mip.ident"), format!("{IDENT:016x}"));
}

/// The fixed part of a reply [RFC 5944 § 3.4].
fn check_reply(f: &Frame, code: u8, life: u16, ident: u64) {
    check_udp(f, (HA, 434), (COA, MN_PORT));
    f.expect("frame.protocols", "raw:ip:udp:mip");
    f.expect("mip.type", 3);
    f.expect("mip.code", code);
    f.expect("mip.life", life);
    f.expect("mip.homeaddr", HOA);
    f.expect("mip.haaddr", HA);
    assert_eq!(f.raw("mip.ident"), format!("{ident:016x}"));
    assert!(f.all("mip.coa").is_empty(), "a reply has no CoA");
}

/// An authentication extension [RFC 5944 § 3.5.2–3.5.4]: SPI, and the
/// authenticator tshark shows is the one haven put at that spot, and it
/// verifies over the message up to and including the SPI (§ 3.5.1).
fn check_auth(f: &Frame, s: &Sample, ty: ExtensionType, spi: u32, alg: Algorithm, key: &[u8]) {
    let e = f.ext(u8::from(ty));
    e.expect("mip.ext.len", 20);
    e.expect("mip.auth.spi", format!("0x{spi:08x}"));
    let shown = e.raw("mip.auth.auth").to_owned();
    let loc = auth::find(&s.seed, ty)
        .expect("haven finds the extension")
        .expect("present");
    assert_eq!(loc.spi, spi);
    assert_eq!(shown, hex(&s.seed[loc.authenticator.clone()]));
    loc.verify(alg, key, &s.seed)
        .expect("authenticator verifies");
}

fn mn_ha(f: &Frame, s: &Sample) {
    check_auth(
        f,
        s,
        ExtensionType::MnHaAuth,
        SPI_MN_HA,
        Algorithm::HmacMd5,
        KEY_MN_HA,
    );
}

// Reference: RFC 5944 § 3.3 (flags S B D M G T), § 3.5.2, RFC 2794 § 2.
#[test]
fn request_all_flags_nai() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "request_all_flags");
    f.assert_clean(s.name);
    check_request(f, 0xfa, 1800, "192.0.2.10", "203.0.113.7");
    assert_eq!(f.ext_types(), vec![131, 32]);
    let nai = f.ext(131);
    nai.expect("mip.ext.len", NAI.len());
    nai.expect("mip.nai", NAI);
    mn_ha(f, s);
}

// Reference: RFC 3519 § 3.1 (UDP Tunnel Request: F, R, encapsulation).
#[test]
fn request_udp_tunnel() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "request_udp_tunnel");
    f.assert_clean(s.name);
    check_request(f, 0x82, 600, "192.0.2.10", "203.0.113.7");
    assert_eq!(f.ext_types(), vec![144, 32]);
    let e = f.ext(144);
    e.expect("mip.ext.len", 6);
    e.expect("mip.ext.utrq.subtype", 0);
    e.expect("mip.ext.utrq.f", 1);
    e.expect("mip.ext.utrq.r", 0);
    e.expect("mip.ext.utrq.encaptype", 4);
    mn_ha(f, s);
}

// Reference: RFC 2794 § 2 (HoA 0.0.0.0 with NAI), RFC 3543 § 3.2,
// RFC 3115 § 3–4 (CVSE, NVSE).
#[test]
fn request_nai_vendor_revocation() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "request_nai_vendor");
    f.assert_clean(s.name);
    check_request(f, 0x50, 65_535, "0.0.0.0", "203.0.113.7");
    assert_eq!(f.ext_types(), vec![131, 137, 134, 38, 32]);
    f.ext(131).expect("mip.nai", NAI);

    let rev = f.ext(137);
    rev.expect("mip.ext.len", 6);
    rev.expect("mip.ext.rev.i", 1);
    rev.expect("mip.ext.rev.tstamp", REV_TIMESTAMP);

    let routes = haven_proto::mip::vendor::StaticRoute::emit_all(&routes());
    let nvse = f.ext(134);
    nvse.expect("mip.ext.len", 8 + routes.len());
    nvse.expect("mip.ext.nvse.reserved", "0x0000");
    nvse.expect("mip.ext.nvse.vendor_id", NVSE_VENDOR);
    nvse.expect("mip.ext.nvse.vendor_type", 1);
    assert_eq!(nvse.raw("mip.ext.nvse.vendor_value"), hex(&routes));

    // CVSE is a long extension: type, reserved, 16-bit length.
    let cvse = f.ext(38);
    cvse.expect("mip.ext.cvse.reserved", "0x00");
    cvse.expect("mip.ext.len", 6 + CVSE_DATA.len());
    cvse.expect("mip.ext.cvse.vendor_id", CVSE_VENDOR);
    cvse.expect("mip.ext.cvse.vendor_type", format!("0x{CVSE_TYPE:04x}"));
    assert_eq!(cvse.raw("mip.ext.cvse.vendor_value"), hex(CVSE_DATA));
    mn_ha(f, s);
}

// Reference: RFC 5944 § 3.5.3–3.5.4 (MN-FA, FA-HA after MN-HA).
#[test]
fn request_via_fa_three_authenticators() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "request_via_fa");
    f.assert_clean(s.name);
    check_request(f, 0x28, 300, "192.0.2.10", "203.0.113.7");
    assert_eq!(f.ext_types(), vec![32, 33, 34]);
    mn_ha(f, s);
    check_auth(
        f,
        s,
        ExtensionType::MnFaAuth,
        SPI_MN_FA,
        Algorithm::HmacMd5,
        KEY_MN_FA,
    );
    check_auth(
        f,
        s,
        ExtensionType::FaHaAuth,
        SPI_FA_HA,
        Algorithm::PrefixSuffixMd5,
        KEY_FA_HA,
    );
}

// Reference: RFC 5944 § 3.6.1.2 (deregistration: lifetime 0, CoA = HoA).
#[test]
fn request_deregistration() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "request_deregister");
    f.assert_clean(s.name);
    check_request(f, 0x00, 0, "192.0.2.10", "192.0.2.10");
    assert_eq!(f.ext_types(), vec![32]);
    mn_ha(f, s);
}

// Reference: RFC 5944 § 3.4, RFC 3519 § 3.2 (UDP Tunnel Reply).
#[test]
fn reply_accepted_udp_tunnel_filters() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "reply_accepted");
    f.assert_clean(s.name);
    check_reply(f, 0, 1800, IDENT);
    assert_eq!(f.ext_types(), vec![44, 134, 32]);
    let e = f.ext(44);
    e.expect("mip.ext.len", 6);
    e.expect("mip.ext.utrp.subtype", 0);
    e.expect("mip.ext.utrp.code", 0);
    e.expect("mip.ext.utrp.f", 1);
    e.expect("mip.ext.utrp.keepalive", KEEPALIVE_S);
    let rules = haven_proto::mip::vendor::FilterRule::emit_all(&filters());
    let nvse = f.ext(134);
    nvse.expect("mip.ext.nvse.vendor_id", NVSE_VENDOR);
    nvse.expect("mip.ext.nvse.vendor_type", 2);
    assert_eq!(nvse.raw("mip.ext.nvse.vendor_value"), hex(&rules));
    mn_ha(f, s);
}

// Reference: RFC 5944 § 3.4 codes 133 and 134, § 5.7 (HA's identification).
#[test]
fn reply_denials() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("registration", "reply_ident_mismatch");
    f.assert_clean(s.name);
    check_reply(f, 133, 0, IDENT_HA);
    assert_eq!(f.ext_types(), vec![32]);
    mn_ha(f, s);

    let (s, f) = frame("registration", "reply_poorly_formed");
    f.assert_clean(s.name);
    check_reply(f, 134, 0, IDENT);
    assert!(f.ext_types().is_empty());
}

// Reference: RFC 3519 § 3.3 (tunnel data message: type 4, next header).
#[test]
fn tunnel_data_ip_in_ip() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("udptun", "tunnel_data_ipip");
    f.assert_clean(s.name);
    check_udp(f, (COA, MN_PORT), (HA, 434));
    f.expect("frame.protocols", "raw:ip:udp:mip:ip:udp:echo");
    f.expect("mip.type", 4);
    f.expect("mip.nattt.nexthdr", 4);
    f.expect("mip.nattt.reserved", "0x0000");
    // The inner datagram starts after IPv4 (20), UDP (8), tunnel header (4).
    let inner = f.after(32);
    inner.expect("ip.src", HOA);
    inner.expect("ip.dst", CN);
    inner.expect("ip.checksum.status", 1);
    inner.expect("udp.srcport", 5000);
    inner.expect("udp.dstport", 7);
    inner.expect("udp.checksum.status", 1);
    assert_eq!(inner.raw("udp.payload"), hex(b"haven"));
}

// Reference: RFC 3519 § 3.3 next header 47 (GRE).
#[test]
fn tunnel_data_gre() {
    if !tshark_or_skip() {
        return;
    }
    let (s, f) = frame("udptun", "tunnel_data_gre");
    check_udp(f, (HA, 434), (COA, MN_PORT));
    f.expect("mip.type", 4);
    f.expect("mip.nattt.nexthdr", 47);
    assert_eq!(s.seed[1], 47);
    // Dissector limitation (packet-mip.c, MIP_NATT_TUNNEL_DATA): Wireshark
    // hands the payload to the IPv4 dissector whatever the Next Header says,
    // so a GRE header (first octet 0x00) is reported as "Bogus IP version".
    // That expert error is the only one, and it is Wireshark's, not haven's.
    assert!(!f.is_malformed());
    assert_eq!(f.expert_errors(), vec!["Bogus IP version".to_owned()]);
    f.after(32).expect("ip.version", 0);
}

// Reference: RFC 3519 § 3.8 (keepalive: ICMP echo inside the tunnel).
#[test]
fn keepalive_request_and_reply() {
    if !tshark_or_skip() {
        return;
    }
    for (name, from, to, src, dst, icmp_type) in [
        ("keepalive_request", (COA, MN_PORT), (HA, 434), HOA, HA, 8),
        ("keepalive_reply", (HA, 434), (COA, MN_PORT), HA, HOA, 0),
    ] {
        let (s, f) = frame("udptun", name);
        f.assert_clean(s.name);
        check_udp(f, from, to);
        f.expect("frame.protocols", "raw:ip:udp:mip:ip:icmp");
        f.expect("mip.type", 4);
        f.expect("mip.nattt.nexthdr", 4);
        let inner = f.after(32);
        inner.expect("ip.src", src);
        inner.expect("ip.dst", dst);
        inner.expect("ip.proto", 1);
        inner.expect("ip.ttl", 64);
        inner.expect("ip.checksum.status", 1);
        inner.expect("icmp.type", icmp_type);
        inner.expect("icmp.code", 0);
        inner.expect("icmp.ident", 0x4856);
        inner.expect("icmp.seq", 1);
        inner.expect("icmp.checksum.status", 1);
    }
}

/// What a VRRP-framed message should decode to.
struct VrrpHeader<'a> {
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    ty: u8,
    vrid: u8,
    prio: u8,
    max_adver_cs: u16,
    addrs: &'a [std::net::Ipv4Addr],
}

/// The VRRP common header [RFC 5798 § 5.2] and its IP envelope (§ 5.1).
fn check_vrrp(f: &Frame, s: &Sample, h: &VrrpHeader<'_>) {
    let VrrpHeader {
        src,
        dst,
        ty,
        vrid,
        prio,
        max_adver_cs,
        addrs,
    } = *h;
    f.assert_clean(s.name);
    f.expect("frame.protocols", "raw:ip:vrrp");
    f.expect("ip.src", src);
    f.expect("ip.dst", dst);
    f.expect("ip.proto", 112);
    f.expect("ip.ttl", 255);
    f.expect("ip.checksum.status", 1);
    f.expect("vrrp.version", 3);
    f.expect("vrrp.type", ty);
    f.expect("vrrp.virt_rtr_id", vrid);
    f.expect("vrrp.prio", prio);
    f.expect("vrrp.addr_count", addrs.len());
    f.expect("vrrp.reserved_mbz", 0);
    f.expect("vrrp.short_adver_int", max_adver_cs);
    let want: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(f.all("vrrp.ip_addr"), want, "vrrp.ip_addr");
    let sent = VrrpPacket::new_checked(&s.seed[..])
        .expect("own bytes")
        .checksum();
    f.expect("vrrp.checksum", format!("0x{sent:04x}"));
    // Wireshark recomputes the checksum over the pseudo-header and the whole
    // VRRP payload: 1 = good.
    f.expect("vrrp.checksum.status", 1);
}

// Reference: RFC 5798 § 5.2 (VRRPv3 advertisement).
#[test]
fn vrrp_advertisements() {
    if !tshark_or_skip() {
        return;
    }
    for (name, _, r) in adverts() {
        let (s, f) = frame("vrrp", name);
        check_vrrp(
            f,
            s,
            &VrrpHeader {
                src: VRRP_SRC,
                dst: haven_proto::vrrp::MULTICAST_ADDR,
                ty: 1,
                vrid: r.vrid,
                prio: r.priority,
                max_adver_cs: r.max_advert_int_cs,
                addrs: &r.addresses,
            },
        );
    }
}

// Reference: seed 002 fig. 13b; haven's sync types 2–5 in haven_proto::sync.
#[test]
fn sync_messages_common_header() {
    if !tshark_or_skip() {
        return;
    }
    for (name, _, r) in syncs() {
        let (s, f) = frame("sync", name);
        // Dissector limitation: Wireshark knows VRRP type 1 only. It decodes
        // the common header and address list of types 2–5 as sent, labels
        // the packet "Announcement (v3)" anyway, and shows nothing of the
        // sync header, blocks or HMAC trailer that follow (no error either).
        check_vrrp(
            f,
            s,
            &VrrpHeader {
                src: SYNC_SRC,
                dst: SYNC_DST,
                ty: r.msg_type.code(),
                vrid: r.vrid,
                prio: r.priority,
                max_adver_cs: r.max_advert_int_cs,
                addrs: &r.addresses,
            },
        );
    }
}

// Harness self-test: a registration request cut inside its fixed part must
// be reported malformed, or the clean-packet checks above prove nothing.
#[test]
fn truncated_request_is_malformed() {
    if !tshark_or_skip() {
        return;
    }
    let full = get("registration", "request_all_flags");
    let short = &full.seed[..20];
    let mut pkt = vec![0u8; haven_proto::ip::ipv4_udp_len(short.len())];
    haven_proto::ip::write_ipv4_udp(
        &mut pkt,
        std::net::SocketAddrV4::new(COA, MN_PORT),
        std::net::SocketAddrV4::new(HA, 434),
        short,
    );
    let frames = decode("truncated", &[&pkt, &full.packet]);
    assert!(frames[0].is_malformed(), "truncated request not malformed");
    assert!(!frames[0].expert_errors().is_empty(), "no expert error");
    // The intact copy in the same capture stays clean.
    frames[1].assert_clean("intact request");
}

// The catalogue itself: every kind present, seeds small.
#[test]
fn catalogue_is_complete_and_small() {
    let all = all();
    for t in ["registration", "extensions", "udptun", "vrrp", "sync"] {
        let n = all.iter().filter(|s| s.target == t).count();
        assert!((1..20).contains(&n), "{t}: {n} seeds");
    }
    for s in &all {
        assert!(s.seed.len() <= 400, "{}/{} too big", s.target, s.name);
    }
}
