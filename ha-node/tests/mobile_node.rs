//! The real `ha-node` daemon on loopback, driven by the mobile-node client
//! of `haven-cluster-tests` (issue "Home agent node", Done-when list).
//!
//! Each test starts its own daemon (VIPs on 127.0.0.x, every port from
//! `free_port()`), talks to it over real UDP sockets through a small driver
//! around the sans-IO [`MobileNode`], and checks what the node did through
//! its operator interfaces: `havenctl --json` (the admin API) and the
//! Prometheus endpoint. No fixed sleeps: every wait is a condition with a
//! bound, and every daemon is killed when its [`Process`] drops.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use haven_cluster_tests::fleet::{NodeSpec, RealmSpec};
use haven_cluster_tests::mn::{Discard, Event, MnConfig, MobileNode};
use haven_cluster_tests::mnsim::{self, HomeMode, SimConfig, unix_now};
use haven_cluster_tests::supervisor::{Process, await_metric, free_port, metric, scrape, wait_for};
use haven_proto::mip::ReplyCode;
use haven_proto::mip::auth::{self, Algorithm};
use haven_proto::mip::ext::{
    Extension, ExtensionType, TunnelReplyCode, parse_reply, parse_request,
};

const KEY: &[u8] = b"mobile-node-test";
const SPI: u32 = 256;
const PREFIX: &str = "198.51.100.0/24";
const HOA: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// Every mobile node's socket (and, without a NAT, its care-of address).
const MN_ADDR: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Longest wait for one registration's outcome (retransmissions included).
const OUTCOME: Duration = Duration::from_secs(15);
/// Longest wait for the node to reflect a change in its admin API/metrics.
const SETTLE: Duration = Duration::from_secs(10);

mod common;
use common::node;

// ------------------------------------------------------------ the node ----

/// A running `ha-node` and its configuration.
struct Node {
    spec: NodeSpec,
    _proc: Process,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts the daemon with one realm and waits for its metrics endpoint.
    fn start(realm: RealmSpec) -> Node {
        let spec = NodeSpec::new(
            1,
            SocketAddr::from((MN_ADDR, free_port())),
            SocketAddr::from((MN_ADDR, free_port())),
        )
        .realm(realm);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = spec.write(dir.path()).expect("write the config");
        let proc = node::spawn("ha-node", &config, "info", None);
        node::await_ready(&spec, None).expect("ha-node serves metrics");
        Node {
            spec,
            _proc: proc,
            _dir: dir,
        }
    }

    fn realm(&self) -> &RealmSpec {
        &self.spec.realms[0]
    }

    /// The realm's registration address (VIP and port).
    fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.realm().vip, self.realm().port)
    }

    /// `havenctl --admin ... --json ARGS`.
    fn havenctl(&self, args: &[&str]) -> Output {
        node::havenctl(self.spec.admin, args)
    }

    /// `havenctl bindings show REALM HOA`: `None` when the node has none.
    fn show(&self, hoa: Ipv4Addr) -> Option<serde_json::Value> {
        let name = self.realm().name.clone();
        let out = self.havenctl(&["bindings", "show", &name, &hoa.to_string()]);
        if out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("NotFound")
        {
            return None;
        }
        assert!(
            out.status.success(),
            "havenctl bindings show: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let mut rows = v.as_array().expect("a JSON array").clone();
        assert_eq!(rows.len(), 1, "show returns one binding: {v}");
        rows.pop()
    }

    /// `havenctl bindings list`.
    fn list(&self) -> Vec<serde_json::Value> {
        let out = self.havenctl(&["bindings", "list"]);
        assert!(out.status.success(), "havenctl bindings list: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v.as_array().expect("a JSON array").clone()
    }

    fn scrape(&self) -> String {
        scrape(&self.spec.metrics_url(), None).expect("scrape metrics")
    }

    /// `haven_registrations_total{realm, code, result}`, 0 when absent.
    fn registrations(&self, text: &str, code: u8) -> f64 {
        let result = if code <= 1 { "accepted" } else { "denied" };
        let code = code.to_string();
        metric(
            text,
            "haven_registrations_total",
            &[
                ("realm", &self.realm().name),
                ("code", &code),
                ("result", result),
            ],
        )
        .unwrap_or(0.0)
    }
}

/// A realm on `vip` with a free registration port and one SA for [`HOA`].
fn realm(name: &str, vip: Ipv4Addr) -> RealmSpec {
    RealmSpec {
        port: free_port(),
        ..RealmSpec::new(name, vip, PREFIX)
    }
    .with_home_address_sas(HOA, 1, SPI, KEY)
}

// ------------------------------------------------------- the mobile node ----

/// A [`MobileNode`] on a real UDP socket, recording what crossed the wire.
struct Driver {
    mn: MobileNode,
    sock: UdpSocket,
    /// Every request sent, in order.
    sent: Vec<Vec<u8>>,
    /// The code of every reply received, in order.
    codes: Vec<u8>,
    /// The last reply received.
    last_reply: Vec<u8>,
    /// Why the client dropped replies.
    discards: Vec<Discard>,
}

impl Driver {
    fn new(node: &Node, cfg: MnConfig) -> Driver {
        let mut cfg = cfg;
        cfg.home_agent = *node.vip().ip();
        cfg.home_agent_port = node.vip().port();
        // Short timers keep the give-up cases quick; the daemon answers on
        // loopback within milliseconds.
        cfg.initial_timeout = Duration::from_millis(300);
        cfg.max_attempts = 3;
        Driver {
            mn: MobileNode::new(cfg),
            sock: UdpSocket::bind((MN_ADDR, 0)).expect("bind the mobile node"),
            sent: Vec::new(),
            codes: Vec::new(),
            last_reply: Vec::new(),
            discards: Vec::new(),
        }
    }

    /// A mobile node with a fixed home address and care-of address.
    fn fixed(node: &Node, hoa: Ipv4Addr, coa: Ipv4Addr, key: &[u8]) -> Driver {
        Driver::new(
            node,
            MnConfig::new(hoa, Ipv4Addr::UNSPECIFIED, coa, SPI, key),
        )
    }

    fn local(&self) -> SocketAddrV4 {
        match self.sock.local_addr().expect("local address") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => panic!("IPv6 socket {a}"),
        }
    }

    fn flush(&mut self) {
        while let Some((dst, bytes)) = self.mn.poll_transmit() {
            self.sock.send_to(&bytes, dst).expect("send the request");
            self.sent.push(bytes);
        }
    }

    /// Receives one datagram within `wait`: checks where it came from and
    /// records its code.
    fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let wait = wait.max(Duration::from_millis(1));
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut buf = [0u8; 2048];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                // [RFC 5944 § 3.8.3.1]: the reply comes from the address
                // and port the request was sent to (the VIP).
                let vip = SocketAddrV4::new(
                    self.mn.config().home_agent,
                    self.mn.config().home_agent_port,
                );
                assert_eq!(from, SocketAddr::V4(vip), "reply source");
                let bytes = buf[..n].to_vec();
                let reply = parse_reply(&bytes).expect("the node sends well-formed replies");
                self.codes.push(reply.fixed.code.into());
                self.last_reply.clone_from(&bytes);
                Some(bytes)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("receive: {e}"),
        }
    }

    /// Runs the client until it reports an outcome (anything but `Sent`).
    fn outcome(&mut self) -> Event {
        let deadline = Instant::now() + OUTCOME;
        loop {
            self.flush();
            while let Some(ev) = self.mn.poll_event() {
                if !matches!(ev, Event::Sent { .. }) {
                    return ev;
                }
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no outcome within {OUTCOME:?}"));
            let wait = self
                .mn
                .poll_timeout()
                .map_or(left, |at| at.saturating_sub(unix_now()).min(left));
            match self.recv(wait) {
                Some(bytes) => {
                    if let Err(d) = self.mn.handle(unix_now(), self.local(), &bytes) {
                        self.discards.push(d);
                    }
                }
                None => self.mn.handle_timeout(unix_now()),
            }
        }
    }

    fn register(&mut self) -> Event {
        self.mn.register(unix_now());
        self.outcome()
    }

    fn deregister(&mut self) -> Event {
        self.mn.deregister(unix_now());
        self.outcome()
    }

    /// Sends `bytes` unchanged and returns the reply.
    fn exchange_raw(&mut self, bytes: &[u8]) -> Vec<u8> {
        let vip = SocketAddrV4::new(
            self.mn.config().home_agent,
            self.mn.config().home_agent_port,
        );
        self.sock.send_to(bytes, vip).expect("send");
        self.recv(OUTCOME).expect("a reply to the raw request")
    }
}

fn identification(request: &[u8]) -> u64 {
    parse_request(request)
        .expect("our own request parses")
        .fixed
        .identification
        .0
}

fn accepted(ev: Event) -> (ReplyCode, u16, Ipv4Addr) {
    match ev {
        Event::Accepted {
            code,
            lifetime,
            home_address,
            ..
        } => (code, lifetime, home_address),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn care_of(binding: &serde_json::Value) -> &serde_json::Value {
    let c = binding["care_of"].as_array().expect("care_of array");
    assert_eq!(c.len(), 1, "one care-of address: {binding}");
    &c[0]
}

fn u64_of(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

// ---------------------------------------------------------------- tests ----

/// [RFC 5944 § 3.8.3] accept with code 0; § 3.5.2 the reply carries an
/// MN-HA authenticator under the MN's key; § 3.8.3.1 granted lifetime.
#[test]
fn accepted_registration_is_signed_and_listed() {
    let node = Node::start(realm("inner", Ipv4Addr::new(127, 0, 0, 2)));
    let mut mn = Driver::fixed(&node, HOA, MN_ADDR, KEY);
    let (code, lifetime, hoa) = accepted(mn.register());
    assert_eq!(code, ReplyCode::Accepted);
    assert_eq!((lifetime, hoa), (300, HOA));
    assert_eq!(mn.codes, [0], "one request, one reply");
    assert!(mn.discards.is_empty(), "{:?}", mn.discards);

    // The client verified the authenticator; check it independently too.
    let at = auth::find_mn_ha(&mn.last_reply)
        .expect("parses")
        .expect("the reply carries an MN-HA extension");
    at.verify(Algorithm::HmacMd5, KEY, &mn.last_reply)
        .expect("signed with the MN's key");
    assert!(
        at.verify(Algorithm::HmacMd5, b"some-other-key!!", &mn.last_reply)
            .is_err()
    );

    let b = node.show(HOA).expect("havenctl shows the binding");
    assert_eq!(b["realm"], "inner");
    assert_eq!(b["home_address"], HOA.to_string());
    assert_eq!(
        u64_of(&b["last_identification"]),
        identification(&mn.sent[0])
    );
    let c = care_of(&b);
    assert_eq!(c["care_of_address"], MN_ADDR.to_string());
    assert_eq!(u64_of(&c["granted"]), 300);
    let remaining = u64_of(&c["remaining"]);
    assert!((290..=300).contains(&remaining), "remaining {remaining}");
    // No UDP Tunnel Request: IP in IP [RFC 5944 § 3.8.2].
    assert_eq!(c["encapsulation"], "ip-in-ip");
    assert_eq!(c["nat_mapping"], "");
    assert_eq!(node.list().len(), 1);
}

/// [RFC 3519 § 3.1–3.2]: a UDP Tunnel Request from a source address other
/// than the care-of address (a NAT on the way) is answered with a UDP
/// Tunnel Reply, and the binding tunnels to the NAT mapping (the source
/// address and port of the request).
#[test]
fn nat_detected_udp_tunnel_reply_and_mapping() {
    let node = Node::start(realm("outer", Ipv4Addr::new(127, 0, 0, 3)));
    let behind_nat = Ipv4Addr::new(198, 18, 5, 5);
    let mut cfg = MnConfig::new(HOA, Ipv4Addr::UNSPECIFIED, behind_nat, SPI, KEY);
    cfg.udp_tunnel = true;
    let mut mn = Driver::new(&node, cfg);
    let ev = mn.register();
    let Event::Accepted {
        code, udp_tunnel, ..
    } = ev
    else {
        panic!("expected Accepted, got {ev:?}");
    };
    assert_eq!(code, ReplyCode::Accepted);
    // The realm's keepalive interval (RealmSpec default, 110 s).
    assert_eq!(udp_tunnel, Some(Duration::from_secs(110)));
    let reply = parse_reply(&mn.last_reply).expect("reply");
    match reply.covered(ExtensionType::UdpTunnelReply) {
        Some(Extension::UdpTunnelReply(r)) => {
            assert_eq!(r.code, TunnelReplyCode::Accepted);
            assert_eq!(r.keepalive_interval, 110);
        }
        other => panic!("no UDP Tunnel Reply under the authenticator: {other:?}"),
    }

    let b = node.show(HOA).expect("binding");
    let c = care_of(&b);
    assert_eq!(c["care_of_address"], behind_nat.to_string());
    assert_eq!(c["encapsulation"], "udp");
    assert_eq!(c["nat_mapping"], mn.local().to_string());
}

/// [RFC 5944 § 3.6.1.2, § 3.8.2]: a new registration with a new
/// identification replaces the binding and its lifetime; a lifetime of 0
/// deregisters it.
#[test]
fn reregister_refreshes_then_deregister_removes() {
    let node = Node::start(realm("inner", Ipv4Addr::new(127, 0, 0, 4)));
    let mut cfg = MnConfig::new(HOA, Ipv4Addr::UNSPECIFIED, MN_ADDR, SPI, KEY);
    cfg.lifetime = 100;
    let mut mn = Driver::new(&node, cfg);
    assert_eq!(accepted(mn.register()).1, 100);
    let first = node.show(HOA).expect("binding");
    assert_eq!(u64_of(&care_of(&first)["granted"]), 100);
    assert!(u64_of(&care_of(&first)["remaining"]) <= 100);

    // The same client again, asking for more: a new, newer identification.
    let mut cfg = mn.mn.config().clone();
    cfg.lifetime = 600;
    let sent_before = mn.sent.len();
    mn.mn = MobileNode::new(cfg);
    assert_eq!(accepted(mn.register()).1, 600);
    let id1 = identification(&mn.sent[sent_before - 1]);
    let id2 = identification(&mn.sent[sent_before]);
    assert!(id2 > id1, "timestamps increase [RFC 5944 § 5.7.1]");
    let second = node.show(HOA).expect("binding");
    assert_eq!(u64_of(&second["last_identification"]), id2);
    assert_eq!(u64_of(&care_of(&second)["granted"]), 600);
    let remaining = u64_of(&care_of(&second)["remaining"]);
    assert!(
        remaining > 100 && remaining <= 600,
        "refreshed: {remaining}"
    );

    assert_eq!(mn.deregister(), Event::Deregistered);
    assert!(node.show(HOA).is_none(), "deregistered binding still shown");
    assert!(node.list().is_empty());
    assert_eq!(mn.codes, [0, 0, 0]);
}

/// [RFC 5944 § 5.7, § 3.8.2.1 (b)]: the exact bytes of an accepted request,
/// sent again, are a replay: code 133, and the binding is untouched.
#[test]
fn replayed_request_is_refused_with_133() {
    let node = Node::start(realm("inner", Ipv4Addr::new(127, 0, 0, 5)));
    let mut mn = Driver::fixed(&node, HOA, MN_ADDR, KEY);
    accepted(mn.register());
    let request = mn.sent.last().expect("sent").clone();
    let id = identification(&request);
    let before = node.show(HOA).expect("binding");
    assert_eq!(u64_of(&before["last_identification"]), id);

    let reply_bytes = mn.exchange_raw(&request);
    let reply = parse_reply(&reply_bytes).expect("reply");
    assert_eq!(reply.fixed.code, ReplyCode::IdentificationMismatch);
    // [RFC 5944 § 5.7.1]: the low 32 bits echo the request's.
    assert_eq!(reply.fixed.identification.0 & 0xffff_ffff, id & 0xffff_ffff);
    // The MN is authenticated: the denial is signed.
    auth::find_mn_ha(&reply_bytes)
        .expect("parses")
        .expect("signed")
        .verify(Algorithm::HmacMd5, KEY, &reply_bytes)
        .expect("valid authenticator");

    let after = node.show(HOA).expect("binding still there");
    assert_eq!(u64_of(&after["last_identification"]), id, "state unchanged");
    assert_eq!(
        care_of(&after)["care_of_address"],
        care_of(&before)["care_of_address"]
    );
    assert_eq!(mn.codes, [0, 133]);
}

/// [RFC 5944 § 3.8.2.1 (a)]: a failed authenticator gets 131; the node
/// cannot sign it (the MN's key did not verify), so the client discards it
/// [RFC 5944 § 3.6.2.1], retransmits and gives up; no binding is made.
#[test]
fn bad_key_gets_unsigned_131_and_no_binding() {
    let node = Node::start(realm("inner", Ipv4Addr::new(127, 0, 0, 6)));
    let mut mn = Driver::fixed(&node, HOA, MN_ADDR, b"not-the-right-key");
    assert_eq!(mn.register(), Event::GaveUp);
    assert_eq!(mn.sent.len(), 3, "every attempt was sent");
    assert_eq!(mn.codes, [131, 131, 131], "every attempt was answered");
    assert_eq!(mn.discards, [Discard::NoAuthenticator; 3]);
    assert!(
        auth::find_mn_ha(&mn.last_reply).expect("parses").is_none(),
        "a 131 carries no MN-HA authenticator"
    );
    assert!(node.show(HOA).is_none());
    assert!(node.list().is_empty());
}

/// [RFC 2794 § 2, RFC 5944 § 3.4]: home addresses for NAIs come from the
/// realm's pool; when it is empty the answer is 130 (insufficient
/// resources); an NAI that holds an address keeps it when it re-registers.
#[test]
fn pool_exhaustion_130_and_address_kept() {
    let pool_first = Ipv4Addr::new(198, 51, 100, 10);
    let r = RealmSpec {
        port: free_port(),
        pool: Some("198.51.100.10-198.51.100.12".into()),
        ..RealmSpec::new("outer", Ipv4Addr::new(127, 0, 0, 7), PREFIX)
    }
    .with_nai_sas("mn{i}@example.net", 4, 1000, KEY);
    let node = Node::start(r);
    let mut mns: Vec<Driver> = (0..4)
        .map(|i| {
            let mut cfg = MnConfig::new(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                MN_ADDR,
                1000,
                KEY,
            );
            cfg.nai = Some(format!("mn{i}@example.net").into_bytes());
            Driver::new(&node, cfg)
        })
        .collect();
    let mut given = Vec::new();
    for mn in &mut mns[..3] {
        let (code, _, hoa) = accepted(mn.register());
        assert_eq!(code, ReplyCode::Accepted);
        given.push(hoa);
    }
    let mut sorted = given.clone();
    sorted.sort();
    let pool: Vec<Ipv4Addr> = (0..3)
        .map(|i| Ipv4Addr::from(u32::from(pool_first) + i))
        .collect();
    assert_eq!(sorted, pool, "three distinct pool addresses");

    assert_eq!(
        mns[3].register(),
        Event::Denied {
            code: ReplyCode::InsufficientResources
        }
    );
    assert_eq!(mns[3].codes, [130]);

    let (code, _, again) = accepted(mns[0].register());
    assert_eq!(code, ReplyCode::Accepted);
    assert_eq!(again, given[0], "the NAI keeps its address");

    let listed = node.list();
    assert_eq!(listed.len(), 3);
    for (i, hoa) in given.iter().enumerate() {
        let b = node.show(*hoa).expect("binding");
        assert_eq!(b["nai"], format!("mn{i}@example.net"));
    }
    let status = node.havenctl(&["status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(status["realms"][0]["pool_free"], 0);
    assert_eq!(status["realms"][0]["bindings"], 3);
}

/// [RFC 5944 § 3.8.3.1]: the granted lifetime is clamped to the realm's
/// maximum; a binding not renewed within it expires [RFC 5944 § 3.6.1.2].
#[test]
fn unrenewed_binding_expires() {
    let r = RealmSpec {
        max_lifetime_secs: 2,
        ..realm("inner", Ipv4Addr::new(127, 0, 0, 8))
    };
    let node = Node::start(r);
    let mut mn = Driver::fixed(&node, HOA, MN_ADDR, KEY);
    assert_eq!(accepted(mn.register()).1, 2, "lifetime clamped to 2 s");
    assert!(node.show(HOA).is_some());
    let url = node.spec.metrics_url();
    await_metric(
        &url,
        None,
        "haven_bindings",
        &[("realm", "inner")],
        |v| v == 1.0,
        SETTLE,
    )
    .expect("haven_bindings counts the binding");
    // No re-registration: the client is dropped here.
    drop(mn);
    wait_for("the binding to expire", SETTLE, || node.show(HOA).is_none())
        .expect("binding expired");
    await_metric(
        &url,
        None,
        "haven_binding_expiries_total",
        &[("realm", "inner")],
        |v| v == 1.0,
        SETTLE,
    )
    .expect("one expiry counted");
    await_metric(
        &url,
        None,
        "haven_bindings",
        &[("realm", "inner")],
        |v| v == 0.0,
        SETTLE,
    )
    .expect("haven_bindings back to 0");
}

/// `haven_registrations_total{realm,code,result}` counts every reply sent,
/// by code: accept (0), renew (0), replay (133, [RFC 5944 § 5.7]), bad key
/// (131, [RFC 5944 § 3.8.2.1 (a)]) and deregistration (0).
#[test]
fn registration_counters_match_the_replies() {
    let node = Node::start(realm("inner", Ipv4Addr::new(127, 0, 0, 9)));
    let before = node.scrape();
    let mut good = Driver::fixed(&node, HOA, MN_ADDR, KEY);
    accepted(good.register());
    accepted(good.register());
    let replay = good.sent.last().expect("sent").clone();
    good.exchange_raw(&replay);
    let mut bad = Driver::fixed(&node, HOA, MN_ADDR, b"not-the-right-key");
    assert_eq!(bad.register(), Event::GaveUp);
    assert_eq!(good.deregister(), Event::Deregistered);

    let mut seen: BTreeMap<u8, u64> = BTreeMap::new();
    for c in good.codes.iter().chain(&bad.codes) {
        *seen.entry(*c).or_default() += 1;
    }
    assert_eq!(seen, BTreeMap::from([(0, 3), (131, 3), (133, 1)]));
    // The counter moves just after the reply leaves: wait for the total.
    let total = seen.values().sum::<u64>() as f64;
    let url = node.spec.metrics_url();
    wait_for("every reply counted", SETTLE, || {
        let text = scrape(&url, None).unwrap_or_default();
        seen.keys()
            .map(|c| node.registrations(&text, *c))
            .sum::<f64>()
            == total
    })
    .expect("counters reach the number of replies");
    let after = node.scrape();
    for code in [
        0u8, 1, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 142,
    ] {
        let moved = node.registrations(&after, code) - node.registrations(&before, code);
        let want = seen.get(&code).copied().unwrap_or(0) as f64;
        assert_eq!(moved, want, "code {code}:\n{after}");
    }
}

/// Volume: 1000 mobile nodes at once on loopback all register (and
/// deregister) within RFC 5944 § 3.6.3's retransmission budget.
#[test]
fn thousand_mobile_nodes_at_once() {
    const MNS: usize = 1000;
    let base = Ipv4Addr::new(198, 18, 0, 1);
    let r = RealmSpec {
        port: free_port(),
        ..RealmSpec::new("volume", Ipv4Addr::new(127, 0, 0, 10), "198.18.0.0/16")
    }
    .with_home_address_sas(base, MNS, SPI, KEY);
    let node = Node::start(r);
    let mut sim = SimConfig::new(node.vip(), KEY.to_vec());
    sim.count = MNS;
    sim.rate = 0.0;
    sim.home = HomeMode::Static { base };
    sim.spi = SPI;
    let report = mnsim::run(&sim).expect("mnsim run");
    let s = &report.summary;
    eprintln!("{}", s.table());
    assert_eq!(s.registered, MNS as u64, "{}", s.table());
    assert_eq!(s.gave_up, 0, "{}", s.table());
    assert_eq!(s.deregistered, MNS as u64, "{}", s.table());
    eprintln!(
        "volume: {MNS} MNs, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} reg/s, {} retransmissions",
        s.latency_ms.p50, s.latency_ms.p99, s.latency_ms.max, s.reg_per_sec, s.retransmissions
    );
    // Every acknowledged (de)registration was counted by the node; a
    // retransmission's extra reply may add to it, never take away.
    let want = (s.accepted + s.deregistered) as f64;
    let url = node.spec.metrics_url();
    wait_for("the node counts every accepted reply", SETTLE, || {
        node.registrations(&scrape(&url, None).unwrap_or_default(), 0) >= want
    })
    .expect("haven_registrations_total{code=0} covers the acknowledged replies");
    assert_eq!(node.list().len(), 0, "every mobile node deregistered");
}
