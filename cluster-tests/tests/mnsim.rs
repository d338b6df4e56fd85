//! mnsim against a fake home agent on loopback: registrations signed and
//! with increasing identifications [RFC 5944 § 3.5.1, § 5.7.1],
//! retransmission backoff [RFC 5944 § 3.6.3], silent discard of replies with
//! a wrong authenticator [RFC 5944 § 3.6.2.1], NAI pool mode [RFC 2794],
//! UDP tunnelling, keepalives and data [RFC 3519], moves, the timeline, the
//! pcap and the binary's JSON summary.
//!
//! The fake home agent is test code: it parses with haven-proto, verifies
//! the MN-HA authenticator and answers with a signed reply.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_cluster_tests::mnsim::{self, DataConfig, DataSink, HomeMode, SimConfig};
use haven_proto::ip::{Ipv4Packet, UdpPacket};
use haven_proto::mip::ReplyCode;
use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::{
    AuthKind, Extension, ExtensionType, MessageBuilder, TunnelReplyCode, UdpTunnelReply,
    parse_request,
};
use haven_proto::mip::ident::Identification;
use haven_proto::mip::registration::ReplyRepr;
use haven_proto::udptun::{self, Kind, TunnelDataPacket, TunnelDataRepr};

const KEY: &[u8] = b"test MN-HA key";
const SPI: u32 = 256;
const POOL: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 0);

/// One request the fake home agent received.
#[derive(Debug, Clone)]
struct Seen {
    from: SocketAddrV4,
    at: Instant,
    ident: Identification,
    lifetime: u16,
    care_of: Ipv4Addr,
    /// The MN's identity: its NAI or home address.
    who: String,
    auth_ok: bool,
}

#[derive(Debug, Clone)]
struct HaOpts {
    key: Vec<u8>,
    /// Requests ignored per mobile node before the fake starts answering.
    drop_first: usize,
    keepalive: u16,
}

impl Default for HaOpts {
    fn default() -> Self {
        HaOpts {
            key: KEY.to_vec(),
            drop_first: 0,
            keepalive: 1,
        }
    }
}

#[derive(Debug, Default)]
struct HaLog {
    seen: Vec<Seen>,
    keepalives: usize,
    data_forwarded: usize,
    inner_sources: std::collections::BTreeSet<Ipv4Addr>,
}

struct FakeHa {
    addr: SocketAddrV4,
    log: Arc<Mutex<HaLog>>,
    _rt: tokio::runtime::Runtime,
}

impl FakeHa {
    fn start(opts: HaOpts) -> FakeHa {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let log = Arc::new(Mutex::new(HaLog::default()));
        let sock = rt
            .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let fwd = rt
            .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
            .unwrap();
        let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
            unreachable!()
        };
        let log2 = Arc::clone(&log);
        rt.spawn(async move {
            let mut buf = vec![0u8; 65_536];
            let mut counts: HashMap<String, usize> = HashMap::new();
            let mut pool: HashMap<String, Ipv4Addr> = HashMap::new();
            loop {
                let Ok((n, SocketAddr::V4(from))) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let msg = buf[..n].to_vec();
                match udptun::classify(&msg) {
                    Kind::RegistrationRequest => {
                        let Some(reply) = answer(&opts, &msg, from, &log2, &mut counts, &mut pool)
                        else {
                            continue;
                        };
                        let _ = sock.send_to(&reply, from).await;
                    }
                    Kind::TunnelData => {
                        if let Ok(k) = udptun::parse_keepalive(&msg) {
                            log2.lock().unwrap().keepalives += 1;
                            let mut out = [0u8; 128];
                            let n = udptun::build_keepalive_reply(&mut out, &k).unwrap();
                            let _ = sock.send_to(&out[..n], from).await;
                            continue;
                        }
                        // Decapsulate and deliver the inner UDP packet to
                        // the correspondent as plain UDP.
                        let t = TunnelDataPacket::new_checked(&msg[..]).unwrap();
                        let t = TunnelDataRepr::parse(&t).unwrap();
                        let ip = Ipv4Packet::new_checked(t.payload).unwrap();
                        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
                        let dst = SocketAddrV4::new(ip.dst_addr(), udp.dst_port());
                        let _ = fwd.send_to(udp.payload(), dst).await;
                        let mut l = log2.lock().unwrap();
                        l.data_forwarded += 1;
                        l.inner_sources.insert(ip.src_addr());
                    }
                    _ => {}
                }
            }
        });
        FakeHa { addr, log, _rt: rt }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }
}

fn answer(
    opts: &HaOpts,
    msg: &[u8],
    from: SocketAddrV4,
    log: &Mutex<HaLog>,
    counts: &mut HashMap<String, usize>,
    pool: &mut HashMap<String, Ipv4Addr>,
) -> Option<Vec<u8>> {
    let req = parse_request(msg).ok()?;
    let nai = match req.covered(ExtensionType::MnNai) {
        Some(Extension::MnNai(n)) => Some(String::from_utf8_lossy(n).into_owned()),
        _ => None,
    };
    let who = nai
        .clone()
        .unwrap_or_else(|| req.fixed.home_address.to_string());
    let at = auth::find_mn_ha(msg).ok().flatten()?;
    let auth_ok = at.spi == SPI && at.verify(Algorithm::HmacMd5, &opts.key, msg).is_ok();
    log.lock().unwrap().seen.push(Seen {
        from,
        at: Instant::now(),
        ident: req.fixed.identification,
        lifetime: req.fixed.lifetime,
        care_of: req.fixed.care_of_address,
        who: who.clone(),
        auth_ok,
    });
    let c = counts.entry(who.clone()).or_default();
    *c += 1;
    if *c <= opts.drop_first {
        return None;
    }
    let home_address = if req.fixed.home_address.is_unspecified() {
        let next = u32::from(POOL) + 1 + pool.len() as u32;
        *pool.entry(who).or_insert(Ipv4Addr::from(next))
    } else {
        req.fixed.home_address
    };
    let (code, lifetime) = if auth_ok {
        (ReplyCode::Accepted, req.fixed.lifetime.min(600))
    } else {
        (ReplyCode::MobileNodeFailedAuthentication, 0)
    };
    let mut b = MessageBuilder::reply(&ReplyRepr {
        code,
        lifetime,
        home_address,
        home_agent: req.fixed.home_agent,
        identification: req.fixed.identification,
    });
    if auth_ok && req.covered(ExtensionType::UdpTunnelRequest).is_some() {
        b.push(&Extension::UdpTunnelReply(UdpTunnelReply {
            code: TunnelReplyCode::Accepted,
            force: false,
            keepalive_interval: opts.keepalive,
        }))
        .ok()?;
    }
    b.sign(AuthKind::MnHa, SPI, Algorithm::HmacMd5, &opts.key);
    Some(b.finish())
}

fn sim(ha: &FakeHa, count: usize) -> SimConfig {
    let mut c = SimConfig::new(ha.addr, KEY);
    c.count = count;
    c.rate = 2000.0;
    c.spi = SPI;
    c.home = HomeMode::Static {
        base: Ipv4Addr::new(198, 18, 0, 1),
    };
    c
}

fn by_mn(seen: &[Seen]) -> HashMap<String, Vec<Seen>> {
    let mut m: HashMap<String, Vec<Seen>> = HashMap::new();
    for s in seen {
        m.entry(s.who.clone()).or_default().push(s.clone());
    }
    m
}

/// Every pcap frame decodes without a malformed-packet mark, when tshark
/// is installed.
fn check_pcap(path: &Path, ha_port: u16, min_frames: usize) {
    // The fake home agent listens on an ephemeral port: decode it as MIP.
    let decode_as = format!("udp.port=={ha_port},mip");
    let Ok(out) = Command::new("tshark")
        .args(["-r"])
        .arg(path)
        .args([
            "-d",
            &decode_as,
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.malformed",
        ])
        .output()
    else {
        eprintln!("tshark not installed: pcap decode check skipped");
        return;
    };
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() >= min_frames,
        "{} frames < {min_frames}",
        lines.len()
    );
    let malformed: Vec<&&str> = lines
        .iter()
        .filter(|l| l.split('\t').nth(1).is_some_and(|m| !m.is_empty()))
        .collect();
    assert!(malformed.is_empty(), "malformed frames: {malformed:?}");
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(path)
        .args([
            "-d", &decode_as, "-Y", "mip", "-T", "fields", "-e", "mip.type",
        ])
        .output()
        .unwrap();
    let types = String::from_utf8_lossy(&out.stdout);
    assert!(types.lines().any(|t| t == "1"), "no request decoded as MIP");
    assert!(types.lines().any(|t| t == "3"), "no reply decoded as MIP");
}

// Reference: RFC 5944 § 3.5.1 (MN-HA authenticator), § 5.7.1 (timestamps
// strictly increase), § 3.6.1.2 (deregistration with lifetime 0).
#[test]
fn two_hundred_mobile_nodes_register_and_deregister() {
    let ha = FakeHa::start(HaOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let mut c = sim(&ha, 200);
    c.timeline = Some(dir.path().join("timeline.jsonl"));
    c.pcap = Some(dir.path().join("run.pcap"));
    let r = mnsim::run(&c).unwrap();
    let s = &r.summary;
    assert_eq!(s.registered, 200, "{}", s.table());
    assert_eq!(s.accepted, 200);
    assert_eq!(s.deregistered, 200);
    assert_eq!((s.gave_up, s.denied_total, s.discarded), (0, 0, 0));
    assert_eq!(s.retransmissions, 0);
    assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.p50 <= s.latency_ms.p99);
    assert!(s.latency_ms.p99 <= s.latency_ms.p999 && s.latency_ms.p999 <= s.latency_ms.max);
    assert!(s.reg_per_sec > 0.0);

    let seen = ha.seen();
    assert_eq!(seen.len() as u64, s.sent);
    assert_eq!(
        seen.len(),
        400,
        "one registration and one deregistration each"
    );
    assert!(
        seen.iter().all(|x| x.auth_ok),
        "every request correctly signed"
    );
    let ports: std::collections::HashSet<u16> = seen.iter().map(|x| x.from.port()).collect();
    assert_eq!(ports.len(), 200, "one source port per mobile node");
    let per = by_mn(&seen);
    assert_eq!(per.len(), 200);
    for (who, v) in &per {
        assert_eq!(v.len(), 2, "{who}");
        assert_eq!((v[0].lifetime, v[1].lifetime), (300, 0), "{who}");
        assert!(
            v[0].ident < v[1].ident,
            "{who}: identification must increase"
        );
        assert_eq!(v[0].care_of, Ipv4Addr::LOCALHOST);
    }
    for m in &r.mns {
        assert_eq!(m.accepted, 1);
        assert!(m.deregistered);
        assert_eq!(
            m.home_address,
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + m.mn as u32)
        );
    }

    // The timeline: one JSON object per event.
    let text = std::fs::read_to_string(c.timeline.as_ref().unwrap()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, s.events);
    assert_eq!(
        lines.len(),
        400 + 200 + 200,
        "sent + accepted + deregistered"
    );
    let count = |e: &str| lines.iter().filter(|l| l["event"] == e).count();
    assert_eq!(
        (count("sent"), count("accepted"), count("deregistered")),
        (400, 200, 200)
    );
    for l in &lines {
        assert!(l["t"].as_f64().unwrap() >= 0.0);
        assert!(l["mn"].as_u64().unwrap() < 200);
        if l["event"] == "accepted" {
            assert_eq!(l["code"], 0);
            assert!(l["latency_ms"].as_f64().unwrap() > 0.0);
        }
    }
    check_pcap(c.pcap.as_ref().unwrap(), ha.addr.port(), 800);
}

// Reference: RFC 5944 § 3.6.3 (retransmission with exponential backoff).
#[test]
fn dropped_requests_are_retransmitted_with_backoff() {
    let ha = FakeHa::start(HaOpts {
        drop_first: 2,
        ..HaOpts::default()
    });
    let mut c = sim(&ha, 5);
    c.initial_timeout = Duration::from_millis(200);
    let r = mnsim::run(&c).unwrap();
    let s = &r.summary;
    assert_eq!(s.registered, 5, "{}", s.table());
    assert_eq!(s.retransmissions, 10);
    assert_eq!(s.sent, 5 * 3 + 5);
    for (who, v) in by_mn(&ha.seen()) {
        assert_eq!(v.len(), 4, "{who}: 3 registration tries + 1 deregistration");
        let g1 = v[1].at - v[0].at;
        let g2 = v[2].at - v[1].at;
        assert!(g1 >= Duration::from_millis(190), "{who}: first gap {g1:?}");
        assert!(g2 >= Duration::from_millis(380), "{who}: second gap {g2:?}");
        // Timers may fire late on a loaded machine, never early: the lower
        // bounds above are the doubling; no upper bound or ratio is asserted.
        assert!(
            v[0].ident < v[1].ident && v[1].ident < v[2].ident,
            "{who}: new ids"
        );
        assert_eq!(v[0].from, v[2].from, "{who}: same source port");
    }
    // Latency counts from the first transmission: at least both timeouts.
    assert!(s.latency_ms.p50 >= 590.0, "{}", s.table());
}

// Reference: RFC 5944 § 3.6.2.1 (a reply without a valid authenticator is
// silently discarded), § 3.6.3 (give up).
#[test]
fn wrong_key_on_home_agent_gives_up() {
    let ha = FakeHa::start(HaOpts {
        key: b"a different key".to_vec(),
        ..HaOpts::default()
    });
    let mut c = sim(&ha, 10);
    c.initial_timeout = Duration::from_millis(100);
    c.max_attempts = 3;
    let r = mnsim::run(&c).unwrap();
    let s = &r.summary;
    assert_eq!(s.gave_up, 10, "{}", s.table());
    assert_eq!((s.registered, s.accepted, s.deregistered), (0, 0, 0));
    assert_eq!(s.sent, 30);
    assert_eq!(
        s.discarded, 30,
        "every 131 signed with the wrong key dropped"
    );
    assert_eq!(s.denied_total, 0);
    let seen = ha.seen();
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|x| !x.auth_ok));
    assert!(r.mns.iter().all(|m| m.acknowledged.is_none()));
}

// Reference: RFC 2794 § 2 (NAI, home address 0.0.0.0), RFC 3519 § 3.1–3.3,
// § 3.9 (UDP tunnel, data, keepalives).
#[test]
fn nai_pool_udp_tunnel_keepalives_and_data() {
    let ha = FakeHa::start(HaOpts::default());
    let sink = DataSink::spawn(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    let SocketAddr::V4(cn) = sink.local_addr() else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = sim(&ha, 20);
    c.home = HomeMode::Nai {
        pattern: "mn{i}@example.com".into(),
    };
    c.udp_tunnel = true;
    c.data = Some(DataConfig {
        correspondent: cn,
        rate: 20.0,
        payload_len: 100,
        first_id: 0,
    });
    c.duration = Some(Duration::from_millis(2500));
    c.pcap = Some(dir.path().join("tunnel.pcap"));
    let r = mnsim::run(&c).unwrap();
    let s = &r.summary;
    assert_eq!(s.registered, 20, "{}", s.table());
    assert!(s.keepalives_sent >= 20, "{}", s.table());
    assert!(s.keepalive_replies >= 20, "{}", s.table());
    assert!(s.data_sent >= 20 * 20, "{}", s.table());
    let mut allocated: Vec<Ipv4Addr> = r.mns.iter().map(|m| m.home_address).collect();
    allocated.sort();
    allocated.dedup();
    assert_eq!(allocated.len(), 20);
    assert!(allocated.iter().all(|a| u32::from(*a) > u32::from(POOL)));
    // Wait (bounded) until every data packet sent was forwarded, then read
    // the sink: each forwarded packet's inner source was recorded with it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ha.log.lock().unwrap().data_forwarded < s.data_sent as usize && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let inner: Vec<Ipv4Addr> = ha
        .log
        .lock()
        .unwrap()
        .inner_sources
        .iter()
        .copied()
        .collect();
    assert_eq!(
        inner, allocated,
        "inner packets come from the allocated home addresses"
    );
    let flows = sink.stop().flows();
    assert_eq!(flows.len(), 20);
    let received: u64 = flows.iter().map(|f| f.received).sum();
    assert_eq!(received, s.data_sent);
    for f in &flows {
        assert_eq!(f.lost, 0, "{f:?}");
        assert!(f.max_gap < Duration::from_secs(1), "{f:?}");
    }
    check_pcap(c.pcap.as_ref().unwrap(), ha.addr.port(), 100);
}

// A move: a new socket (source port) and care-of address, re-registered.
#[test]
fn move_reregisters_from_a_new_source() {
    let ha = FakeHa::start(HaOpts::default());
    let mut c = sim(&ha, 10);
    c.bind = vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2)];
    c.move_after = Some(Duration::from_millis(300));
    let r = mnsim::run(&c).unwrap();
    let s = &r.summary;
    assert_eq!(
        (s.registered, s.accepted, s.moves),
        (10, 20, 10),
        "{}",
        s.table()
    );
    for (who, v) in by_mn(&ha.seen()) {
        assert_eq!(v.len(), 3, "{who}: register, move, deregister");
        assert_ne!(v[0].from, v[1].from, "{who}: new source after the move");
        assert_ne!(v[0].care_of, v[1].care_of, "{who}: new care-of address");
        assert_eq!(v[1].from, v[2].from);
        assert!(v[0].ident < v[1].ident && v[1].ident < v[2].ident);
    }
}

// The binary: flags, --json summary, --timeline.
#[test]
fn binary_json_summary_and_timeline() {
    let ha = FakeHa::start(HaOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let tl = dir.path().join("tl.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_mnsim"))
        .args([
            "--ha",
            &ha.addr.to_string(),
            "--count",
            "30",
            "--rate",
            "1000",
        ])
        .args([
            "--key",
            std::str::from_utf8(KEY).unwrap(),
            "--spi",
            "256",
            "--json",
        ])
        .arg("--timeline")
        .arg(&tl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["registered"], 30);
    assert_eq!(v["deregistered"], 30);
    assert_eq!(v["sent"], 60);
    let lines = std::fs::read_to_string(&tl).unwrap().lines().count();
    assert_eq!(Some(lines as u64), v["events"].as_u64());
    assert_eq!(ha.seen().len(), 60);

    let bad = Command::new(env!("CARGO_BIN_EXE_mnsim"))
        .args(["--ha", &ha.addr.to_string(), "--count", "0", "--key", "k"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64), "bad config exits EX_USAGE");
    let help = Command::new(env!("CARGO_BIN_EXE_mnsim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--ha",
        "--count",
        "--rate",
        "--nai",
        "--udp-tunnel",
        "--duration",
        "--bind",
        "--move-after",
        "--pcap",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
